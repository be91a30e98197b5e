"""The client library against running servers: a healthy one, one that answers 503 for a
while, one that is down at first. Nothing lost, nothing duplicated."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from exporter import ABMetrics
from exporter.client import (
    AsyncClient,
    Client,
    ClientOptions,
    _Recording,
    backoff,
    otel_instruments,
    parse_retry_after,
)
from exporter.serve.server import create_app

from .helpers import AppThread, free_port, wait_for


class ServerThread(AppThread):
    """The real exporter app on a loopback port, in a thread with its own loop; it can
    answer 503 to the first `failures` ingest requests, and start late."""

    def __init__(self, failures: int = 0, port: int | None = None) -> None:
        self.metrics = ABMetrics()
        self.failures = failures
        self.ingest_calls = 0
        app = create_app(self.metrics)
        app.middlewares.append(self._flaky)
        super().__init__(app, port)

    def start(self) -> ServerThread:
        super().start()
        return self

    @web.middleware
    async def _flaky(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/api/v1/records":
            self.ingest_calls += 1
            if self.ingest_calls <= self.failures:
                return web.Response(status=503, headers={"Retry-After": "0.05"})
        return await handler(request)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    running = ServerThread().start()
    yield running
    running.stop()


def totals(metrics: ABMetrics) -> tuple[int, int]:
    stats = metrics.stats()
    return stats.total_queries_recorded, stats.total_events_recorded


def test_batches_by_size_and_interval(server: ServerThread) -> None:
    client = Client(server.url, batch_size=50, flush_interval=0.2)
    for i in range(120):
        client.record_query("e", "b", float(i), True)
    wait_for(lambda: totals(server.metrics)[0] >= 100, 5, "two full batches")
    wait_for(lambda: totals(server.metrics)[0] == 120, 5, "the rest, on the interval")
    client.record_event("e", "b", "revenue", 5.0)
    client.close()
    assert totals(server.metrics) == (120, 1)
    assert client.stats.sent == 121


def test_track_times_blocks_and_functions(server: ServerThread) -> None:
    with Client(server.url) as client:
        with client.track("e", "ok"):
            time.sleep(0.02)
        with pytest.raises(ZeroDivisionError), client.track("e", "boom"):
            _ = 1 / 0

        @client.track("e", "decorated")
        def work(x: int) -> int:
            return x * 2

        assert work(21) == 42
    ok = server.metrics.get_branch_metrics("e", "ok")
    boom = server.metrics.get_branch_metrics("e", "boom")
    decorated = server.metrics.get_branch_metrics("e", "decorated")
    assert ok is not None and ok.success_count == 1 and ok.avg_latency_ms >= 20
    assert boom is not None and boom.failure_count == 1
    assert decorated is not None and decorated.query_count == 1


def test_503_then_recovery_loses_and_duplicates_nothing() -> None:
    server = ServerThread(failures=4).start()
    try:
        client = Client(server.url, batch_size=100, flush_interval=0.05, retry_base=0.01)
        for i in range(1000):
            client.record_query("e", f"b{i % 2}", 1.0, True)
        client.close()
        assert totals(server.metrics) == (1000, 0)
        assert client.stats.retries >= 4 and client.stats.sent == 1000
        assert server.ingest_calls == 10 + 4
    finally:
        server.stop()


def test_a_server_that_is_down_at_first() -> None:
    port = free_port()
    client = Client(
        f"http://127.0.0.1:{port}",
        batch_size=100,
        flush_interval=0.05,
        retry_base=0.05,
        retry_cap=0.2,
    )
    for _ in range(500):
        client.record_query("e", "b", 2.0, False)
    time.sleep(0.5)  # several failed attempts: connection refused
    assert client.stats.retries > 0
    server = ServerThread(port=port).start()
    try:
        client.close()
        assert totals(server.metrics) == (500, 0)
        assert client.stats.sent == 500 and client.stats.failed == 0
    finally:
        server.stop()


def test_4xx_is_not_retried(server: ServerThread) -> None:
    client = Client(server.url, batch_size=10, flush_interval=0.05)
    client.record_query("e", "", 1.0, True)  # an empty branch name: the server refuses it
    client.close()
    assert client.stats.refused == 1 and client.stats.retries == 0
    assert server.ingest_calls == 1


def test_drop_oldest_when_full() -> None:
    port = free_port()  # nobody listens: everything stays buffered
    client = Client(
        f"http://127.0.0.1:{port}",
        max_buffer=100,
        batch_size=1000,
        flush_interval=60,
        give_up_after=0,
    )
    for i in range(150):
        client.record_query("e", "b", float(i), True)
    assert client.stats.dropped_full == 50
    client.close()


def _recording(**options: Any) -> _Recording:
    """A client's buffer and track() without its flusher thread."""
    recording = _Recording()
    recording._setup("http://127.0.0.1:9", ClientOptions(**options))
    return recording


