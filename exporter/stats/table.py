"""The long table of comparisons to compute, gathered from the view's columns.

One row per (experiment, treatment, metric), in the order the outputs list them:
experiments as asked, treatments as first seen, then success_ratio, latency_mean
and, per event in name order, event_rate and event_mean. Built with numpy over
every experiment at once: the only Python loops are one over the pairs (treatment,
control) and one over the event rows, because a per-experiment build costs more
than the statistics themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..core.aggregate import View

Array = npt.NDArray[Any]

METRICS: Final = ("success_ratio", "latency_mean", "event_rate", "event_mean")
SUCCESS, LATENCY, EVENT_RATE, EVENT_MEAN = range(4)
KINDS: Final = ("prop", "rate", "mean")
PROP, RATE, MEAN = range(3)


@dataclass(frozen=True, slots=True)
class Pairs:
    """Each treatment with its experiment's control, experiments in order."""

    experiment: Array  # index into the experiment names
    control_row: Array  # branch rows of the view
    treatment_row: Array
    branch: tuple[str, ...]  # the treatment's name


@dataclass(frozen=True, slots=True)
class Table:
    """Inputs of the statistics, a column per figure; `x` is successes or events (prop,
    rate) and NaN for means, `mean`/`var` are NaN for counts. Control (a) first."""

    pairs: Pairs
    experiment: Array
    pair: Array
    metric: Array  # index into METRICS
    event: Array  # index into `events`, -1 for branch metrics
    events: tuple[str, ...]  # event names, sorted
    kind: Array  # index into KINDS
    lower_is_better: Array
    n_a: Array
    n_b: Array
    x_a: Array
    x_b: Array
    mean_a: Array
    mean_b: Array
    var_a: Array
    var_b: Array

    def __len__(self) -> int:
        return len(self.experiment)


def pairs_of(view: View, names: Sequence[str], controls: Sequence[str]) -> Pairs:
    experiment: list[int] = []
    control_row: list[int] = []
    treatment_row: list[int] = []
    branch: list[str] = []
    for index, (name, control) in enumerate(zip(names, controls, strict=True)):
        rows = view.experiments[name]
        a = rows.get(control)
        if a is None:
            continue
        for treatment, b in rows.items():
            if treatment != control:
                experiment.append(index)
                control_row.append(a)
                treatment_row.append(b)
                branch.append(treatment)
    ints = np.int64
    return Pairs(np.array(experiment, dtype=ints), np.array(control_row, dtype=ints),
                 np.array(treatment_row, dtype=ints), tuple(branch))  # fmt: skip


def _variance(n: Array, m2: Array) -> Array:
    """Unbiased variance, 0 below two values (as moments.sample_variance, per element)."""
    return np.where(n > 1, m2 / np.maximum(n - 1, 1), 0.0)


def build(view: View, names: Sequence[str], controls: Sequence[str]) -> Table:
    pairs = pairs_of(view, names, controls)
    c = view.branch
    pa, pb = pairs.control_row, pairs.treatment_row
    n = c.n[pa], c.n[pb]
    parts = _Parts()
    pair = np.arange(len(pa), dtype=np.int64)
    no = (np.nan, np.nan)
    parts.add((n[0] > 0) & (n[1] > 0), pair, SUCCESS, PROP, False, n, (c.ok[pa], c.ok[pb]), no, no)
    mean, var = (c.mean[pa], c.mean[pb]), (_variance(n[0], c.m2[pa]), _variance(n[1], c.m2[pb]))
    parts.add((n[0] >= 2) & (n[1] >= 2), pair, LATENCY, MEAN, True, n, no, mean, var)
    events = _event_pairs(view, names, pairs)
    event_names: tuple[str, ...] = ()
    if events is not None:
        pair, code, a, b, event_names = events
        n = n[0][pair], n[1][pair]
        count = a[0], b[0]
        kind = np.where((count[0] <= n[0]) & (count[1] <= n[1]), PROP, RATE)
        rate = (n[0] > 0) & (n[1] > 0)
        parts.add(rate, pair, 2 + 2 * code, kind, False, n, count, no, no, code)
        enough = (count[0] >= 2) & (count[1] >= 2)
        parts.add(enough, pair, 3 + 2 * code, MEAN, False, count, no, (a[1], b[1]), (a[2], b[2]),
                  code)  # fmt: skip
    col = parts.joined(2 * len(event_names) + 2)
    slot = col["slot"]
    return Table(
        pairs, pairs.experiment[col["pair"]], col["pair"],
        np.where(slot < 2, slot, EVENT_RATE + slot % 2), col["event"], event_names,
        col["kind"], col["lower"], *(col[k] for k in _FLOATS),
    )  # fmt: skip


