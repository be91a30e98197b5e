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

import base64
import bisect
import contextlib
import json
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import HistogramDataPoint, Metric

from .aggregate import BranchParts, EventParts
from .validation import name_problem

QUERY_METRIC: Final = "abtest.query.duration"
EVENT_METRIC: Final = "abtest.event.value"
EXPERIMENT: Final = "abtest.experiment"
BRANCH: Final = "abtest.branch"
OUTCOME: Final = "abtest.outcome"
EVENT: Final = "abtest.event"
_UNIT_TO_MS: Final = {"s": 1000.0, "ms": 1.0}
_DELTA, _CUMULATIVE = 1, 2
_NO_RECORDED_VALUE = 1
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
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: tuple[Any, ...]) -> _Stream | None:
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
        return state

    def put(self, key: tuple[Any, ...], state: _Stream) -> None:
        state.seen = self._clock()
        self._states[key] = state
        self._states.move_to_end(key)
        self._expire(state.seen)

    def _expire(self, now: float) -> None:
        states = self._states
        while states:
            key, oldest = next(iter(states.items()))
            if len(states) <= self.max_streams and now - oldest.seen <= self.ttl:
                break
            del states[key]
            self.evicted += 1


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

    def __init__(self, bounds: Sequence[float], streams: Streams | None = None) -> None:
        self._bounds = tuple(bounds)
        self.streams = streams if streams is not None else Streams()
        self._lock = threading.Lock()
        self._rebin: dict[tuple[tuple[float, ...], float], list[int]] = {}

    def receive(self, request: ExportMetricsServiceRequest) -> Received:
        out = Received()
        with self._lock:
            for resource_metrics in request.resource_metrics:
                resource = _attribute_key(resource_metrics.resource.attributes)
                for scope_metrics in resource_metrics.scope_metrics:
                    scope = (scope_metrics.scope.name, scope_metrics.scope.version)
                    for metric in scope_metrics.metrics:
                        self._metric(out, (resource, scope, metric.name), metric)
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
        attributes = {kv.key: kv.value for kv in point.attributes}
        names: list[str] = []
        wanted = (EXPERIMENT, BRANCH, EVENT) if name == EVENT_METRIC else (EXPERIMENT, BRANCH)
        for key in wanted:
            value = attributes.get(key)
            if value is None or value.WhichOneof("value") != "string_value":
                return "missing_attribute", f"{name}: attribute {key} (a string) is required"
            problem = name_problem(value.string_value)
            if problem:
                return "invalid_name", f"{name}: attribute {key} {problem}"
            names.append(value.string_value)
        success = True
        if name == QUERY_METRIC:
            outcome = attributes.get(OUTCOME)
            text = outcome.string_value if outcome is not None else ""
            if text not in ("success", "failure"):
                return (
                    "missing_attribute",
                    f"{name}: attribute {OUTCOME} must be success or failure",
                )
            success = text == "success"
        bounds = tuple(point.explicit_bounds)
        buckets = list(point.bucket_counts)
        if buckets and len(buckets) != len(bounds) + 1:
            return (
                "invalid_point",
                f"{name}: bucket_counts must have one more entry than explicit_bounds",
            )
        if buckets and sum(buckets) != point.count:
            return "invalid_point", f"{name}: bucket_counts must add up to count"
        if any(b >= c for b, c in pairwise(bounds)) or not all(math.isfinite(b) for b in bounds):
            return "invalid_point", f"{name}: explicit_bounds must be finite and increasing"
        has_sum, has_min, has_max = (point.HasField(f) for f in ("sum", "min", "max"))
        numbers = [
            v
            for v, has in ((point.sum, has_sum), (point.min, has_min), (point.max, has_max))
            if has
        ]
        if not all(math.isfinite(v) for v in numbers):
            return "invalid_value", f"{name}: sum, min and max must be finite (no NaN)"
        if name == QUERY_METRIC and any(v < 0 for v in numbers):
            return "invalid_value", f"{name}: durations must be >= 0"
        if not buckets:
            buckets = [point.count]

        stream = (*stream_prefix, _attribute_key(point.attributes))
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
                or any(n < o for n, o in zip(buckets, state.buckets, strict=False))
            )
            if not restarted:
                count = point.count - state.count
                total = total - state.total
                increments = [n - o for n, o in zip(buckets, state.buckets, strict=True)]
        latest = max(end, state.time) if state is not None else end
        self.streams.put(
            stream,
            _Stream(
                start, latest, point.count, point.sum if has_sum else 0.0, buckets, bounds, windows
            ),
        )
        if count <= 0:
            return None
        low = point.min if has_min else None
        high = point.max if has_max else None
        lowers, uppers, edges = _bucket_edges(bounds, increments, low, high)
        mids = [(a + b) / 2.0 for a, b in zip(lowers, uppers, strict=True)]
        if math.isnan(total):  # no sum sent: estimate it from the midpoints
            total = sum(c * m for c, m in zip(increments, mids, strict=True))
        mean = total / count
        # grouped data: each bucket's values spread evenly around its midpoint
        m2 = sum(
            c * ((m - mean) ** 2 + (b - a) ** 2 / 12.0)
            for c, m, a, b in zip(increments, mids, lowers, uppers, strict=True)
            if c
        )
        when = point.time_unix_nano / 1e9
        if name == QUERY_METRIC:
            target = self._targets(bounds, factor)
            ours = [0] * (len(self._bounds) + 1)
            for index, c in zip(target, increments, strict=True):
                ours[index] += c
            out.branches.add(
                (names[0], names[1]),
                count,
                count if success else 0,
                total * factor,
                m2 * factor * factor,
                edges[0] * factor,
                edges[1] * factor,
                when,
                when,
                ours,
            )
            out.queries += count
        else:
            out.events.add((names[0], names[1], names[2]), count, total, m2)
            out.event_count += count
        return None

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


def _bucket_edges(
    bounds: tuple[float, ...], counts: Sequence[int], low: float | None, high: float | None
) -> tuple[list[float], list[float], tuple[float, float]]:
    """Each bucket's lower and upper edge (the open outer ones closed by min and max when
    sent), and the (min, max) of the values: sent, or the outermost non-empty edges."""
    if not bounds:
        lo = low if low is not None else 0.0
        hi = high if high is not None else lo
        return [lo], [hi], (lo, hi)
    lowers = [low if low is not None else min(0.0, bounds[0]), *bounds]
    uppers = [*bounds, high if high is not None else bounds[-1]]
    lowers[0] = min(lowers[0], uppers[0])
    uppers[-1] = max(uppers[-1], lowers[-1])
    filled = [i for i, c in enumerate(counts) if c]
    lo = low if low is not None else (lowers[filled[0]] if filled else 0.0)
    hi = high if high is not None else (uppers[filled[-1]] if filled else 0.0)
    return lowers, uppers, (lo, hi)


def _attribute_key(attributes: Sequence[KeyValue]) -> tuple[tuple[str, bytes], ...]:
    return tuple(
        sorted((kv.key, kv.value.SerializeToString(deterministic=True)) for kv in attributes)
    )
