"""The usual OTLP request's envelope read straight from its bytes.

An export of our histograms is a few envelope messages (resource, scope, metric) around
thousands of points. Parsing it into protobuf messages, only to serialize each histogram
again for `otlp_wire`, cost about a sixth of taking the request. Here the envelope is
walked by hand: each metric's resource, scope, name, unit and histogram bytes. The
histogram itself (its points as bytes, and its temporality), the resource, the scope
and new attributes are parsed by the protobuf runtime, so their encodings are whatever
protobuf accepts; each inside a request-shaped wrapper as deep as it sits in a request,
since protobuf counts its nesting limit from the request.

`histograms` answers None for anything it does not take whole: a malformed or
truncated field, a tag or a length in more than 5 bytes (protobuf's most), a known
field with an unexpected wire type or sent twice (protobuf would merge or override it),
groups, metric metadata, a resource or scope with nothing under it, any metric that is
not a histogram, a string that is not UTF-8. The caller then parses the request with
the protobuf runtime, which decides (and names any problem).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from . import otlp_wire as wire

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
# field numbers (opentelemetry/proto/.../metrics.proto, metrics_service.proto)
_RESOURCE_METRICS: Final = 1  # ExportMetricsServiceRequest
# ResourceMetrics and ScopeMetrics alike: resource or scope, what they hold, schema_url
_RESOURCE, _SCOPE_METRICS, _SCHEMA_URL = 1, 2, 3
_SCOPE, _METRICS = 1, 2
_NAME, _DESCRIPTION, _UNIT, _HISTOGRAM, _METADATA = 1, 2, 3, 9, 12  # Metric
_OTHER_DATA: Final = frozenset((5, 7, 10, 11))  # gauge, sum, exponential histogram, summary
_DATA_POINTS, _ATTRIBUTES = 1, 9  # Histogram, HistogramDataPoint


@dataclass(frozen=True, slots=True)
class WireHistogram:
    """One histogram metric of the request, with its resource and scope as sent."""

    resource: bytes  # the serialized Resource (b"" when there is none)
    scope: bytes  # the serialized InstrumentationScope
    name: str
    unit: str
    temporality: int
    points: list[bytes]  # each data point as sent


def _fields(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field in data[pos:end]; a varint's
    value is data[start:end] too (not needed here: none is read)."""
    while pos < end:
        tag, pos = wire.varint(data, pos, end)
        number, kind = tag >> 3, tag & 7
        if number == 0 or tag > 0xFFFFFFFF:
            raise wire.Malformed
        if kind == _VARINT:
            _, after = wire.varint(data, pos, end, 10)
        elif kind == _FIXED64:
            after = pos + 8
        elif kind == _FIXED32:
            after = pos + 4
        elif kind == _LENGTH:
            size, pos = wire.varint(data, pos, end)
            after = pos + size
        else:  # groups, or no wire type at all
            raise wire.Malformed
        if after > end:
            raise wire.Malformed
        yield number, kind, pos, after
        pos = after


def _once(seen: set[int], number: int, kind: int) -> None:
    """A known singular field: length-delimited, and only once (else protobuf merges)."""
    if kind != _LENGTH or number in seen:
        raise wire.Malformed
    seen.add(number)


def _text(data: bytes, start: int, end: int) -> str:
    return data[start:end].decode()  # strict UTF-8, as protobuf checks a string


def _in_request(path: tuple[int, ...], payload: bytes) -> ExportMetricsServiceRequest:
    """`payload` as the field `path` names, parsed inside a request as deep as it sits in
    one: protobuf refuses nesting past its depth limit counted from the request, so a
    message parsed on its own could pass where the whole request would not. Raises
    DecodeError as parsing the request would."""
    return ExportMetricsServiceRequest.FromString(wire.nested(path, payload))


def resource(serialized: bytes) -> Resource:
    return _in_request((_RESOURCE_METRICS, _RESOURCE), serialized).resource_metrics[0].resource


def scope(serialized: bytes) -> InstrumentationScope:
    path = (_RESOURCE_METRICS, _SCOPE_METRICS, _SCOPE)
    return _in_request(path, serialized).resource_metrics[0].scope_metrics[0].scope


def attributes(serialized: list[bytes]) -> Sequence[KeyValue]:
    """A data point's attributes (each a serialized KeyValue), parsed as deep as a point's
    attributes sit in a request."""
    path = (_RESOURCE_METRICS, _SCOPE_METRICS, _METRICS, _HISTOGRAM, _DATA_POINTS)
    point = b"".join(wire.nested((_ATTRIBUTES,), kv) for kv in serialized)
    request = _in_request(path, point)
    return (
        request.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[0].attributes
    )


def histograms(body: bytes) -> list[WireHistogram] | None:
    """Every metric of an export request, when each is a histogram this module takes
    whole (see the module's docstring); None otherwise."""
    try:
        return list(_request(body))
    except (wire.Malformed, UnicodeDecodeError, wire.DecodeError):
        return None


def _request(body: bytes) -> Iterator[WireHistogram]:
    for number, kind, start, end in _fields(body, 0, len(body)):
        if number == _RESOURCE_METRICS:
            if kind != _LENGTH:
                raise wire.Malformed
            yield from _resource_metrics(body, start, end)


def _parent(body: bytes, pos: int, end: int) -> tuple[bytes, list[tuple[int, int]]]:
    """A ResourceMetrics or a ScopeMetrics: its resource or scope (field 1, as bytes),
    and where each entry it holds (field 2) lies; its schema_url (3) checked. One that
    holds nothing is not taken: its resource or scope would be parsed nowhere here."""
    single, held, seen = b"", [], set[int]()
    for number, kind, start, stop in _fields(body, pos, end):
        if number == 1:
            _once(seen, number, kind)
            single = body[start:stop]
        elif number == 2:
            if kind != _LENGTH:
                raise wire.Malformed
            held.append((start, stop))
        elif number == _SCHEMA_URL:
            _once(seen, number, kind)
            _text(body, start, stop)
    if not held:
        raise wire.Malformed
    return single, held


def _resource_metrics(body: bytes, pos: int, end: int) -> Iterator[WireHistogram]:
    resource, scopes = _parent(body, pos, end)
    for start, stop in scopes:
        scope, metrics = _parent(body, start, stop)
        for first, last in metrics:
            yield _metric(body, first, last, resource, scope)


def _metric(body: bytes, pos: int, end: int, resource: bytes, scope: bytes) -> WireHistogram:
    name = unit = ""
    histogram: tuple[list[bytes], int] | None = None
    seen = set[int]()
    for number, kind, start, stop in _fields(body, pos, end):
        if number in _OTHER_DATA or number == _METADATA:
            raise wire.Malformed
        if number == _NAME:
            _once(seen, number, kind)
            name = _text(body, start, stop)
        elif number == _UNIT:
            _once(seen, number, kind)
            unit = _text(body, start, stop)
        elif number == _DESCRIPTION:
            _once(seen, number, kind)
            _text(body, start, stop)
        elif number == _HISTOGRAM:
            _once(seen, number, kind)
            histogram = wire.points(body[start:stop])
    if histogram is None:
        raise wire.Malformed
    points, temporality = histogram
    return WireHistogram(resource, scope, name, unit, temporality, points)


__all__ = ["WireHistogram", "attributes", "histograms", "resource", "scope"]
