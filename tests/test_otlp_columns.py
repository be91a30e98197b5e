"""The columnar checks of `parse` against the point-by-point reference (`_point`): for
any request, the same points pass with the same values, and the same ones are refused
for the same reasons, in the same order."""

from __future__ import annotations

import math
import struct
from dataclasses import astuple
from typing import Any
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.core.validation import MAX_COUNT
from exporter.ingest import otlp
from exporter.ingest.otlp import OtlpLimits, Parsed, Point, Refusals, parse

from .otlp_messages import (
    CUMULATIVE,
    DELTA,
    AnyValue,
    ExportMetricsServiceRequest,
    Histogram,
    HistogramDataPoint,
    KeyValue,
    Metric,
    export_request,
    text,
)

NOW = 1_700_000_000.0
NOW_NS = int(NOW * 1e9)
LIMITS = OtlpLimits(max_bounds=4, max_name_length=12)

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 40.0, 1e12, 1e15, 2e15, -1.0, math.nan]),
)
counts = st.one_of(
    st.integers(0, 5),
    st.sampled_from([MAX_COUNT, MAX_COUNT + 1, 2**63, 2**64 - 1]),
)
times = st.one_of(
    st.integers(0, 3),
    st.sampled_from([NOW_NS, NOW_NS + 600 * 10**9, NOW_NS + 600 * 10**9 + 1, 2**64 - 1]),
)
texts = st.sampled_from(["exp", "b0", "b1", "", "x" * 13, "a\nb", "success", "failure"])
values = st.one_of(
    texts.map(lambda s: AnyValue(string_value=s)),
    st.integers(-2, 2).map(lambda i: AnyValue(int_value=i)),
    st.just(AnyValue()),
)
keys = st.sampled_from(
    ["abtest.experiment", "abtest.branch", "abtest.outcome", "abtest.event", "service", "x"]
)


@st.composite
def wild(draw: Any) -> HistogramDataPoint:
    """Any point, mostly refused."""
    attributes = draw(st.lists(st.tuples(keys, values), max_size=5))
    bounds = draw(st.lists(floats, max_size=5))
    width = len(bounds) + 1 + draw(st.sampled_from([0, 0, 1, -1]))
    buckets = draw(st.lists(counts, min_size=max(width, 0), max_size=max(width, 0)))
    count = sum(buckets) if draw(st.booleans()) else draw(counts)
    point = HistogramDataPoint(
        attributes=[KeyValue(key=k, value=v) for k, v in attributes],
        start_time_unix_nano=draw(times),
        time_unix_nano=draw(times),
        count=count % 2**64,
        bucket_counts=[b % 2**64 for b in buckets] if draw(st.integers(0, 4)) else [],
        explicit_bounds=bounds,
        flags=draw(st.sampled_from([0, 0, 0, 1, 2])),
    )
    for name in ("sum", "min", "max"):
        if draw(st.booleans()):
            setattr(point, name, draw(floats))
    return point


