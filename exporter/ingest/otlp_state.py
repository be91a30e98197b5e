"""The layout of an OTLP stream's state: a stream's last point, as a plain tuple.

A plain tuple, read by these indices, because the plain path (`otlp.Receiver._plain`)
makes one per point per request: `zip` makes it in C with no further call, where a
named tuple costs a second tuple per state (2.5x). A state is never changed (a new
one replaces it), so states may share their arrays (the empty windows of cumulative
streams). Its bucket counts are packed native int64 bytes (a slice of a request's
table costs half an array's): read them as numbers through `counts`, never by
iterating the bytes.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Final, TypeAlias

# (start, time, count, total, buckets, bounds, windows)
Stream: TypeAlias = "tuple[int, int, int, float, bytes, tuple[float, ...], array[int]]"

START: Final = 0
TIME: Final = 1  # the latest end time seen
COUNT: Final = 2  # cumulative: the last point's figures
TOTAL: Final = 3  # NaN: the point had no sum
BUCKETS: Final = 4  # native int64s, packed: see `counts`
BOUNDS: Final = 5
WINDOWS: Final = 6  # delta: recent windows, flat (start, end, start, end, ...)

NO_WINDOWS: Final[array[int]] = array("q")  # shared: states' arrays are never changed


def counts(packed: bytes) -> memoryview:
    """A state's packed bucket counts as the numbers they are (a view, no copy)."""
    return memoryview(packed).cast("q")


def packed(numbers: Iterable[int]) -> bytes:
    """Bucket counts packed as a state holds them (native int64; OverflowError beyond)."""
    return array("q", numbers).tobytes()
