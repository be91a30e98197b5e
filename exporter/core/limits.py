"""Cardinality limits: how many experiments, branches and event names may exist.

A batch that would cross a limit is refused whole (nothing of it applied); the
check runs under the aggregate's lock together with the apply, so concurrent
batches cannot slip past it together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import contains, itemgetter
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from .aggregate import Aggregate, BranchKey, EventKey, group_rows
from .tables import MAX_ROWS
from .validation import MAX_COUNT, MAX_NAME_LENGTH, ValidationError


@dataclass(frozen=True, slots=True)
class Limits:
    max_experiments: int = 10_000
    max_branches: int = 100  # per experiment
    max_events: int = 100  # distinct event names per experiment
    max_name_length: int = MAX_NAME_LENGTH
    max_series: int = 100_000  # branch and event series together, at most MAX_ROWS

    def __post_init__(self) -> None:
        if not 0 < self.max_series <= MAX_ROWS:
            raise ValueError(f"max_series must be 1 .. {MAX_ROWS}, got {self.max_series}")


class LimitError(ValidationError):
    """A cardinality limit would be crossed; `reason` names it for the self-metrics."""


class Admission:
    """Admits new series one at a time against the limits, counting what it has let in,
    so a batch of any size is checked in one pass."""

    def __init__(self, aggregate: Aggregate, limits: Limits) -> None:
        self._aggregate = aggregate
        self._limits = limits
        self._experiments: set[str] = set()  # new experiments let in
        self._branches: dict[str, set[str]] = {}  # experiment -> new branches let in
        self._events: dict[str, set[str]] = {}  # experiment -> new event names let in
        self._new_events: set[EventKey] = set()
        self._series = len(aggregate.branches) + len(aggregate.events)  # held and let in

    def _series_full(self) -> LimitError | None:
        if self._series >= self._limits.max_series:
            return LimitError(
                "limit_series",
                f"the limit of {self._limits.max_series} series (branches and events) "
                "would be exceeded",
            )
        return None

    def branch(self, key: BranchKey) -> LimitError | None:
        """None if the branch exists or fits (and is now counted), else why not."""
        experiment, branch = key
        existing = self._aggregate.experiments.get(experiment)
        added = self._branches.get(experiment, set())
        if (existing is not None and branch in existing) or branch in added:
            return None
        limits = self._limits
        new_experiment = existing is None and experiment not in self._experiments
        experiments = len(self._aggregate.experiments) + len(self._experiments)
        if new_experiment and experiments >= limits.max_experiments:
            return LimitError(
                "limit_experiments",
                f"the limit of {limits.max_experiments} experiments would be exceeded",
            )
        if len(existing or ()) + len(added) >= limits.max_branches:
            return LimitError(
                "limit_branches",
                f"experiment {experiment!r} would exceed the limit of {limits.max_branches} "
                "branches",
            )
        if (full := self._series_full()) is not None:
            return full
        if existing is None:
            self._experiments.add(experiment)
        self._branches.setdefault(experiment, set()).add(branch)
        self._series += 1
        return None

    def event(self, key: EventKey) -> LimitError | None:
        """Like branch(), for an event series (and the branch it belongs to)."""
        experiment, _, name = key
        known = self._aggregate.event_names.get(experiment, {})
        added = self._events.get(experiment, set())
        new_name = name not in known and name not in added
        if new_name and len(known) + len(added) >= self._limits.max_events:
            return LimitError(
                "limit_events",
                f"experiment {experiment!r} would exceed the limit of "
                f"{self._limits.max_events} event names",
            )
        refused = self.branch((experiment, key[1]))
        if refused is not None:
            return refused
        if key not in self._aggregate.events.ids and key not in self._new_events:
            if (full := self._series_full()) is not None:
                return full
            self._new_events.add(key)
            self._series += 1
        if name not in known:
            self._events.setdefault(experiment, set()).add(name)
        return None


def check(
    aggregate: Aggregate,
    limits: Limits,
    branch_keys: Iterable[BranchKey],
    event_keys: Iterable[EventKey],
) -> None:
    """Raise LimitError if adding these series would cross a limit."""
    admission = Admission(aggregate, limits)
    for key in set(branch_keys):
        if (error := admission.branch(key)) is not None:
            raise error
    for event_key in set(event_keys):
        if (error := admission.event(event_key)) is not None:
            raise error


def check_counts(
    aggregate: Aggregate,
    branch_keys: Sequence[BranchKey],
    branch_counts: Sequence[int],
    event_keys: Sequence[EventKey],
    event_counts: Sequence[int],
    rows: tuple[Sequence[int], Sequence[int]] | None = None,
) -> None:
    """Raise LimitError ("limit_count") if adding these counts (records are 1 each, a
    part its count) would take any series past MAX_COUNT: a count the data file could
    not hold again, so it is never acknowledged. `rows`: the keys' rows when all exist."""
    known = rows or (None, None)
    for keys, counts, found in (
        (branch_keys, branch_counts, known[0]),
        (event_keys, event_counts, known[1]),
    ):
        if keys and not _counts_fit(aggregate, keys, counts, found):
            raise LimitError(
                "limit_count",
                f"a series would hold more than {MAX_COUNT} records; nothing was applied",
            )


