"""OTLP in: the real OpenTelemetry SDK pushing to a running exporter, and hand-written
bodies for every rule of the specification the receiver must follow."""

from __future__ import annotations

import gzip
import json
import math
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from exporter import ABMetrics
from exporter.core.aggregate import DEFAULT_BUCKETS
from exporter.ingest.otlp import OtlpLimits, Parsed, Receiver, parse

from .conftest import Client
from .helpers import Exporter
from .test_exposition import key, samples

OURS_MS = [b * 1000 for b in DEFAULT_BUCKETS]


class App:
    """An instrumented app: the stock SDK, its OTLP/HTTP exporter, our conventions."""

    def __init__(self, url: str, temporality: AggregationTemporality, our_buckets: bool) -> None:
        exporter = OTLPMetricExporter(
            endpoint=f"{url}/v1/metrics",
            preferred_temporality={Histogram: temporality},
        )
        self.reader = PeriodicExportingMetricReader(exporter, export_interval_millis=math.inf)
        views = (
            [
                View(
                    instrument_name="abtest.*",
                    aggregation=ExplicitBucketHistogramAggregation(OURS_MS),
                )
            ]
            if our_buckets
            else []
        )
        self.provider = MeterProvider(
            metric_readers=[self.reader],
            resource=Resource.create({"service.name": "shop"}),
            views=views,
        )
        meter = self.provider.get_meter("shop")
        self.duration = meter.create_histogram("abtest.query.duration", unit="ms")
        self.value = meter.create_histogram("abtest.event.value")

    def query(self, branch: str, ms: int, ok: bool) -> None:
        self.duration.record(
            ms,
            {
                "abtest.experiment": "checkout",
                "abtest.branch": branch,
                "abtest.outcome": "success" if ok else "failure",
            },
        )

    def event(self, branch: str, name: str, value: float) -> None:
        self.value.record(
            value, {"abtest.experiment": "checkout", "abtest.branch": branch, "abtest.event": name}
        )

    def flush(self) -> None:
        assert self.provider.force_flush(10_000)

    def stop(self) -> None:
        self.provider.shutdown()


@pytest.fixture
def running() -> Iterator[Exporter]:
    process = Exporter()
    yield process
    process.stop()


