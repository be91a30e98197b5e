"""Histogram points of one byte layout read as columns straight from their bytes.

An app exports the same shape of point again and again: the same fields present, the
same bounds, its attributes in the same place. Written as every protobuf runtime writes
them (fields in number order, repeated numbers packed), such points differ only in the
values at fixed offsets and in their run of attributes, so numpy reads every point's
numbers at once, where the protobuf runtime makes an object per field per point. The
points are read as the app sent them (`otlp_envelope`) or as re-serialized by
`otlp._columns`.

`read` answers only when every point has the layout of the first one, each tag and
length byte checked: fields 2-7 (times, count, sum, buckets, bounds) in a fixed
prefix, then a run of attributes (field 9), then min and max (11, 12) in a fixed
suffix. Any other point (flags, exemplars, a field missing in some points, a sent
NaN, unknown fields) makes it answer None: `otlp_view` then reads the points.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE: Final = "abtest_exporter.otlp_wire"
_FIXED, _LENGTH = 1, 2  # wire types: 8 bytes, length-delimited
_ATTRIBUTE: Final = 0x4A  # field 9, length-delimited
_HEAD: Final = {2: "start", 3: "end", 4: "count", 5: "total"}  # fixed 8 bytes each
_PACKED: Final = {6: "buckets", 7: "bounds"}
_TAIL: Final = {11: "low", 12: "high"}
_DOUBLES: Final = frozenset(("total", "low", "high"))


def _schemas() -> tuple[Any, Any]:
    """A request holding one histogram whose points are bytes (as deep as a histogram
    sits in a real request: resource_metrics, scope_metrics, metrics, histogram), and a
    point holding only its attributes."""
    file = descriptor_pb2.FileDescriptorProto(
        name="abtest_exporter_otlp_wire.proto", package=_PACKAGE, syntax="proto2"
    )
    for name, number in (("Histogram", 1), ("Attributes", 9)):
        file.message_type.add(name=name).field.add(
            name="items", number=number, type=_F.TYPE_BYTES, label=_F.LABEL_REPEATED
        )
    file.message_type[0].field.add(  # the histogram's aggregation_temporality (an enum)
        name="temporality", number=2, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL
    )
    inner = "Histogram"
    for name, number in zip(
        ("Metric", "Scope", "Resource", "Request"), HISTOGRAM_PATH[::-1], strict=True
    ):
        file.message_type.add(name=name).field.add(
            name="inner", number=number, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
            type_name=f".{_PACKAGE}.{inner}",
        )  # fmt: skip
        inner = name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    found = pool.FindMessageTypeByName
    return (
        message_factory.GetMessageClass(found(f"{_PACKAGE}.Request")),
        message_factory.GetMessageClass(found(f"{_PACKAGE}.Attributes")),
    )


# where a histogram sits in an export request: resource_metrics, scope_metrics, metrics,
# histogram (each field's number)
HISTOGRAM_PATH: Final = (1, 2, 2, 9)
_REQUEST, _ATTRIBUTES = _schemas()
_ALL: Final = operator.itemgetter(slice(None))


@dataclass(frozen=True, slots=True)
class Columns:
    """Every point's fields (NaN: a double not sent; none was sent as NaN)."""

    attributes: list[bytes]  # each point's run of serialized attributes (see `attributes`)
    bounds: bytes  # packed explicit_bounds, the same for every point
    buckets: npt.NDArray[np.uint64] | None  # one row per point; None: none sent
    start: npt.NDArray[np.uint64]
    end: npt.NDArray[np.uint64]
    count: npt.NDArray[np.uint64]
    total: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]


def attributes(run: bytes) -> list[bytes] | None:
    """The serialized KeyValues of a point's run of attributes, None unless the run is
    exactly a canonical run of field-9 entries (so it is what the point's attributes are).
    (A run cut short, an attribute whose text mimics the suffix, does not parse at all.)"""
    try:
        items = list(_ATTRIBUTES.FromString(run).items)
    except message.DecodeError:
        return None
    if _ATTRIBUTES(items=items).SerializeToString() != run:
        return None
    return items


class Malformed(Exception):
    """Bytes this module does not take (protobuf may, or may refuse them)."""


