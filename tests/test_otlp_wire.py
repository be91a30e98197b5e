"""`otlp_wire.read` against the view (`otlp_view`): whenever it answers, it reads every
point's fields as the view does; and `parse` through it answers as the point-by-point
reference, over histograms whose points mostly share one layout (the case it takes)
with values anywhere, a field left out, flags, exemplars and unknown fields now and
then."""

from __future__ import annotations

import math
import struct
from typing import Any
from unittest.mock import patch

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.metrics.v1.metrics_pb2 import Exemplar

from exporter.ingest import otlp, otlp_wire
from exporter.ingest.otlp import parse
from exporter.ingest.otlp_columns import Runs
from exporter.ingest.otlp_view import view

from .otlp_messages import (
    CUMULATIVE,
    AnyValue,
    Histogram,
    HistogramDataPoint,
    KeyValue,
    Metric,
    export_request,
    query_point,
    text,
)
from .test_otlp_columns import LIMITS, NOW, NOW_NS, counts, reference, refusals, same

OPTIONAL = ("start_time_unix_nano", "time_unix_nano", "count", "sum", "min", "max",
            "bucket_counts", "explicit_bounds")  # fmt: skip
values = st.sampled_from([0.0, -0.0, 0.25, 0.5, 2.0, 1e15, -1.0, math.nan, math.inf])
names = st.sampled_from(["exp", "b0", "b1", "", "x" * 13, "success"])


@st.composite
def point(draw: Any, present: frozenset[str], width: int, odds: int) -> HistogramDataPoint:
    """A believable point, each field changed once in `odds`: all of a histogram's points
    are believable and of one layout often enough for the wire to be taken."""

    def odd() -> bool:
        return bool(draw(st.integers(0, odds - 1)) == 0)

    attributes = [
        text("abtest.experiment", draw(names) if odd() else "exp"),
        text("abtest.branch", draw(names) if odd() else draw(st.sampled_from(["b0", "b1"]))),
        text("abtest.outcome", "ok" if odd() else draw(st.sampled_from(["success", "failure"]))),
    ]
    if odd():  # another attribute: a number, or text that may look like min and max
        number = AnyValue(int_value=draw(st.integers(-(2**63), 2**63 - 1)))
        mimic = "Y" + "A" * 8 + "a" + "B" * 8  # 0x59, 8 bytes, 0x61, 8 bytes
        words = AnyValue(string_value=draw(st.sampled_from([mimic, mimic[9:], "x"])))
        attributes.append(KeyValue(key="service", value=draw(st.sampled_from([number, words]))))
    if odd():
        attributes = attributes[: draw(st.integers(0, 2))]
    buckets = [draw(counts) % 2**64 if odd() else draw(st.integers(1, 3)) for _ in range(width)]
    count = sum(buckets) % 2**64
    fields: dict[str, Any] = {
        "start_time_unix_nano": draw(st.sampled_from([2, NOW_NS, 2**64 - 1])) if odd() else 1,
        "time_unix_nano": draw(st.sampled_from([1, NOW_NS + 10**12])) if odd() else 3,
        "count": draw(counts) % 2**64 if odd() else count,
        "sum": 0.5 * count,
        "min": 0.25,
        "max": 0.75,
        "bucket_counts": buckets,
        "explicit_bounds": [0.5, 1.0, 2.0][: width - 1] if width else [],
    }
    for name in ("sum", "min", "max"):
        if odd():
            fields[name] = draw(values)
    if odd():  # one point keeps a field the others lack, or lacks one they keep
        present = present ^ {draw(st.sampled_from(OPTIONAL))}
    message = HistogramDataPoint(
        attributes=attributes, **{k: v for k, v in fields.items() if k in present}
    )
    if odd():
        message.flags = 1
    if odd():
        message.exemplars.append(Exemplar(as_double=1.0, time_unix_nano=1))
    if odd():  # a field this schema does not know (a newer one's)
        message.MergeFromString(b"\xa8\x01\x07")  # field 21, varint 7
    return message


@st.composite
def histograms(draw: Any) -> Histogram:
    # the fields every point needs to pass are there, the others maybe
    needed = {"bucket_counts", "explicit_bounds", "time_unix_nano"}
    present = frozenset(draw(st.sets(st.sampled_from(OPTIONAL))) | needed)
    width = draw(st.integers(1, 4)) if "bucket_counts" in present else 0
    odds = draw(st.sampled_from([3, 20, 200]))
    points = draw(st.lists(point(present, width, odds), min_size=1, max_size=8))
    return Histogram(data_points=points, aggregation_temporality=CUMULATIVE)


def viewed(point: Any) -> tuple[Any, ...]:
    """A view point's fields as `read` gives them (NaN: a double not sent)."""
    doubles = [getattr(point, f) if point.HasField(f) else math.nan for f in ("sum", "min", "max")]
    return (
        list(point.attributes), point.explicit_bounds,
        point.bucket_counts if point.HasField("bucket_counts") else None,
        point.start_time_unix_nano, point.time_unix_nano, point.count, *map(repr, doubles),
    )  # fmt: skip


