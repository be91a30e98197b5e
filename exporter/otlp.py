"""OTLP metrics in: our two histogram conventions, turned into aggregate increments.

`abtest.query.duration` (unit `s` or `ms`; attributes `abtest.experiment`,
`abtest.branch`, `abtest.outcome` = success | failure) and `abtest.event.value`
(attributes `abtest.experiment`, `abtest.branch`, `abtest.event`).

Cumulative streams become increments against the last point of the same stream
(resource, scope, metric, attributes); a changed start time or a value that went
down means the app restarted, and the whole point is the increment. Delta
points are added as they come. A point at or before the stream's last time is a
duplicate or arrived out of order and is skipped, so retries never double count.

Bucket bounds are re-binned onto the aggregate's: each source bucket goes to the
first of our buckets whose upper bound is at or above its own, so cumulative
counts are never overstated and are exact when the app uses our bounds. The
latency variance (for the Welch test) is estimated as for grouped data: values
spread evenly within each bucket, with min/max closing the outer buckets when
the app sends them.
"""

from __future__ import annotations

import ast
import base64
import bisect
import contextlib
import json
import math
import operator
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import HistogramDataPoint, Metric

from .aggregate import BranchParts, EventParts
from .validation import MAX_NAME_LENGTH, name_problem

QUERY_METRIC: Final = "abtest.query.duration"
EVENT_METRIC: Final = "abtest.event.value"
EXPERIMENT: Final = "abtest.experiment"
BRANCH: Final = "abtest.branch"
OUTCOME: Final = "abtest.outcome"
EVENT: Final = "abtest.event"
_UNIT_TO_MS: Final = {"s": 1000.0, "ms": 1.0}
_DELTA, _CUMULATIVE = 1, 2
_NO_RECORDED_VALUE = 1
_QUERY_KEYS: Final = (EXPERIMENT, BRANCH)
_EVENT_KEYS: Final = (EXPERIMENT, BRANCH, EVENT)
_CONVENTION_KEYS: Final = frozenset((EXPERIMENT, BRANCH, OUTCOME, EVENT))
_MAX_MESSAGES = 5
_WINDOWS = 64


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


@dataclass(slots=True)
class _Stream:
    start: int
    time: int  # the latest end time seen
    count: int  # cumulative: the last point's figures
    total: float
    buckets: list[int]
    bounds: tuple[float, ...]
    windows: list[tuple[int, int]]  # delta: recent (start, end) windows, to spot retries
    seen: float = 0.0


class Streams:
    """Last point per stream, bounded (least recently seen dropped first) and expiring."""

    def __init__(
        self,
        max_streams: int = 100_000,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._states: OrderedDict[tuple[Any, ...], _Stream] = OrderedDict()
        self.max_streams = max_streams
        self.ttl = ttl
        self._clock = clock
        self._puts = 0
        self.evicted = 0
        # changed and dropped since the store last took them
        self.changed: set[tuple[Any, ...]] = set()
        self.dropped: set[tuple[Any, ...]] = set()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: tuple[Any, ...]) -> _Stream | None:
        return self._states.get(key)

    def put(self, key: tuple[Any, ...], state: _Stream) -> None:
        """Store as the most recently seen; drop the oldest when over the bound, and look
        for expired ones every 1024 puts (the oldest come first, so that is cheap)."""
        state.seen = self._clock()
        states = self._states
        states[key] = state
        states.move_to_end(key)
        self.changed.add(key)
        self._puts += 1
        if len(states) > self.max_streams or self._puts % 1024 == 0:
            self._expire(state.seen)

    def _expire(self, now: float) -> None:
        states = self._states
        while states:
            key, oldest = next(iter(states.items()))
            if len(states) <= self.max_streams and now - oldest.seen <= self.ttl:
                break
            del states[key]
            self.changed.discard(key)
            self.dropped.add(key)
            self.evicted += 1

    def take_changes(self) -> StreamChanges:
        """The states to write and the keys to delete since the last call, as text."""
        changed, dropped = self.changed, self.dropped
        self.changed, self.dropped = set(), set()
        rows = [(repr(k), _dump(self._states[k])) for k in changed if k in self._states]
        return StreamChanges(changed, dropped, rows, [repr(k) for k in dropped])

    def return_changes(self, changes: StreamChanges) -> None:
        """A write failed: mark them as changed again, for the next one."""
        self.changed |= changes.changed
        self.dropped |= changes.dropped

    def load(self, rows: Iterable[tuple[str, str]]) -> None:
        """Restore states written by take_changes (keys are literals: no code is run)."""
        now = self._clock()
        for key, state in rows:
            restored = _load(state)
            restored.seen = now
            self._states[ast.literal_eval(key)] = restored


