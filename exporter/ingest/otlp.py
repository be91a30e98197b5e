"""OTLP metrics in: our two histogram conventions, turned into aggregate increments.

`abtest.query.duration` (unit `s` or `ms`; attributes `abtest.experiment`,
`abtest.branch`, `abtest.outcome` = success | failure) and `abtest.event.value`
(attributes `abtest.experiment`, `abtest.branch`, `abtest.event`).

Two phases, so that nothing is half-applied:
1. `parse` checks every point (names, ranges, buckets) without touching any state;
   a bad point is refused on its own and changes nothing.
2. `Receiver.increments` (called by `ABMetrics` under its lock) turns the good
   points into increments against the last point of the same stream (resource,
   scope, metric, attributes), and `Receiver.commit` moves the streams on only for
   the increments that were applied; a point refused by a limit leaves its stream
   where it was.

Cumulative: a changed start time or a value that went down is an app restart and
the whole point is the increment; a point at or before the stream's last time is
a retry or a late arrival and is skipped. Delta: added as they come; an exact
repeat of a remembered window is a retry, one overlapping a remembered window (or
older than all of them) is refused.

Stream state is bounded: past `max_streams` new streams are refused (never a live
one pushed out), and a stream silent for `stream_ttl` is forgotten; the latest end
time of any forgotten stream becomes the *horizon*. A cumulative stream seen for
the first time whose start is at or before the horizon may be one we forgot, so
its point only sets the baseline (counted in
`abtest_exporter_otlp_uncertain_points_total`): an app that was merely paused sends
the same totals again and loses nothing. A delta point ending at or before the
horizon is refused as possibly counted. Forgetting never counts anything twice.

Bucket bounds are re-binned onto the aggregate's: each source bucket goes to the
first of our buckets whose upper bound is at or above its own, so cumulative
counts are never overstated and are exact when the app uses our bounds. The
latency variance (for the Welch test) is estimated as for grouped data.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import hashlib
import itertools
import json
import logging
import math
import operator
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise, repeat
from typing import Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt
from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    DataPointFlags,
    Histogram,
    HistogramDataPoint,
    Metric,
)

from ..core.aggregate import BranchKey, EventKey, EventParts, PartColumns
from ..core.validation import (
    MAX_ABS_EVENT_VALUE,
    MAX_COUNT,
    MAX_LATENCY_MS,
    MAX_NAME_LENGTH,
    name_problem,
)
from . import otlp_envelope as envelope
from . import otlp_plain as plain_
from . import otlp_state as state_
from . import otlp_wire as wire
from .otlp_columns import Memo, Runs, Table, bucket_rows, bucket_table, checked_table, doubtful
from .otlp_state import Stream as _Stream
from .otlp_view import view

QUERY_METRIC: Final = "abtest.query.duration"
EVENT_METRIC: Final = "abtest.event.value"
EXPERIMENT: Final = "abtest.experiment"
BRANCH: Final = "abtest.branch"
OUTCOME: Final = "abtest.outcome"
EVENT: Final = "abtest.event"
_UNIT_TO_MS: Final = {"s": 1000.0, "ms": 1.0}
_DELTA: Final = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
_CUMULATIVE: Final = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_NO_RECORDED_VALUE: Final = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
_QUERY_KEYS: Final = (EXPERIMENT, BRANCH)
_EVENT_KEYS: Final = (EXPERIMENT, BRANCH, EVENT)
_CONVENTION_KEYS: Final = frozenset((EXPERIMENT, BRANCH, OUTCOME, EVENT))
_MAX_MESSAGES = 5
_WINDOWS = 16  # delta windows remembered per stream, to recognise retries
# bucket bounds beyond this (in the metric's unit) mean nothing for us and would let
# the spread estimate overflow
_MAX_ABS_BOUND: Final = 1e15
# a point later than this past our clock would silence its stream (and, once forgotten,
# every stream behind the horizon): app clocks may run ahead, not years ahead
_MAX_CLOCK_AHEAD_NS: Final = 600 * 10**9
_MAX_MESSAGE_NAME = 64  # characters of a foreign metric name echoed back in a message

StreamKey = bytes  # blake2b-128 of (resource, scope, metric, attributes)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OtlpLimits:
    max_name_length: int = MAX_NAME_LENGTH
    max_bounds: int = 100  # explicit_bounds per point
    max_bounds_sets: int = 1000  # distinct explicit_bounds held at once
    max_streams: int = 100_000  # stream states held
    stream_ttl: float = 3600.0  # seconds of silence before a stream's state is forgotten


class DecodeError(ValueError):
    """The payload is not an OTLP metrics request: answered with 400, nothing applied."""


def decode(body: bytes, content_type: str) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    try:
        if content_type == "application/x-protobuf":
            request.ParseFromString(body)
        else:
            data = json.loads(body) if body.strip() else {}
            if not isinstance(data, dict):
                raise DecodeError("the JSON body must be an object")
            if data and not ({"resourceMetrics", "resource_metrics"} & set(data)):
                raise DecodeError(
                    "not an OTLP metrics request (no resourceMetrics); JSON batches of "
                    "records go to /api/v1/records"
                )
            _hex_ids_to_base64(data)
            json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except DecodeError:
        raise
    except Exception as exc:  # protobuf and json raise several unrelated types
        raise DecodeError(f"cannot decode the {content_type} body: {exc}"[:500]) from None
    return request


def encode(response: ExportMetricsServiceResponse, content_type: str) -> bytes:
    if content_type == "application/x-protobuf":
        return bytes(response.SerializeToString())
    return json_format.MessageToJson(response, indent=None).encode()


def _hex_ids_to_base64(data: Any) -> None:
    """OTLP/JSON writes trace and span ids as hex, protobuf's JSON mapping wants base64."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ("traceId", "spanId", "trace_id", "span_id") and isinstance(value, str):
                with contextlib.suppress(ValueError):  # not hex: let the parser report it
                    data[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                _hex_ids_to_base64(value)
    elif isinstance(data, list):
        for item in data:
            _hex_ids_to_base64(item)


# -- phase 1: checking points (no state) ---------------------------------------------


@dataclass(slots=True)
class Point:
    """One checked data point, in the metric's own unit (`factor` converts to ms)."""

    stream: StreamKey
    query: bool
    names: tuple[str, ...]  # (experiment, branch) or (experiment, branch, event)
    success: bool
    delta: bool
    start: int
    end: int
    count: int
    total: float  # NaN: not sent
    low: float  # NaN: not sent
    high: float
    buckets: list[int]
    bounds: tuple[float, ...]
    factor: float


@dataclass
class Refusals:
    """What was refused and why: records (a point's count) by reason, and messages."""

    points: int = 0
    records: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def refuse(self, reason: str, message: str, records: int = 1, points: int = 1) -> None:
        self.points += points
        self.records[reason] += records
        if len(self.messages) < _MAX_MESSAGES and message not in self.messages:
            self.messages.append(message)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Points of one histogram chunk that all passed the columnar checks, kept as the
    columns they were checked in (one bounds tuple, one bucket table): the common case
    reaches `Receiver` without a `Point` per point. `points()` gives them as Points."""

    identities: list[_Identity]
    query: bool
    delta: bool
    factor: float
    bounds: tuple[float, ...]
    start: list[int]
    end: list[int]
    count: list[int]
    total: list[float]  # NaN: not sent
    low: list[float]  # NaN: not sent
    high: list[float]
    buckets: npt.NDArray[np.int64]  # one row per point
    # the numbers as arrays too, by field name: as read (`otlp_wire`), or made once here
    arrays: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    def array(self, name: Literal["start", "end", "count", "total", "low", "high"]) -> Any:
        """A column of numbers as an array (uint64 times and counts, float64 values)."""
        found = self.arrays.get(name)
        if found is None:
            kind = np.float64 if name in ("total", "low", "high") else np.uint64
            found = self.arrays[name] = np.array(getattr(self, name), dtype=kind)
        return found

    def points(self) -> list[Point]:
        query, delta, factor, bounds = self.query, self.delta, self.factor, self.bounds
        return [
            Point(i.stream, query, i.names, i.success, delta, start, end, count, total, low,
                  high, row, bounds, factor)
            for i, start, end, count, total, low, high, row in zip(
                self.identities, self.start, self.end, self.count, self.total, self.low,
                self.high, self.buckets.tolist(), strict=True,
            )
        ]  # fmt: skip


class Parsed:
    """The checked points of a request, in order (as Points, or chunks of columns), and
    what was refused."""

    def __init__(self) -> None:
        self.refused = Refusals()
        self._parts: list[Chunk | list[Point]] = []

    def add(self, point: Point) -> None:
        last = self._parts[-1] if self._parts else None
        if isinstance(last, list):
            last.append(point)
        else:
            self._parts.append([point])

    def add_chunk(self, chunk: Chunk) -> None:
        self._parts.append(chunk)

    @property
    def chunks(self) -> list[Chunk] | None:
        """The points as chunks of columns, or None if some are Points."""
        parts = self._parts
        return None if any(isinstance(p, list) for p in parts) else parts  # type: ignore[return-value]

    @property
    def points(self) -> list[Point]:
        """Every point as a Point (the chunks turned into Points once, for good)."""
        if len(self._parts) != 1 or not isinstance(self._parts[0], list):
            every: list[Point] = []
            for part in self._parts:
                every.extend(part if isinstance(part, list) else part.points())
            self._parts = [every]
        points = self._parts[0]
        assert isinstance(points, list)
        return points


def _records(point: HistogramDataPoint) -> int:
    """How many records a refused point stood for (1 when its count is not believable)."""
    return point.count if 0 < point.count <= MAX_COUNT else 1


def parse_body(
    body: bytes, content_type: str, limits: OtlpLimits, now: float | None = None
) -> Parsed:
    """`parse(decode(body, content_type))`, without building the request's messages when
    it is the usual export (`_parse_usual`). Raises DecodeError as `decode` does."""
    if content_type == "application/x-protobuf":
        parsed = _parse_usual(body, limits, now)
        if parsed is not None:
            return parsed
    return parse(decode(body, content_type), limits, now)


def _parse_usual(body: bytes, limits: OtlpLimits, now: float | None) -> Parsed | None:
    """Our histograms, every point of them in the wire's one layout and passing every
    check, read from the body's own bytes (`otlp_envelope`, `otlp_wire`): what `parse`
    answers for them. None for any other request: `parse` then takes it whole."""
    metrics = envelope.histograms(body)
    if metrics is None:
        return None
    out = Parsed()
    now_ns = int((time.time() if now is None else now) * 1e9)
    resources: dict[bytes, tuple[tuple[str, bytes], ...]] = {}
    scopes: dict[bytes, tuple[str, str]] = {}
    for metric in metrics:
        name, query = metric.name, metric.name == QUERY_METRIC
        if (
            (not query and name != EVENT_METRIC)
            or metric.temporality not in (_DELTA, _CUMULATIVE)
            or (query and metric.unit not in _UNIT_TO_MS)
            or not 0 < len(metric.points) <= _CHUNK
        ):
            return None
        try:
            if (resource := resources.get(metric.resource)) is None:
                attributes = envelope.resource(metric.resource).attributes
                resource = resources[metric.resource] = _attribute_key(attributes)
            if (scope := scopes.get(metric.scope)) is None:
                found = envelope.scope(metric.scope)
                scope = scopes[metric.scope] = (found.name, found.version)
            factor = _UNIT_TO_MS[metric.unit] if query else 1.0
            delta = metric.temporality == _DELTA
            chunk = _wire_chunk(
                (resource, scope, name), name, delta, factor, metric.points, limits, now_ns
            )
        except ProtobufDecodeError:
            return None
        if chunk is None:
            return None
        out.add_chunk(chunk)
    return out


def parse(
    request: ExportMetricsServiceRequest, limits: OtlpLimits, now: float | None = None
) -> Parsed:
    """Check every point of a request; no state is read or changed. `now` (unix seconds,
    default the wall clock) bounds how far ahead of us a point may be."""
    out = Parsed()
    now_ns = int((time.time() if now is None else now) * 1e9)
    for resource_metrics in request.resource_metrics:
        resource = _attribute_key(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            scope = (scope_metrics.scope.name, scope_metrics.scope.version)
            for metric in scope_metrics.metrics:
                _metric(out, (resource, scope, metric.name), metric, limits, now_ns)
    return out


def _metric(
    out: Parsed, prefix: tuple[Any, ...], metric: Metric, limits: OtlpLimits, now_ns: int
) -> None:
    kind = metric.WhichOneof("data")
    points = getattr(metric, kind).data_points if kind else ()
    refused = out.refused
    if metric.name not in (QUERY_METRIC, EVENT_METRIC):
        shown = metric.name[:_MAX_MESSAGE_NAME]
        refused.refuse("unknown_metric", f"{shown!r} is not an abtest metric", len(points),
                    len(points))  # fmt: skip
        return
    if kind != "histogram":
        refused.refuse(
            "wrong_type",
            f"{metric.name} must be an explicit-bucket histogram, not {kind}",
            len(points),
            len(points),
        )
        return
    temporality = metric.histogram.aggregation_temporality
    if temporality not in (_DELTA, _CUMULATIVE):
        total = sum(map(_records, metric.histogram.data_points))
        refused.refuse(
            "wrong_temporality",
            f"{metric.name}: temporality must be delta or cumulative",
            total,
            len(points),
        )
        return
    factor = 1.0
    if metric.name == QUERY_METRIC:
        if metric.unit not in _UNIT_TO_MS:
            total = sum(map(_records, metric.histogram.data_points))
            refused.refuse(
                "wrong_unit",
                f"{QUERY_METRIC}: unit must be s or ms, not {metric.unit!r}",
                total,
                len(points),
            )
            return
        factor = _UNIT_TO_MS[metric.unit]
    delta = temporality == _DELTA
    for chunk in _chunks(metric.histogram):
        checked = _columns(prefix, metric.name, delta, factor, chunk, limits, now_ns)
        if isinstance(checked, Chunk):
            out.add_chunk(checked)
            continue
        for index, answer in enumerate(checked):
            if answer:
                out.add(answer)
                continue
            if answer is None:  # no recorded value
                continue
            # doubted by the columnar checks: the point on its own decides, and says why
            point = chunk.data_points[index]
            good = _point(prefix, metric.name, delta, factor, point, limits, now_ns)
            if isinstance(good, Point):
                out.add(good)
            else:
                refused.refuse(*good, records=_records(point))


_VALUES: Final = ("sum", "min", "max")
# a view point's fields in one call: one pass over the points, no bytecode per field
_FIELDS: Final = operator.attrgetter(
    "flags", "attributes", "explicit_bounds", "bucket_counts", "count",
    "start_time_unix_nano", "time_unix_nano", *_VALUES,
)  # fmt: skip
# a repeated field's items as a list: a slice is one call, iterating it one per item (3x)
_ALL: Final = operator.itemgetter(slice(None))
_CHUNK: Final = 4096  # points viewed at once: a body of millions of tiny points stays small


def _chunks(histogram: Histogram) -> Iterable[Histogram]:
    points = histogram.data_points
    if len(points) <= _CHUNK:
        yield histogram
        return
    for low in range(0, len(points), _CHUNK):
        yield Histogram(data_points=points[low : low + _CHUNK])


def _columns(
    prefix: tuple[Any, ...],
    name: str,
    delta: bool,
    factor: float,
    histogram: Histogram,
    limits: OtlpLimits,
    now_ns: int,
) -> Chunk | list[Point | Literal[False] | None]:
    """Every point of a histogram checked column by column: a Point when it passes, False
    when it may not (`_point` decides and says why), None when it has no recorded value;
    a Chunk of them all when every point passes with the same bounds. Each check here is
    `_point`'s, or stricter; nothing passes that `_point` refuses."""
    serialized = histogram.SerializeToString()  # canonical: see `otlp_view`
    wired = _wire_chunk(prefix, name, delta, factor, wire.points(serialized)[0], limits, now_ns)
    if wired is not None:
        return wired
    points = view(serialized)
    size = len(points)
    query = name == QUERY_METRIC
    identities, shapes = _IDENTITIES.answers, _SHAPES.answers
    identity_scope = _IDENTITIES.scope((prefix, name, limits.max_name_length))
    shape_scope = _SHAPES.scope((name, limits.max_bounds))
    if not size:
        return []
    # every field of every point in one pass (one C call per point), then as columns
    columns = zip(*map(_FIELDS, points), strict=True)
    flags, attribute_lists, packed_bounds, raw, count, start, end, total, low, high = map(
        list, columns
    )
    skip: npt.NDArray[np.bool_] = np.zeros(size, dtype=bool)
    if any(flags):
        skip = (np.array(flags, dtype=np.uint64) & _NO_RECORDED_VALUE) != 0
    # (scope, *attributes) per point, built by C loops: map, slice, tuple and concatenation
    listed = map(tuple, map(_ALL, attribute_lists))
    keys = list(map(operator.add, repeat((identity_scope,), size), listed))
    found: list[_Identity | None] = list(map(identities.get, keys))
    if not all(found):  # (`None in` would call each identity's dataclass __eq__)
        for i in [i for i, identity in enumerate(found) if identity is None]:
            attributes = map(KeyValue.FromString, keys[i][1:])
            answer = _identity(prefix, name, attributes, limits)
            # remembered only when small: the memo is bounded in entries, not in bytes
            small = sum(map(len, keys[i][1:])) <= _MEMO_MAX_BYTES
            found[i] = identities.put(keys[i], answer) if small else cast(Any, answer)
    uniform = packed_bounds.count(packed_bounds[0]) == size
    if uniform:  # one bounds: one lookup
        shape = _bounds_shape(shapes, shape_scope, name, query, packed_bounds[0], limits)
        shaped = [shape] * size
        bounds: list[tuple[float, ...] | None] = [shape[0]] * size
    else:
        shaped = [_bounds_shape(shapes, shape_scope, name, query, b, limits) for b in packed_bounds]
        bounds = [shape[0] for shape in shaped]
    if uniform and shaped[0][1] is None and set(map(type, found)) == {_Identity}:
        doubt = np.zeros(size, dtype=bool)  # the usual case: all identified, good bounds
    else:
        doubt = np.array(
            [
                not isinstance(i, _Identity) or sh[1] is not None
                for i, sh in zip(found, shaped, strict=True)
            ],
            dtype=bool,
        ).reshape(size)
    doubt &= ~skip
    if doubt.any() or skip.any():  # as if never read: None where no Point may come
        for i in np.flatnonzero(doubt | skip).tolist():
            found[i] = bounds[i] = None
    values = np.array([total, low, high], dtype=np.float64).reshape(3, size)
    unsent = np.isnan(values).any(axis=0) & ~(doubt | skip)  # not sent, or a sent NaN
    for i in np.flatnonzero(unsent).tolist():
        v, p = (total[i], low[i], high[i]), points[i]
        doubt[i] = any(p.HasField(f) for f, x in zip(_VALUES, v, strict=True) if x != x)
    doubt |= doubtful(
        query, delta, factor, count, start, end, total, low, high, now_ns, _MAX_CLOCK_AHEAD_NS
    )
    edges = bounds[0]
    if uniform and edges is not None and not (doubt.any() or skip.any()):
        table = bucket_table(raw, len(edges) + 1, count)
        if table is not None:  # every point passed: its columns go on as they are
            identified = cast(list[_Identity], found)  # none doubted: all identified
            return Chunk(identified, query, delta, factor, edges, start, end, count, total,
                         low, high, table)  # fmt: skip
    buckets = bucket_rows(raw, bounds, count, doubt | skip)
    skipped, doubted = skip.tolist(), doubt.tolist()  # numpy's items are slow one by one
    result: list[Point | Literal[False] | None] = []
    for i in range(size):
        identity, row, edges = found[i], buckets[i], bounds[i]
        if skipped[i]:
            result.append(None)
        elif doubted[i] or identity is None or row is None or edges is None:
            result.append(False)
        else:
            result.append(Point(
                identity.stream, query, identity.names, identity.success, delta, start[i],
                end[i], count[i], total[i], low[i], high[i], row, edges, factor,
            ))  # fmt: skip
    return result


def _wire_chunk(
    prefix: tuple[Any, ...],
    name: str,
    delta: bool,
    factor: float,
    points: list[bytes],
    limits: OtlpLimits,
    now_ns: int,
) -> Chunk | None:
    """The usual histogram at its cheapest: points of one layout (`otlp_wire`), every one
    of them passing `_columns`' checks; None for any other (`_columns` then decides).
    Raises DecodeError (protobuf's) for a new run of attributes that does not parse."""
    columns = wire.read(points)
    if columns is None:
        return None
    query = name == QUERY_METRIC
    scope = _IDENTITIES.scope((prefix, name, limits.max_name_length))
    runs = columns.attributes
    identities = _RUN_IDENTITIES.of(scope)
    found: list[_Identity | tuple[str, str] | None] = list(map(identities.get, runs))
    if not all(found):
        for i in [i for i, identity in enumerate(found) if identity is None]:
            listed = wire.attributes(runs[i])
            if listed is None:
                return None
            # (as deep as in a request: the body may not have been parsed as one)
            identity = _identity(prefix, name, envelope.attributes(listed), limits)
            small = len(runs[i]) <= _MEMO_MAX_BYTES  # (as in `_columns`)
            found[i] = _RUN_IDENTITIES.put(scope, runs[i], identity) if small else identity
    if set(map(type, found)) != {_Identity}:
        return None
    shapes = _SHAPES.answers
    shape_scope = _SHAPES.scope((name, limits.max_bounds))
    edges, problem = _bounds_shape(shapes, shape_scope, name, query, columns.bounds, limits)
    if problem is not None:
        return None
    c = columns
    if doubtful(
        query, delta, factor, c.count, c.start, c.end, c.total, c.low, c.high, now_ns,
        _MAX_CLOCK_AHEAD_NS,
    ).any():  # fmt: skip
        return None
    table = checked_table(columns.buckets, len(edges) + 1, c.count)
    if table is None:
        return None
    identified = cast(list[_Identity], found)
    lists = (c.start.tolist(), c.end.tolist(), c.count.tolist(), c.total.tolist(),
             c.low.tolist(), c.high.tolist())  # fmt: skip
    arrays = {"start": c.start, "end": c.end, "count": c.count, "total": c.total, "low": c.low,
              "high": c.high}  # fmt: skip
    return Chunk(identified, query, delta, factor, edges, *lists, table, arrays)


def _point(
    prefix: tuple[Any, ...],
    name: str,
    delta: bool,
    factor: float,
    point: HistogramDataPoint,
    limits: OtlpLimits,
    now_ns: int,
) -> Point | tuple[str, str]:
    """One point checked on its own: the reference the columnar path answers to, and
    the path that names what is wrong with a point the columnar checks doubt."""
    identity = _identity(prefix, name, point.attributes, limits)
    if not isinstance(identity, _Identity):
        return identity
    query = name == QUERY_METRIC
    bounds = tuple(point.explicit_bounds)
    problem = _bounds_problem(name, query, bounds, limits)
    if problem:
        return problem
    count = point.count
    if count > MAX_COUNT:
        return "invalid_value", f"{name}: count must be at most {MAX_COUNT}"
    buckets = list(point.bucket_counts)
    if not buckets:
        buckets = [count] if not bounds else []
    if len(buckets) != len(bounds) + 1:
        return (
            "invalid_point",
            f"{name}: bucket_counts must have one more entry than explicit_bounds",
        )
    if sum(buckets) != count:
        return "invalid_point", f"{name}: bucket_counts must add up to count"
    start, end = point.start_time_unix_nano, point.time_unix_nano
    if end < start:
        return "invalid_point", f"{name}: point ends before it starts"
    if end > now_ns + _MAX_CLOCK_AHEAD_NS:
        return "invalid_point", f"{name}: point is from the future (more than 10 min ahead)"
    if delta and not start:
        return "invalid_point", f"{name}: a delta point needs its start_time_unix_nano"
    sent = [v for v, has in ((point.sum, point.HasField("sum")), (point.min, point.HasField("min")),
                             (point.max, point.HasField("max"))) if has]  # fmt: skip
    if not all(map(math.isfinite, sent)):
        return "invalid_value", f"{name}: sum, min and max must be finite (no NaN)"
    nan = math.nan
    total = point.sum if point.HasField("sum") else nan
    low = point.min if point.HasField("min") else nan
    high = point.max if point.HasField("max") else nan
    value_problem = _value_problem(query, factor, count, total, low, high)
    if value_problem:
        return "invalid_value", f"{name}: {value_problem}"
    return Point(
        identity.stream, query, identity.names, identity.success, delta, start, end, count,
        total, low, high, buckets, bounds, factor,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Identity:
    """A point's stream and names, from its attributes (checked)."""

    stream: StreamKey
    names: tuple[str, ...]
    success: bool


def _identity(
    prefix: tuple[Any, ...], name: str, attributes: Iterable[KeyValue], limits: OtlpLimits
) -> _Identity | tuple[str, str]:
    # one pass over the attributes: ours must be strings, the rest only identify the stream
    ours: dict[str, str | None] = {}
    others: list[tuple[str, bytes]] = []
    for kv in attributes:
        key, value = kv.key, kv.value
        if key in _CONVENTION_KEYS:
            is_text = value.WhichOneof("value") == "string_value"
            ours[key] = value.string_value if is_text else None
        else:
            others.append((key, value.SerializeToString(deterministic=True)))
    query = name == QUERY_METRIC
    wanted = _QUERY_KEYS if query else _EVENT_KEYS
    names = tuple(ours.get(key) for key in wanted)
    for key, text in zip(wanted, names, strict=True):
        if text is None:
            return "missing_attribute", f"{name}: attribute {key} (a string) is required"
        problem = name_problem(text, limits.max_name_length)
        if problem:
            return "invalid_name", f"{name}: attribute {key} {problem}"
    success = True
    if query:
        outcome = ours.get(OUTCOME)
        if outcome not in ("success", "failure"):
            return "missing_attribute", f"{name}: attribute {OUTCOME} must be success or failure"
        success = outcome == "success"
    stream = stream_key(repr((*prefix, *names, ours.get(OUTCOME), tuple(sorted(others)))))
    checked = tuple(n for n in names if n is not None)  # all present: checked above
    return _Identity(stream, checked, success)


def _bounds_problem(
    name: str, query: bool, bounds: tuple[float, ...], limits: OtlpLimits
) -> tuple[str, str] | None:
    if len(bounds) > limits.max_bounds:
        return (
            "limit_otlp_bounds",
            f"{name}: at most {limits.max_bounds} explicit_bounds per point (got {len(bounds)})",
        )
    if any(a >= b for a, b in pairwise(bounds)) or not all(
        abs(b) <= _MAX_ABS_BOUND
        for b in bounds  # False for NaN too
    ):
        return (
            "invalid_point",
            f"{name}: explicit_bounds must be increasing and within ±{_MAX_ABS_BOUND:g}",
        )
    if query and bounds and bounds[0] < 0:
        return "invalid_point", f"{name}: durations have no negative bucket bounds"
    return None


def _bounds_shape(
    shapes: Table,
    scope: int,
    name: str,
    query: bool,
    packed: bytes,
    limits: OtlpLimits,
) -> tuple[tuple[float, ...], tuple[str, str] | None]:
    """Packed explicit_bounds as floats, and what is wrong with them (remembered)."""
    key = (scope, packed)
    shape: tuple[tuple[float, ...], tuple[str, str] | None] | None = shapes.get(key)
    if shape is None:
        whole = len(packed) - len(packed) % 8  # always whole once re-serialized
        values = tuple(np.frombuffer(packed[:whole], dtype="<f8").tolist())
        problem = _bounds_problem(name, query, values, limits)
        if whole != len(packed):
            problem = ("invalid_point", "")  # not expected: let `_point` decide
        shape = shapes.put(key, (values, problem))
    return shape


_IDENTITIES: Final = Memo(size=32_768)
# attributes remembered only up to this many bytes a point: the memos count entries, so
# a client sending a large attribute per point would otherwise pin 32k copies of it
_MEMO_MAX_BYTES: Final = 4096
_RUN_IDENTITIES: Final = Runs(size=32_768)  # the same, by the wire's attribute runs
_SHAPES: Final = Memo(size=256)


def _value_problem(
    query: bool, factor: float, count: int, total: float, low: float, high: float
) -> str | None:
    """Sum, min and max must be finite and within what single records may carry, so no
    total can overflow and no derived figure can become NaN."""
    present = [v for v in (total, low, high) if not math.isnan(v)]  # NaN: not sent
    if query:
        limit = MAX_LATENCY_MS / factor
        if any(v < 0 for v in present):
            return "durations must be >= 0"
        if not math.isnan(total) and total > count * limit:
            return f"sum must be at most count x {limit:g}"
        if any(v > limit for v in (low, high) if not math.isnan(v)):
            return f"min and max must be at most {limit:g}"
    else:
        if not math.isnan(total) and abs(total) > count * MAX_ABS_EVENT_VALUE:
            return f"sum must be within ±count x {MAX_ABS_EVENT_VALUE:g}"
        if any(abs(v) > MAX_ABS_EVENT_VALUE for v in (low, high) if not math.isnan(v)):
            return f"min and max must be within ±{MAX_ABS_EVENT_VALUE:g}"
    if not math.isnan(low) and not math.isnan(high) and low > high:
        return "min must not be above max"
    if count and not math.isnan(total):
        mean = total / count
        slack = 1e-9 * max(abs(mean), 1.0)
        if (not math.isnan(low) and mean < low - slack) or (
            not math.isnan(high) and mean > high + slack
        ):
            return "sum / count must lie between min and max"
    return None


def stream_key(identity: str) -> StreamKey:
    """A stream's identity (resource, scope, metric, attributes, as text) as a 16-byte
    digest: attributes of any size cost the same to remember (format 1 kept the text)."""
    return hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _attribute_key(attributes: Sequence[KeyValue]) -> tuple[tuple[str, bytes], ...]:
    """Identity of a resource: its attributes, order-independent."""
    return tuple(
        sorted((kv.key, kv.value.SerializeToString(deterministic=True)) for kv in attributes)
    )


# -- stream state --------------------------------------------------------------------


class Streams:
    """Last point per stream, least recently seen first; not locked (the owner locks).

    In memory only, the states are bounded in number (past `max_streams` new streams
    are refused, never a live one pushed out) and in time (a stream silent for `ttl`
    is forgotten, behind the horizon). With a data file (`cold` set), memory is a cache:
    a state leaves memory once it is on disk and is read back at the stream's next point,
    so nothing is lost; the file holds at most `max_stored` states and forgets only
    those silent for the store's retention (see `forget`)."""

    def __init__(
        self,
        max_streams: int = 100_000,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # least recently seen first: a state is re-inserted when its stream sends (a dict
        # keeps insertion order, and takes a key out and back in 4x faster than an
        # OrderedDict moves it to the end)
        self._states: dict[StreamKey, _Stream] = {}
        self._seen: dict[StreamKey, float] = {}  # the clock when each held stream last sent
        self.max_streams = max_streams
        self.max_stored = 10 * max_streams
        self.ttl = ttl
        self._clock = clock
        self.horizon = 0  # latest end time (ns) of any forgotten stream
        self.evicted = 0  # forgotten for good
        self.recalled = 0  # read back from disk
        self.stored = 0  # states in the data file (with a cold store)
        self.cold: Callable[[str], str | None] | None = None
        # changed and dropped since the store last took them; taken but not yet written
        self._changed: set[StreamKey] = set()
        self._dropped: set[StreamKey] = set()
        self._in_flight: set[StreamKey] = set()
        self._horizon_changed = False

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: StreamKey) -> _Stream | None:
        state = self._states.get(key)
        if state is None and self.cold is not None and key not in self._dropped:
            text = self.cold(repr(key))
            if text is not None:
                state = _load(text)
                self._seen[key] = self._clock()
                self._states[key] = state
                self.recalled += 1
        return state

    def seen(self, key: StreamKey) -> float:
        """The clock when a held stream last sent."""
        return self._seen[key]

    @property
    def held(self) -> dict[StreamKey, _Stream]:
        """The states in memory (none read back from disk): read only."""
        return self._states

    def room(self, new: int) -> bool:
        """Whether `new` more streams fit (with a data file, the states not yet written may
        overrun the memory bound by the new streams of one commit interval)."""
        if self.cold is not None:  # memory sheds written states at each request
            return self.stored + new <= self.max_stored
        return len(self._states) + new <= self.max_streams

    def put(self, key: StreamKey, state: _Stream, new: bool) -> None:
        """One state at a time: the reference `put_many` is held to (tests/test_otlp_fast)."""
        self._seen[key] = self._clock()
        states = self._states
        states.pop(key, None)  # (re)inserted: last in the order
        states[key] = state
        self._changed.add(key)
        self._dropped.discard(key)
        self.stored += new

    def put_many(self, states: dict[StreamKey, _Stream], new: set[StreamKey]) -> None:
        """Keep each of `states`, in order, as the most recently seen (`new`: those seen
        for the first time), at one reading of the clock: they arrived together."""
        self._seen.update(zip(states, repeat(self._clock())))
        held = self._states
        # each taken out, then all put back in order: last, as `put` leaves them (C loops)
        deque(map(held.pop, states, repeat(None)), maxlen=0)
        held.update(states)
        # one key at a time as `put` adds them (a dict would presize the set: another
        # iteration order, so another order of rows in the file and after a restart)
        self._changed.update(iter(states))
        self._dropped.difference_update(states)
        self.stored += len(new & states.keys())

    def expire(self) -> None:
        """Memory only: forget streams silent for longer than the ttl, behind the horizon.
        With a data file: let clean states silent for the ttl, or past `max_streams`, go
        from memory (they are on disk)."""
        states, seen, cutoff = self._states, self._seen, self._clock() - self.ttl
        if self.cold is None:
            # the silent ones found in one pass, then deleted: a dict has no cheap first
            # item once items before it were deleted (`next(iter(...))` after each delete
            # would skip every one deleted before it: quadratic)
            gone = []
            for key, oldest in states.items():
                if seen[key] >= cutoff:
                    break
                gone.append((key, oldest))
            for key, oldest in gone:
                del states[key], seen[key]
                self._forgotten(key, oldest[state_.TIME])
            return
        excess = len(states) - self.max_streams
        for key in list(states):
            if excess <= 0 and seen[key] >= cutoff:
                break
            if key not in self._changed and key not in self._in_flight:
                del states[key], seen[key]
                excess -= 1

    def forget(self, keys: Iterable[tuple[StreamKey, int]]) -> None:
        """Forget these (key, last time) states for good: the store's retention, which
        read them from the file unlocked; one in memory has sent since, and stays."""
        for key, last in keys:
            if key in self._states or key in self._dropped:
                continue
            self.stored -= 1
            self._forgotten(key, last)

    def _forgotten(self, key: StreamKey, last: int) -> None:
        self.horizon = max(self.horizon, last)
        self._horizon_changed = True
        self._dropped.add(key)
        self.evicted += 1

    def take_changes(self) -> StreamChanges:
        """The states to write and the keys to delete since the last call, as text."""
        changed, dropped = self._changed, self._dropped
        self._changed, self._dropped = set(), set()
        self._in_flight = changed
        horizon = self.horizon if self._horizon_changed else None
        self._horizon_changed = False
        rows = [(repr(k), _dump(self._states[k])) for k in changed if k in self._states]
        return StreamChanges(changed, dropped, rows, [repr(k) for k in dropped], horizon)

    def written(self) -> None:
        """The last changes taken are on disk."""
        self._in_flight = set()

    def return_changes(self, changes: StreamChanges) -> None:
        """A write failed: mark them as changed again, for the next one."""
        self._changed |= {k for k in changes.changed if k in self._states}
        self._dropped |= {k for k in changes.dropped if k not in self._states}
        self._horizon_changed |= changes.horizon is not None
        self._in_flight = set()

    def load(self, rows: Iterable[tuple[StreamKey, str]], horizon: int, stored: int) -> None:
        """Restore states written by take_changes (seen now: their ttl starts again)."""
        self.horizon = horizon
        self.stored = stored
        now = self._clock()
        for key, text in rows:
            self._states[key] = _load(text)
            self._seen[key] = now


@dataclass(frozen=True, slots=True)
class StreamFigures:
    held: int
    evicted: int
    recalled: int


@dataclass(frozen=True, slots=True)
class StreamChanges:
    changed: set[StreamKey]
    dropped: set[StreamKey]
    rows: list[tuple[str, str]]  # (repr of the key, the state as JSON)
    gone: list[str]
    horizon: int | None  # to write, when it moved

    def __bool__(self) -> bool:
        return bool(self.rows or self.gone or self.horizon is not None)


def _dump(state: _Stream) -> str:
    start, end, count, total, buckets, bounds, windows = state
    return json.dumps(
        [start, end, count, None if math.isnan(total) else total,
         state_.counts(buckets).tolist(), bounds, windows.tolist()]
    )  # fmt: skip


def check_state(text: str) -> None:
    """Raise ValueError if a stored stream state is not a believable one."""
    _load(text)


def _load(text: str) -> _Stream:
    try:
        return _loaded(text)
    except (TypeError, OverflowError) as exc:  # a field of the wrong kind, or past int64
        raise ValueError(f"stream state out of range or of the wrong type: {exc}") from None


def _loaded(text: str) -> _Stream:
    start, end, count, total, buckets, bounds, windows = json.loads(text)
    for number in (start, end, count):
        if not isinstance(number, int) or not 0 <= number < 2**64:
            raise ValueError("stream times and counts must be non-negative integers")
    if total is None:
        total = math.nan
    elif not isinstance(total, int | float) or not math.isfinite(total):
        raise ValueError("stream sum must be finite")
    if len(buckets) != len(bounds) + 1 or sum(buckets) != count or min(buckets, default=0) < 0:
        raise ValueError("stream buckets must add up to its count")
    if len(windows) % 2 or end < start:
        raise ValueError("stream windows must be (start, end) pairs")
    return (
        start, end, count, float(total), state_.packed(buckets), tuple(map(float, bounds)),
        array("q", windows),
    )  # fmt: skip


# -- phase 2: increments (under the owner's lock) ------------------------------------


@dataclass
class Received:
    """What one request contributes: parts to apply, each tied to its stream, and the
    stream states to keep once they are applied."""

    branches: PartColumns = field(default_factory=lambda: PartColumns.joined([]))
    events: EventParts = field(default_factory=EventParts)
    branch_streams: list[StreamKey] = field(default_factory=list)
    event_streams: list[StreamKey] = field(default_factory=list)
    updates: dict[StreamKey, _Stream] = field(default_factory=dict)
    refused: Refusals = field(default_factory=Refusals)
    duplicates: int = 0  # points skipped as retries or late arrivals
    uncertain: int = 0  # cumulative points taken as a baseline (stream possibly forgotten)
    new_streams: int = 0
    created: set[StreamKey] = field(default_factory=set)  # streams seen for the first time

    def response(self) -> ExportMetricsServiceResponse:
        if not self.refused.points:
            return ExportMetricsServiceResponse()
        return ExportMetricsServiceResponse(
            partial_success=ExportMetricsPartialSuccess(
                rejected_data_points=self.refused.points,
                error_message="; ".join(self.refused.messages),
            )
        )


class Receiver:
    """Turns checked points into increments; holds the per-stream state."""

    def __init__(
        self,
        bounds: Sequence[float],
        limits: OtlpLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or OtlpLimits()
        self._bounds = tuple(bounds)
        self.streams = Streams(self.limits.max_streams, self.limits.stream_ttl, clock)
        self._rebin: dict[tuple[tuple[float, ...], float], list[int]] = {}
        # distinct bounds in use, shared by every stream that sends them (bounded)
        self._bounds_pool: dict[tuple[float, ...], tuple[float, ...]] = {}
        self._last_bounds: tuple[tuple[float, ...] | None, tuple[float, ...]] = (None, ())
        # an ingest replica sets this (unix ns of its start): a cumulative stream that
        # began before the replica and is new to it means streams are split across
        # replicas (README "Scaling out"), and its first point would count twice
        self.warn_started_before: int | None = None

    def increments(self, parsed: Parsed) -> Received:
        """The parts the points add; no stream changes until `commit`."""
        out = Received(refused=parsed.refused)
        pending: dict[tuple[str, int, float], _Pending] = {}
        self.streams.expire()
        if self._plain(out, pending, parsed.chunks):
            self._finish(out, pending)
            return out
        for point in parsed.points:
            refusal = self._increment(out, pending, point)
            if refusal is not None:
                out.refused.refuse(*refusal, records=point.count)
        self._finish(out, pending)
        return out

    def commit(self, received: Received, refused_streams: set[StreamKey]) -> None:
        """Move the streams whose increments were applied (or had none to apply)."""
        updates = received.updates
        if refused_streams:
            updates = {k: s for k, s in updates.items() if k not in refused_streams}
        self.streams.put_many(updates, received.created)

    def _plain(
        self,
        out: Received,
        pending: dict[tuple[str, int, float], _Pending],
        chunks: list[Chunk] | None,
    ) -> bool:
        """The whole request at once when every point came as columns (see `Chunk`), is
        cumulative and either a plain increment of a stream held in memory or the first
        of a stream new to us (with room for it; see `otlp_plain`); False otherwise, with
        nothing changed but the bounds pooled as `_increment` pools them. The answer is
        `_increment`'s, point for point, in the same order."""
        if not chunks:
            return False
        streams = self.streams
        held, horizon, warn = streams.held, streams.horizon, self.warn_started_before
        groups: dict[tuple[str, int, float], list[int]] = {}
        keys: list[list[StreamKey]] = []
        lasts: list[list[_Stream | None]] = []
        pooled: list[tuple[float, ...]] = []
        fresh: list[StreamKey] = []
        for index, chunk in enumerate(chunks):
            if chunk.delta:
                return False
            bounds = self._pooled(chunk.bounds)  # as `_increment` does, first thing
            if bounds is None:
                return False
            chunk_keys = list(map(_STREAM_OF, chunk.identities))
            last = list(map(held.get, chunk_keys))
            # all held with these bounds (`all`, not `None in`: no __eq__ per state)
            if not (all(last) and set(map(id, map(_BOUNDS_OF_STATE, last))) == {id(bounds)}):
                for key, state, start in zip(chunk_keys, last, chunk.start, strict=True):
                    if state is None:  # new: its point is the increment (or a baseline)
                        if streams.cold is not None or (warn is not None and start < warn):
                            return False  # it may be on disk; or the warning is due
                        fresh.append(key)
                    elif state[state_.BOUNDS] != bounds:
                        return False
            keys.append(chunk_keys)
            lasts.append(last)
            pooled.append(bounds)
            name = QUERY_METRIC if chunk.query else EVENT_METRIC
            groups.setdefault((name, id(bounds), chunk.factor), []).append(index)
        if len(set(itertools.chain.from_iterable(keys))) != sum(map(len, keys)):
            return False  # a stream twice: one by one
        if fresh and not streams.room(len(fresh)):
            return False
        offsets = list(itertools.accumulate(map(len, keys), initial=0))
        answers: list[tuple[tuple[str, int, float], list[int], plain_.Plain]] = []
        for shape, members in groups.items():
            parts = [chunks[j] for j in members]
            answer = plain_.plain(
                shape[0] == QUERY_METRIC,
                shape[2],
                _stacked([c.array("start") for c in parts]),
                _stacked([c.array("end") for c in parts]),
                _stacked([c.array("count") for c in parts]),
                _stacked([c.array("total") for c in parts]),
                np.concatenate([c.buckets for c in parts]) if len(parts) > 1 else parts[0].buckets,
                _joined([lasts[j] for j in members]),
                horizon,
            )
            if answer is None:
                return False
            answers.append((shape, members, answer))
        if horizon and fresh:
            out.uncertain += sum(
                start <= horizon
                for chunk, last in zip(chunks, lasts, strict=True)
                for start, state in zip(chunk.start, last, strict=True)
                if state is None
            )
        out.new_streams += len(fresh)
        out.created.update(fresh)
        updates = out.updates
        for chunk, chunk_keys, bounds in zip(chunks, keys, pooled, strict=True):
            states = zip(chunk.start, chunk.end, chunk.count, chunk.total, _rows(chunk.buckets),
                         repeat(bounds), repeat(state_.NO_WINDOWS))  # fmt: skip
            updates.update(zip(chunk_keys, states, strict=True))  # (zip's tuples: the states)
        # the pending groups in the order `_increment` would open them: by first point kept
        opened = []
        for shape, members, answer in answers:
            if len(answer.kept):  # where in the request the group's first kept point is
                first = int(answer.kept[0])
                for j in members:
                    if first < len(keys[j]):
                        opened.append((offsets[j] + first, shape, members, answer))
                        break
                    first -= len(keys[j])
        opened.sort(key=operator.itemgetter(0))
        for _, shape, members, answer in opened:
            group = pending[shape] = _Pending(pooled[members[0]], shape[2])
            group.extend([chunks[j] for j in members], answer)
        return True

    def _pooled(self, bounds: tuple[float, ...]) -> tuple[float, ...] | None:
        """The one kept copy of these bounds (kept now if new: every point's state then
        shares it); None when `max_bounds_sets` distinct ones are in use already."""
        pooled = self._bounds_pool.get(bounds)
        if pooled is None:
            if len(self._bounds_pool) >= self.limits.max_bounds_sets:
                return None
            pooled = self._bounds_pool[bounds] = bounds
        return pooled

    def _increment(
        self,
        out: Received,
        pending: dict[tuple[str, int, float], _Pending],
        point: Point,
    ) -> tuple[str, str] | None:
        # most points of a request share one bounds tuple (parse remembers them): a
        # tuple's hash is not cached, so the last one found is tried by identity first
        last_in, bounds = self._last_bounds
        if point.bounds is not last_in:
            pooled = self._pooled(point.bounds)
            if pooled is None:
                return (
                    "limit_otlp_bounds",
                    f"more than {self.limits.max_bounds_sets} distinct explicit_bounds in use",
                )
            bounds = pooled
            self._last_bounds = (point.bounds, bounds)
        key = point.stream
        state = out.updates.get(key)
        fresh = False  # new to us: neither in this request nor held
        if state is None:
            state = self.streams.get(key)
            fresh = state is None
        if fresh and not self.streams.room(out.new_streams + 1):
            return (
                "limit_otlp_streams",
                f"the limit of {self.limits.max_streams} OTLP streams is reached; "
                "streams silent for --otlp-stream-ttl are forgotten",
            )
        start, end, horizon = point.start, point.end, self.streams.horizon
        count, total, increments = point.count, point.total, point.buckets
        windows = state_.NO_WINDOWS
        if point.delta:
            if state is None:
                if horizon and end <= horizon:
                    return "stale_delta", "delta point older than forgotten stream state"
            else:
                windows = state[state_.WINDOWS]
                if start <= state[state_.TIME]:  # not simply the next window: a retry, or late
                    pairs = list(zip(windows[0::2], windows[1::2], strict=True))
                    if (start, end) in pairs:
                        out.duplicates += 1  # a retry: already counted
                        return None
                    # no windows: the state is a cumulative point's, whose counts already
                    # hold whatever this window says (`min` of none would raise)
                    overlaps = any(start < w_end and w_start < end for w_start, w_end in pairs)
                    if overlaps or not pairs:
                        return "non_monotonic_delta", "delta point overlaps an earlier one"
                    oldest = min(w_start for w_start, _ in pairs)
                    if len(pairs) >= _WINDOWS and start <= oldest:  # history cut short
                        return "stale_delta", "delta point older than the windows remembered"
            windows = array("q", [*windows[-2 * (_WINDOWS - 1) :], start, end])
        elif state is None:
            if self.warn_started_before is not None and start < self.warn_started_before:
                log.warning(
                    "a cumulative OTLP stream that started before this ingest replica reached "
                    "it mid-way: its first point counts its whole history here. Export delta "
                    "temporality, or route by stream with the Collector's loadbalancing "
                    "exporter (README: Scaling out)"
                )
                self.warn_started_before = None  # once: it is a set-up problem
            if horizon and start <= horizon:
                out.uncertain += 1  # we may have forgotten this stream: only a baseline
                count = 0
        else:
            if end <= state[state_.TIME]:
                out.duplicates += 1  # a retry or a late point: a later one holds its counts
                return None
            old = state_.counts(state[state_.BUCKETS])
            restarted = (
                start != state[state_.START]
                or point.count < state[state_.COUNT]
                or point.bounds != state[state_.BOUNDS]
                or any(map(operator.lt, point.buckets, old))  # same lengths here
            )
            if not restarted:
                count = point.count - state[state_.COUNT]
                total = total - state[state_.TOTAL]
                increments = list(map(operator.sub, point.buckets, old))
        limit = count * MAX_LATENCY_MS / point.factor
        if point.query and count > 0 and not math.isnan(total) and not 0 <= total <= limit:
            return "invalid_value", "cumulative duration sum went down or grew too fast"
        latest = max(end, state[state_.TIME]) if state is not None else end
        if fresh:
            out.new_streams += 1
            out.created.add(key)
        out.updates[key] = (
            start,
            latest,
            point.count,
            point.total,
            state_.packed(point.buckets),
            bounds,
            windows,
        )
        if count <= 0:
            return None
        name = QUERY_METRIC if point.query else EVENT_METRIC
        shape = (name, id(bounds), point.factor)  # pooled bounds: one object each, kept
        group = pending.get(shape)
        if group is None:
            group = pending[shape] = _Pending(bounds, point.factor)
        group.append(point, count, total, increments)
        return None

    def _finish(self, out: Received, pending: dict[tuple[str, int, float], _Pending]) -> None:
        """Spread, re-binning and parts for every pending point, vectorised per shape."""
        blocks: list[PartColumns] = []
        for (name, _, factor), group in pending.items():
            bounds = group.bounds
            low, high, m2, total = group.spread()
            numbers = group.numbers()
            n = numbers.count
            # an OTLP point carries no sum of squares: each part adds M2 + total²/n
            squares = m2 + np.square(total) / np.maximum(n.astype(np.float64), 1)
            if name == QUERY_METRIC:
                when = numbers.when
                blocks.append(PartColumns(
                    cast(list[BranchKey], group.names),  # (experiment, branch)
                    n, np.where(numbers.success, n, 0), total * factor, m2 * factor * factor,
                    low * factor, high * factor, when, when,
                    self._rebinned(numbers.increments, bounds, factor),
                    squares * factor * factor,
                ))  # fmt: skip
                out.branch_streams.extend(group.streams)
            else:
                events = out.events
                events.keys.extend(cast(list[EventKey], group.names))  # (.., event)
                events.count.extend(n.tolist())
                events.total.extend(total.tolist())
                events.m2.extend(m2.tolist())
                events.sq.extend(squares.tolist())
                out.event_streams.extend(group.streams)
        out.branches = PartColumns.joined(blocks)

    def _rebinned(
        self, increments: npt.NDArray[np.int64], bounds: tuple[float, ...], factor: float
    ) -> npt.NDArray[np.int64]:
        """Each row's counts in our buckets: the source buckets bound for one of ours added
        up. Bounds ascend, so each of ours takes a run of adjacent sources: one reduceat
        (an int64 product with a 0/1 matrix, as before, has no BLAS and cost 4x more)."""
        targets = np.array(self._targets(bounds, factor), dtype=np.intp)
        binned = np.zeros((len(increments), len(self._bounds) + 1), dtype=np.int64)
        if len(increments) == 0:
            return binned
        if (np.diff(targets) < 0).any():  # never for checked bounds; kept exact regardless
            np.add.at(binned.T, targets, increments.T)
            return binned
        firsts = np.flatnonzero(np.diff(targets, prepend=-1))  # where each run starts
        if len(firsts) == len(targets):  # one source each (an app on our buckets): moved
            binned[:, targets] = increments
            return binned
        binned[:, targets[firsts]] = np.add.reduceat(increments, firsts, axis=1)
        return binned

    def _targets(self, bounds: tuple[float, ...], factor: float) -> list[int]:
        """Our bucket for each source bucket: the first whose bound is >= the source's."""
        found = self._rebin.get((bounds, factor))
        if found is None:
            # source bounds in seconds; a relative tolerance absorbs ms -> s rounding
            seconds = [b * factor / 1000.0 for b in bounds]
            found = [bisect.bisect_left(self._bounds, s * (1 - 1e-12)) for s in seconds]
            found.append(len(self._bounds))  # +Inf stays +Inf
            if len(self._rebin) < self.limits.max_bounds_sets:
                self._rebin[(bounds, factor)] = found
        return found


def _rows(table: npt.NDArray[np.int64]) -> list[bytes]:
    """A table's rows packed as states hold them (see `otlp_state`), each bytes of its own: a
    state holding a view would keep its whole request's table alive for as long as the
    stream stays silent."""
    whole, size = table.tobytes(), 8 * table.shape[1]
    return [whole[i : i + size] for i in range(0, len(whole), size)]  # slices: copies


_STREAM_OF: Final = operator.attrgetter("stream")
_BOUNDS_OF_STATE: Final[Callable[[Any], Any]] = operator.itemgetter(state_.BOUNDS)
_NAMES_OF: Final = operator.attrgetter("names")
_SUCCESS_OF: Final = operator.attrgetter("success")


def _joined(lists: list[list[Any]]) -> list[Any]:
    """The lists one after the other (the only one itself, uncopied: read only)."""
    return lists[0] if len(lists) == 1 else [x for part in lists for x in part]


def _stacked(arrays: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """The arrays one after the other (the only one itself, uncopied: read only)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _shape(bounds: tuple[float, ...]) -> _Shape:
    """The bucket edges (the open outer edges provisional until min/max are known)."""
    if not bounds:
        return _Shape([0.0], [0.0])
    return _Shape([min(0.0, bounds[0]), *bounds], [*bounds, bounds[-1]])


@dataclass(frozen=True, slots=True)
class _Shape:
    lowers: list[float]
    uppers: list[float]


@dataclass(frozen=True, slots=True)
class _Numbers:
    """A pending group's numbers as arrays: its parts' arithmetic is done on these."""

    success: npt.NDArray[np.bool_]
    count: npt.NDArray[np.int64]
    total: npt.NDArray[np.float64]  # NaN: not sent
    low: npt.NDArray[np.float64]  # NaN: not sent
    high: npt.NDArray[np.float64]
    when: npt.NDArray[np.float64]  # end times, in unix seconds
    increments: npt.NDArray[np.int64]  # bucket increments, one row per point


class _Pending:
    """Points of one shape waiting for their arithmetic: appended one by one as parallel
    lists, or (the plain path) all at once as arrays."""

    def __init__(self, bounds: tuple[float, ...], factor: float) -> None:
        self.bounds, self.factor = bounds, factor
        self.shape = _shape(bounds)
        self.streams: list[StreamKey] = []
        self.names: list[tuple[str, ...]] = []
        self.success: list[bool] = []
        self.count: list[int] = []
        self.total: list[float] = []  # NaN: not sent
        self.low: list[float] = []  # NaN: not sent
        self.high: list[float] = []
        self.buckets: list[list[int]] = []
        self.when: list[float] = []
        self._numbers: _Numbers | None = None  # all at once: see `extend`

    def append(self, point: Point, count: int, total: float, buckets: list[int]) -> None:
        assert self._numbers is None  # one way or the other, never both
        self.streams.append(point.stream)
        self.names.append(point.names)
        self.success.append(point.success)
        self.count.append(count)
        self.total.append(total)
        self.low.append(point.low)
        self.high.append(point.high)
        self.buckets.append(buckets)
        self.when.append(point.end / 1e9)

    def extend(self, chunks: list[Chunk], answer: plain_.Plain) -> None:
        """Points whose increments `otlp_plain` took at once (`answer.kept` of them): their
        numbers stay arrays, never lists of Python numbers read back into arrays."""
        assert self._numbers is None and not self.streams
        kept = answer.kept
        identities = _joined([c.identities for c in chunks])
        low = _stacked([c.array("low") for c in chunks])
        high = _stacked([c.array("high") for c in chunks])
        # (times below 2**63: checked; to float64 they round as Python's int / float does)
        end = _stacked([c.array("end") for c in chunks])
        success = np.fromiter(map(_SUCCESS_OF, identities), dtype=bool, count=len(identities))
        if len(kept) != len(identities):
            identities = [identities[k] for k in kept.tolist()]
            low, high, end, success = low[kept], high[kept], end[kept], success[kept]
        self.streams.extend(map(_STREAM_OF, identities))
        self.names.extend(map(_NAMES_OF, identities))
        self._numbers = _Numbers(
            success, answer.count[kept], answer.total[kept], low, high,
            end.astype(np.float64) / 1e9, answer.buckets[kept],
        )  # fmt: skip

    def numbers(self) -> _Numbers:
        """The group's numbers as arrays (made once from the lists, if appended)."""
        if self._numbers is None:
            self._numbers = _Numbers(
                np.array(self.success, dtype=bool),
                np.array(self.count, dtype=np.int64),
                np.array(self.total, dtype=np.float64),
                np.array(self.low, dtype=np.float64),
                np.array(self.high, dtype=np.float64),
                np.array(self.when, dtype=np.float64),
                np.array(self.buckets, dtype=np.int64),
            )
        return self._numbers

    def spread(
        self,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
        """(min, max, M2, sum) per point: the outer edges closed by min and max when sent,
        each bucket's values spread evenly around its midpoint (grouped data), the sum
        estimated from the midpoints when it was not sent."""
        numbers = self.numbers()
        counts = numbers.increments.astype(np.float64)
        points = len(counts)
        low, high = numbers.low, numbers.high
        lowers = np.tile(np.array(self.shape.lowers), (points, 1))
        uppers = np.tile(np.array(self.shape.uppers), (points, 1))
        lowers[:, 0] = np.where(np.isnan(low), lowers[:, 0], low)
        uppers[:, -1] = np.where(np.isnan(high), uppers[:, -1], high)
        lowers[:, 0] = np.minimum(lowers[:, 0], uppers[:, 0])
        uppers[:, -1] = np.maximum(uppers[:, -1], lowers[:, -1])
        mids = (lowers + uppers) / 2.0
        total = numbers.total
        if np.isnan(total).any():  # (the estimate costs a pass over every bucket)
            total = np.where(np.isnan(total), (counts * mids).sum(axis=1), total)
        mean = total / numbers.count.astype(np.float64)
        widths = uppers - lowers
        m2 = (counts * (np.square(mids - mean[:, None]) + np.square(widths) / 12.0)).sum(axis=1)
        if np.isnan(low).any() or np.isnan(high).any():  # min or max not sent somewhere
            filled = counts > 0
            first = filled.argmax(axis=1)
            last = counts.shape[1] - 1 - filled[:, ::-1].argmax(axis=1)
            rows = np.arange(points)
            low = np.where(np.isnan(low), lowers[rows, first], low)
            high = np.where(np.isnan(high), uppers[rows, last], high)
        # buckets only bound what min and max were not sent for: the sum decides
        return np.minimum(low, mean), np.maximum(high, mean), m2, total
