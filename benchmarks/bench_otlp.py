"""OTLP protobuf ingest rate and the client's per-call cost in the app.

    .venv/bin/python -m benchmarks.bench_otlp

Targets (issue 4): >= 200k OTLP data points per second on one core (decode, stream
bookkeeping and merge, no HTTP), and <= 2 us of app time per `track()` call. The
track() cost is also shown against an empty `with` block, the floor of any context
manager, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

from exporter import ABMetrics
from exporter.client import Client
from exporter.core.aggregate import DEFAULT_BUCKETS
from exporter.ingest.otlp import OtlpLimits, parse_body
from tests.otlp_messages import (
    CUMULATIVE,
    Histogram,
    HistogramDataPoint,
    Metric,
    export_request,
    text,
)

from .common import best_of


def request(series: int, step: int) -> bytes:
    """One export of `series` cumulative streams, the `step`-th time (counts grow)."""
    bounds = [b * 1000 for b in DEFAULT_BUCKETS]
    points = []
    for i in range(series):
        attributes = [
            text("abtest.experiment", f"exp-{i // 8}"),
            text("abtest.branch", f"b{i % 4}"),
            text("abtest.outcome", "success" if i % 8 < 4 else "failure"),
        ]
        counts = [step * (k % 3 + 1) for k in range(len(bounds) + 1)]
        points.append(
            HistogramDataPoint(
                attributes=attributes,
                start_time_unix_nano=1,
                time_unix_nano=1_000_000_000 * (step + 1),
                count=sum(counts),
                sum=float(sum(counts) * 40),
                bucket_counts=counts,
                explicit_bounds=bounds,
                min=0.5,
                max=9000.0,
            )
        )
    metric = Metric(
        name="abtest.query.duration",
        unit="ms",
        histogram=Histogram(
            data_points=points,
            aggregation_temporality=CUMULATIVE,
        ),
    )
    return bytes(export_request([metric]).SerializeToString())


def bench_otlp(series: int, requests: int) -> float:
    bodies = [request(series, step) for step in range(1, requests + 1)]
    metrics = ABMetrics()
    limits = OtlpLimits()
    started = time.process_time()  # CPU time of this (single-threaded) process: one core
    for body in bodies:
        metrics.record_otlp(parse_body(body, "application/x-protobuf", limits))
    elapsed = time.process_time() - started
    assert metrics.stats().total_queries_recorded > 0
    return series * requests / elapsed


def bench_track(calls: int) -> tuple[float, float]:
    client = Client(
        "http://127.0.0.1:9",
        max_buffer=calls + 1,
        flush_interval=3600,
        batch_size=calls + 1,
        give_up_after=0,
    )
    track = client.track

    def tracked() -> None:
        for _ in range(calls):
            with track("checkout", "treatment"):
                pass

    def empty() -> None:
        null = contextlib.nullcontext()
        for _ in range(calls):
            with null:
                pass

    ours = best_of(5, tracked) / calls * 1e9
    floor = best_of(5, empty) / calls * 1e9
    client._buffer.take(calls * 10)  # nothing to send: the server is not there
    client.close()
    return ours, floor


def main() -> int:
    logging.getLogger("exporter.client").setLevel(logging.CRITICAL)  # nobody listens: quiet
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    rate = bench_otlp(args.series, args.requests)
    ok = rate >= 200_000
    print(
        f"OTLP protobuf ingest: {rate:,.0f} points/s on one core (target >= 200,000) "
        f"{'OK' if ok else 'MISSED'}"
    )
    ours, floor = bench_track(args.calls)
    track_ok = ours <= 2000
    print(
        f"client track(): {ours:.0f} ns per call (target <= 2000 ns) "
        f"{'OK' if track_ok else 'MISSED'}; an empty with-block costs {floor:.0f} ns"
    )
    return 0 if ok and track_ok else 1


if __name__ == "__main__":
    sys.exit(main())