@dataclass(frozen=True, slots=True)
class StreamChanges:
    changed: set[tuple[Any, ...]]
    dropped: set[tuple[Any, ...]]
    rows: list[tuple[str, str]]  # (repr of the key, the state as JSON)
    gone: list[str]

    def __bool__(self) -> bool:
        return bool(self.rows or self.gone)


def _dump(state: _Stream) -> str:
    return json.dumps(
        [state.start, state.time, state.count, state.total, state.buckets, state.bounds,
         state.windows]
    )  # fmt: skip


def _load(text: str) -> _Stream:
    start, end, count, total, buckets, bounds, windows = json.loads(text)
    return _Stream(start, end, count, total, buckets, tuple(bounds), [tuple(w) for w in windows])


@dataclass
class Received:
    """What one request contributes, and what it refused."""

    branches: BranchParts = field(default_factory=BranchParts)
    events: EventParts = field(default_factory=EventParts)
    queries: int = 0
    event_count: int = 0
    rejected: int = 0
    duplicates: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    # points accepted but not yet turned into parts, by (metric, bounds, unit factor)
    pending: dict[tuple[str, tuple[float, ...], float], _Pending] = field(default_factory=dict)

    def reject(self, reason: str, message: str, points: int = 1) -> None:
        self.rejected += points
        self.reasons[reason] += points
        if len(self.messages) < _MAX_MESSAGES and message not in self.messages:
            self.messages.append(message)

    def response(self) -> ExportMetricsServiceResponse:
        if not self.rejected:
            return ExportMetricsServiceResponse()
        return ExportMetricsServiceResponse(
            partial_success=ExportMetricsPartialSuccess(
                rejected_data_points=self.rejected, error_message="; ".join(self.messages)
            )
        )


