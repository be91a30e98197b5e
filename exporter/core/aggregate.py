"""The aggregate: per-branch and per-event sufficient statistics, in columns.

Records arrive in batches and are folded with numpy (group by series, then
one vectorised merge), so the cost per record is a few hundred nanoseconds
whether a batch touches one series or thousands. Not locked: `ABMetrics`
owns the lock.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from itertools import count as _count
from itertools import pairwise
from operator import itemgetter
from typing import Any, Self, TypeVar

import numpy as np
import numpy.typing as npt

from .moments import merge_moments
from .tables import ColumnSpec, RowMarks, Table

BranchKey = tuple[str, str]
EventKey = tuple[str, str, str]

# Finer at the low end than Prometheus's defaults, so percentiles and the
# rank test have something to work with for fast queries.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

Columns = dict[str, npt.NDArray[Any]]
Rows = Sequence[int] | npt.NDArray[np.intp]  # an array as it comes from a fold: no copy
# Up to this many records a batch is folded in plain Python (see _add_few_queries):
# numpy's fixed cost is ~75 us a fold, the scalar path's ~17 us and 0.7 us a record.
FEW = 64
_INF = float("inf")
K = TypeVar("K", bound=Hashable)

# Change stamps: every write gives the rows it touches the next number, unique in the
# process (across aggregates too, so a replaced aggregate never repeats a renderer's
# cached stamp). A renderer re-renders exactly the rows whose stamp it has not seen.
_stamps = _count(1)


def next_stamp() -> int:
    return next(_stamps)  # itertools.count is atomic under the GIL


# Python lists of numbers to numpy: numpy 2 finds each element's type before it converts,
# ~20 ns an element; struct packs a list of floats or ints in ~10 ns an element, bytes()
# a list of bools in ~7 (values the hot paths convert every batch)
_PACK_FROM = 64


def floats(values: Sequence[float] | npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """`values` as float64, as np.asarray makes them (an int becomes float() of it)."""
    if type(values) is list and len(values) >= _PACK_FROM:
        return np.frombuffer(struct.pack(f"<{len(values)}d", *values), np.float64)
    return np.asarray(values, dtype=np.float64)


def bools(values: Sequence[bool] | npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Checked bools (a list of True and False) as a numpy bool array."""
    if type(values) is list and len(values) >= _PACK_FROM:
        return np.frombuffer(bytes(values), np.bool_)
    return np.asarray(values, dtype=np.bool_)


def row_numbers(values: Sequence[int] | npt.NDArray[Any]) -> npt.NDArray[np.intp]:
    """Row numbers (ints from 0) as intp."""
    if type(values) is list and len(values) >= _PACK_FROM:
        return np.frombuffer(struct.pack(f"<{len(values)}q", *values), np.int64).astype(
            np.intp, copy=False
        )
    return np.asarray(values, dtype=np.intp)


@dataclass(slots=True)
class Records:
    """A batch of validated records as parallel columns, ready to fold."""

    query_keys: list[BranchKey] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    when: list[float] = field(default_factory=list)
    event_keys: list[EventKey] = field(default_factory=list)
    event_values: list[float] = field(default_factory=list)

    def add_query(self, key: BranchKey, latency_ms: float, success: bool, when: float) -> None:
        self.query_keys.append(key)
        self.latency_ms.append(latency_ms)
        self.success.append(success)
        self.when.append(when)

    def add_event(self, key: EventKey, value: float) -> None:
        self.event_keys.append(key)
        self.event_values.append(value)

    @property
    def queries(self) -> int:
        return len(self.query_keys)

    @property
    def events(self) -> int:
        return len(self.event_keys)


def branch_spec(bucket_count: int) -> ColumnSpec:
    inf = float("inf")
    return {
        "n": (np.int64, 0, ()),
        "ok": (np.int64, 0, ()),
        "total": (np.float64, 0.0, ()),
        "lo": (np.float64, inf, ()),
        "hi": (np.float64, -inf, ()),
        "mean": (np.float64, 0.0, ()),
        "m2": (np.float64, 0.0, ()),
        # running sum of squared latencies (ms²): adds up across replicas, unlike m2
        "sq": (np.float64, 0.0, ()),
        "first": (np.float64, inf, ()),
        "last": (np.float64, -inf, ()),
        # non-cumulative counts; the last slot is the +Inf bucket
        "buckets": (np.int64, 0, (bucket_count + 1,)),
        # the write that last changed the row (0 once freed): see next_stamp
        "stamp": (np.int64, 0, ()),
    }


EVENT_SPEC: ColumnSpec = {
    "count": (np.int64, 0, ()),
    "total": (np.float64, 0.0, ()),
    "mean": (np.float64, 0.0, ()),
    "m2": (np.float64, 0.0, ()),
    "sq": (np.float64, 0.0, ()),
    "stamp": (np.int64, 0, ()),
}