def varint(data: bytes, pos: int, end: int, most: int = 5) -> tuple[int, int]:
    """The varint at `pos` in at most `most` bytes (protobuf reads a tag or a length in
    at most 5, a value in at most 10) before `end`, and the position after it."""
    value = shift = 0
    stop = min(end, pos + most)
    while pos < stop:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise Malformed


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the first point keeps its fields: the others must keep them there too."""

    prefix: int  # bytes before the attributes
    suffix: int  # bytes after them
    head_marks: list[int]  # tag and length bytes in the prefix
    tail_marks: list[int]  # tag bytes in the suffix
    head: dict[str, int]  # a field's offset in the prefix (packed: (offset, size) below)
    packed: dict[str, tuple[int, int]]
    tail: dict[str, int]  # a field's offset in the suffix


def _layout(point: bytes) -> _Layout:
    pos, last = 0, 0
    head_marks: list[int] = []
    head: dict[str, int] = {}
    packed: dict[str, tuple[int, int]] = {}
    while pos < len(point) and point[pos] != _ATTRIBUTE:
        tag = point[pos]
        number, kind = tag >> 3, tag & 7
        if number <= last or tag >= 0x80:
            raise Malformed
        last = number
        if number in _HEAD and kind == _FIXED:
            head_marks.append(pos)
            head[_HEAD[number]] = pos + 1
            pos += 9
        elif number in _PACKED and kind == _LENGTH:
            size, start = varint(point, pos + 1, len(point))
            if size % 8:
                raise Malformed
            head_marks.extend(range(pos, start))
            packed[_PACKED[number]] = (start, size)
            pos = start + size
        else:
            raise Malformed
    prefix = pos
    if pos >= len(point):  # no attributes: refused, and `otlp_view` says why
        raise Malformed
    while pos < len(point) and point[pos] == _ATTRIBUTE:
        size, start = varint(point, pos + 1, len(point))
        pos = start + size
    suffix_start, tail_marks, tail, last = pos, [], {}, 9
    while pos < len(point):
        tag = point[pos]
        number, kind = tag >> 3, tag & 7
        if number <= last or number not in _TAIL or kind != _FIXED:
            raise Malformed
        last = number
        tail_marks.append(pos - suffix_start)
        tail[_TAIL[number]] = pos + 1 - suffix_start
        pos += 9
    if pos != len(point):
        raise Malformed
    return _Layout(prefix, pos - suffix_start, head_marks, tail_marks, head, packed, tail)


def _table(parts: Any, size: int, width: int) -> npt.NDArray[np.uint8]:
    return np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(size, width)


def _numbers(table: npt.NDArray[np.uint8], offset: int, double: bool) -> npt.NDArray[Any]:
    """The 8 little-endian bytes at `offset` of every row, as one column."""
    raw = np.ascontiguousarray(table[:, offset : offset + 8])
    return raw.view("<f8" if double else "<u8").reshape(len(table))


DecodeError: Final = message.DecodeError


def nested(path: tuple[int, ...], payload: bytes) -> bytes:
    """`payload` as the length-delimited field `path` names, in the message each number
    before it names (one copy of the payload)."""
    heads: list[bytes] = []
    size = len(payload)
    for number in reversed(path):
        head = bytes([number << 3 | _LENGTH]) + _varint_bytes(size)
        heads.append(head)
        size += len(head)
    return b"".join([*reversed(heads), payload])


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def points(serialized: bytes) -> tuple[list[bytes], int]:
    """A histogram's points, each as its bytes, and its aggregation temporality. The
    histogram is parsed as deep as it sits in a request: protobuf's depth limit counts
    from the request, unknown groups nested in the histogram included. Raises
    DecodeError for bytes that are not a message of those fields (the points' own bytes
    are not read: `read` takes them only in its one layout)."""
    request = _REQUEST.FromString(nested(HISTOGRAM_PATH, serialized))
    histogram = request.inner.inner.inner.inner
    return _ALL(histogram.items), histogram.temporality


def read(points: list[bytes]) -> Columns | None:
    """The fields of a histogram's points (`points` gives them) as columns, or None
    unless they all have the first one's layout outside their attribute runs: each field
    once, in number order, of its own wire type; the packed ones packed; so a point read
    is what protobuf would read, however the histogram around it was written. A run is
    returned as its bytes, unchecked: the caller takes a point only if `attributes` finds
    its run to be attributes and nothing else (flags, exemplars or unknown fields there
    would make it None)."""
    size = len(points)
    if not size:
        return None
    try:
        layout = _layout(points[0])
    except Malformed:
        return None
    prefix, suffix = layout.prefix, layout.suffix
    lengths = np.fromiter(map(len, points), dtype=np.intp, count=size)
    if (lengths < prefix + suffix + 2).any():  # room for at least one attribute
        return None
    heads = _table(map(operator.getitem, points, repeat(slice(0, prefix))), size, prefix)
    marks = layout.head_marks
    if not (heads[:, marks] == heads[0, marks]).all():
        return None
    tails = np.zeros((size, 0), dtype=np.uint8)
    if suffix:
        tails = _table(map(operator.getitem, points, repeat(slice(-suffix, None))), size, suffix)
        if not (tails[:, layout.tail_marks] == tails[0, layout.tail_marks]).all():
            return None
    ends = (lengths - suffix).tolist()
    runs = cast(list[bytes], list(map(operator.getitem, points, map(slice, repeat(prefix), ends))))
    columns: dict[str, npt.NDArray[Any]] = {}
    for table, offsets in ((heads, layout.head), (tails, layout.tail)):
        for name, offset in offsets.items():
            values = _numbers(table, offset, name in _DOUBLES)
            if name in _DOUBLES and np.isnan(values).any():
                return None  # a sent NaN: refused, and `otlp_view` says why
            columns[name] = values
    for name in ("start", "end", "count"):
        columns.setdefault(name, np.zeros(size, dtype=np.uint64))
    for name in _DOUBLES:
        columns.setdefault(name, np.full(size, np.nan))
    bounds = b""
    if "bounds" in layout.packed:
        offset, width = layout.packed["bounds"]
        if not (heads[:, offset : offset + width] == heads[0, offset : offset + width]).all():
            return None
        bounds = points[0][offset : offset + width]
    buckets = None
    if "buckets" in layout.packed:
        offset, width = layout.packed["buckets"]
        raw = np.ascontiguousarray(heads[:, offset : offset + width])
        buckets = raw.view("<u8").reshape(size, width // 8)
    return Columns(runs, bounds, buckets, **columns)