class Receiver:
    """Turns OTLP requests into increments; holds the per-stream state."""

    def __init__(
        self,
        bounds: Sequence[float],
        streams: Streams | None = None,
        max_name_length: int = MAX_NAME_LENGTH,
    ) -> None:
        self._max_name_length = max_name_length
        self._bounds = tuple(bounds)
        self.streams = streams if streams is not None else Streams()
        self.lock = threading.Lock()
        self._rebin: dict[tuple[tuple[float, ...], float], list[int]] = {}
        self._shapes: dict[tuple[float, ...], _Shape | None] = {}
        self._good_names: set[str] = set()

    def receive(
        self,
        request: ExportMetricsServiceRequest,
        apply: Callable[[Received], None] | None = None,
    ) -> Received:
        """Turn a request into increments and, when given, `apply` them to the aggregate
        under the same lock as the stream state changes: the store, which takes that lock
        to copy both, never sees a stream advanced without its increments, or the reverse."""
        out = Received()
        with self.lock:
            for resource_metrics in request.resource_metrics:
                resource = _attribute_key(resource_metrics.resource.attributes)
                for scope_metrics in resource_metrics.scope_metrics:
                    scope = (scope_metrics.scope.name, scope_metrics.scope.version)
                    for metric in scope_metrics.metrics:
                        self._metric(out, (resource, scope, metric.name), metric)
            self._finish(out)
            if apply is not None:
                apply(out)
        return out

    def _metric(self, out: Received, stream_prefix: tuple[Any, ...], metric: Metric) -> None:
        kind = metric.WhichOneof("data")
        points = len(getattr(metric, kind).data_points) if kind else 0
        if metric.name not in (QUERY_METRIC, EVENT_METRIC):
            out.reject("unknown_metric", f"{metric.name!r} is not an abtest metric", points)
            return
        if kind != "histogram":
            out.reject(
                "wrong_type",
                f"{metric.name} must be an explicit-bucket histogram, not {kind}",
                points,
            )
            return
        temporality = metric.histogram.aggregation_temporality
        if temporality not in (_DELTA, _CUMULATIVE):
            out.reject(
                "wrong_temporality",
                f"{metric.name}: temporality must be delta or cumulative",
                points,
            )
            return
        factor = 1.0
        if metric.name == QUERY_METRIC:
            if metric.unit not in _UNIT_TO_MS:
                out.reject(
                    "wrong_unit",
                    f"{QUERY_METRIC}: unit must be s or ms, not {metric.unit!r}",
                    points,
                )
                return
            factor = _UNIT_TO_MS[metric.unit]
        for point in metric.histogram.data_points:
            if point.flags & _NO_RECORDED_VALUE:
                continue
            problem = self._point(out, stream_prefix, metric.name, temporality, factor, point)
            if problem is not None:
                out.reject(*problem)

    def _point(
        self,
        out: Received,
        stream_prefix: tuple[Any, ...],
        name: str,
        temporality: int,
        factor: float,
        point: HistogramDataPoint,
    ) -> tuple[str, str] | None:
        # one pass over the attributes: ours must be strings, the rest only identify the stream
        ours: dict[str, str | None] = {}
        others: list[tuple[str, bytes]] = []
        for kv in point.attributes:
            key, value = kv.key, kv.value
            if key in _CONVENTION_KEYS:
                is_text = value.WhichOneof("value") == "string_value"
                ours[key] = value.string_value if is_text else None
            else:
                others.append((key, value.SerializeToString(deterministic=True)))
        wanted = _EVENT_KEYS if name == EVENT_METRIC else _QUERY_KEYS
        names = [ours.get(key) for key in wanted]
        for key, text in zip(wanted, names, strict=True):
            if text is None:
                return "missing_attribute", f"{name}: attribute {key} (a string) is required"
            if text not in self._good_names:
                problem = name_problem(text, self._max_name_length)
                if problem:
                    return "invalid_name", f"{name}: attribute {key} {problem}"
                if len(self._good_names) < 100_000:
                    self._good_names.add(text)
        success = True
        if name == QUERY_METRIC:
            outcome = ours.get(OUTCOME)
            if outcome not in ("success", "failure"):
                return (
                    "missing_attribute",
                    f"{name}: attribute {OUTCOME} must be success or failure",
                )
            success = outcome == "success"
        bounds = tuple(point.explicit_bounds)
        shape = self._shape(bounds)
        if shape is None:
            return "invalid_point", f"{name}: explicit_bounds must be finite and increasing"
        buckets = list(point.bucket_counts)
        if not buckets:
            buckets = [point.count] if not bounds else []
        if len(buckets) != len(bounds) + 1:
            return (
                "invalid_point",
                f"{name}: bucket_counts must have one more entry than explicit_bounds",
            )
        if sum(buckets) != point.count:
            return "invalid_point", f"{name}: bucket_counts must add up to count"
        has_sum, has_min, has_max = (
            point.HasField("sum"),
            point.HasField("min"),
            point.HasField("max"),
        )
        for has, number in ((has_sum, point.sum), (has_min, point.min), (has_max, point.max)):
            if has and not math.isfinite(number):
                return "invalid_value", f"{name}: sum, min and max must be finite (no NaN)"
            if has and number < 0 and name == QUERY_METRIC:
                return "invalid_value", f"{name}: durations must be >= 0"

        stream = (*stream_prefix, *names, ours.get(OUTCOME), tuple(sorted(others)))
        state = self.streams.get(stream)
        start, end = point.start_time_unix_nano, point.time_unix_nano
        count, total, increments = point.count, point.sum if has_sum else math.nan, buckets
        windows: list[tuple[int, int]] = []
        if temporality == _DELTA:
            if end < start:
                return "non_monotonic_delta", f"{name}: delta point ends before it starts"
            if state is not None:
                windows = state.windows
                if start < state.time:  # not simply the next window: a retry, or late
                    if (start, end) in windows:
                        out.duplicates += 1  # a retry: already counted
                        return None
                    if any(start < w_end and w_start < end for w_start, w_end in windows):
                        return "non_monotonic_delta", f"{name}: delta point overlaps an earlier one"
            windows = [*windows[-(_WINDOWS - 1) :], (start, end)]
        elif state is not None:
            if end <= state.time:
                out.duplicates += 1  # a retry or a late point: a later one holds its counts
                return None
            restarted = (
                start != state.start
                or point.count < state.count
                or bounds != state.bounds
                or any(map(operator.lt, buckets, state.buckets))
            )
            if not restarted:
                count = point.count - state.count
                total = total - state.total
                increments = list(map(operator.sub, buckets, state.buckets))
        latest = max(end, state.time) if state is not None else end
        self.streams.put(
            stream,
            _Stream(
                start, latest, point.count, point.sum if has_sum else 0.0, buckets, bounds, windows
            ),
        )
        if count <= 0:
            return None
        # the arithmetic is done for all points of a request at once (see _finish)
        group = out.pending.get((name, bounds, factor))
        if group is None:
            group = out.pending[name, bounds, factor] = _Pending(shape)
        group.add(
            [text for text in names if text is not None],  # all present: checked above
            success,
            count,
            total,
            point.min if has_min else math.nan,
            point.max if has_max else math.nan,
            increments,
            end / 1e9,
        )
        return None

    def _finish(self, out: Received) -> None:
        """Spread, re-binning and parts for every pending point, vectorised per shape."""
        for (name, bounds, factor), group in out.pending.items():
            low, high, m2, total = group.spread()
            counts = group.count
            if name == QUERY_METRIC:
                binned = group.increments() @ self._rebin_matrix(bounds, factor)
                parts = out.branches
                parts.keys.extend((n[0], n[1]) for n in group.names)
                parts.n.extend(counts)
                parts.ok.extend(c if ok else 0 for c, ok in zip(counts, group.success, strict=True))
                parts.total_ms.extend((total * factor).tolist())
                parts.m2.extend((m2 * factor * factor).tolist())
                parts.lo.extend((low * factor).tolist())
                parts.hi.extend((high * factor).tolist())
                parts.first.extend(group.when)
                parts.last.extend(group.when)
                parts.buckets.extend(binned.tolist())
                out.queries += sum(counts)
            else:
                events = out.events
                events.keys.extend((n[0], n[1], n[2]) for n in group.names)
                events.count.extend(counts)
                events.total.extend(total.tolist())
                events.m2.extend(m2.tolist())
                out.event_count += sum(counts)
        out.pending.clear()

    def _rebin_matrix(self, bounds: tuple[float, ...], factor: float) -> npt.NDArray[np.int64]:
        matrix = np.zeros((len(bounds) + 1, len(self._bounds) + 1), dtype=np.int64)
        matrix[np.arange(len(bounds) + 1), self._targets(bounds, factor)] = 1
        return matrix

    def _shape(self, bounds: tuple[float, ...]) -> _Shape | None:
        """Checked once per distinct set of bounds: the bucket edges (the open outer edges
        provisional until min/max are known), midpoints and within-bucket variances."""
        found = self._shapes.get(bounds)
        if found is None and bounds not in self._shapes:
            if any(a >= b for a, b in pairwise(bounds)) or not all(map(math.isfinite, bounds)):
                found = None
            elif not bounds:
                found = _Shape([0.0], [0.0])
            else:
                found = _Shape([min(0.0, bounds[0]), *bounds], [*bounds, bounds[-1]])
            if len(self._shapes) < 1000:
                self._shapes[bounds] = found
        return found

    def _targets(self, bounds: tuple[float, ...], factor: float) -> list[int]:
        """Our bucket for each source bucket: the first whose bound is >= the source's."""
        found = self._rebin.get((bounds, factor))
        if found is None:
            # source bounds in seconds; a relative tolerance absorbs ms -> s rounding
            seconds = [b * factor / 1000.0 for b in bounds]
            found = [bisect.bisect_left(self._bounds, s * (1 - 1e-12)) for s in seconds]
            found.append(len(self._bounds))  # +Inf stays +Inf
            if len(self._rebin) < 1000:
                self._rebin[(bounds, factor)] = found
        return found


