"""Pre-aggregated parts: the client's folded statistics equal the records sent one by
one, are validated as strictly as records, and are applied atomically and once."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from exporter import ABMetrics
from exporter.client import Client as AppClient
from exporter.client import parts_body
from exporter.core.aggregate import DEFAULT_BUCKETS
from exporter.ingest.records import MAX_COUNT
from exporter.serve.server import create_app
from exporter.serve.settings import Settings

from .conftest import Client, FakeClock
from .helpers import Exporter, http

Record = tuple[Any, ...]


def records(seed: int, count: int) -> list[Record]:
    """Queries and events over a few series, latencies spread over every bucket."""
    rng = random.Random(seed)
    out: list[Record] = []
    for i in range(count):
        branch = ("control", "treatment", "t2")[i % 3]
        latency = rng.choice([rng.uniform(0, 20_000), 1e6 + rng.random() * 0.1, 0.0])
        out.append(("q", "exp", branch, latency, rng.random() < 0.9))
        out.append(("e", "exp", branch, "revenue", rng.gauss(50.0, 20.0)))
    return out


def raw(batch: list[Record]) -> dict[str, Any]:
    return {
        "queries": [
            {"experiment": r[1], "branch": r[2], "latency_ms": r[3], "success": r[4]}
            for r in batch
            if r[0] == "q"
        ],
        "events": [
            {"experiment": r[1], "branch": r[2], "event": r[3], "value": r[4]}
            for r in batch
            if r[0] == "e"
        ],
    }


def close(a: Any, b: Any, path: str = "$", rel: float = 1e-12) -> None:
    """Equal JSON, ints and strings exactly, floats within `rel` (relative)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            close(a[key], b[key], f"{path}.{key}", rel)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{i}]", rel)
    elif isinstance(a, float) and not isinstance(b, bool):
        assert isinstance(b, int | float) and math.isclose(a, b, rel_tol=rel, abs_tol=1e-300), (
            path, a, b,
        )  # fmt: skip
    else:
        assert a == b and type(a) is type(b), (path, a, b)


async def app_client(aiohttp_client: AiohttpClient, clock: FakeClock) -> tuple[Client, ABMetrics]:
    metrics = ABMetrics(clock=clock)
    settings = Settings(max_body_bytes=10_000_000, max_batch_records=10_000)
    return await aiohttp_client(create_app(metrics, settings)), metrics


