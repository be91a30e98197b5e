"""One million in-process record_query calls (and the fold), as a whole process: run it
alternately against two checkouts to compare them pair by pair.

    PYTHONPATH=. .venv/bin/python -m benchmarks.record_calls
"""

from __future__ import annotations

from exporter import ABMetrics

BRANCHES = ("control", "treatment-a", "treatment-b", "treatment-c")


def main() -> None:
    keys = [(f"exp{i % 25}", BRANCHES[i % 4], float(i % 500), i % 10 != 0) for i in range(1000)]
    metrics = ABMetrics()
    record = metrics.record_query
    for experiment, branch, latency, success in keys * 1000:
        record(experiment, branch, latency, success)
    assert metrics.stats().total_queries_recorded == 1_000_000


if __name__ == "__main__":
    main()