class _Selectable:
    """Parallel-list dataclasses: keep only some entries, in order."""

    def select(self, indices: Sequence[int]) -> Self:
        columns = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        size = len(next(iter(columns.values()), ()))
        if len(indices) == size and list(indices) == list(range(size)):  # all: the usual case
            return type(self)(**{name: list(column) for name, column in columns.items()})
        return type(self)(
            **{name: [column[i] for i in indices] for name, column in columns.items()}
        )


@dataclass(slots=True)
class Changes:
    """Rows touched and experiments removed since the store last looked."""

    branches: RowMarks = field(default_factory=RowMarks)
    events: RowMarks = field(default_factory=RowMarks)
    removed: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)  # experiments whose last write moved
    cleared: bool = False  # everything went: the store starts over

    def __bool__(self) -> bool:
        return bool(self.branches or self.events or self.removed or self.touched or self.cleared)


@dataclass(slots=True)
class BranchParts(_Selectable):
    """Pre-aggregated query increments (from OTLP histograms or the store), one per entry;
    latency in ms, buckets in the aggregate's layout (non-cumulative, +Inf last)."""

    keys: list[BranchKey] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    ok: list[int] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    m2: list[float] = field(default_factory=list)
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    # a row may be an int64 array (OTLP's re-binned rows): numpy reads those many times
    # faster than lists of ints, and nothing here needs them as lists
    buckets: list[list[int] | npt.NDArray[np.int64]] = field(default_factory=list)
    sq: list[float] = field(default_factory=list)

    def append(
        self,
        key: BranchKey,
        n: int,
        ok: int,
        total_ms: float,
        m2: float,
        lo: float,
        hi: float,
        first: float,
        last: float,
        buckets: list[int],
        sq: float | None = None,
    ) -> None:
        """`sq` (sum of squares, ms²) when the source kept it; else M2 + total²/n."""
        self.keys.append(key)
        self.n.append(n)
        self.ok.append(ok)
        self.total_ms.append(total_ms)
        self.m2.append(m2)
        self.lo.append(lo)
        self.hi.append(hi)
        self.first.append(first)
        self.last.append(last)
        self.buckets.append(buckets)
        self.sq.append(_squares(n, total_ms, m2) if sq is None else sq)


@dataclass(frozen=True, slots=True)
class PartColumns:
    """BranchParts as numpy columns, as OTLP computes them: folded as they are, with no
    list of Python numbers made from the arithmetic and read back into arrays."""

    keys: list[BranchKey]
    n: npt.NDArray[np.int64]
    ok: npt.NDArray[np.int64]
    total_ms: npt.NDArray[np.float64]
    m2: npt.NDArray[np.float64]
    lo: npt.NDArray[np.float64]
    hi: npt.NDArray[np.float64]
    first: npt.NDArray[np.float64]
    last: npt.NDArray[np.float64]
    buckets: npt.NDArray[np.int64]  # one row per part
    sq: npt.NDArray[np.float64]

    @classmethod
    def joined(cls, blocks: Sequence[PartColumns]) -> PartColumns:
        """The blocks one after the other (none: no parts)."""
        if len(blocks) == 1:
            return blocks[0]
        if not blocks:
            i, f = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
            return cls([], i, i, f, f, f, f, f, f, np.zeros((0, 0), dtype=np.int64), f)
        keys = [key for block in blocks for key in block.keys]
        columns = [np.concatenate([getattr(b, f.name) for b in blocks]) for f in fields(cls)[1:]]
        return cls(keys, *columns)

    def select(self, indices: Sequence[int]) -> PartColumns:
        """Only these parts, in order (all of them: this, its arrays never changed)."""
        if len(indices) == len(self.keys):  # distinct indices: all, the usual case
            return self
        chosen = np.asarray(indices, dtype=np.intp)
        keys = [self.keys[i] for i in indices]
        return PartColumns(keys, *[getattr(self, f.name)[chosen] for f in fields(self)[1:]])


@dataclass(slots=True)
class EventParts(_Selectable):
    keys: list[EventKey] = field(default_factory=list)
    count: list[int] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    m2: list[float] = field(default_factory=list)
    sq: list[float] = field(default_factory=list)

    def append(
        self, key: EventKey, count: int, total: float, m2: float, sq: float | None = None
    ) -> None:
        self.keys.append(key)
        self.count.append(count)
        self.total.append(total)
        self.m2.append(m2)
        self.sq.append(_squares(count, total, m2) if sq is None else sq)


def _squares(n: int, total: float, m2: float) -> float:
    """A part's sum of squares rebuilt from (count, sum, M2): M2 + total²/n. (OTLP parts
    and format-2 data files carry no sum of squares.)"""
    return m2 + total * total / n if n else 0.0