def test_track_keeps_the_buffer_policy_and_the_batch_size() -> None:
    """track()'s exit appends directly only below both the capacity and the batch size:
    past them the buffer's policy drops (and counts) the oldest, and a batch is due."""
    full = _recording(max_buffer=100, batch_size=1000)
    for _ in range(150):
        with full.track("e", "b"):
            pass
    assert full.stats.dropped_full == 50
    assert not full._buffer.wanted.is_set()
    held = full._buffer.take(1000)
    assert [r[:3] for r in held] == [("q", "e", "b")] * 100
    assert all(isinstance(r[3], float) and r[3] >= 0 and r[4] is True for r in held)

    batched = _recording(batch_size=10)
    for _ in range(9):
        with batched.track("e", "b"):
            pass
    assert not batched._buffer.wanted.is_set()
    with pytest.raises(KeyError), batched.track("e", "b"):
        raise KeyError("the tenth: a batch is due, and it counts as a failure")
    assert batched._buffer.wanted.is_set()
    assert [r[4] for r in batched._buffer.take(100)] == [True] * 9 + [False]


def test_block_when_full_waits_for_room_and_loses_nothing() -> None:
    port = free_port()
    client = Client(
        f"http://127.0.0.1:{port}",
        max_buffer=10,
        batch_size=5,
        flush_interval=0.05,
        on_full="block",
        retry_base=0.2,
        retry_cap=0.3,
    )
    for _ in range(5):
        client.record_query("e", "b", 1.0, True)
    wait_for(lambda: len(client._buffer) == 0, 5, "the flusher to take the first batch")
    for _ in range(10):  # the flusher is busy retrying: these fill the buffer
        client.record_query("e", "b", 1.0, True)
    done = threading.Event()

    def one_more() -> None:
        client.record_query("e", "b", 1.0, True)
        done.set()

    threading.Thread(target=one_more, daemon=True).start()
    assert not done.wait(0.5)  # the caller waits for room ...
    server = ServerThread(port=port).start()
    try:
        assert done.wait(10)  # ... which comes once the server is up
        client.close()
        assert totals(server.metrics) == (16, 0)
        assert client.stats.dropped_full == 0
    finally:
        server.stop()


def test_backoff_and_retry_after() -> None:
    assert backoff(3, 0.1, 10, retry_after=2.5) == 2.5
    assert backoff(30, 0.1, 10, retry_after=None) <= 10
    assert all(0 <= backoff(2, 0.1, 10, None) <= 0.4 for _ in range(100))
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT") is None


async def test_async_client_with_a_flaky_server(aiohttp_server: Any) -> None:
    metrics = ABMetrics()
    calls = {"n": 0}

    @web.middleware
    async def flaky(request: web.Request, handler: Any) -> web.StreamResponse:
        calls["n"] += 1
        if calls["n"] <= 3:
            return web.Response(status=503)
        return await handler(request)  # type: ignore[no-any-return]

    app = create_app(metrics)
    app.middlewares.append(flaky)
    server = await aiohttp_server(app)
    async with AsyncClient(
        str(server.make_url("/")), batch_size=100, flush_interval=0.05, retry_base=0.01
    ) as client:
        for i in range(450):
            client.record_query("e", "b", float(i), i % 3 != 0)
        with client.track("e", "tracked"):
            await asyncio.sleep(0.01)

        @client.track("e", "coroutine")
        async def handler() -> str:
            return "done"

        assert await handler() == "done"
        await client.flush()
    assert totals(metrics) == (452, 0)
    branch = metrics.get_branch_metrics("e", "b")
    assert branch is not None and branch.failure_count == 150
    assert client.stats.retries >= 3


def test_otel_instruments_helper_follows_the_conventions() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = otel_instruments(provider.get_meter("app"), unit="s")
    instruments.record_query("e", "b", 250.0, False)
    with instruments.track("e", "b"):
        pass
    instruments.record_event("e", "b", "revenue", 9.5)
    data = reader.get_metrics_data()
    assert data is not None
    found = {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    duration = found["abtest.query.duration"]
    assert duration.unit == "s"
    points: dict[Any, Any] = {
        (p.attributes or {})["abtest.outcome"]: p for p in duration.data.data_points
    }
    assert points["failure"].sum == pytest.approx(0.25) and points["success"].count == 1
    value = found["abtest.event.value"].data.data_points[0]
    assert dict(value.attributes or {}) == {
        "abtest.experiment": "e",
        "abtest.branch": "b",
        "abtest.event": "revenue",
    }