def scrape(exporter: Exporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from .helpers import http

    status, raw = http(exporter.url + "/metrics")
    assert status == 200
    return samples(raw.decode())


@pytest.mark.parametrize(
    "temporality", [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA]
)
def test_sdk_push_is_exact_across_flushes_and_app_restarts(
    running: Exporter, temporality: AggregationTemporality
) -> None:
    recorded: dict[str, list[tuple[int, bool]]] = {"control": [], "treatment": []}
    revenue: list[float] = []
    for generation in range(2):  # the second MeterProvider is the app after a restart
        app = App(running.url, temporality, our_buckets=True)
        for flush in range(3):
            for i in range(40):
                branch = "control" if i % 2 else "treatment"
                ms, ok = 3 + (i * 7 + flush * 13 + generation) % 400, i % 5 != 0
                app.query(branch, ms, ok)
                recorded[branch].append((ms, ok))
                if i % 4 == 0:
                    app.event(branch, "revenue", 2.5 * i)
                    if branch == "treatment":
                        revenue.append(2.5 * i)
            app.flush()
            app.flush()  # a flush with nothing new: must not count again
        app.stop()

    found = scrape(running)
    for branch, queries in recorded.items():
        labels = {"experiment": "checkout", "branch": branch}
        assert found[key("abtest_queries_total", **labels)] == len(queries)
        assert found[key("abtest_query_failures_total", **labels)] == sum(
            not ok for _, ok in queries
        )
        assert found[key("abtest_query_duration_seconds_sum", **labels)] == pytest.approx(
            sum(ms for ms, _ in queries) / 1000, rel=1e-12
        )
        assert (
            found[key("abtest_branch_latency_min_seconds", **labels)]
            == min(q[0] for q in queries) / 1000
        )
        assert (
            found[key("abtest_branch_latency_max_seconds", **labels)]
            == max(q[0] for q in queries) / 1000
        )
        # the app used our bounds: every bucket is exact
        for bound in DEFAULT_BUCKETS:
            expected = sum(ms / 1000 <= bound for ms, _ in queries)
            le = repr(bound)
            assert found[key("abtest_query_duration_seconds_bucket", le=le, **labels)] == expected
    t = {"experiment": "checkout", "branch": "treatment", "event": "revenue"}
    assert found[key("abtest_event_value_count", **t)] == len(revenue)
    assert found[key("abtest_event_value_sum", **t)] == pytest.approx(sum(revenue), rel=1e-12)
    rejected = [
        v for (name, _), v in found.items() if name == "abtest_exporter_rejected_records_total"
    ]
    assert sum(rejected) == 0


def test_sdk_default_buckets_are_rebinned_conservatively(running: Exporter) -> None:
    app = App(running.url, AggregationTemporality.CUMULATIVE, our_buckets=False)
    latencies = [1, 4, 7, 9, 30, 60, 80, 120, 400, 900, 3000, 12000]
    for ms in latencies:
        app.query("control", ms, True)
    app.flush()
    app.stop()
    found = scrape(running)
    labels = {"experiment": "checkout", "branch": "control"}
    assert found[key("abtest_queries_total", **labels)] == len(latencies)
    for bound in DEFAULT_BUCKETS:
        got = found[key("abtest_query_duration_seconds_bucket", le=repr(bound), **labels)]
        # never more than the truth below a bound (values only ever move up a bucket)
        assert got <= sum(ms / 1000 <= bound for ms in latencies)
    # where the SDK's default bounds (0, 5, 10, 25, 50, 75, 100, 250, ... ms) meet ours, exact
    for bound in (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0):
        got = found[key("abtest_query_duration_seconds_bucket", le=repr(bound), **labels)]
        assert got == sum(ms / 1000 <= bound for ms in latencies)


# -- hand-written bodies --------------------------------------------------------------


def point(**overrides: Any) -> dict[str, Any]:
    body = {
        "attributes": [
            {"key": "abtest.experiment", "value": {"stringValue": "e"}},
            {"key": "abtest.branch", "value": {"stringValue": "control"}},
            {"key": "abtest.outcome", "value": {"stringValue": "success"}},
        ],
        "startTimeUnixNano": "1700000000000000000",
        "timeUnixNano": "1700000010000000000",
        "count": "3",
        "sum": 0.06,
        "bucketCounts": ["1", "2", "0"],
        "explicitBounds": [0.01, 0.025],
        "min": 0.005,
        "max": 0.02,
    }
    body.update(overrides)
    return body


def request(
    points: list[dict[str, Any]],
    name: str = "abtest.query.duration",
    unit: str = "s",
    temporality: int = 2,
) -> dict[str, Any]:
    return {
        "resourceMetrics": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "x"}}]
                },
                "scopeMetrics": [
                    {
                        "scope": {"name": "manual"},
                        "metrics": [
                            {
                                "name": name,
                                "unit": unit,
                                "histogram": {
                                    "dataPoints": points,
                                    "aggregationTemporality": temporality,
                                },
                                "someFutureField": {"ignored": True},
                            }
                        ],
                    }
                ],
            }
        ]
    }


async def send(client: Client, body: Any, **headers: str) -> tuple[int, Any]:
    response = await client.post(
        "/v1/metrics",
        data=json.dumps(body),
        headers={"Content-Type": "application/json", **headers},
    )
    return response.status, await response.json()


async def test_json_body_with_int64_as_strings(client: Client, metrics: ABMetrics) -> None:
    status, reply = await send(client, request([point()]))
    assert (status, reply) == (200, {})
    branch = metrics.get_branch_metrics("e", "control")
    assert branch is not None
    assert (branch.query_count, branch.success_count) == (3, 3)
    assert branch.total_latency_ms == pytest.approx(60.0)
    assert (branch.min_latency_ms, branch.max_latency_ms) == (5.0, 20.0)
    assert branch.latency_buckets[3][1] == 1  # le=0.01 (our 4th bound)
    assert branch.latency_buckets[4][1] == 3  # le=0.025