async def test_statistics_from_parts_equal_those_from_the_same_records(
    aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    one_by_one, _ = await app_client(aiohttp_client, clock)
    folded, _ = await app_client(aiohttp_client, clock)
    bounds = tuple((await (await folded.get("/api/v1/buckets")).json())["latency_bounds_seconds"])
    assert bounds == DEFAULT_BUCKETS
    for flush in range(3):  # several flushes: the server merges parts with Chan's formula
        batch = records(flush, 1500)
        for record in batch:
            response = await one_by_one.post("/api/v1/records", json=raw([record]))
            assert response.status == 200
        body = parts_body(batch, bounds)
        assert len(json.loads(body)["parts"]) == 3  # one part per series per flush
        response = await folded.post(
            "/api/v1/records", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == 200
        assert await response.json() == {"accepted": {"queries": 1500, "events": 1500}}
    for path in (
        "/api/v1/experiments/exp",
        "/api/v1/experiments/exp/branches/control",
        "/api/v1/stats",
    ):
        close(await (await one_by_one.get(path)).json(), await (await folded.get(path)).json())
    compare = "/api/v1/experiments/exp/compare?a=control&b=treatment"
    close(
        await (await one_by_one.get(compare)).json(),
        await (await folded.get(compare)).json(),
        rel=1e-9,  # p-values and intervals derived from the moments
    )
    ours = (await (await folded.get("/metrics")).text()).splitlines()
    theirs = (await (await one_by_one.get("/metrics")).text()).splitlines()
    bucket = [line for line in theirs if "abtest_query_duration_seconds_bucket" in line]
    assert bucket and all(line in ours for line in bucket)
    assert 'abtest_exporter_accepted_records_total{source="http",kind="query"} 4500' in ours


def timeless(data: Any) -> Any:
    """`data` without wall-clock figures (two servers see the records at other times)."""
    clock = ("first", "last", "time", "activity", "duration", "start", "uptime")
    if isinstance(data, dict):
        return {k: timeless(v) for k, v in data.items() if not any(c in k for c in clock)}
    if isinstance(data, list):
        return [timeless(v) for v in data]
    return data


PART: dict[str, Any] = {
    "experiment": "e",
    "branch": "control",
    "queries": 3,
    "successes": 2,
    "latency_sum_ms": 30.0,
    "latency_m2_ms2": 2.0,
    "latency_min_ms": 9.0,
    "latency_max_ms": 11.0,
    "buckets": [0, 0, 0, 2, 1] + [0] * (len(DEFAULT_BUCKETS) - 4),  # 9 ms and 11 ms
}
EVENT_PART: dict[str, Any] = {
    "experiment": "e", "branch": "control", "event": "rev", "count": 2, "sum": 3.0, "m2": 0.5,
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"queries": 0}, "parts[0].queries", "between 1 and"),
        ({"queries": 2**53}, "parts[0].queries", "between 1 and"),
        ({"queries": 3.0}, "parts[0].queries", "integer"),
        ({"successes": 4}, "parts[0].successes", "<= queries"),
        ({"successes": -1}, "parts[0].successes", ">= 0"),
        ({"latency_sum_ms": 40.0}, "parts[0].latency_sum_ms", "mean must lie"),
        ({"latency_sum_ms": float("inf")}, "parts[0].latency_sum_ms", "must be finite"),
        ({"latency_m2_ms2": -1.0}, "parts[0].latency_m2_ms2", ">= 0"),
        ({"latency_m2_ms2": 10.0}, "parts[0].latency_m2_ms2", "larger than"),
        ({"latency_min_ms": 12.0}, "parts[0].latency_min_ms", "<= latency_max_ms"),
        ({"latency_max_ms": 2e12}, "parts[0].latency_max_ms", "must be <="),
        ({"buckets": [3]}, "parts[0].buckets", "must hold"),
        ({"buckets": [*PART["buckets"][:-1], 1]}, "parts[0].buckets", "add up"),
        ({"buckets": [3] + [0] * len(DEFAULT_BUCKETS)}, "parts[0].buckets", "min and max"),
        ({"buckets": [0, -1]}, "parts[0].buckets", "integers >= 0"),
        ({"buckets": [0, True]}, "parts[0].buckets", "integers >= 0"),
        ({"buckets": [1.0, 0]}, "parts[0].buckets", "integers >= 0"),
        ({"buckets": [0, 2**53]}, "parts[0].buckets", "integers >= 0"),
        ({"buckets": "3"}, "parts[0].buckets", "integers >= 0"),
        ({"extra": 1}, "parts[0].extra", "unknown field"),
        ({"branch": ""}, "parts[0].branch", "must not be empty"),
    ],
)
async def test_a_bad_part_is_refused_by_field_and_nothing_is_applied(
    client: Client, metrics: ABMetrics, change: dict[str, Any], field: str, message: str
) -> None:
    query = {"experiment": "e", "branch": "b", "latency_ms": 1.0, "success": True}
    body = {"queries": [query], "parts": [{**PART, **change}]}
    response = await client.post("/api/v1/records", data=json.dumps(body),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    reply = await response.json()
    assert response.status == 400, reply
    assert any(e["field"] == field and message in e["message"] for e in reply["errors"]), reply
    assert metrics.stats().total_queries_recorded == 0  # the good query was not applied


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"count": 0}, "event_parts[0].count"),
        ({"sum": 3e15 * 2}, "event_parts[0].sum"),
        ({"m2": -0.5}, "event_parts[0].m2"),
        ({"m2": "1"}, "event_parts[0].m2"),
        ({"event": 5}, "event_parts[0].event"),
    ],
)
async def test_a_bad_event_part_is_refused_by_field(
    client: Client, metrics: ABMetrics, change: dict[str, Any], field: str
) -> None:
    response = await client.post(
        "/api/v1/records", json={"event_parts": [{**EVENT_PART, **change}]}
    )
    reply = await response.json()
    assert response.status == 400 and reply["errors"][0]["field"] == field, reply
    assert metrics.stats().total_events_recorded == 0


async def test_parts_are_applied_once_under_an_idempotency_key(
    client: Client, metrics: ABMetrics
) -> None:
    body = {"parts": [PART], "event_parts": [EVENT_PART]}
    headers = {"Idempotency-Key": "parts-once"}
    first = await client.post("/api/v1/records", json=body, headers=headers)
    again = await client.post("/api/v1/records", json=body, headers=headers)
    assert first.status == again.status == 200
    assert await first.json() == await again.json() == {"accepted": {"queries": 3, "events": 2}}
    stats = metrics.stats()
    assert (stats.total_queries_recorded, stats.total_events_recorded) == (3, 2)
    branch = metrics.get_branch_metrics("e", "control")
    assert branch is not None
    assert branch.query_count == 3 and branch.min_latency_ms == 9.0


def test_the_client_folds_records_into_parts_against_a_running_exporter() -> None:
    folded, one_by_one = Exporter(), Exporter()
    try:
        batch = records(7, 2000)
        for start in range(0, len(batch), 500):
            one_by_one.post(raw(batch[start : start + 500]))
        with AppClient(folded.url, preaggregate=True, flush_interval=3600) as app:
            for record in batch:
                if record[0] == "q":
                    app.record_query(*record[1:])
                else:
                    app.record_event(*record[1:])
            app.flush()
            assert app.stats.sent == 4000 and app._bounds == DEFAULT_BUCKETS
        for path in ("/api/v1/experiments/exp", "/api/v1/stats"):  # times differ: left out
            close(timeless(one_by_one.get(path)), timeless(folded.get(path)))
    finally:
        folded.stop()
        one_by_one.stop()