def _resolve(ids: dict[K, int], keys: Sequence[K], make: Callable[[K], int]) -> list[int]:
    """Rows for keys: one C-level pass of look-ups, `make` only for the new ones."""
    rows = list(map(ids.get, keys))
    if None in rows:
        return [r if r is not None else make(k) for r, k in zip(rows, keys, strict=True)]
    return rows  # type: ignore[return-value]


def _merge_parts(
    groups: npt.NDArray[np.intp],
    count: int,
    n: Sequence[int] | npt.NDArray[np.int64],
    total: Sequence[float] | npt.NDArray[np.float64],
    m2: Sequence[float] | npt.NDArray[np.float64],
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
    """(count, sum, mean, M2) per group of pre-aggregated parts (Chan et al.: the parts'
    own spread plus the spread of their means around the group's mean)."""
    n_part = np.asarray(n, dtype=np.int64)
    total_part = floats(total)
    n_group = np.bincount(groups, n_part, count).astype(np.int64)
    total_group = np.bincount(groups, total_part, count)
    mean = total_group / np.where(n_group == 0, 1, n_group)
    part_mean = total_part / np.where(n_part == 0, 1, n_part)
    spread = floats(m2) + n_part * np.square(part_mean - mean[groups])
    return n_group, total_group, mean, np.bincount(groups, spread, count)


_FEW_BOUNDS = 32  # up to this many bucket bounds, slots are counted, not searched for
# ... for this many values or more: below it numpy sums a small 2-D array of flags slowly
# (1000 values: 16 us counted, 9 us searched; 4096: 13 us counted, 28-48 us searched)
_COUNT_FROM = 3072


def bucket_slots(bounds: npt.NDArray[np.float64], values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Each value's bucket: how many bounds lie below it, as `searchsorted(side="left")`
    finds (finite values). For the usual few bounds and a long column, one comparison per
    bound over the whole column, 4x faster than a binary search per value, whose branches
    no CPU can predict."""
    if len(bounds) > _FEW_BOUNDS or len(values) < _COUNT_FROM:
        return np.searchsorted(bounds, values, side="left")
    slots: npt.NDArray[np.uint8] = (bounds[:, None] < values).sum(axis=0, dtype=np.uint8)
    return slots


def _first_last(
    groups: npt.NDArray[np.intp], when: Sequence[float], count: int
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Each group's earliest and latest time. An HTTP batch gives all its records one
    time (the same float, a list of it): then that time, without a pass per record."""
    if (
        isinstance(when, list)
        and len(when) == len(groups)
        and when[-1] == when[0]  # (no count of a list whose times differ)
        and when.count(when[0]) == len(when)
    ):
        same = np.full(count, float(when[0]))
        return same, same.copy()
    ts = floats(when)
    return _group_min(groups, ts, count), _group_max(groups, ts, count)


def _group_min(
    groups: npt.NDArray[np.intp], values: npt.NDArray[Any], count: int
) -> npt.NDArray[Any]:
    out = np.full(count, np.inf)
    np.minimum.at(out, groups, values)
    return out


def _group_max(
    groups: npt.NDArray[np.intp], values: npt.NDArray[Any], count: int
) -> npt.NDArray[Any]:
    out = np.full(count, -np.inf)
    np.maximum.at(out, groups, values)
    return out


def _merge_moments_at(
    c: Columns, count: str, row: int, n: int, total: float, mean: float, m2: float, sq: float
) -> None:
    """One row's count, mean, M2, sum and sum of squares merged with a group's, in
    scalars with merge_moments' float operations (the small-batch folds' bits must equal
    the vectorised ones)."""
    n_a, mean_a = int(c[count][row]), float(c["mean"][row])
    size = n_a + n
    delta = mean - mean_a
    weight = n / size
    c[count][row] = size
    c["mean"][row] = mean_a + delta * weight
    c["m2"][row] = float(c["m2"][row]) + m2 + delta * delta * n_a * weight
    c["total"][row] = float(c["total"][row]) + total
    c["sq"][row] = float(c["sq"][row]) + sq


def _plain_rows(rows: Rows) -> list[int]:
    """Row numbers as Python ints (the small-batch folds index with them one by one)."""
    return rows.tolist() if isinstance(rows, np.ndarray) else list(rows)


def group_rows(
    rows: Rows,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], int]:
    """The distinct rows (ascending) and each entry's index among them, as np.unique
    gives; by counting rather than sorting when the row numbers are not far above the
    entries' number (a batch of a thousand records naming a few dozen series)."""
    array = row_numbers(rows)
    top = int(array.max()) + 1
    if top > 4 * len(array) + 4096:
        unique, groups = np.unique(array, return_inverse=True)
        return unique, groups, len(unique)
    unique = np.flatnonzero(np.bincount(array, minlength=top))
    position = np.empty(top, dtype=np.intp)
    position[unique] = np.arange(len(unique), dtype=np.intp)
    return unique, position[array], len(unique)


def check_buckets(bounds: Sequence[float]) -> tuple[float, ...]:
    result = tuple(float(b) for b in bounds)
    if not result:
        raise ValueError("at least one bucket bound is needed")
    if any(not (0 < b < float("inf")) for b in result):
        raise ValueError("bucket bounds must be finite and > 0 seconds")
    if any(a >= b for a, b in pairwise(result)):
        raise ValueError("bucket bounds must be strictly increasing")
    return result


Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
_MS = 1000.0  # the columns keep latencies in milliseconds, as they arrive; views show seconds


@dataclass(frozen=True, slots=True)
class BranchColumns:
    """One figure per branch row, in base units: seconds, s², unix seconds. A row with no
    queries has lo = first = +inf and hi = last = -inf."""

    n: Ints
    ok: Ints
    total: Floats  # seconds
    mean: Floats  # seconds
    m2: Floats  # s², Welford's sum of squared deviations
    sq: Floats  # s², the plain sum of squares (adds up across replicas)
    lo: Floats  # seconds
    hi: Floats
    first: Floats  # unix seconds of the first and latest query
    last: Floats
    buckets: Ints  # (rows, bounds + 1), non-cumulative, the +Inf bucket last
    stamp: Ints  # the write that last changed the row (see next_stamp)

    @classmethod
    def of(cls, columns: Columns, size: int, copy: bool) -> BranchColumns:
        def take(name: str) -> npt.NDArray[Any]:
            column = columns[name][:size]
            return column.copy() if copy else column

        return cls(
            take("n"), take("ok"), columns["total"][:size] / _MS, columns["mean"][:size] / _MS,
            columns["m2"][:size] / (_MS * _MS), columns["sq"][:size] / (_MS * _MS),
            columns["lo"][:size] / _MS,
            columns["hi"][:size] / _MS, take("first"), take("last"), take("buckets"),
            take("stamp"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class EventColumns:
    """One figure per event row."""

    count: Ints
    total: Floats
    mean: Floats
    m2: Floats
    sq: Floats  # the plain sum of squared values
    stamp: Ints

    @classmethod
    def of(cls, columns: Columns, size: int, copy: bool) -> EventColumns:
        def take(name: str) -> npt.NDArray[Any]:
            column = columns[name][:size]
            return column.copy() if copy else column

        return cls(
            take("count"), take("total"), take("mean"), take("m2"), take("sq"), take("stamp")
        )


@dataclass(frozen=True, slots=True)
class View:
    """Read-only columns (in seconds) and names, live (under the lock) or copied (a
    snapshot). Freed rows have a key of None: `live_rows` skips them."""

    bounds: tuple[float, ...]
    branch_keys: Sequence[BranchKey | None]
    branch: BranchColumns
    event_keys: Sequence[EventKey | None]
    event: EventColumns
    # experiment -> branch name -> row, in first-seen order
    experiments: dict[str, dict[str, int]]
    # experiment -> event rows
    experiment_events: dict[str, list[int]]
    # experiment -> unix time of its latest write
    touched: dict[str, float]

    def live_rows(self) -> list[int]:
        """The branch rows in use, in row order."""
        return [row for row, key in enumerate(self.branch_keys) if key is not None]

    def live_event_rows(self) -> list[int]:
        return [row for row, key in enumerate(self.event_keys) if key is not None]


@dataclass(frozen=True, slots=True)
class _Names:
    """A copy of the series' names as of `shape` (see Aggregate._names_copy)."""

    shape: int
    branch_keys: list[BranchKey | None]
    event_keys: list[EventKey | None]
    experiments: dict[str, dict[str, int]]
    experiment_events: dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class ChangedRows:
    """The aggregate's changes since the store last looked, as rows it can write."""

    changes: Changes
    branches: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    activity: list[tuple[str, float]]


class Aggregate:
    def __init__(self, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = check_buckets(buckets)
        self._bounds_array = np.array(self.bounds)
        self.branches: Table[BranchKey] = Table(branch_spec(len(self.bounds)))
        self.events: Table[EventKey] = Table(EVENT_SPEC)
        self.experiments: dict[str, dict[str, int]] = {}
        self.experiment_events: dict[str, list[int]] = {}
        # experiment -> unix time of its latest write of any kind (events and OTLP too)
        self.touched: dict[str, float] = {}
        # experiment -> event name -> how many branches have it (for the limits)
        self.event_names: dict[str, dict[str, int]] = {}
        # What changed since the store last took it (rows, and experiments removed),
        # so persisting writes per-series state, never per-record history.
        self.changes = Changes()
        self.version = 0  # bumped on every change; lets caches and stats skip idle work
        # The series' names (keys and the experiment maps) change only when a series is
        # added or removed: snapshots share one copy of them until then (_names_copy).
        self._shape = 0
        self._names: _Names | None = None

    # -- writing ----------------------------------------------------------

    def add_queries(
        self,
        rows: Rows,
        latency_ms: Sequence[float],
        success: Sequence[bool],
        when: Sequence[float],
    ) -> None:
        """Fold single queries (as parallel columns) into the branch rows they name."""
        if len(rows) == 0:
            return
        if len(rows) <= FEW:
            self._add_few_queries(_plain_rows(rows), latency_ms, success, when)
            return
        unique, groups, count = group_rows(rows)
        lat = floats(latency_ms)
        n = np.bincount(groups, minlength=count)
        total = np.bincount(groups, lat, count)
        mean = total / n
        width = len(self.bounds) + 1
        slot = bucket_slots(self._bounds_array, lat / 1000.0)
        self._merge_branches(
            unique,
            n,
            np.bincount(groups, bools(success), count).astype(np.int64),
            total,
            mean,
            np.bincount(groups, np.square(lat - mean[groups]), count),
            np.bincount(groups, np.square(lat), count),
            _group_min(groups, lat, count),
            _group_max(groups, lat, count),
            *_first_last(groups, when, count),
            np.bincount(groups * width + slot, minlength=count * width).reshape(count, width),
        )

    def add_branch_parts(self, rows: Sequence[int], parts: BranchParts | PartColumns) -> None:
        """Fold pre-aggregated increments (several may name the same row)."""
        if not rows:
            return
        unique, groups, count = group_rows(rows)
        n, total, mean, m2 = _merge_parts(groups, count, parts.n, parts.total_ms, parts.m2)
        buckets = np.zeros((count, len(self.bounds) + 1), dtype=np.int64)
        np.add.at(buckets, groups, np.asarray(parts.buckets, dtype=np.int64))
        self._merge_branches(
            unique,
            n,
            np.bincount(groups, floats(parts.ok), count).astype(np.int64),
            total,
            mean,
            m2,
            np.bincount(groups, floats(parts.sq), count),
            _group_min(groups, floats(parts.lo), count),
            _group_max(groups, floats(parts.hi), count),
            _group_min(groups, floats(parts.first), count),
            _group_max(groups, floats(parts.last), count),
            buckets,
        )

    def _merge_branches(
        self,
        rows: npt.NDArray[np.intp],
        n: npt.NDArray[Any],
        ok: npt.NDArray[Any],
        total: npt.NDArray[Any],
        mean: npt.NDArray[Any],
        m2: npt.NDArray[Any],
        sq: npt.NDArray[Any],
        lo: npt.NDArray[Any],
        hi: npt.NDArray[Any],
        first: npt.NDArray[Any],
        last: npt.NDArray[Any],
        buckets: npt.NDArray[Any],
    ) -> None:
        c = self.branches.columns
        c["n"][rows], c["mean"][rows], c["m2"][rows] = merge_moments(
            c["n"][rows], c["mean"][rows], c["m2"][rows], n, mean, m2
        )
        c["ok"][rows] += ok
        c["total"][rows] += total
        c["sq"][rows] += sq
        c["lo"][rows] = np.minimum(c["lo"][rows], lo)
        c["hi"][rows] = np.maximum(c["hi"][rows], hi)
        c["first"][rows] = np.minimum(c["first"][rows], first)
        c["last"][rows] = np.maximum(c["last"][rows], last)
        c["buckets"][rows] += buckets
        self._branches_changed(rows)

    def _branches_changed(self, rows: npt.NDArray[np.intp]) -> None:
        """What every fold into branch rows records after it (the vectorised merge and
        the small-batch one both end here, so neither can miss a piece of it)."""
        self.branches.columns["stamp"][rows] = next_stamp()
        self.changes.branches.mark(rows)
        self.version += 1

    def add_events(
        self, rows: Rows, values: Sequence[float], when: Sequence[float] | None = None
    ) -> None:
        """Fold single event values into the event rows (live ones) they name; with
        `when`, their experiments are marked written at those times."""
        if len(rows) == 0:
            return
        if len(rows) <= FEW:
            few = _plain_rows(rows)
            self._add_few_events(few, values)
            if when is not None:
                names, latest = self.events.keys, dict[str, float]()
                for row, at in zip(few, when, strict=True):
                    if (key := names[row]) is not None and at > latest.get(key[0], -_INF):
                        latest[key[0]] = float(at)  # as the vectorised fold keeps it
                self.touch_latest(latest)
            return
        unique, groups, count = group_rows(rows)
        v = floats(values)
        n = np.bincount(groups, minlength=count)
        total = np.bincount(groups, v, count)
        mean = total / n
        m2 = np.bincount(groups, np.square(v - mean[groups]), count)
        sq = np.bincount(groups, np.square(v), count)
        self._merge_events(unique, n, total, mean, m2, sq)
        if when is not None:
            # the latest time per row, then per experiment: rows in time order, so that
            # building the dict keeps each experiment's latest (no Python step per row)
            at_row = _group_max(groups, floats(when), count)
            order = np.argsort(at_row, kind="stable")
            keys = map(self.events.keys.__getitem__, unique[order].tolist())
            experiments = map(itemgetter(0), keys)  # type: ignore[arg-type]
            self.touch_latest(dict(zip(experiments, at_row[order].tolist(), strict=True)))

    # -- small batches: the same sums in plain Python ---------------------------------
    # numpy's fixed cost per call (grouping, a dozen small arrays, fancy indexing) is
    # tens of microseconds; a batch of one record (a single-record POST) pays it all. Up
    # to FEW records, each figure is computed with the same float operations in the same
    # order as the vectorised path (sequential sums like bincount's, ties in min/max
    # taken as numpy takes them), so both paths give the same bits.

    def _add_few_queries(
        self,
        rows: Sequence[int],
        latency_ms: Sequence[float],
        success: Sequence[bool],
        when: Sequence[float],
    ) -> None:
        bounds, width = self.bounds, len(self.bounds) + 1
        groups: dict[int, list[int]] = {}
        for index, row in enumerate(rows):
            groups.setdefault(row, []).append(index)
        for row in sorted(groups):
            members = groups[row]
            n, ok, total, sq = len(members), 0, 0.0, 0.0
            lo, hi, first, last = _INF, -_INF, _INF, -_INF
            slots = [0] * width
            for i in members:
                x, at = float(latency_ms[i]), float(when[i])
                total += x
                sq += x * x
                ok += 1 if success[i] else 0
                lo = lo if lo < x else x  # np.minimum keeps the newer value on a tie
                hi = hi if hi > x else x
                first = first if first < at else at
                last = last if last > at else at
                slots[bisect.bisect_left(bounds, x / 1000.0)] += 1
            mean = total / n
            m2 = 0.0
            for i in members:
                d = float(latency_ms[i]) - mean
                m2 += d * d
            self._merge_branch_row(row, n, ok, total, mean, m2, sq, lo, hi, first, last, slots)
        self._branches_changed(np.array(sorted(groups), dtype=np.intp))

    def _merge_branch_row(
        self, row: int, n: int, ok: int, total: float, mean: float, m2: float, sq: float,
        lo: float, hi: float, first: float, last: float, slots: list[int],
    ) -> None:  # fmt: skip
        """`_merge_branches` for one row, in scalars (see merge_moments)."""
        c = self.branches.columns
        _merge_moments_at(c, "n", row, n, total, mean, m2, sq)
        c["ok"][row] += ok
        old = float(c["lo"][row])
        c["lo"][row] = old if old < lo else lo
        old = float(c["hi"][row])
        c["hi"][row] = old if old > hi else hi
        old = float(c["first"][row])
        c["first"][row] = old if old < first else first
        old = float(c["last"][row])
        c["last"][row] = old if old > last else last
        buckets = c["buckets"][row]
        for slot, count in enumerate(slots):
            if count:
                buckets[slot] += count

    def _add_few_events(self, rows: Sequence[int], values: Sequence[float]) -> None:
        groups: dict[int, list[int]] = {}
        for index, row in enumerate(rows):
            groups.setdefault(row, []).append(index)
        c = self.events.columns
        for row in sorted(groups):
            members = groups[row]
            n, total, sq = len(members), 0.0, 0.0
            for i in members:
                x = float(values[i])
                total += x
                sq += x * x
            mean = total / n
            m2 = 0.0
            for i in members:
                d = float(values[i]) - mean
                m2 += d * d
            _merge_moments_at(c, "count", row, n, total, mean, m2, sq)
        self._events_changed(np.array(sorted(groups), dtype=np.intp))

    def held(self, key: BranchKey | EventKey) -> int:
        """How many queries (a branch key) or events (an event key) the series holds."""
        if len(key) == 2:
            row = self.branches.ids.get(key)
            return int(self.branches.columns["n"][row]) if row is not None else 0
        row = self.events.ids.get(key)
        return int(self.events.columns["count"][row]) if row is not None else 0

    def add_event_parts(self, rows: Sequence[int], parts: EventParts) -> None:
        if not rows:
            return
        unique, groups, count = group_rows(rows)
        n, total, mean, m2 = _merge_parts(groups, count, parts.count, parts.total, parts.m2)
        sq = np.bincount(groups, floats(parts.sq), count)
        self._merge_events(unique, n, total, mean, m2, sq)

    def _merge_events(
        self,
        rows: npt.NDArray[np.intp],
        n: npt.NDArray[Any],
        total: npt.NDArray[Any],
        mean: npt.NDArray[Any],
        m2: npt.NDArray[Any],
        sq: npt.NDArray[Any],
    ) -> None:
        c = self.events.columns
        c["count"][rows], c["mean"][rows], c["m2"][rows] = merge_moments(
            c["count"][rows], c["mean"][rows], c["m2"][rows], n, mean, m2
        )
        c["total"][rows] += total
        c["sq"][rows] += sq
        self._events_changed(rows)

    def _events_changed(self, rows: npt.NDArray[np.intp]) -> None:
        """Like _branches_changed, for event rows."""
        self.events.columns["stamp"][rows] = next_stamp()
        self.changes.events.mark(rows)
        self.version += 1

    def add(
        self,
        records: Records,
        now: float,
        rows: tuple[list[int], list[int]] | None = None,
    ) -> None:
        """Apply a batch and mark its experiments written at `now`; `rows`, the rows of
        its query and event keys when the caller looked them up already."""
        query_rows, event_rows = rows or (
            self.branch_rows(records.query_keys),
            self.event_rows(records.event_keys),
        )
        self.add_queries(query_rows, records.latency_ms, records.success, records.when)
        self.add_events(event_rows, records.event_values)
        # each distinct row's experiment: a thousand records name a few dozen series
        branch_keys, event_keys = self.branches.keys, self.events.keys
        experiments = {branch_keys[r][0] for r in set(query_rows)}  # type: ignore[index]
        experiments.update(event_keys[r][0] for r in set(event_rows))  # type: ignore[index]
        self.touch(experiments, now)

    def add_parts(
        self,
        branches: BranchParts | PartColumns,
        events: EventParts,
        now: float | None,
        rows: tuple[list[int], list[int]] | None = None,
    ) -> None:
        """Apply increments; with `now`, mark their experiments written then (a restore
        passes None: its activity times come from the file). `rows`: the parts' rows
        (branches, events) when the caller has looked them all up already."""
        branch_rows, event_rows = rows or (
            self.branch_rows(branches.keys),
            self.event_rows(events.keys),
        )
        self.add_branch_parts(branch_rows, branches)
        self.add_event_parts(event_rows, events)
        if now is not None:
            experiments = map(itemgetter(0), itertools.chain(branches.keys, events.keys))
            self.touch(set(experiments), now)

    def load(self, branches: BranchParts, events: EventParts, activity: dict[str, float]) -> None:
        """Add what the data file holds. It is durable already, so only the rows changed
        before it (recorded while the restore ran) stay marked for the store."""
        earlier = self.take_changes()
        self.add_parts(branches, events, None)
        self.touch_latest(activity)
        self.changes = earlier
        self.bump()

    def bump(self) -> None:
        """Something the aggregate's readers depend on changed outside its columns (a
        config, OTLP stream states, a restore): caches keyed on `version` must refresh."""
        self.version += 1

    def remove_experiment(self, experiment: str) -> bool:
        branches = self.experiments.pop(experiment, None)
        if branches is None:
            return False
        for branch in branches:
            self.branches.remove((experiment, branch))
        for row in self.experiment_events.pop(experiment, []):
            key = self.events.keys[row]
            assert key is not None
            self.events.remove(key)
        self.event_names.pop(experiment, None)
        self.touched.pop(experiment, None)
        self.changes.removed.add(experiment)
        self.version += 1
        self._shape += 1
        return True

    def clear(self) -> None:
        self.branches.clear()
        self.events.clear()
        self.experiments.clear()
        self.experiment_events.clear()
        self.event_names.clear()
        self.touched.clear()
        self.changes = Changes(cleared=True)
        self.version += 1
        self._shape += 1

    def touch(self, experiments: Iterable[str], now: float) -> None:
        touched = self.touched
        for experiment in experiments:
            touched[experiment] = now
            self.changes.touched.add(experiment)

    def touch_latest(self, latest: dict[str, float]) -> None:
        """Move each experiment's last write to `latest` where that is later."""
        touched = self.touched
        for experiment, when in latest.items():
            if experiment in self.experiments:
                touched[experiment] = max(when, touched.get(experiment, when))
                self.changes.touched.add(experiment)

    def take_changes(self) -> Changes:
        """Hand what changed to the store and start afresh (under the owner's lock)."""
        taken = self.changes
        # (flags as many as before: the rows they may name did not shrink)
        self.changes = Changes(RowMarks(taken.branches.capacity), RowMarks(taken.events.capacity))
        return taken

    def export_changes(self, branch_columns: Sequence[str]) -> ChangedRows:
        """What changed since the last call, as plain rows for the store: each touched
        series' state (its key, then `branch_columns`, then buckets), each touched
        event series' (key, count, total, m2, sq), and the experiments' latest writes."""
        changes = self.take_changes()
        touched = self.touched
        activity = [(x, touched[x]) for x in sorted(changes.touched) if x in touched]
        branch_keys, event_keys = self.branches.keys, self.events.keys
        branch_rows = [r for r in changes.branches.rows() if branch_keys[r] is not None]
        event_rows = [r for r in changes.events.rows() if event_keys[r] is not None]
        b, e = self.branches.columns, self.events.columns
        # (a table nothing changed in is skipped: a dozen fancy indexings of nothing
        # cost the writer tens of microseconds under the lock)
        branches = list(
            zip(
                *zip(*(branch_keys[r] for r in branch_rows), strict=True),
                *(b[name][branch_rows].tolist() for name in branch_columns),
                b["buckets"][branch_rows],
                strict=True,
            )
        ) if branch_rows else []  # fmt: skip
        events = list(
            zip(
                *zip(*(event_keys[r] for r in event_rows), strict=True),
                *(e[name][event_rows].tolist() for name in ("count", "total", "m2", "sq")),
                strict=True,
            )
        ) if event_rows else []  # fmt: skip
        return ChangedRows(changes, branches, events, activity)

    def return_changes(
        self,
        changes: Changes,
        branches: Iterable[Sequence[Any]],
        events: Iterable[Sequence[Any]],
        touched: Iterable[str],
    ) -> None:
        """A store write failed: mark what it carried (rows by their keys, removals,
        clears, activity) as changed again, for the next try."""
        for branch in branches:
            if (row := self.branches.ids.get((branch[0], branch[1]))) is not None:
                self.changes.branches.add(row)
        for event in events:
            if (row := self.events.ids.get((event[0], event[1], event[2]))) is not None:
                self.changes.events.add(row)
        self.changes.removed |= changes.removed
        self.changes.cleared |= changes.cleared
        self.changes.touched |= set(touched)

    # -- reading ----------------------------------------------------------

    def totals(self) -> tuple[int, int, int, int]:
        """(experiments, branch series, queries, events) held."""
        size, event_size = self.branches.size, self.events.size
        return (
            len(self.experiments),
            len(self.branches),
            int(self.branches.columns["n"][:size].sum()),
            int(self.events.columns["count"][:event_size].sum()),
        )

    def live_view(self) -> View:
        """The current columns (unit conversions aside, uncopied): only valid while the
        caller holds the lock."""
        size, event_size = self.branches.size, self.events.size
        return View(
            self.bounds,
            self.branches.keys,
            BranchColumns.of(self.branches.columns, size, copy=False),
            self.events.keys,
            EventColumns.of(self.events.columns, event_size, copy=False),
            self.experiments,
            self.experiment_events,
            self.touched,
        )

    def snapshot(self) -> View:
        """A consistent copy, safe to read after the lock is released."""
        size, event_size = self.branches.size, self.events.size
        names = self._names_copy()
        return View(
            self.bounds,
            names.branch_keys,
            BranchColumns.of(self.branches.columns, size, copy=True),
            names.event_keys,
            EventColumns.of(self.events.columns, event_size, copy=True),
            names.experiments,
            names.experiment_events,
            dict(self.touched),
        )

    def _names_copy(self) -> _Names:
        """The names' copy, made again only after a series was added or removed (copying
        a thousand experiments' maps on every scrape cost more than the scrape's render,
        under the lock). Views are read-only, so snapshots may share it."""
        names = self._names
        if names is None or names.shape != self._shape:
            names = self._names = _Names(
                self._shape,
                list(self.branches.keys),
                list(self.events.keys),
                {e: dict(b) for e, b in self.experiments.items()},
                {e: list(rows) for e, rows in self.experiment_events.items()},
            )
        return names

    # -- internals --------------------------------------------------------

    def branch_rows(self, keys: Sequence[BranchKey]) -> list[int]:
        """Rows of these branches, created (and their experiments registered) as needed."""
        return _resolve(self.branches.ids, keys, self.branch_row)

    def branch_row(self, key: BranchKey) -> int:
        row = self.branches.ids.get(key)
        if row is None:
            self._shape += 1
            row = self.branches.row(key)
            self.branches.columns["stamp"][row] = next_stamp()  # a new series, or a reused row
            self.experiments.setdefault(key[0], {})[key[1]] = row
        return row

    def event_rows(self, keys: Sequence[EventKey]) -> list[int]:
        return _resolve(self.events.ids, keys, self.event_row)

    def event_row(self, key: EventKey) -> int:
        row = self.events.ids.get(key)
        if row is None:
            self.branch_row((key[0], key[1]))
            self._shape += 1
            row = self.events.row(key)
            self.events.columns["stamp"][row] = next_stamp()
            self.experiment_events.setdefault(key[0], []).append(row)
            names = self.event_names.setdefault(key[0], {})
            names[key[2]] = names.get(key[2], 0) + 1
        return row
