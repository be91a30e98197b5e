"""A pre-aggregated batch's query parts checked column by column.

A pre-aggregating client sends one part per series per flush, so the server's cost is
per part; checking each part's nine fields and their agreement one by one was a quarter
of it. When every part is good (the rule) the same checks run here over whole columns:
the same comparisons in the same float operations, so a part is taken here exactly when
the part-by-part pass (records.py) would take it. Anything unusual (a field missing, a
type, a value out of range, disagreeing fields) returns None and that pass names it.
The columns that pass are the ones folded, so nothing is read into lists and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from typing import Any, Final

import numpy as np

from ..core.aggregate import PartColumns
from ..core.validation import MAX_LATENCY_MS, good_names

FIELDS: Final = (
    "experiment",
    "branch",
    "queries",
    "successes",
    "latency_sum_ms",
    "latency_m2_ms2",
    "latency_min_ms",
    "latency_max_ms",
    "buckets",
)
_INT: Final = frozenset({int})
_NUMBER: Final = frozenset({int, float})
# Relative slack for checks on sums a client computed in floating point (both passes).
SLACK: Final = 1e-9


def take_all(
    items: list[Any],
    now: float,
    max_name_length: int,
    max_count: int,
    bounds: Sequence[float],
) -> PartColumns | None:
    """Every part as columns if every one is good; else None. The arrays the checks
    made are the columns the fold reads: no Python number is made per part again."""
    try:
        if set(map(type, items)) != {dict} or set(map(len, items)) != {len(FIELDS)}:
            return None
        rows = list(map(itemgetter(*FIELDS), items))  # KeyError: a field missing
        columns = map(list, zip(*rows, strict=True))  # rows are all nine long
        experiments, branches, n, ok, total, m2, lo, hi, buckets = columns
        names = set(experiments) | set(branches)  # TypeError: an unhashable name
    except (KeyError, TypeError):
        return None
    if not good_names(names, max_name_length):
        return None
    if not (set(map(type, n)) <= _INT and set(map(type, ok)) <= _INT):
        return None
    if min(n) < 1 or max(n) > max_count or min(ok) < 0:
        return None
    floats = (total, m2, lo, hi)
    if not all(set(map(type, column)) <= _NUMBER for column in floats):
        return None
    width = len(bounds) + 1
    if set(map(type, buckets)) != {list} or set(map(len, buckets)) != {width}:
        return None
    if not set(map(type, chain.from_iterable(buckets))) <= _INT:
        return None
    try:
        nf = np.array(n, dtype=np.float64)
        total_a, m2_a, lo_a, hi_a = (np.array(c, dtype=np.float64) for c in floats)
        counts = np.array(buckets, dtype=np.int64)  # OverflowError: beyond int64
        n_i, ok_i = np.array(n, dtype=np.int64), np.array(ok, dtype=np.int64)
    except OverflowError:  # an int beyond float or int64 range: "must be finite" there
        return None
    with np.errstate(all="ignore"):
        if not (
            np.isfinite(total_a).all()
            and np.isfinite(m2_a).all()
            and (m2_a >= 0).all()
            and (lo_a >= 0).all()  # False for NaN too
            and (hi_a <= MAX_LATENCY_MS).all()
            and (lo_a <= MAX_LATENCY_MS).all()
            and (hi_a >= 0).all()
            and (counts >= 0).all()
            and (counts <= max_count).all()
            and (ok_i <= n_i).all()
            and (lo_a <= hi_a).all()
        ):
            return None
        # the same expressions, in the same order, as records.py's _check_part
        mean_ok = (lo_a * nf * (1 - SLACK) <= total_a) & (
            total_a <= hi_a * nf * (1 + SLACK) + SLACK
        )
        spread = nf * (hi_a - lo_a) ** 2 / 4 * (1 + SLACK) + SLACK * np.maximum(
            1.0, total_a * total_a / nf
        )
        capped = total_a <= nf * MAX_LATENCY_MS
        if not (mean_ok.all() and capped.all() and (m2_a <= spread).all()):
            return None
    if not (counts.sum(axis=1) == n_i).all():
        return None
    used = counts > 0
    first_used = used.argmax(axis=1)
    last_used = width - 1 - used[:, ::-1].argmax(axis=1)
    # the buckets min and max fall in (bisect_left's answer, for finite values)
    edges = np.asarray(bounds, dtype=np.float64)
    first = np.searchsorted(edges, lo_a / 1000.0, side="left")
    last = np.searchsorted(edges, hi_a / 1000.0, side="left")
    if not ((first_used == first).all() and (last_used == last).all()):
        return None
    # first and last: the time taken; the sum of squares as BranchParts rebuilds it
    # (M2 + total²/n, n >= 1 here), in the same float operations
    when = np.full(len(n_i), now)
    keys = list(zip(experiments, branches, strict=True))
    squares = m2_a + total_a * total_a / nf
    return PartColumns(keys, n_i, ok_i, total_a, m2_a, lo_a, hi_a, when, when, counts, squares)