async def test_invalid_points_are_rejected_and_the_rest_applied(
    client: Client, metrics: ABMetrics
) -> None:
    no_branch = point(attributes=point()["attributes"][:1] + point()["attributes"][2:])
    nan_sum = point(sum="NaN", timeUnixNano="1700000020000000000")
    attributes = point()["attributes"]
    attributes[1] = {"key": "abtest.branch", "value": {"intValue": "7"}}
    number_branch = point(attributes=attributes)
    body = request([point(), no_branch, nan_sum, number_branch])
    body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"].append(
        {
            "name": "http.server.duration",
            "histogram": {"dataPoints": [point()], "aggregationTemporality": 2},
        }
    )
    status, reply = await send(client, body)
    assert status == 200
    partial = reply["partialSuccess"]
    assert partial["rejectedDataPoints"] == "4"  # int64 as a string, as OTLP/JSON says
    for words in ("abtest.branch", "finite", "not an abtest metric"):
        assert words in partial["errorMessage"]
    branch = metrics.get_branch_metrics("e", "control")
    assert branch is not None and branch.query_count == 3
    text = await (await client.get("/metrics")).text()
    # counted in records, like everything else: two points of three queries each
    assert (
        'abtest_exporter_rejected_records_total{source="otlp",reason="missing_attribute"} 6' in text
    )
    assert 'abtest_exporter_rejected_records_total{source="otlp",reason="unknown_metric"} 1' in text
    assert 'abtest_exporter_accepted_records_total{source="otlp",kind="query"} 3' in text


async def test_wrong_unit_and_temporality_are_rejected(client: Client, metrics: ABMetrics) -> None:
    _, reply = await send(client, request([point()], unit="us"))
    assert reply["partialSuccess"]["rejectedDataPoints"] == "1"
    _, reply = await send(client, request([point()], temporality=0))
    assert "temporality" in reply["partialSuccess"]["errorMessage"]
    assert metrics.stats().total_queries_recorded == 0


async def test_cumulative_points_become_increments(client: Client, metrics: ABMetrics) -> None:
    await send(client, request([point()]))
    later = point(
        timeUnixNano="1700000020000000000", count="5", sum=0.1, bucketCounts=["2", "3", "0"]
    )
    await send(client, request([later]))
    await send(client, request([later]))  # a retry: same point again
    await send(client, request([point()]))  # a late, older point
    branch = metrics.get_branch_metrics("e", "control")
    assert branch is not None and branch.query_count == 5
    assert branch.total_latency_ms == pytest.approx(100.0)
    # the app restarted: a new start time, counts from zero again
    restarted = point(
        startTimeUnixNano="1700000030000000000",
        timeUnixNano="1700000040000000000",
        count="2",
        sum=0.03,
        bucketCounts=["1", "1", "0"],
    )
    await send(client, request([restarted]))
    branch = metrics.get_branch_metrics("e", "control")
    assert branch is not None and branch.query_count == 7
    # same start time but a value went down: also a restart
    lower = point(
        startTimeUnixNano="1700000030000000000",
        timeUnixNano="1700000050000000000",
        count="1",
        sum=0.005,
        bucketCounts=["1", "0", "0"],
    )
    await send(client, request([lower]))
    branch = metrics.get_branch_metrics("e", "control")
    assert branch is not None and branch.query_count == 8
    text = await (await client.get("/metrics")).text()
    assert 'abtest_exporter_duplicate_points_total{source="otlp"} 2' in text


async def test_delta_points_add_up_and_retries_do_not(client: Client, metrics: ABMetrics) -> None:
    first = point()
    second = point(startTimeUnixNano="1700000010000000000", timeUnixNano="1700000020000000000")
    await send(client, request([first], temporality=1))
    await send(client, request([second], temporality=1))
    await send(client, request([first], temporality=1))  # retried after a lost reply
    branch = metrics.get_branch_metrics("e", "control")
    assert branch is not None and branch.query_count == 6
    overlapping = point(startTimeUnixNano="1700000005000000000", timeUnixNano="1700000015000000000")
    _, reply = await send(client, request([overlapping], temporality=1))
    assert "overlaps" in reply["partialSuccess"]["errorMessage"]
    backwards = point(startTimeUnixNano="1700000090000000000", timeUnixNano="1700000080000000000")
    _, reply = await send(client, request([backwards], temporality=1))
    assert "ends before it starts" in reply["partialSuccess"]["errorMessage"]
    late = point(startTimeUnixNano="1699999990000000000", timeUnixNano="1700000000000000000")
    await send(client, request([late], temporality=1))  # late but new: counted
    branch = metrics.get_branch_metrics("e", "control")
    assert branch is not None and branch.query_count == 9


