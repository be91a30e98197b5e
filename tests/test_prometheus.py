"""A real Prometheus server scrapes a real exporter process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Exporter, Prometheus, http

pytestmark = pytest.mark.prometheus


@pytest.fixture
def prometheus(tmp_path: Path, exporter: Exporter) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, [f"127.0.0.1:{exporter.port}"])
    yield server
    server.stop()


def test_prometheus_scrapes_counts_histogram_and_gauges(
    exporter: Exporter, prometheus: Prometheus
) -> None:
    queries = [
        {"experiment": "checkout", "branch": "control", "latency_ms": 20.0, "success": True},
        {"experiment": "checkout", "branch": "control", "latency_ms": 40.0, "success": False},
        {"experiment": "checkout", "branch": "treatment", "latency_ms": 300.0, "success": True},
    ]
    events = [
        {"experiment": "checkout", "branch": "treatment", "event": "revenue", "value": 12.5},
        {"experiment": "checkout", "branch": "treatment", "event": "revenue", "value": 7.5},
    ]
    status, _ = exporter.post({"queries": queries * 10, "events": events})
    assert status == 200

    sel = '{experiment="checkout",branch="control"}'
    prometheus.wait_value(f"abtest_queries_total{sel}", 20)
    assert prometheus.value(f"abtest_query_failures_total{sel}") == 10
    assert prometheus.value(f"abtest_query_duration_seconds_count{sel}") == 20
    assert prometheus.value(f"abtest_query_duration_seconds_sum{sel}") == pytest.approx(0.6)
    assert (
        prometheus.value('abtest_query_duration_seconds_bucket{le="0.025",branch="control"}') == 10
    )
    assert prometheus.value(f"abtest_branch_success_ratio{sel}") == 0.5
    assert prometheus.value(f"abtest_branch_latency_mean_seconds{sel}") == pytest.approx(0.03)
    # the median of the treatment's histogram falls in its (0.25, 0.5] bucket
    p50 = prometheus.value(
        'histogram_quantile(0.5, abtest_query_duration_seconds_bucket{branch="treatment"})'
    )
    assert 0.25 < p50 <= 0.5
    t = '{experiment="checkout",branch="treatment",event="revenue"}'
    assert prometheus.value(f"abtest_event_value_count{t}") == 2
    assert prometheus.value(f"abtest_event_value_sum{t}") == 20.0
    assert prometheus.value(f"abtest_event_mean{t}") == 10.0
    assert prometheus.value('abtest_experiment_info{experiment="checkout",control="control"}') == 1
    assert prometheus.value('abtest_experiment_best_branch{experiment="checkout"}') == 1
    best = prometheus.query('abtest_experiment_best_branch{experiment="checkout"}')
    assert best[0]["metric"]["branch"] == "treatment"
    # our own labels never clash with the job/instance Prometheus adds
    assert best[0]["metric"]["job"] == "abtest"
    assert prometheus.value('up{job="abtest"}') == 1

    # more data arrives: counters only go up, Prometheus sees the increase
    exporter.post({"queries": queries})
    prometheus.wait_value(f"abtest_queries_total{sel}", 22)

    # clearing removes the series from the next scrape (they go stale in Prometheus)
    assert exporter.get("/api/v1/stats")["experiments_tracked"] == 1
    assert http(exporter.url + "/api/v1/experiments/checkout", method="DELETE")[0] == 200
    prometheus.wait_value('count(abtest_queries_total{experiment="checkout"}) or vector(0)', 0)
