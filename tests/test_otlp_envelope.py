"""`otlp.parse_body` reads the usual export from its bytes (`otlp_envelope`): whatever
the request and however it is written (fields in any order, unknown fields, a field
sent twice, repeated numbers unpacked, strings that are not UTF-8, attributes that do
not parse), it answers as `parse(decode(body))` does, or raises as `decode` does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, NumberDataPoint
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from exporter.ingest import otlp, otlp_envelope
from exporter.ingest.otlp import DecodeError, decode, parse, parse_body

from .otlp_messages import (
    DELTA,
    Histogram,
    HistogramDataPoint,
    Metric,
    export_request,
    field,
    query_point,
    text,
    varint,
)
from .test_otlp_columns import LIMITS, NOW, refusals, same
from .test_otlp_wire import histograms

PROTOBUF = "application/x-protobuf"


UNKNOWN = varint(21 << 3) + b"\x07"  # field 21, varint 7: no schema here knows it


def answers(body: bytes) -> tuple[Any, ...]:
    """What parse_body answers (or raises), in a form to compare."""
    try:
        got = parse_body(body, PROTOBUF, LIMITS, now=NOW)
    except DecodeError:
        return ("DecodeError",)
    return [same(p) for p in got.points], refusals(got.refused)


def reference(body: bytes) -> tuple[Any, ...]:
    try:
        request = decode(body, PROTOBUF)
    except DecodeError:
        return ("DecodeError",)
    got = parse(request, LIMITS, now=NOW)
    return [same(p) for p in got.points], refusals(got.refused)


@st.composite
def usual_histograms(draw: Any) -> Histogram:
    """Points of the wire's one layout, each passing every check."""
    points = []
    for i in range(draw(st.integers(1, 6))):
        buckets = draw(st.lists(st.integers(1, 5), min_size=2, max_size=2))
        points.append(HistogramDataPoint(
            attributes=[text("abtest.experiment", draw(st.sampled_from(["e", "f"]))),
                        text("abtest.branch", f"b{i % 3}"),
                        text("abtest.outcome", draw(st.sampled_from(["success", "failure"])))],
            start_time_unix_nano=1, time_unix_nano=draw(st.integers(2, 10**18)),
            count=sum(buckets), sum=0.5 * sum(buckets), min=0.25, max=0.75,
            bucket_counts=buckets, explicit_bounds=[0.5],
        ))  # fmt: skip
    return Histogram(data_points=points, aggregation_temporality=draw(st.sampled_from([1, 2])))


def rarely(draw: Any, odds: int) -> bool:
    return bool(draw(st.integers(0, odds - 1)) == 0)


@st.composite
def metrics(draw: Any) -> bytes:
    """A metric's bytes, its fields in any order: mostly one of ours whose points all pass,
    now and then with one thing that is not (points that do not, another name, unit,
    temporality or kind, a field unknown or sent twice, a string that is not UTF-8)."""
    kind = "query" if rarely(draw, 2) else "event"
    if rarely(draw, 12):
        kind = draw(st.sampled_from(["foreign", "gauge"]))
    histogram = draw(histograms() if rarely(draw, 8) else usual_histograms())
    if rarely(draw, 12):
        histogram.aggregation_temporality = draw(st.sampled_from([DELTA, 0, 7]))
    name = {"query": otlp.QUERY_METRIC, "event": otlp.EVENT_METRIC}.get(kind, "other")
    if kind == "event":
        for p in histogram.data_points:
            for kv in p.attributes:
                if kv.key == "abtest.outcome":
                    kv.key = "abtest.event"
    unit = "h" if rarely(draw, 12) else draw(st.sampled_from(["ms", "s"]))
    data = field(9, histogram.SerializeToString())
    if kind == "gauge":
        data = field(5, Gauge(data_points=[NumberDataPoint(as_double=1.0)]).SerializeToString())
    parts = [field(1, name.encode()), field(3, unit.encode()), data]
    if rarely(draw, 4):
        parts.append(field(2, b"a description"))
    if rarely(draw, 6):
        parts.append(draw(st.sampled_from([
            UNKNOWN,
            field(1, b"other"),  # a second name: protobuf keeps the last
            field(9, Histogram(data_points=[HistogramDataPoint(count=1)]).SerializeToString()),
            field(12, text("k", "v").SerializeToString()),  # metadata
            field(12, field(1, b"\xff")),  # metadata whose key is not UTF-8
            field(3, b"\xff"),  # a unit that is not UTF-8
            field(2, b"\xfe"),  # nor a description
        ])))  # fmt: skip
    return b"".join(draw(st.permutations(parts)))


@st.composite
def bodies(draw: Any) -> bytes:
    resources = []
    for _ in range(draw(st.integers(1, 2))):
        scopes = []
        for _ in range(draw(st.integers(1, 2))):
            scope = InstrumentationScope(name=draw(st.sampled_from(["", "lib"])), version="1")
            inner = [field(2, draw(metrics()))]
            if draw(st.booleans()):
                inner.append(field(1, scope.SerializeToString()))
            if rarely(draw, 5):
                inner.append(
                    draw(st.sampled_from([UNKNOWN, field(3, b"schema"), field(3, b"\xff")]))
                )
            scopes.append(field(2, b"".join(draw(st.permutations(inner)))))
        resource = Resource(attributes=[text("service.name", draw(st.sampled_from(["a", "b"])))])
        outer = scopes + ([field(1, resource.SerializeToString())] if draw(st.booleans()) else [])
        if rarely(draw, 5):  # unknown, or a second resource (merged with the first)
            more = Resource(attributes=[text("service.name", "c")]).SerializeToString()
            outer.append(draw(st.sampled_from([UNKNOWN, field(1, more)])))
        resources.append(field(1, b"".join(draw(st.permutations(outer)))))
    if rarely(draw, 5):
        resources.append(UNKNOWN)
    return b"".join(resources)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_parse_body_answers_as_parse_of_decode(body: bytes) -> None:
    taken = (
        otlp_envelope.histograms(body) is not None
        and otlp._parse_usual(body, LIMITS, NOW) is not None
    )
    event(f"read from the bytes: {taken}")
    assert answers(body) == reference(body)


