"""The HTTP API through aiohttp's test client: every route and every refusal."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from exporter import ABMetrics

from .conftest import Client

Q = {"experiment": "e", "branch": "control", "latency_ms": 12.5, "success": True}
EV = {"experiment": "e", "branch": "control", "event": "revenue", "value": 42.0}


async def post(client: Client, body: Any, **kwargs: Any) -> tuple[int, Any]:
    response = await client.post("/api/v1/records", json=body, **kwargs)
    return response.status, await response.json()


async def test_batch_is_applied_and_readable(client: Client, metrics: ABMetrics) -> None:
    body = {
        "queries": [Q, {**Q, "branch": "treatment", "latency_ms": 10, "success": False}],
        "events": [EV, {**EV, "value": 8}],
    }
    status, reply = await post(client, body)
    assert (status, reply) == (200, {"accepted": {"queries": 2, "events": 2}})
    branch = await (await client.get("/api/v1/experiments/e/branches/control")).json()
    assert branch["query_count"] == 1 and branch["avg_latency_ms"] == 12.5
    assert branch["events"]["revenue"] == {
        "event": "revenue",
        "count": 2,
        "total": 50.0,
        "mean": 25.0,
        "variance": 578.0,
    }
    assert branch["latency_buckets"][-1] == ["+Inf", 1]
    experiment = await (await client.get("/api/v1/experiments/e")).json()
    assert experiment["total_queries"] == 2 and experiment["control"] == "control"
    assert set(experiment["branches"]) == {"control", "treatment"}
    summary = await (await client.get("/api/v1/experiments/e/summary")).json()
    assert summary["best_branch"] == "control" and summary["branch_count"] == 2
    listing = await (await client.get("/api/v1/experiments")).json()
    assert [s["experiment"] for s in listing["experiments"]] == ["e"]
    comparison = await (await client.get("/api/v1/experiments/e/compare?b=treatment")).json()
    assert comparison["branch_a"] == "control" and comparison["success_rate_diff"] == -1.0
    assert comparison["latency_diff"] == -2.5
    stats = await (await client.get("/api/v1/stats")).json()
    assert stats == {
        "experiments_tracked": 1,
        "total_branches_tracked": 2,
        "total_queries_recorded": 2,
        "total_events_recorded": 2,
    }


async def test_either_list_may_be_absent(client: Client, metrics: ABMetrics) -> None:
    assert (await post(client, {"events": [EV]}))[0] == 200
    assert (await post(client, {"queries": [Q]}))[0] == 200
    assert (await post(client, {}))[0] == 200
    assert metrics.stats().total_queries_recorded == 1


BAD_FIELDS = [
    ({**Q, "latency_ms": -1}, "queries[1].latency_ms", "must be >= 0"),
    ({**Q, "latency_ms": "12"}, "queries[1].latency_ms", "must be a number"),
    ({**Q, "latency_ms": True}, "queries[1].latency_ms", "must be a number"),
    ({**Q, "latency_ms": 1e300}, "queries[1].latency_ms", "must be <="),
    ({**Q, "latency_ms": 10**400}, "queries[1].latency_ms", "must be finite"),
    ({**Q, "success": 1}, "queries[1].success", "must be true or false"),
    ({**Q, "success": "true"}, "queries[1].success", "must be true or false"),
    ({**Q, "experiment": ""}, "queries[1].experiment", "must not be empty"),
    ({**Q, "experiment": "x" * 129}, "queries[1].experiment", "at most 128"),
    ({**Q, "branch": "a\tb"}, "queries[1].branch", "control characters"),
    ({**Q, "branch": 7}, "queries[1].branch", "must be a string"),
    ({k: v for k, v in Q.items() if k != "success"}, "queries[1].success", "is required"),
    ({**Q, "latency": 3}, "queries[1].latency", "unknown field"),
    ("not an object", "queries[1]", "must be an object"),
]


@pytest.mark.parametrize(("record", "path", "message"), BAD_FIELDS)
async def test_a_bad_query_refuses_the_whole_batch(
    client: Client, metrics: ABMetrics, record: Any, path: str, message: str
) -> None:
    status, reply = await post(client, {"queries": [Q, record], "events": [EV]})
    assert status == 400
    assert "nothing applied" in reply["error"]
    assert any(e["field"] == path and message in e["message"] for e in reply["errors"]), reply
    stats = metrics.stats()
    assert (stats.total_queries_recorded, stats.total_events_recorded) == (0, 0)


@pytest.mark.parametrize(
    ("record", "path", "message"),
    [
        ({**EV, "value": "NaN"}, "events[0].value", "must be a number"),
        ({**EV, "value": 1e16}, "events[0].value", "must be between"),
        ({**EV, "event": None}, "events[0].event", "must be a string"),
        ({**EV, "event": "\ud800"}, "events[0].event", "lone surrogates"),
    ],
)
async def test_a_bad_event_refuses_the_whole_batch(
    client: Client, metrics: ABMetrics, record: Any, path: str, message: str
) -> None:
    status, reply = await post(client, {"queries": [Q], "events": [record]})
    assert status == 400
    assert any(e["field"] == path and message in e["message"] for e in reply["errors"]), reply
    assert metrics.stats().total_queries_recorded == 0


async def test_every_bad_field_is_named(client: Client) -> None:
    body = {"queries": [{**Q, "latency_ms": -1, "success": None}] * 3}
    status, reply = await post(client, body)
    assert status == 400
    fields = {e["field"] for e in reply["errors"]}
    assert fields == {f"queries[{i}].{k}" for i in range(3) for k in ("latency_ms", "success")}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not valid JSON"),
        (b'{"queries": [', "not valid JSON"),
        (b'{"queries": [{"latency_ms": NaN}]}', "must be finite"),
        (b'{"queries": [{"latency_ms": Infinity}]}', "must be finite"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"queries": {}}', "must be a list"),
        (b'{"records": []}', "unknown field"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
async def test_malformed_bodies_get_a_clear_400(
    client: Client, metrics: ABMetrics, raw: bytes, message: str
) -> None:
    response = await client.post(
        "/api/v1/records", data=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert message in json.dumps(await response.json())
    assert metrics.stats().total_queries_recorded == 0


async def test_wrong_content_type_is_415(client: Client) -> None:
    response = await client.post("/api/v1/records", data="queries=1")
    assert response.status == 415
    assert "application/json" in (await response.json())["error"]


async def test_gzip_bodies_are_accepted_and_bad_gzip_refused(
    client: Client, metrics: ABMetrics
) -> None:
    payload = gzip.compress(json.dumps({"queries": [Q] * 10}).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = await client.post("/api/v1/records", data=payload, headers=headers)
    assert response.status == 200
    assert metrics.stats().total_queries_recorded == 10
    response = await client.post("/api/v1/records", data=b"not gzip", headers=headers)
    assert response.status == 400
    assert metrics.stats().total_queries_recorded == 10


async def test_body_and_batch_limits(client: Client, metrics: ABMetrics) -> None:
    # the fixture's limits: 1,000,000 bytes after decompression, 1000 records
    big = gzip.compress(json.dumps({"queries": [Q] * 20_000}).encode())
    response = await client.post(
        "/api/v1/records",
        data=big,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status == 413
    status, reply = await post(client, {"queries": [Q] * 600, "events": [EV] * 401})
    assert status == 413 and "limit 1000" in reply["errors"][0]["message"]
    assert metrics.stats().total_queries_recorded == 0
    text = await (await client.get("/metrics")).text()
    assert (
        'abtest_exporter_rejected_records_total{source="http",reason="too_many_records"} 1' in text
    )


async def test_rejections_and_acceptances_are_counted(client: Client) -> None:
    await post(client, {"queries": [Q, Q], "events": [EV]})
    await post(client, {"queries": [{**Q, "latency_ms": -5}, {**Q, "branch": ""}]})
    text = await (await client.get("/metrics")).text()
    assert 'abtest_exporter_accepted_records_total{source="http",kind="query"} 2' in text
    assert 'abtest_exporter_accepted_records_total{source="http",kind="event"} 1' in text
    assert (
        'abtest_exporter_rejected_records_total{source="http",reason="invalid_latency"} 1' in text
    )
    assert 'abtest_exporter_rejected_records_total{source="http",reason="invalid_name"} 1' in text


async def test_not_found_and_bad_parameters(client: Client) -> None:
    await post(client, {"queries": [Q]})
    for path in (
        "/api/v1/experiments/nope",
        "/api/v1/experiments/nope/summary",
        "/api/v1/experiments/e/branches/nope",
        "/api/v1/experiments/e/compare?b=nope",
        "/api/v1/experiments/nope/compare?b=x",
    ):
        response = await client.get(path)
        assert response.status == 404, path
        assert "no such" in (await response.json())["error"]
    response = await client.get("/api/v1/experiments/e/compare")
    assert response.status == 400 and "b" in (await response.json())["error"]
    response = await client.get("/api/v1/experiments/e/compare?b=" + "x" * 200)
    assert response.status == 400
    assert (await client.delete("/api/v1/experiments/nope")).status == 404


async def test_delete_one_and_all(client: Client, metrics: ABMetrics) -> None:
    await post(client, {"queries": [Q, {**Q, "experiment": "f"}]})
    response = await client.delete("/api/v1/experiments/e")
    assert response.status == 200
    assert metrics.experiments() == ["f"]
    assert 'experiment="e"' not in await (await client.get("/metrics")).text()
    assert (await client.delete("/api/v1/experiments")).status == 200
    assert metrics.experiments() == []


async def test_config_round_trip_and_refusal(client: Client, metrics: ABMetrics) -> None:
    config = {
        "control": "base",
        "allocation": {"base": 50, "new": 50},
        "alpha": 0.01,
        "min_sample_size": 500,
        "sequential_tuning": 10000,
        "correction": "bh",
        "primary_metric": "event_rate:conversion",
    }
    response = await client.put("/api/v1/experiments/e/config", json=config)
    assert response.status == 200
    assert await response.json() == {
        **config,
        "sequential_tuning": 10000.0,
        "allocation": {"base": 50.0, "new": 50.0},
    }
    assert (await (await client.get("/api/v1/experiments/e/config")).json())["control"] == "base"
    response = await client.put(
        "/api/v1/experiments/e/config", json={"alpha": 0, "allocation": {"a": -1}}
    )
    assert response.status == 400
    message = (await response.json())["error"]
    assert "alpha" in message and "allocation" in message and "nothing changed" in message
    assert metrics.get_config("e").alpha == 0.01


async def test_landing_health_ready_and_openapi(client: Client) -> None:
    await post(client, {"queries": [Q]})
    page = await (await client.get("/")).text()
    for link in ("/metrics", "/api/v1/experiments", "/openapi.json", "/-/healthy", "/-/ready"):
        assert f'href="{link}"' in page
    assert 'href="/api/v1/experiments/e"' in page
    assert (await client.get("/-/healthy")).status == 200
    assert (await client.get("/-/ready")).status == 200
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    routes = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    for route in client.app.router.routes():
        info = route.resource.canonical if route.resource else ""
        if info.startswith("/api/") and route.method != "HEAD":
            assert (info, route.method.lower()) in routes, info


async def test_compare_and_analysis_carry_the_statistics(
    client: Client, metrics: ABMetrics
) -> None:
    queries = [
        {**Q, "branch": branch, "latency_ms": 10.0 + i % 7, "success": i % 4 != 0}
        for branch in ("control", "treatment")
        for i in range(200)
    ]
    await post(client, {"queries": queries})
    comparison = await (await client.get("/api/v1/experiments/e/compare?b=treatment")).json()
    metrics_by_name = {m["metric"]: m for m in comparison["metrics"]}
    assert set(metrics_by_name) == {"success_ratio", "latency_mean"}
    success = metrics_by_name["success_ratio"]
    assert success["difference"] == 0.0 and success["significant"] is False
    assert 0 < success["p_value"] <= 1 and success["fixed_horizon_p_value"] == 1.0
    assert success["ci_lower"] < 0 < success["ci_upper"]
    assert comparison["is_significant"] is False and comparison["confidence"] == 0.0
    assert comparison["latency_distribution"]["probability_faster"] == 0.5
    assert comparison["srm_p_value"] == 1.0 and comparison["srm_detected"] is False
    # one unit per field: the seed's ms fields stay, the _seconds ones match /metrics
    assert comparison["avg_latency_a_seconds"] == pytest.approx(comparison["avg_latency_a"] / 1000)
    latency = metrics_by_name["latency_mean"]
    assert comparison["latency_diff_seconds"] == pytest.approx(latency["difference"], abs=1e-12)
    assert latency["value_a"] == pytest.approx(comparison["avg_latency_a_seconds"])
    assert (
        success["verdict"] == 0 and success["relative_ci_lower"] < 0 < success["relative_ci_upper"]
    )
    assert success["mde"] > 0 and "eta_seconds" in success
    analysis = await (await client.get("/api/v1/experiments/e/analysis")).json()
    assert analysis["control"] == "control" and analysis["srm"]["detected"] is False
    assert set(analysis["percentiles"]["control"]) == {"p50", "p95", "p99"}
    assert len(analysis["comparisons"]["treatment"]) == 2
    assert analysis["progress"] == 1.0 and analysis["winner"] is None
    assert (await client.get("/api/v1/experiments/nope/analysis")).status == 404


async def test_comparisons_are_computed_off_the_scrape_path(
    client: Client, metrics: ABMetrics
) -> None:
    from exporter.serve.keys import ENGINE

    engine = client.app[ENGINE]
    await post(client, {"queries": [Q, {**Q, "branch": "treatment"}]})
    assert engine.refresh() is True
    assert engine.refresh() is False  # nothing changed: nothing recomputed
    assert "abtest_comparison_difference{" in await (await client.get("/metrics")).text()
    before = engine.latest
    await post(client, {"queries": [{**Q, "branch": "treatment", "success": False}]})
    text = await (await client.get("/metrics")).text()
    assert engine.latest is before  # a scrape never recomputes
    assert 'abtest_queries_total{experiment="e",branch="treatment"} 2' in text
    metrics.configure("e", {"alpha": 0.01})  # a new config counts as a change
    assert engine.refresh() is True
