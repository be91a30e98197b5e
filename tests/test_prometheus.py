"""A real Prometheus server scrapes a real exporter process."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
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


def test_prometheus_reads_the_comparison_gauges(tmp_path: Path) -> None:
    exporter = Exporter(["--stats-interval", "0.2"])
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{exporter.port}"])
    try:
        rng = np.random.default_rng(42)
        # a real effect on success (0.80 -> 0.88) and latency, and a broken 60/40 split
        for _ in range(5):
            queries = []
            for branch, count, success, median in (
                ("control", 1200, 0.80, 80.0),
                ("treatment", 800, 0.88, 60.0),
            ):
                oks = (rng.random(count) < success).tolist()
                lat = rng.lognormal(np.log(median), 0.4, count).tolist()
                queries += [
                    {"experiment": "checkout", "branch": branch, "latency_ms": la, "success": ok}
                    for la, ok in zip(lat, oks, strict=True)
                ]
            assert exporter.post({"queries": queries})[0] == 200
        sel = 'experiment="checkout",control="control",branch="treatment"'
        prometheus.wait_value(f'abtest_comparison_significant{{{sel},metric="success_ratio"}}', 1)
        assert (
            prometheus.value(f'abtest_comparison_significant{{{sel},metric="latency_mean"}}') == 1
        )
        ci_lower = prometheus.value(f'abtest_comparison_ci_lower{{{sel},metric="success_ratio"}}')
        ci_upper = prometheus.value(f'abtest_comparison_ci_upper{{{sel},metric="success_ratio"}}')
        diff = prometheus.value(f'abtest_comparison_difference{{{sel},metric="success_ratio"}}')
        assert 0 < ci_lower < diff < ci_upper
        assert 0.04 < diff < 0.12
        assert prometheus.value(f'abtest_comparison_p_value{{{sel},metric="success_ratio"}}') < 0.05
        latency_diff = prometheus.value(
            f'abtest_comparison_difference{{{sel},metric="latency_mean"}}'
        )
        assert -0.04 < latency_diff < 0  # seconds, faster
        better = prometheus.value(
            f'abtest_comparison_probability_better{{{sel},metric="latency_distribution"}}'
        )
        assert better > 0.6
        prometheus.wait_value('abtest_srm_detected{experiment="checkout"}', 1)
        assert prometheus.value('abtest_srm_p_value{experiment="checkout"}') < 0.001
        p95 = prometheus.value(
            'abtest_branch_latency_percentile_seconds{branch="control",percentile="95"}'
        )
        assert 0.1 < p95 < 0.25  # lognormal(80 ms, 0.4): p95 = 154 ms, at bucket resolution
        # never NaN anywhere in what Prometheus stored
        stored = prometheus.query('{__name__=~"abtest_.+"}')
        assert len(stored) > 100
        assert all(math.isfinite(float(s["value"][1])) for s in stored)
    finally:
        prometheus.stop()
        exporter.stop()