def _counts_fit(
    aggregate: Aggregate,
    keys: Sequence[BranchKey] | Sequence[EventKey],
    counts: Sequence[int],
    found: Sequence[int] | None,
) -> bool:
    table, held = _held_counts(aggregate, keys)
    total = sum(counts)
    if total > MAX_COUNT:
        return False  # too many for any one series; a new series holds at most this
    if found is None:  # only the series held add to a count already there
        ids: dict[Any, int] = table.ids
        looked = zip(map(ids.get, keys), counts, strict=True)
        pairs = [(row, count) for row, count in looked if row is not None]
        found, counts = [r for r, _ in pairs], [c for _, c in pairs]
    return _held_fit(held, found, counts, total)


def _held_counts(
    aggregate: Aggregate, keys: Sequence[BranchKey] | Sequence[EventKey]
) -> tuple[Any, npt.NDArray[Any]]:
    """The table these keys' series live in (branches or events, by the keys' length)
    and its column of record counts."""
    if len(keys[0]) == 2:
        return aggregate.branches, aggregate.branches.columns["n"]
    return aggregate.events, aggregate.events.columns["count"]


def _held_fit(
    held: npt.NDArray[Any], rows: Sequence[int], counts: Sequence[int], total: int
) -> bool:
    """Whether each of these held rows stays within MAX_COUNT with the counts added to it
    (`total`, at most MAX_COUNT, is what they add in all)."""
    if not len(rows):
        return True
    # the fullest row and everything: when the column is not much longer than the rows,
    # its max (at least theirs) in one contiguous pass, not a gather of a thousand rows
    top = held.max() if len(held) <= 4 * len(rows) else held[rows].max()
    if int(top) + total <= MAX_COUNT:
        return True
    # float sums of integers are exact while every partial sum stays below 2**53
    unique, groups, size = group_rows(rows)  # np.unique's answer, sooner
    added = np.bincount(groups, np.array(counts, dtype=np.float64), size)
    return bool((held[unique].astype(np.int64) + added.astype(np.int64) <= MAX_COUNT).all())


def held_rows(
    aggregate: Aggregate, keys: Sequence[BranchKey] | Sequence[EventKey], counts: Sequence[int]
) -> list[int] | None:
    """The rows of the series the parts name, if every part names a series that exists
    (branch, experiment and event name alike) and each series stays within MAX_COUNT with
    all its parts: then an Admission and the count check let each part in, in any order,
    and change nothing (and the rows are those `Aggregate.add_parts` would look up); else
    None. One pass of lookups and a few array operations: an app's steady exports."""
    if not keys:
        return []
    experiments, names = aggregate.experiments, aggregate.event_names
    ids: dict[Any, int] = _held_counts(aggregate, keys)[0].ids
    rows = list(map(ids.get, keys))
    if None in rows:
        return None
    # each distinct key once, by C loops (map, itemgetter, contains): no bytecode per key
    unique = set(keys)
    firsts = list(map(itemgetter(0), unique))
    branches = map(experiments.get, firsts, repeat(()))
    if not all(map(contains, branches, map(itemgetter(1), unique))):
        return None
    # event keys (the keys are all of one kind): their names too
    event_names = map(names.get, firsts, repeat(()))
    if len(keys[0]) == 3 and not all(map(contains, event_names, map(itemgetter(2), unique))):
        return None
    # a negative count is refused by the part checks: never let one lower a sum here
    found = cast(list[int], rows)
    return found if min(counts) >= 0 and _counts_fit(aggregate, keys, counts, found) else None
