"""OTLP out: the SDK's OTLP/HTTP exporter pushes the aggregate to a real OTLP endpoint
(a receiver written here with opentelemetry-proto), and the numbers arrive intact."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from exporter import ABMetrics
from exporter.outputs.comparisons import ComparisonEngine
from exporter.outputs.otlp_push import start_push


def attributes(point: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in point.attributes}


async def test_push_round_trips_the_numbers(aiohttp_server: Any) -> None:
    received: list[ExportMetricsServiceRequest] = []

    async def collector(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        received.append(ExportMetricsServiceRequest.FromString(await request.read()))
        return web.Response(
            body=ExportMetricsServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/metrics", collector)
    server = await aiohttp_server(app)

    metrics = ABMetrics()
    for i in range(300):
        metrics.record_query("checkout", "control", 10.0 + i % 50, i % 10 != 0)
        metrics.record_query("checkout", "treatment", 8.0 + i % 40, i % 20 != 0)
    metrics.record_event("checkout", "treatment", "revenue", 12.5)
    metrics.record_event("checkout", "treatment", "revenue", 7.5)
    engine = ComparisonEngine(metrics)
    engine.refresh()

    provider = start_push(metrics, str(server.make_url("/v1/metrics")), 3600, engine)
    assert await asyncio.to_thread(provider.force_flush, 10_000)
    await asyncio.to_thread(provider.shutdown)
    assert received
    found: dict[str, Any] = {}
    for request in received[:1]:
        for rm in request.resource_metrics:
            service = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
            assert service["service.name"] == "abtest-exporter"
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    found[metric.name] = metric
    queries = {
        attributes(p)["abtest.branch"]: p.as_int for p in found["abtest.queries"].sum.data_points
    }
    assert queries == {"control": 300, "treatment": 300}
    assert found["abtest.queries"].sum.is_monotonic
    failures = {
        attributes(p)["abtest.branch"]: p.as_int
        for p in found["abtest.query.failures"].sum.data_points
    }
    assert failures == {"control": 30, "treatment": 15}
    duration = found["abtest.query.duration"]
    assert duration.unit == "s"
    control = next(
        p for p in duration.histogram.data_points if attributes(p)["abtest.branch"] == "control"
    )
    branch = metrics.get_branch_metrics("checkout", "control")
    assert branch is not None
    assert control.count == 300 and control.sum == pytest.approx(branch.total_latency_ms / 1000)
    assert list(control.explicit_bounds) == list(metrics.buckets)
    cumulative = [sum(control.bucket_counts[: i + 1]) for i in range(len(control.bucket_counts))]
    assert cumulative == [c for _, c in branch.latency_buckets]
    revenue = found["abtest.event.value"].histogram.data_points[0]
    assert attributes(revenue)["abtest.event"] == "revenue"
    assert (revenue.count, revenue.sum) == (2, 20.0)
    analysis = engine.latest.analyses["checkout"].comparisons["treatment"]
    success = next(m for m in analysis if m.metric == "success_ratio")
    pushed = {
        attributes(p)["abtest.metric"]: p.as_double
        for p in found["abtest.comparison.p_value"].gauge.data_points
    }
    assert pushed["success_ratio"] == success.p_value
    verdicts = {
        attributes(p)["abtest.metric"]: p.as_double
        for p in found["abtest.comparison.verdict"].gauge.data_points
    }
    assert verdicts["success_ratio"] == success.verdict
    progress = found["abtest.experiment.progress_ratio"].gauge.data_points
    assert [p.as_double for p in progress] == [1.0]  # 300 per branch, 100 needed
    assert "abtest.exporter.up" in found