@st.composite
def nearly(draw: Any) -> HistogramDataPoint:
    """A valid point with one field changed (or none): the edges of every check."""
    branch = draw(st.sampled_from(["b0", "b1"]))
    attributes = [
        ("abtest.experiment", AnyValue(string_value="exp")),
        ("abtest.branch", AnyValue(string_value=branch)),
        ("abtest.outcome", AnyValue(string_value=draw(st.sampled_from(["success", "failure"])))),
        ("abtest.event", AnyValue(string_value="buy")),
        ("service", AnyValue(string_value=draw(st.sampled_from(["a", "b"])))),
    ]
    bounds = draw(st.sampled_from([[], [0.005], [1.0, 2.0, 3.0], [0.0, 1e15]]))
    buckets = draw(st.lists(st.integers(0, 2), min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    count = sum(buckets)
    fields: dict[str, Any] = {
        "start_time_unix_nano": 1, "time_unix_nano": 2, "count": count, "sum": 0.5 * count,
        "min": 0.25, "max": 0.75, "bucket_counts": buckets, "explicit_bounds": bounds,
    }  # fmt: skip
    for change in draw(st.lists(st.sampled_from(["attributes", *fields, "drop"]), max_size=2)):
        if change == "attributes":
            index = draw(st.integers(0, len(attributes) - 1))
            attributes[index] = (attributes[index][0], draw(values))
        elif change == "drop":
            fields.pop(draw(st.sampled_from(["sum", "min", "max", "bucket_counts"])), None)
        elif change in ("sum", "min", "max"):
            fields[change] = draw(floats)
        elif change == "count":
            fields[change] = draw(counts) % 2**64
        elif change in ("start_time_unix_nano", "time_unix_nano"):
            fields[change] = draw(times)
        elif change == "bucket_counts":
            fields[change] = [b % 2**64 for b in draw(st.lists(counts, max_size=5))]
        elif change == "explicit_bounds":
            fields[change] = draw(st.lists(floats, max_size=5))
    draw(st.randoms()).shuffle(attributes)
    return HistogramDataPoint(
        attributes=[KeyValue(key=k, value=v) for k, v in attributes], **fields
    )


def points() -> st.SearchStrategy[HistogramDataPoint]:
    return st.one_of(nearly(), nearly(), wild())


@st.composite
def requests(draw: Any) -> ExportMetricsServiceRequest:
    metrics = []
    for _ in range(draw(st.integers(1, 3))):
        metrics.append(
            Metric(
                name=draw(st.sampled_from(["abtest.query.duration", "abtest.event.value"])),
                unit=draw(st.sampled_from(["s", "ms"])),
                histogram=Histogram(
                    data_points=draw(st.lists(points(), max_size=8)),
                    aggregation_temporality=draw(st.sampled_from([DELTA, CUMULATIVE])),
                ),
            )
        )
    return export_request(metrics)


def reference(request: ExportMetricsServiceRequest) -> Parsed:
    """What `parse` answered before the columns: every point checked on its own."""
    out = Parsed()
    for resource_metrics in request.resource_metrics:
        resource = otlp._attribute_key(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            scope = (scope_metrics.scope.name, scope_metrics.scope.version)
            for metric in scope_metrics.metrics:
                delta = metric.histogram.aggregation_temporality == DELTA
                factor = {"s": 1000.0, "ms": 1.0}[metric.unit]
                factor = factor if metric.name == otlp.QUERY_METRIC else 1.0
                prefix = (resource, scope, metric.name)
                for point in metric.histogram.data_points:
                    if point.flags & 1:
                        continue
                    checked = otlp._point(prefix, metric.name, delta, factor, point, LIMITS, NOW_NS)
                    if isinstance(checked, Point):
                        out.points.append(checked)
                    else:
                        out.refused.refuse(*checked, records=otlp._records(point))
    return out


def same(point: Point) -> str:
    return repr(astuple(point))  # NaN and -0.0 compared as written


def refusals(refused: Refusals) -> tuple[int, dict[str, int], list[str]]:
    return refused.points, dict(refused.records), refused.messages


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_columns_answer_as_the_point_by_point_checks(request: ExportMetricsServiceRequest) -> None:
    expected = reference(request)
    for chunk in (4096, 4096, 3):  # again from the remembered identities; in small chunks
        with patch.object(otlp, "_CHUNK", chunk):
            got = parse(request, LIMITS, now=NOW)
        assert [same(p) for p in got.points] == [same(p) for p in expected.points]
        assert refusals(got.refused) == refusals(expected.refused)


def test_unpacked_repeated_numbers_are_read_as_packed() -> None:
    """A sender may write repeated numbers unpacked; the view sees them all the same."""
    point = HistogramDataPoint(
        attributes=[
            text("abtest.experiment", "exp"),
            text("abtest.branch", "b0"),
            text("abtest.outcome", "success"),
        ],
        start_time_unix_nano=1,
        time_unix_nano=2,
        count=3,
        sum=1.5,
    )
    body = point.SerializeToString()
    # field 6 (bucket_counts) as two unpacked fixed64, field 7 (bounds) as one double
    body += b"\x31" + struct.pack("<Q", 1) + b"\x31" + struct.pack("<Q", 2)
    body += b"\x39" + struct.pack("<d", 0.25)
    histogram = Histogram(aggregation_temporality=CUMULATIVE)
    histogram.data_points.add().ParseFromString(body)
    request = export_request([Metric(name=otlp.QUERY_METRIC, unit="s", histogram=histogram)])
    (parsed,) = parse(request, LIMITS, now=NOW).points
    assert (parsed.buckets, parsed.bounds, parsed.count, parsed.total) == ([1, 2], (0.25,), 3, 1.5)
