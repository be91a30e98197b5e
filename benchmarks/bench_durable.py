"""Durable ingest (group commit, answered after fsync) against in-memory ingest.

    .venv/bin/python -m benchmarks.bench_durable

Both exporters run as real processes on loopback and take batches of 1000
queries from the same concurrent clients, alternately, several rounds; the best
round of each is compared. Target (issue 5): durable >= 0.8x of non-durable.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from tests.helpers import Exporter

from .load import batch_body, drive


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    body = batch_body(args.batch)
    rates: dict[str, float] = {"sync": 0.0, "off": 0.0}
    for _ in range(args.rounds):
        for mode in ("sync", "off"):
            exporter = Exporter(["--durability", mode], data_dir=tempfile.mkdtemp())
            try:
                result = drive(exporter.port, args.seconds, args.workers, body, args.batch)
            finally:
                exporter.stop()
            assert result.errors == 0, f"{result.errors} failed requests in {mode} mode"
            rates[mode] = max(rates[mode], result.rate)
            print(
                f"  {mode:4s}: {result.rate:10,.0f} records/s "
                f"(p99 {result.percentile(0.99) * 1000:.1f} ms)"
            )
    ratio = rates["sync"] / rates["off"]
    ok = ratio >= 0.8
    print(
        f"durable (sync, fsync per group commit): {rates['sync']:,.0f} records/s; "
        f"in memory: {rates['off']:,.0f} records/s; ratio {ratio:.2f}x (target >= 0.8x) "
        f"{'OK' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
