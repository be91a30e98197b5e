"""Column-wise checks of OTLP histogram points, and the memo of per-point work.

`otlp.parse` reads a histogram's points into columns (see `otlp_view`) and checks
them here all at once; each check is the point-by-point one (`otlp._point`) in the
same arithmetic, or stricter, so a point passes here only if it would pass there,
and a doubted point is handed back to be checked on its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..core.validation import MAX_ABS_EVENT_VALUE, MAX_COUNT, MAX_LATENCY_MS

_MAX_WIDTH: Final = 2048  # buckets per point summed in uint64 (each <= MAX_COUNT < 2**53)


def bucket_rows(
    raw: list[bytes],
    bounds: list[tuple[float, ...] | None],
    count: list[int],
    doubt: npt.NDArray[np.bool_],
) -> list[list[int] | None]:
    """Each point's bucket counts (packed little-endian uint64), None where they do not
    match its bounds or add up to its count; points of one width are read as one array."""
    size = len(raw)
    rows: list[list[int] | None] = [None] * size
    packed = np.fromiter(map(len, raw), dtype=np.intp, count=size)
    # buckets a point's bounds call for; -1: no bounds to match (doubted before)
    wanted = np.fromiter(
        (-1 if edges is None else len(edges) + 1 for edges in bounds), dtype=np.intp, count=size
    )
    usable = ~doubt & (wanted > 0)
    for i in np.flatnonzero(usable & (packed == 0) & (wanted == 1)).tolist():
        rows[i] = [count[i]]  # no bucket_counts and no bounds: one bucket, all of them
    usable &= (packed == wanted * 8) & (wanted < _MAX_WIDTH)
    for width in np.unique(wanted[usable]).tolist():
        chosen = np.flatnonzero(usable & (wanted == width)).tolist()
        table = np.frombuffer(b"".join([raw[i] for i in chosen]), dtype="<u8")
        table = table.reshape(len(chosen), width)
        believable = np.asarray((table <= MAX_COUNT).all(axis=1))
        sums = np.where(believable[:, None], table, 0).sum(axis=1, dtype=np.uint64)
        ok = believable & (sums == np.array([count[i] for i in chosen], dtype=np.uint64))
        if len(chosen) == size and ok.all():
            return list(table.tolist())  # the usual case: all points, all good
        for i, row, good in zip(chosen, table.tolist(), ok.tolist(), strict=True):
            if good:
                rows[i] = row
    return rows


def bucket_table(raw: list[bytes], width: int, count: list[int]) -> npt.NDArray[np.int64] | None:
    """All points' bucket counts as one table when every point sent `width` of them (or
    none, with width 1) and each row is believable and adds up to its count; else None
    (`bucket_rows` then says which rows do)."""
    if not any(raw):
        return checked_table(None, width, count)
    if set(map(len, raw)) != {8 * width}:
        return None
    table = np.frombuffer(b"".join(raw), dtype="<u8").reshape(len(raw), width)
    return checked_table(table, width, count)


def checked_table(
    table: npt.NDArray[np.uint64] | None, width: int, count: Sequence[int] | npt.NDArray[np.uint64]
) -> npt.NDArray[np.int64] | None:
    """`bucket_table` for counts read as one table already (None: no point sent any)."""
    if width >= _MAX_WIDTH:
        return None
    if table is None:
        if width != 1:
            return None
        table = np.array(count, dtype=np.uint64).reshape(len(count), 1)  # one bucket, all
    elif table.shape[1] != width:
        return None
    if not (table <= MAX_COUNT).all():
        return None
    if not (table.sum(axis=1, dtype=np.uint64) == np.array(count, dtype=np.uint64)).all():
        return None
    return table.astype(np.int64)


def doubtful(
    query: bool,
    delta: bool,
    factor: float,
    count: Sequence[int] | npt.NDArray[np.uint64],
    start: Sequence[int] | npt.NDArray[np.uint64],
    end: Sequence[int] | npt.NDArray[np.uint64],
    total: Sequence[float] | npt.NDArray[np.float64],
    low: Sequence[float] | npt.NDArray[np.float64],
    high: Sequence[float] | npt.NDArray[np.float64],
    now_ns: int,
    ahead_ns: int,
) -> npt.NDArray[np.bool_]:
    """The point-by-point checks of counts, times and values (`otlp._point`) for all
    points at once (NaN: not sent), in the same float arithmetic: True where a point
    may fail one of them."""
    counts = np.array(count, dtype=np.uint64)
    starts, ends = np.array(start, dtype=np.uint64), np.array(end, dtype=np.uint64)
    t, lo, hi = np.array(total), np.array(low), np.array(high)
    doubt = (counts > MAX_COUNT) | (ends < starts)
    doubt |= ends > np.uint64(now_ns + ahead_ns)
    if delta:
        doubt |= starts == 0
    doubt |= np.isinf(t) | np.isinf(lo) | np.isinf(hi)
    n = np.where(counts > MAX_COUNT, 0, counts).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if query:
            limit = MAX_LATENCY_MS / factor
            doubt |= (t < 0) | (lo < 0) | (hi < 0) | (t > n * limit) | (lo > limit) | (hi > limit)
        else:
            doubt |= np.abs(t) > n * MAX_ABS_EVENT_VALUE
            doubt |= (np.abs(lo) > MAX_ABS_EVENT_VALUE) | (np.abs(hi) > MAX_ABS_EVENT_VALUE)
        doubt |= lo > hi
        mean = t / n
        slack = 1e-9 * np.maximum(np.abs(mean), 1.0)
        doubt |= (n > 0) & ((mean < lo - slack) | (mean > hi + slack))
    return doubt


class Table(dict[Any, Any]):
    """Answers that depend only on their key, at most `size` of them (cleared when full)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> Any:
        if len(self) >= self.size:
            self.clear()
        self[key] = value
        return value


class Memo:
    """Per-point work that depends only on a point's attributes or bounds and on its
    scope (resource, scope, metric, limits), remembered across requests: an app sends
    the same streams and bounds at every export. Bounded: `answers` holds at most `size`
    (about 600 bytes each for identities); a scope's number is never reused, so clearing
    the scopes only leaves some answers unreachable until `answers` is cleared."""

    def __init__(self, size: int, scopes: int = 4096) -> None:
        self.answers = Table(size)
        self._scopes: dict[Any, int] = {}
        self._max_scopes = scopes
        self._numbers = itertools.count()

    def scope(self, key: Any) -> int:
        found = self._scopes.get(key)
        if found is None:
            if len(self._scopes) >= self._max_scopes:
                self._scopes.clear()
            found = self._scopes[key] = next(self._numbers)
        return found


class Runs:
    """Answers by scope (a `Memo` scope's number) and a run of bytes, at most `size` in
    all (cleared when full): a dict per scope, so that a look-up hashes only the run."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._held = 0
        self._scopes: dict[int, dict[bytes, Any]] = {}

    def of(self, scope: int) -> dict[bytes, Any]:
        """The answers of a scope: read only (`put` adds to them)."""
        return self._scopes.get(scope) or {}

    def put(self, scope: int, run: bytes, value: Any) -> Any:
        if self._held >= self.size:
            self._scopes.clear()
            self._held = 0
        answers = self._scopes.setdefault(scope, {})
        self._held += run not in answers
        answers[run] = value
        return value