_FLOATS: Final = ("n_a", "n_b", "x_a", "x_b", "mean_a", "mean_b", "var_a", "var_b")
Pair = tuple[Any, Any]  # (control, treatment): arrays, or scalars for every row


class _Parts:
    """Rows of the table by kind of metric, put in the outputs' order by `joined`."""

    def __init__(self) -> None:
        self._parts: list[dict[str, Array]] = []

    def add(
        self, mask: Array, pair: Array, slot: Any, kind: Any, lower: bool,
        n: Pair, x: Pair, mean: Pair, var: Pair, event: Any = -1,
    ) -> None:  # fmt: skip
        size = len(pair)
        columns = {"pair": pair, "slot": slot, "kind": kind, "lower": lower, "event": event,
                   "n_a": n[0], "n_b": n[1], "x_a": x[0], "x_b": x[1], "mean_a": mean[0],
                   "mean_b": mean[1], "var_a": var[0], "var_b": var[1]}  # fmt: skip
        self._parts.append({k: np.broadcast_to(v, size)[mask] for k, v in columns.items()})

    def joined(self, slots: int) -> dict[str, Array]:
        """Sorted by pair, then slot (`slots` per pair); counts as floats."""
        joined = {k: np.concatenate([p[k] for p in self._parts]) for k in self._parts[0]}
        order = np.argsort(joined["pair"] * slots + joined["slot"], kind="stable")
        out = {k: v[order] for k, v in joined.items()}
        out.update((k, out[k].astype(np.float64)) for k in _FLOATS)
        return out


_Side = tuple[Array, Array, Array]  # count, mean, variance per (pair, event)


def _event_pairs(
    view: View, names: Sequence[str], pairs: Pairs
) -> tuple[Array, Array, _Side, _Side, tuple[str, ...]] | None:
    """Every (pair, event) either arm has seen, sorted by pair then event name, with
    each arm's (count, mean, variance); (0, 0, 0) for an arm without the event."""
    if not len(pairs.experiment):
        return None
    selected = [names[i] for i in np.unique(pairs.experiment).tolist()]
    found_rows = list(chain.from_iterable(view.experiment_events.get(n, ()) for n in selected))
    if not found_rows:
        return None
    keys = [key for key in map(view.event_keys.__getitem__, found_rows) if key is not None]
    assert len(keys) == len(found_rows)  # an experiment lists only rows in use
    event_names = [key[2] for key in keys]
    ordered = sorted(set(event_names))
    codes = {e: i for i, e in enumerate(ordered)}
    size = len(keys)
    code = np.fromiter(map(codes.__getitem__, event_names), dtype=np.int64, count=size)
    rows_of = view.experiments  # (no tuple per key: allocations wake the garbage collector)
    lookups = (rows_of[key[0]].get(key[1], -1) for key in keys)
    branch_row = np.fromiter(lookups, dtype=np.int64, count=size)
    row = np.array(found_rows, dtype=np.int64)
    # an event of a branch the experiment does not list is left out, as everywhere
    known = branch_row >= 0
    row, branch_row, code = row[known], branch_row[known], code[known]
    if not len(row):
        return None
    e = view.event
    count = e.count[row]
    mean = e.mean[row]
    var = _variance(count, e.m2[row])

    size = len(view.branch_keys)
    pair_of = np.full(size, -1, dtype=np.int64)  # treatment row -> its pair
    pair_of[pairs.treatment_row] = np.arange(len(pairs.treatment_row))
    # control row -> its experiment's pairs, which are contiguous: first and how many
    first = np.zeros(size, dtype=np.int64)
    many = np.zeros(size, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, pairs.experiment[1:] != pairs.experiment[:-1]])
    first[pairs.control_row[starts]] = starts
    many[pairs.control_row[starts]] = np.diff(np.r_[starts, len(pairs.experiment)])

    width = len(ordered)
    b_side = pair_of[branch_row] >= 0
    key_b = pair_of[branch_row[b_side]] * width + code[b_side]
    repeats = many[branch_row]
    of_a = np.repeat(np.arange(len(row)), repeats)
    offsets = np.arange(len(of_a)) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    key_a = (first[branch_row[of_a]] + offsets) * width + code[of_a]
    found = np.union1d(key_a, key_b)

    def side(keys_: Array, source: Array | slice) -> _Side:
        at = np.searchsorted(found, keys_)
        out_count = np.zeros(len(found), dtype=np.int64)
        out_mean, out_var = np.zeros(len(found)), np.zeros(len(found))
        out_count[at], out_mean[at], out_var[at] = count[source], mean[source], var[source]
        return out_count, out_mean, out_var

    return found // width, found % width, side(key_a, of_a), side(key_b, b_side), tuple(ordered)