async def test_event_histograms(client: Client, metrics: ABMetrics) -> None:
    attributes = [
        {"key": "abtest.experiment", "value": {"stringValue": "e"}},
        {"key": "abtest.branch", "value": {"stringValue": "t"}},
        {"key": "abtest.event", "value": {"stringValue": "revenue"}},
    ]
    body = request(
        [
            point(
                attributes=attributes,
                count="2",
                sum=50.0,
                bucketCounts=["2"],
                explicitBounds=[],
                min=10.0,
                max=40.0,
            )
        ],
        name="abtest.event.value",
        unit="",
        temporality=1,
    )
    assert (await send(client, body))[0] == 200
    branch = metrics.get_branch_metrics("e", "t")
    assert branch is not None
    assert branch.events["revenue"].count == 2 and branch.events["revenue"].total == 50.0
    assert branch.events["revenue"].mean == 25.0
    # no buckets: the values are taken as spread evenly between min and max
    assert branch.events["revenue"].variance == pytest.approx(2 * 30**2 / 12)


async def test_protobuf_reply_in_the_request_encoding(client: Client, metrics: ABMetrics) -> None:
    message = ExportMetricsServiceRequest()
    from google.protobuf import json_format

    json_format.ParseDict(
        request([point(), point(attributes=[])]), message, ignore_unknown_fields=True
    )
    response = await client.post(
        "/v1/metrics",
        data=gzip.compress(message.SerializeToString()),
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    assert response.status == 200
    assert response.content_type == "application/x-protobuf"
    reply = ExportMetricsServiceResponse.FromString(await response.read())
    assert reply.partial_success.rejected_data_points == 1
    assert metrics.stats().total_queries_recorded == 3


async def test_status_codes(client: Client, metrics: ABMetrics) -> None:
    empty = await client.post(
        "/v1/metrics", data=b"", headers={"Content-Type": "application/x-protobuf"}
    )
    assert empty.status == 200 and await empty.read() == b""
    empty_json = await client.post(
        "/v1/metrics", data=b"{}", headers={"Content-Type": "application/json"}
    )
    assert empty_json.status == 200
    assert (
        await client.post("/v1/metrics", data=b"x", headers={"Content-Type": "text/plain"})
    ).status == 415
    assert (await client.get("/v1/metrics")).status == 405
    bad = await client.post(
        "/v1/metrics", data=b"\xff\xff\xff", headers={"Content-Type": "application/x-protobuf"}
    )
    assert bad.status == 400
    from google.rpc.status_pb2 import Status

    status = Status.FromString(await bad.read())
    assert status.code == 3 and "cannot decode" in status.message
    bad_json = await client.post(
        "/v1/metrics", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status == 400 and "cannot decode" in (await bad_json.json())["message"]
    assert metrics.stats().total_queries_recorded == 0


async def test_body_limit_applies_after_decompression(aiohttp_client: Any) -> None:
    from exporter.serve.server import create_app
    from exporter.serve.settings import Settings

    client = await aiohttp_client(create_app(settings=Settings(otlp_max_body_bytes=10_000)))
    body = json.dumps(request([point()] * 200)).encode()
    assert len(gzip.compress(body)) < 10_000 < len(body)
    response = await client.post(
        "/v1/metrics",
        data=gzip.compress(body),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status == 413


def parsed(body: dict[str, Any], limits: OtlpLimits | None = None) -> Parsed:
    from google.protobuf import json_format

    message = ExportMetricsServiceRequest()
    json_format.ParseDict(body, message, ignore_unknown_fields=True)
    return parse(message, limits or OtlpLimits())


def on_branch(branch: str, **overrides: Any) -> dict[str, Any]:
    attributes = [*point()["attributes"]]
    attributes[1] = {"key": "abtest.branch", "value": {"stringValue": branch}}
    return point(attributes=attributes, **overrides)


def test_forgotten_streams_are_never_counted_twice() -> None:
    """Issue 9, item 5: a cumulative stream forgotten after the 1 h TTL came back counted
    in full (an app paused 61 minutes went from 5,010 to 10,010). Now its next point
    only sets a baseline: a paused app sends the same totals and loses nothing."""
    now = [0.0]
    limits = OtlpLimits(stream_ttl=3600.0)
    metrics = ABMetrics(receiver=Receiver(DEFAULT_BUCKETS, limits, clock=lambda: now[0]))
    for name in ("a", "b"):
        metrics.record_otlp(parsed(request([on_branch(name)]), limits))
    now[0] = 3700.0  # both silent past the ttl: forgotten at the next request
    same = on_branch("a", timeUnixNano="1700000020000000000")  # paused: same totals
    _, received = metrics.record_otlp(parsed(request([same]), limits))
    assert received is not None and received.uncertain == 1
    assert metrics.stream_figures().evicted == 2 and metrics.stream_figures().held == 1
    later = on_branch("a", timeUnixNano="1700000030000000000", count="9",
                      bucketCounts=["3", "6", "0"], sum=0.18)  # fmt: skip
    metrics.record_otlp(parsed(request([later]), limits))  # from there on: increments
    branch = metrics.get_branch_metrics("e", "a")
    assert branch is not None and branch.query_count == 9  # 3 + 6, never 3 + 3 + 9
    fresh = on_branch("d", startTimeUnixNano="1700000040000000000",
                      timeUnixNano="1700000050000000000")  # fmt: skip
    metrics.record_otlp(parsed(request([fresh]), limits))  # started after: counted in full
    branch = metrics.get_branch_metrics("e", "d")
    assert branch is not None and branch.query_count == 3


def test_past_the_stream_bound_new_streams_are_refused_not_live_ones_forgotten() -> None:
    """Issue 9, item 5: past the 100,000-stream bound the least recently seen stream was
    dropped and counted again in full (1,000,000 became 2,000,000)."""
    limits = OtlpLimits(max_streams=2)
    metrics = ABMetrics(receiver=Receiver(DEFAULT_BUCKETS, limits))
    for name in ("a", "b", "c"):
        _, received = metrics.record_otlp(parsed(request([on_branch(name)]), limits))
    assert received is not None and received.refused.records["limit_otlp_streams"] == 3
    later = on_branch("a", timeUnixNano="1700000020000000000", count="6",
                      bucketCounts=["2", "4", "0"], sum=0.12)  # fmt: skip
    metrics.record_otlp(parsed(request([later]), limits))
    counts = {b: metrics.get_branch_metrics("e", b) for b in "abc"}
    assert {b: m.query_count for b, m in counts.items() if m} == {"a": 6, "b": 3}


def test_a_bad_point_leaves_every_stream_of_its_request_untouched() -> None:
    """Issue 9, item 3: one point with count 2**63 made a 500 after other streams of the
    same request had moved on, so the app's retry was skipped: 15 expected, 5 counted.
    Now the bad point is refused alone and the good ones count exactly once."""
    metrics = ABMetrics()
    good = [on_branch(b, count="5", bucketCounts=["5", "0", "0"], sum=0.025) for b in "xyz"]
    bad = on_branch("w", count=str(2**63), bucketCounts=[str(2**63), "0", "0"])
    for _ in range(2):  # the app retries the same export
        _, received = metrics.record_otlp(parsed(request([*good, bad])))
        assert received is not None and received.refused.points == 1
    assert metrics.stats().total_queries_recorded == 15


@pytest.mark.parametrize(
    "overrides",
    [
        {"count": "4611686018427387904", "bucketCounts": ["4611686018427387904", "0", "0"]},
        {"sum": 1e306},
        {"min": -1.0},
        {"max": 1e300},
        {"explicitBounds": [0.01, 1e300]},
        {"explicitBounds": list(range(1, 200)), "bucketCounts": ["3"] + ["0"] * 199},
    ],
)
def test_out_of_range_points_are_refused_and_nothing_overflows(overrides: dict[str, Any]) -> None:
    """Issue 9, item 4: three delta points of 2**62 wrapped int64; a sum of 1e306 s made
    sums inf and the comparison gauges NaN."""
    metrics = ABMetrics()
    for step in range(3):
        start, end = 1700000000000000000 + 10**10 * step, 1700000000000000000 + 10**10 * (step + 1)
        body = request([point(startTimeUnixNano=str(start), timeUnixNano=str(end), **overrides)],
                       temporality=1)  # fmt: skip
        _, received = metrics.record_otlp(parsed(body))
        assert received is not None and received.refused.points == 1
    assert metrics.stats().total_queries_recorded == 0
    from exporter.outputs.exposition import render

    text = render(metrics.snapshot())
    assert "nan" not in text.lower() and "-" not in text.split("abtest_queries_total")[-1][:40]


def test_counts_stop_short_of_overflow() -> None:
    """Valid points whose sum would pass 2**53 are refused (limit_count), never wrapped."""
    metrics = ABMetrics()
    big = 2**52
    refused = 0
    for step in range(3):
        start, end = 1700000000000000000 + 10**10 * step, 1700000000000000000 + 10**10 * (step + 1)
        body = request([point(startTimeUnixNano=str(start), timeUnixNano=str(end), count=str(big),
                              bucketCounts=[str(big), "0", "0"], sum=big * 0.01)],
                       temporality=1)  # fmt: skip
        _, received = metrics.record_otlp(parsed(body))
        assert received is not None
        refused += received.refused.records["limit_count"]
    assert metrics.stats().total_queries_recorded == big  # the second would reach 2**53
    assert refused == 2 * big


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_cumulative_streams_survive_an_exporter_restart(tmp_path: Any, stop: int) -> None:
    """The exporter restarts, the app does not: its next cumulative point must count only
    what is new, so the stream state is persisted with the aggregate."""
    exporter = Exporter(data_dir=str(tmp_path))
    app = App(exporter.url, AggregationTemporality.CUMULATIVE, our_buckets=True)
    recorded = 0
    for round_ in range(3):
        for i in range(25):
            app.query("control", 5 + i + round_, i % 4 != 0)
            recorded += 1
        app.flush()
        if round_ < 2:
            exporter.process.send_signal(stop)
            exporter.process.wait(20)
            exporter = Exporter(data_dir=str(tmp_path), port=exporter.port)
    app.stop()
    try:
        found = scrape(exporter)
        labels = {"experiment": "checkout", "branch": "control"}
        assert found[key("abtest_queries_total", **labels)] == recorded
        assert found[key("abtest_query_failures_total", **labels)] == 3 * 7
    finally:
        exporter.stop()


async def test_points_over_a_cardinality_limit_are_refused_the_rest_applied(
    aiohttp_client: Any,
) -> None:
    from exporter.serve.server import create_app
    from exporter.serve.settings import Settings

    metrics = ABMetrics()
    client = await aiohttp_client(create_app(metrics, Settings(max_branches=2)))
    points = []
    for branch in ("a", "b", "c"):
        attributes = point()["attributes"]
        attributes[1] = {"key": "abtest.branch", "value": {"stringValue": branch}}
        points.append(point(attributes=attributes))
    status, reply = await send(client, request(points))
    assert status == 200
    assert reply["partialSuccess"]["rejectedDataPoints"] == "1"
    assert "limit branches" in reply["partialSuccess"]["errorMessage"]
    experiment = metrics.get_experiment_metrics("e")
    assert experiment is not None and sorted(experiment.branches) == ["a", "b"]


def test_points_whose_sum_their_buckets_cannot_hold_still_restore(tmp_path: Any) -> None:
    """Review of issue 9: a point with no min/max whose mean lies past its buckets was
    accepted, and then the restore refused the file (sum outside n x [min, max])."""
    from exporter.state.store import Store

    metrics = ABMetrics()
    store = Store(tmp_path, metrics)
    store.open()
    loose = point(sum=60.0, bucketCounts=["0", "0", "3"], explicitBounds=[5.0, 10.0])
    del loose["min"], loose["max"]
    bare = point(sum=1.0, count="1", bucketCounts=["1"], explicitBounds=[])
    del bare["min"], bare["max"]
    bare["attributes"] = on_branch("bare")["attributes"]
    _, received = metrics.record_otlp(parsed(request([loose, bare])))
    assert received is not None and received.refused.points == 0
    store.close()
    restored = ABMetrics()
    Store(tmp_path, restored).open()
    branch = restored.get_branch_metrics("e", "control")
    assert branch is not None and branch.avg_latency_ms == 20_000.0
    assert branch.max_latency_ms >= branch.avg_latency_ms >= branch.min_latency_ms
    outside = point(sum=0.3, timeUnixNano="1700000020000000000")  # mean 0.1 > max 0.02
    _, received = restored.record_otlp(parsed(request([outside])))
    assert received is not None and received.refused.records["invalid_value"] == 3
    negative = point(explicitBounds=[-1.0, 0.025], timeUnixNano="1700000030000000000")
    _, received = restored.record_otlp(parsed(request([negative])))
    assert received is not None and received.refused.records["invalid_point"] == 3


def test_points_from_the_future_are_refused() -> None:
    """Review of issue 9: one point 100 years ahead silenced its stream for good."""
    metrics = ABMetrics()
    far = str(1700000010000000000 + 100 * 365 * 86400 * 10**9)
    _, received = metrics.record_otlp(parsed(request([point(timeUnixNano=far)]),
                                             OtlpLimits()), None)  # fmt: skip
    assert received is not None and "future" in received.refused.messages[0]
    metrics.record_otlp(parsed(request([point()])))
    assert metrics.stats().total_queries_recorded == 3  # the honest point still counts
    huge = point(startTimeUnixNano=str(2**63 + 5), timeUnixNano=str(2**64 - 1))
    _, received = metrics.record_otlp(parsed(request([huge], temporality=1)))
    assert received is not None and received.refused.points == 1  # not a 500


def test_delta_retries_of_zero_width_and_late_windows_are_not_counted_again() -> None:
    """Review of issue 9: a zero-width window resent three times counted 5, 10, 15; a
    retry of a late window counted again."""
    metrics = ABMetrics()

    def delta(start: int, end: int) -> None:
        body = request([point(startTimeUnixNano=str(T + start), timeUnixNano=str(T + end))],
                       temporality=1)  # fmt: skip
        metrics.record_otlp(parsed(body))

    T = 1700000000000000000
    for _ in range(3):
        delta(10, 10)
    assert metrics.stats().total_queries_recorded == 3
    delta(100, 110)
    delta(120, 130)
    delta(110, 120)  # late, but new
    delta(110, 120)  # its retry
    assert metrics.stats().total_queries_recorded == 12


def test_stream_identities_cost_the_same_whatever_their_attributes() -> None:
    """Review of issue 9: 40 points with 4 MB resource attributes held 200 MB."""
    big = point()
    big["attributes"] = [*big["attributes"],
                         {"key": "blob", "value": {"stringValue": "x" * 100_000}}]  # fmt: skip
    _, received = ABMetrics().record_otlp(parsed(request([big])))
    assert received is not None and [len(k) for k in received.updates] == [16]


def test_refusal_messages_do_not_echo_long_names() -> None:
    """Review of issue 9: an unknown metric's name went into the answer kept with its
    idempotency key: 25 MB per answer."""
    body = request([point()], name="x" * 1_000_000)
    _, received = ABMetrics().record_otlp(parsed(body))
    assert received is not None and len(received.response().SerializeToString()) < 500


def test_the_retention_never_forgets_a_stream_that_just_sent() -> None:
    """Review of issue 9: the prune read states from disk unlocked and forgot one that had
    sent in between; its retried delta point then counted again."""
    from exporter.ingest.otlp import Streams

    streams = Streams()
    streams.cold = lambda key: None
    metrics = ABMetrics()
    metrics.receiver.streams = streams
    _, received = metrics.record_otlp(parsed(request([point()], temporality=1)))
    assert received is not None
    (key,) = received.updates
    streams.forget([(key, 1700000010000000000)])  # read from disk before the point landed
    assert streams.get(key) is not None and streams.horizon == 0
    metrics.record_otlp(parsed(request([point()], temporality=1)))  # the SDK's retry
    assert metrics.stats().total_queries_recorded == 3


async def test_self_metrics_count_applied_records_not_points(aiohttp_client: Any) -> None:
    """max_experiments=1 and two points of three queries each, in two experiments: one
    point is applied, and the self-metrics say 3 queries accepted and 3 rejected (records,
    not points), matching the 3 queries /metrics shows."""
    from exporter.serve.server import create_app
    from exporter.serve.settings import Settings

    metrics = ABMetrics()
    client = await aiohttp_client(create_app(metrics, Settings(max_experiments=1)))
    points = []
    for experiment in ("first", "second"):
        attributes = point()["attributes"]
        attributes[0] = {"key": "abtest.experiment", "value": {"stringValue": experiment}}
        points.append(point(attributes=attributes))
    status, reply = await send(client, request(points))
    assert status == 200
    assert reply["partialSuccess"]["rejectedDataPoints"] == "1"
    text = await (await client.get("/metrics")).text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    queries = [v for k, v in samples.items() if k.startswith("abtest_queries_total{")]
    assert queries == [3]
    accepted = [
        v
        for k, v in samples.items()
        if k.startswith("abtest_exporter_accepted_records_total{")
        and 'source="otlp"' in k
        and 'kind="query"' in k
    ]
    assert accepted == [3]
    rejected = [
        v
        for k, v in samples.items()
        if k.startswith("abtest_exporter_rejected_records_total{") and 'source="otlp"' in k
    ]
    assert sum(rejected) == 3


async def test_an_ingest_replica_warns_of_a_cumulative_stream_joined_mid_way(
    client: Client, metrics: ABMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11: streams split across replicas count a first point twice; say so once."""
    metrics.receiver.warn_started_before = 1_800_000_000 * 10**9  # after the point's start
    await send(client, request([point()]))
    failure = {"key": "abtest.outcome", "value": {"stringValue": "failure"}}
    await send(client, request([point(attributes=[*point()["attributes"][:2], failure])]))
    warnings = [r for r in caplog.records if "cumulative OTLP stream" in r.getMessage()]
    assert len(warnings) == 1 and "loadbalancing" in warnings[0].getMessage()


def test_a_delta_point_on_a_cumulative_stream_is_refused_not_a_500() -> None:
    """A delta point at or before the time of a stream held as cumulative (no windows
    remembered) reached `min()` of no windows: a ValueError, a 500. It overlaps what
    the cumulative point counted, so it is refused like an overlapping delta point."""
    metrics = ABMetrics()
    metrics.record_otlp(parsed(request([point()])))
    assert metrics.stats().total_queries_recorded == 3
    for start in ("1700000000000000000", "1700000010000000000"):
        late = point(startTimeUnixNano=start, timeUnixNano="1700000020000000000")
        _, received = metrics.record_otlp(parsed(request([late], temporality=1)))
        assert received is not None and received.refused.points == 1
        assert received.refused.records == {"non_monotonic_delta": 3} and not received.updates
    assert metrics.stats().total_queries_recorded == 3


@pytest.mark.parametrize(
    ("count", "buckets", "windows"),
    [
        (2**63, [2**63, 0], []),  # past int64: array("q") raised OverflowError
        (2, [1.5, 0.5], []),  # floats where counts belong: TypeError
        (2, ["1", "1"], []),  # strings: TypeError in sum()
        (2, [1, 1], [0, 2**63]),  # a window past int64
        (2, [1, 1], ["a", "b"]),
    ],
)
def test_a_stored_stream_state_out_of_range_is_refused_as_a_value_error(
    count: int, buckets: list[Any], windows: list[Any]
) -> None:
    """check_state promises ValueError for an unbelievable state (the store turns it into
    a one-line refusal of the data file), never another exception type."""
    from exporter.ingest.otlp import check_state

    with pytest.raises(ValueError):
        check_state(json.dumps([1, 2, count, 1.0, buckets, [10.0], windows]))