def _usual(points: int = 3) -> Any:
    good = [query_point(f"b{i % 2}", [1, 1], 3) for i in range(points)]
    histogram = Histogram(data_points=good, aggregation_temporality=DELTA)
    return export_request([Metric(name=otlp.QUERY_METRIC, unit="s", histogram=histogram)])


def test_the_usual_export_is_read_from_its_bytes() -> None:
    """Else the property above proves little."""
    body = _usual().SerializeToString()
    parsed = otlp._parse_usual(body, LIMITS, NOW)
    assert parsed is not None and len(parsed.points) == 3
    assert answers(body) == reference(body)


def _nested(depth: int) -> bytes:
    """An AnyValue holding an array holding ... `depth` times, then a string."""
    value = field(1, b"x")
    for _ in range(depth):
        value = field(5, field(1, value))
    return value


def _deep_attribute(depth: int) -> bytes:
    return field(9, field(1, b"deep") + field(2, _nested(depth)))


def _with_resource(body: bytes, resource: bytes) -> bytes:
    """The body's one ResourceMetrics given `resource` too."""
    request = decode(body, PROTOBUF)
    inner = request.resource_metrics[0].SerializeToString()
    return field(1, field(1, resource) + inner)


@pytest.mark.parametrize(
    "surgery",
    [
        lambda b: b[:-1],  # cut short
        lambda b: b.replace(b"exp", b"\xffxp"),  # an attribute's text that is not UTF-8
        lambda b: b.replace(b"abtest.query.duration", b"abtest.query.duratio\xff"),
        lambda b: b + b"\x0b",  # a group's start tag
        # found by review: a resource or scope with nothing under it is still parsed
        lambda b: b + field(1, field(1, field(1, field(1, b"\xff")))),
        lambda b: b + field(1, field(2, field(1, field(1, b"\xff")))),
        lambda b: b + b"\x0a\x04\x0a\x02\x0a\x05",  # a resource cut short inside
        # a tag or a length in more than 5 bytes, or a tag past 32 bits
        lambda b: b + b"\xa8\x81\x80\x80\x80\x00\x07",
        lambda b: b + b"\xa8\x81\x80\x80\x7f\x07",
        lambda b: b + b"\x0a\x80\x80\x80\x80\x80\x00",
        # a point's packed length in 6 bytes (the points, and all around them, longer)
        lambda b: export_bytes_with_point(
            b, lambda p: p.replace(b"\x32\x10", b"\x32\x90\x80\x80\x80\x80\x00")
        ),
        # nested deeper than protobuf allows, counted from the request, not from the part
        lambda b: export_bytes_with_point(b, lambda p: p + _deep_attribute(47)),
        lambda b: _with_resource(b, field(1, field(1, b"r") + field(2, _nested(49)))),
        # unknown groups nested in the histogram: deep enough only counted from the request
        lambda b: export_bytes_with_point(b, lambda p: p, b"\x7b" * 97 + b"\x7c" * 97),
    ],
)
def test_a_body_protobuf_refuses_is_refused_whichever_way_it_is_read(surgery: Any) -> None:
    body = surgery(_usual().SerializeToString())
    assert reference(body) == ("DecodeError",)
    assert otlp._parse_usual(body, LIMITS, NOW) is None
    with pytest.raises(DecodeError):
        parse_body(body, PROTOBUF, LIMITS, now=NOW)


def test_unpacked_bucket_counts_are_read_by_protobuf_as_what_they_are() -> None:
    """Repeated numbers may be sent unpacked: the wire's layout is not theirs, and the
    runtime reads them."""
    request = _usual(1)
    point = request.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[0]
    packed = field(6, b"".join(n.to_bytes(8, "little") for n in point.bucket_counts))
    unpacked = b"".join(b"\x31" + n.to_bytes(8, "little") for n in point.bucket_counts)
    body = request.SerializeToString()
    assert packed in body
    body = body.replace(packed, unpacked)
    assert otlp._parse_usual(body, LIMITS, NOW) is None
    assert answers(body) == reference(body) and len(parse_body(body, PROTOBUF, LIMITS).points)


def export_bytes_with_point(body: bytes, change: Any, tail: bytes = b"") -> bytes:
    """The usual body with each point's bytes changed and `tail` after the histogram's
    fields, every length around them written again."""
    request = decode(body, PROTOBUF)
    metric = request.resource_metrics[0].scope_metrics[0].metrics[0]
    points = [change(p.SerializeToString()) for p in metric.histogram.data_points]
    histogram = (
        b"".join(field(1, p) for p in points)
        + b"\x10"
        + bytes([metric.histogram.aggregation_temporality])
        + tail
    )
    inner = field(1, metric.name.encode()) + field(3, metric.unit.encode()) + field(9, histogram)
    return field(1, field(2, field(2, inner)))
