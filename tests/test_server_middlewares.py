"""The middleware chain is built from the frozen settings: a layer a setting does not
need is left out, and what it guards still holds when the setting is on."""

from __future__ import annotations

from pytest_aiohttp import AiohttpClient

from exporter import ABMetrics
from exporter.serve import guard
from exporter.serve.refusals import refusals
from exporter.serve.server import create_app
from exporter.serve.settings import Settings

RECORD = {"queries": [{"experiment": "e", "branch": "b", "latency_ms": 5.0, "success": True}]}


def test_no_token_and_no_otlp_port_leave_two_layers() -> None:
    app = create_app(ABMetrics(), Settings())
    assert list(app.middlewares) == [refusals, guard.release_bodies]
    app = create_app(ABMetrics(), Settings(token="t", otlp_port=4318))
    assert list(app.middlewares) == [
        guard.otlp_port_only, guard.authenticate, refusals, guard.release_bodies,
    ]  # fmt: skip


async def test_a_token_still_guards_writes_and_reads(aiohttp_client: AiohttpClient) -> None:
    metrics = ABMetrics()
    client = await aiohttp_client(create_app(metrics, Settings(token="w", metrics_token="r")))
    response = await client.post("/api/v1/records", json=RECORD)
    assert response.status == 401
    assert (await client.get("/metrics")).status == 401
    assert metrics.get_experiment_metrics("e") is None  # nothing applied
    bearer = {"Authorization": "Bearer w"}
    response = await client.post("/api/v1/records", json=RECORD, headers=bearer)
    assert response.status == 200
    assert await response.json() == {"accepted": {"queries": 1, "events": 0}}
    found = metrics.get_experiment_metrics("e")
    assert found is not None and found.branches["b"].query_count == 1


async def test_no_token_takes_writes(aiohttp_client: AiohttpClient) -> None:
    metrics = ABMetrics()
    client = await aiohttp_client(create_app(metrics, Settings()))
    response = await client.post("/api/v1/records", json=RECORD)
    assert response.status == 200
    assert await response.read() == b'{"accepted": {"queries": 1, "events": 0}}'
