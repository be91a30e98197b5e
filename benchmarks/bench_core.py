"""Record and render costs against bare prometheus_client, measured side by side.

    .venv/bin/python -m benchmarks.bench_core

Targets (issue 2): in-process record_query <= 0.15x of prometheus_client's
Counter.labels().inc() + Histogram.labels().observe(); rendering /metrics for
1000 experiments x 4 branches x 10 events <= 0.25x of generate_latest.
"""

from __future__ import annotations

import argparse
import sys
import time

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

from exporter import ABMetrics
from exporter.core.aggregate import DEFAULT_BUCKETS
from exporter.outputs.comparisons import ComparisonEngine
from exporter.outputs.exposition import render

from .common import best_of, verdict

BRANCHES = ("control", "treatment-a", "treatment-b", "treatment-c")


Plan = list[tuple[str, str, float, bool]]


def record_plan(calls: int) -> Plan:
    """`calls` queries over 25 experiments x 4 branches (1000 distinct ones, repeated)."""
    keys = [(f"exp{i % 25}", BRANCHES[i % 4], float(i % 500), i % 10 != 0) for i in range(1000)]
    return keys * max(1, calls // len(keys))


def record_ours(plan: Plan) -> None:
    metrics = ABMetrics()
    record = metrics.record_query
    for experiment, branch, latency, success in plan:
        record(experiment, branch, latency, success)
    metrics.stats()  # folds what is pending: its cost is part of recording


def record_prometheus_client(plan: Plan) -> None:
    registry = CollectorRegistry()
    queries = Counter("q", "q", ["experiment", "branch"], registry=registry)
    latency_h = Histogram(
        "d", "d", ["experiment", "branch"], buckets=DEFAULT_BUCKETS, registry=registry
    )
    for experiment, branch, latency, _ in plan:
        queries.labels(experiment, branch).inc()
        latency_h.labels(experiment, branch).observe(latency / 1000)


def bench_record(calls: int, rounds: int) -> tuple[float, float]:
    plan = record_plan(calls)
    n = len(plan)
    ours = best_of(rounds, lambda: record_ours(plan))
    bare = best_of(rounds, lambda: record_prometheus_client(plan))
    return ours / n * 1e9, bare / n * 1e9


def populate(experiments: int, events: int) -> tuple[ABMetrics, CollectorRegistry]:
    """The same data in our aggregate and in prometheus_client objects."""
    prometheus_client.disable_created_metrics()  # no _created lines: a like-for-like output
    metrics = ABMetrics()
    registry = CollectorRegistry()
    eb = ["experiment", "branch"]
    queries = Counter("abtest_queries_total", "q", eb, registry=registry)
    failures = Counter("abtest_query_failures_total", "f", eb, registry=registry)
    duration = Histogram(
        "abtest_query_duration_seconds", "d", eb, buckets=DEFAULT_BUCKETS, registry=registry
    )
    gauges = [
        Gauge(name, name, eb, registry=registry)
        for name in (
            "abtest_branch_success_ratio",
            "abtest_branch_latency_mean_seconds",
            "abtest_branch_latency_min_seconds",
            "abtest_branch_latency_max_seconds",
            "abtest_branch_first_query_timestamp_seconds",
            "abtest_branch_last_query_timestamp_seconds",
        )
    ]
    event_value = Summary("abtest_event_value", "v", [*eb, "event"], registry=registry)
    event_mean = Gauge("abtest_event_mean", "m", [*eb, "event"], registry=registry)
    info = Gauge("abtest_experiment_info", "i", ["experiment", "control"], registry=registry)
    exp_gauges = [
        Gauge(name, name, ["experiment"], registry=registry)
        for name in (
            "abtest_experiment_start_timestamp_seconds",
            "abtest_experiment_last_activity_timestamp_seconds",
            "abtest_experiment_duration_seconds",
        )
    ]
    best = Gauge("abtest_experiment_best_branch", "b", eb, registry=registry)
    for e in range(experiments):
        experiment = f"experiment-{e}"
        info.labels(experiment, "control").set(1)
        for gauge in exp_gauges:
            gauge.labels(experiment).set(1.7e9)
        best.labels(experiment, "control").set(1)
        for b, branch in enumerate(BRANCHES):
            for q in range(3):
                latency = 10.0 + 7 * b + q
                metrics.record_query(experiment, branch, latency, q != 2)
                queries.labels(experiment, branch).inc()
                duration.labels(experiment, branch).observe(latency / 1000)
            failures.labels(experiment, branch).inc()
            for gauge in gauges:
                gauge.labels(experiment, branch).set(0.5)
            for v in range(events):
                event = f"event-{v}"
                metrics.record_event(experiment, branch, event, float(v))
                event_value.labels(experiment, branch, event).observe(float(v))
                event_mean.labels(experiment, branch, event).set(float(v))
    return metrics, registry


def bench_render(
    metrics: ABMetrics, registry: CollectorRegistry, rounds: int
) -> tuple[float, float, int, int]:
    ours_text = render(metrics.snapshot())
    theirs_text = prometheus_client.generate_latest(registry).decode()
    ours = best_of(rounds, lambda: render(metrics.snapshot()))
    theirs = best_of(rounds, lambda: prometheus_client.generate_latest(registry))
    return ours, theirs, ours_text.count("\n"), theirs_text.count("\n")


def bench_comparisons(metrics: ABMetrics) -> None:
    """Not a target of its own: what the background recomputation costs, and a scrape
    that includes the (cached) comparison families."""
    engine = ComparisonEngine(metrics)
    started = time.perf_counter()
    engine.refresh()
    recompute = time.perf_counter() - started
    text = engine.latest.text
    parts = engine.latest.parts
    scrape = best_of(3, lambda: render(metrics.snapshot(), analysis=parts))
    print(
        f"comparisons: recompute {recompute * 1000:.0f} ms in the background "
        f"({text.count(chr(10))} lines); scrape with them {scrape * 1000:.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    ours, bare = bench_record(args.calls, args.rounds)
    print(f"record_query: ours {ours:.0f} ns/call, prometheus_client {bare:.0f} ns/call")
    ok = verdict("record ratio", ours / bare, 0.15)

    metrics, registry = populate(args.experiments, args.events)
    ours_s, theirs_s, ours_lines, theirs_lines = bench_render(metrics, registry, args.rounds)
    print(
        f"render {args.experiments} experiments x {len(BRANCHES)} branches x {args.events} events: "
        f"ours {ours_s * 1000:.1f} ms ({ours_lines} lines), "
        f"generate_latest {theirs_s * 1000:.1f} ms ({theirs_lines} lines)"
    )
    ok = verdict("render ratio", ours_s / theirs_s, 0.25) and ok
    bench_comparisons(metrics)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