def test_a_batch_with_a_value_the_server_refuses_goes_as_records() -> None:
    body = parts_body([("q", "e", "b", 1.0, True)], DEFAULT_BUCKETS)
    assert json.loads(body)["parts"][0]["buckets"][0] == 1
    from exporter.client import _foldable

    assert not _foldable([("q", "e", "b", float("nan"), True)])
    assert not _foldable([("q", "e", "b", 1.0, 1)])
    assert not _foldable([("e", "e", "b", "v", 2e15)])


_ = web  # the app type the fixtures build


async def test_the_async_client_folds_records_into_parts_too() -> None:
    from exporter.client import AsyncClient

    server = Exporter()
    try:
        async with AsyncClient(server.url, preaggregate=True, flush_interval=3600) as app:
            for i in range(300):
                app.record_query("exp", ("a", "b")[i % 2], float(i), i % 7 != 0)
                app.record_event("exp", "a", "rev", float(i % 5))
            await app.flush()
            assert app.stats.sent == 600 and app._bounds == DEFAULT_BUCKETS
        stats = server.get("/api/v1/stats")
        assert (stats["total_queries_recorded"], stats["total_events_recorded"]) == (300, 300)
    finally:
        server.stop()


def _full_part(i: int) -> dict[str, Any]:
    buckets = [0] * (len(DEFAULT_BUCKETS) + 1)
    buckets[0] = MAX_COUNT
    return {"experiment": f"e{i}", "branch": "b", "queries": MAX_COUNT, "successes": 0,
            "latency_sum_ms": 0.0, "latency_m2_ms2": 0.0, "latency_min_ms": 0.0,
            "latency_max_ms": 0.0, "buckets": buckets}  # fmt: skip


async def test_a_refused_batch_of_many_full_parts_counts_its_records_exactly(
    aiohttp_client: AiohttpClient,
) -> None:
    """1025 parts of MAX_COUNT queries each: int64 n.sum() wraps (the list pass's sum()
    does not), and the refusal's count goes into a counter, which then goes negative."""
    metrics = ABMetrics()
    settings = Settings(max_body_bytes=50_000_000, max_batch_records=10_000)
    client = await aiohttp_client(create_app(metrics, settings))
    body = {"parts": [_full_part(i) for i in range(1025)]}
    response = await client.post("/api/v1/records", json=body)
    assert response.status == 422, await response.text()
    text = await (await client.get("/metrics")).text()
    line = next(x for x in text.splitlines() if 'reason="limit_count"' in x and x[0] != "#")
    assert int(line.rsplit(" ", 1)[1]) == 1025 * MAX_COUNT, line


def test_parts_acknowledged_before_a_kill_survive_it_and_a_retry_is_not_applied_twice(
    tmp_path: Path,
) -> None:
    """The column path through the data file: parts over 40 series (one with a minimum
    of -0.0, which SQLite gives back as 0.0), acknowledged, then kill -9. The restart
    restores every figure, and the last request retried under its key is not applied
    again."""
    flushes = [
        [("q", f"exp-{i % 10}", f"b{i % 4}", float((i * 37 + k) % 900), i % 7 != 0)
         for i in range(400)]
        for k in range(5)
    ]  # fmt: skip
    bodies = [json.loads(parts_body(flush, DEFAULT_BUCKETS)) for flush in flushes]
    bodies[0]["parts"][0].update(latency_min_ms=-0.0)  # its bucket is the first either way
    exporter = Exporter(data_dir=str(tmp_path))
    keyed = {"Idempotency-Key": "last-flush"}
    for i, body in enumerate(bodies):
        status, _ = http(exporter.url + "/api/v1/records", body, headers=keyed if i == 4 else None)
        assert status == 200
    before = {e: exporter.get(f"/api/v1/experiments/exp-{e}") for e in range(10)}
    exporter.process.kill()
    exporter.process.wait(10)
    restarted = Exporter(data_dir=str(tmp_path), port=exporter.port)
    try:
        status, _ = http(restarted.url + "/api/v1/records", bodies[4], headers=keyed)
        assert status == 200
        assert restarted.get("/api/v1/stats")["total_queries_recorded"] == 5 * 400
        after = {e: restarted.get(f"/api/v1/experiments/exp-{e}") for e in range(10)}
        assert _timeless(after) == _timeless(before)
    finally:
        restarted.stop()


def _timeless(found: Any) -> Any:
    """An answer without its durations (now - first record: they grow as time passes)."""
    if isinstance(found, dict):
        return {k: _timeless(v) for k, v in found.items() if k != "duration_seconds"}
    if isinstance(found, list):
        return [_timeless(v) for v in found]
    return found