@dataclass(frozen=True, slots=True)
class _Shape:
    lowers: list[float]
    uppers: list[float]


class _Pending:
    """Points of one shape waiting for their arithmetic, as parallel lists."""

    def __init__(self, shape: _Shape) -> None:
        self.shape = shape
        self.names: list[list[str]] = []
        self.success: list[bool] = []
        self.count: list[int] = []
        self.total: list[float] = []  # NaN: not sent
        self.low: list[float] = []  # NaN: not sent
        self.high: list[float] = []
        self.buckets: list[list[int]] = []
        self.when: list[float] = []

    def add(
        self,
        names: list[str],
        success: bool,
        count: int,
        total: float,
        low: float,
        high: float,
        buckets: list[int],
        when: float,
    ) -> None:
        self.names.append(names)
        self.success.append(success)
        self.count.append(count)
        self.total.append(total)
        self.low.append(low)
        self.high.append(high)
        self.buckets.append(buckets)
        self.when.append(when)

    def increments(self) -> npt.NDArray[np.int64]:
        return np.array(self.buckets, dtype=np.int64)

    def spread(
        self,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
        """(min, max, M2, sum) per point: the outer edges closed by min and max when sent,
        each bucket's values spread evenly around its midpoint (grouped data), the sum
        estimated from the midpoints when it was not sent."""
        counts = self.increments().astype(np.float64)
        points = len(counts)
        low, high = np.array(self.low), np.array(self.high)
        lowers = np.tile(np.array(self.shape.lowers), (points, 1))
        uppers = np.tile(np.array(self.shape.uppers), (points, 1))
        lowers[:, 0] = np.where(np.isnan(low), lowers[:, 0], low)
        uppers[:, -1] = np.where(np.isnan(high), uppers[:, -1], high)
        lowers[:, 0] = np.minimum(lowers[:, 0], uppers[:, 0])
        uppers[:, -1] = np.maximum(uppers[:, -1], lowers[:, -1])
        mids = (lowers + uppers) / 2.0
        total = np.array(self.total)
        total = np.where(np.isnan(total), (counts * mids).sum(axis=1), total)
        mean = total / np.array(self.count, dtype=np.float64)
        widths = uppers - lowers
        m2 = (counts * (np.square(mids - mean[:, None]) + np.square(widths) / 12.0)).sum(axis=1)
        filled = counts > 0
        first = filled.argmax(axis=1)
        last = counts.shape[1] - 1 - filled[:, ::-1].argmax(axis=1)
        rows = np.arange(points)
        low = np.where(np.isnan(low), lowers[rows, first], low)
        high = np.where(np.isnan(high), uppers[rows, last], high)
        return low, high, m2, total


def _attribute_key(attributes: Sequence[KeyValue]) -> tuple[tuple[str, bytes], ...]:
    """Identity of a resource: its attributes, order-independent."""
    return tuple(
        sorted((kv.key, kv.value.SerializeToString(deterministic=True)) for kv in attributes)
    )
