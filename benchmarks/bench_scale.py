"""Ingest rate of one process against N --role ingest replicas (issue 11).

    .venv/bin/python -m benchmarks.bench_scale [--replicas 3 --seconds 5 --rounds 3]

The same client processes (one per replica, each with the same keep-alive
connections) post batches of 1000 queries either all to one `--role single`
exporter or each to its own ingest replica; the best round of each is reported.
Durable (sync) as in production. The point is that the ingest path scales with
replicas (it shares nothing between them) up to the cores there are, not the number.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import tempfile

from tests.helpers import Exporter

from .load import batch_body, drive


def _client(job: tuple[int, float, int, int]) -> tuple[int, int]:
    port, seconds, workers, size = job
    result = drive(port, seconds, workers, batch_body(size), size)
    return result.records, result.errors


def _round(ports: list[int], clients: int, seconds: float, workers: int, size: int) -> float:
    jobs = [(ports[i % len(ports)], seconds, workers, size) for i in range(clients)]
    with multiprocessing.Pool(clients) as pool:
        results = pool.map(_client, jobs)
    errors = sum(e for _, e in results)
    assert errors == 0, f"{errors} failed requests"
    return sum(r for r, _ in results) / seconds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="connections per client process")
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
          f"{platform.python_version()}; {args.replicas} client processes")  # fmt: skip
    best = {"single": 0.0, "replicas": 0.0}
    for _ in range(args.rounds):
        for mode in best:
            role = "single" if mode == "single" else "ingest"
            count = 1 if mode == "single" else args.replicas
            processes = [
                Exporter(["--role", role], data_dir=tempfile.mkdtemp()) for _ in range(count)
            ]
            try:
                rate = _round(
                    [p.port for p in processes], args.replicas, args.seconds, args.workers,
                    args.batch,
                )  # fmt: skip
            finally:
                for process in processes:
                    process.stop()
            best[mode] = max(best[mode], rate)
            print(f"  {mode:8s}: {rate:10,.0f} records/s")
    print(
        f"one process: {best['single']:,.0f} records/s; {args.replicas} ingest replicas: "
        f"{best['replicas']:,.0f} records/s ({best['replicas'] / best['single']:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