def read_back(columns: otlp_wire.Columns) -> list[tuple[Any, ...]]:
    buckets = columns.buckets
    numbers = [columns.start.tolist(), columns.end.tolist(), columns.count.tolist()]
    doubles = [list(map(repr, c.tolist())) for c in (columns.total, columns.low, columns.high)]
    return [
        (otlp_wire.attributes(run), columns.bounds,
         None if buckets is None else buckets[i].astype("<u8").tobytes(),
         *(c[i] for c in numbers), *(c[i] for c in doubles))
        for i, run in enumerate(columns.attributes)
    ]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histograms())
def test_read_gives_the_fields_the_view_gives(histogram: Histogram) -> None:
    serialized = histogram.SerializeToString()
    columns = otlp_wire.read(otlp_wire.points(serialized)[0])
    # a run that is not only attributes (an unknown field at the end, say): not the layout
    whole = columns is not None and None not in map(otlp_wire.attributes, columns.attributes)
    event(f"read answered: {whole}")
    if columns is not None and whole:
        assert read_back(columns) == [viewed(p) for p in view(serialized)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histograms(), st.sampled_from(["s", "ms"]), st.sampled_from(["query", "event"]))
def test_parse_through_the_wire_answers_as_the_reference(
    histogram: Histogram, unit: str, kind: str
) -> None:
    name = otlp.QUERY_METRIC if kind == "query" else otlp.EVENT_METRIC
    if kind == "event":  # the event's name where the outcome was
        for p in histogram.data_points:
            for kv in p.attributes:
                if kv.key == "abtest.outcome":
                    kv.key = "abtest.event"
    request = export_request([Metric(name=name, unit=unit, histogram=histogram)])
    expected = reference(request)
    taken: list[bool] = []
    original = otlp._wire_chunk

    def spy(*args: Any) -> Any:
        answer = original(*args)
        taken.append(answer is not None)
        return answer

    for chunk in (4096, 4096, 3):  # again from the remembered identities; in small chunks
        with patch.object(otlp, "_CHUNK", chunk), patch.object(otlp, "_wire_chunk", spy):
            got = parse(request, LIMITS, now=NOW)
        assert [same(p) for p in got.points] == [same(p) for p in expected.points]
        assert refusals(got.refused) == refusals(expected.refused)
    event(f"wire chunk taken: {any(taken)}")


def test_steady_points_are_read_from_the_wire() -> None:
    """The usual export does take the wire (else the tests above prove little)."""
    points = [query_point(f"b{i}", [1, 2], 2) for i in range(5)]
    histogram = Histogram(data_points=points, aggregation_temporality=CUMULATIVE)
    columns = otlp_wire.read(otlp_wire.points(histogram.SerializeToString())[0])
    assert columns is not None
    assert columns.bounds == struct.pack("<d", 0.5) and columns.count.tolist() == [3] * 5
    request = export_request([Metric(name=otlp.QUERY_METRIC, unit="s", histogram=histogram)])
    with patch.object(otlp, "view", side_effect=AssertionError("viewed")):
        parsed = parse(request, LIMITS, now=NOW)
    assert parsed.chunks is not None and len(parsed.points) == 5


def test_a_run_that_is_not_only_attributes_is_not_taken_for_them() -> None:
    run = text("abtest.branch", "b0").SerializeToString()
    assert otlp_wire.attributes(b"\x4a" + bytes([len(run)]) + run) == [run]
    assert otlp_wire.attributes(b"\x4a" + bytes([len(run)]) + run + b"\x42\x00") is None


def test_identities_by_run_are_bounded_and_kept_apart_by_scope() -> None:
    runs = Runs(size=3)
    runs.put(1, b"a", "1a")
    runs.put(2, b"a", "2a")
    runs.put(2, b"a", "2a again")  # replaced, not counted twice
    assert runs.of(1) == {b"a": "1a"} and runs.of(2) == {b"a": "2a again"}
    runs.put(1, b"b", "1b")
    runs.put(1, b"c", "1c")  # the fourth: all cleared first
    assert runs.of(1) == {b"c": "1c"} and runs.of(2) == {}


def test_an_attribute_that_mimics_min_and_max_is_not_cut_off() -> None:
    """The run ends where the first point's min and max begin: in a point without them,
    a string attribute whose last bytes look like them is not taken for them."""
    names = [text("abtest.experiment", "e"), text("abtest.branch", "b"),
             text("abtest.outcome", "success")]  # fmt: skip
    fields: dict[str, Any] = {"start_time_unix_nano": 1, "time_unix_nano": 2, "count": 1,
                              "sum": 0.5, "bucket_counts": [1]}  # fmt: skip
    mimic = "Y" + "A" * 8 + "a" + "B" * 8  # 0x59 (min), 8 bytes, 0x61 (max), 8 bytes
    points = [
        HistogramDataPoint(attributes=names, min=0.5, max=0.5, **fields),
        HistogramDataPoint(attributes=[*names, text("service", mimic)], **fields),
    ]
    assert points[1].SerializeToString().endswith(mimic.encode())
    histogram = Histogram(data_points=points, aggregation_temporality=CUMULATIVE)
    request = export_request([Metric(name=otlp.QUERY_METRIC, unit="s", histogram=histogram)])
    expected = reference(request)
    got = parse(request, LIMITS, now=NOW)
    assert [same(p) for p in got.points] == [same(p) for p in expected.points]
    assert len(got.points) == 2 and got.points[1].low != got.points[1].low  # min: not sent
