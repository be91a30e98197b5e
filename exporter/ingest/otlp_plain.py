"""The common case of OTLP increments, for all points of a request at once.

Nearly every point an app exports is the next point of a cumulative stream already
held: same start, same bounds, later end, no count gone down. Its increment is a
plain difference from the stream's last point, which numpy takes for a whole group
of points of one shape in a few array operations. `plain` answers only when every
point given is such a point (and its increment passes the duration check);
otherwise it answers None and the caller takes the point-by-point path
(`otlp.Receiver._increment`), which stays the reference for every other case.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..core.validation import MAX_LATENCY_MS
from . import otlp_state as state_

# what a new stream's increment is taken against: nothing yet
_NONE: Final[state_.Stream] = (0, 0, 0, 0.0, b"", (), state_.NO_WINDOWS)
_START, _TIME, _COUNT, _TOTAL, _BUCKETS = map(
    operator.itemgetter, (state_.START, state_.TIME, state_.COUNT, state_.TOTAL, state_.BUCKETS)
)


@dataclass(frozen=True, slots=True)
class Plain:
    """The increments of a group of points (count, sum and buckets), and which of the
    points have any (`kept`, ascending, as indices into the group)."""

    count: npt.NDArray[np.int64]
    total: npt.NDArray[np.float64]
    buckets: npt.NDArray[np.int64]
    kept: npt.NDArray[np.intp]


def plain(
    query: bool,
    factor: float,
    starts: npt.NDArray[np.uint64],
    ends: npt.NDArray[np.uint64],
    counts: npt.NDArray[np.uint64],
    totals: npt.NDArray[np.float64],
    buckets: npt.NDArray[np.int64],
    last: Sequence[Any],
    horizon: int,
) -> Plain | None:
    """Increments of points of one shape against `last`, each point's held state (see
    `otlp_state`; with the same bounds) or None for a stream new to us: its point is the
    increment, or only a baseline when it starts at or before the `horizon` (its
    increments are then left out: `kept` says so). None if any point is not plain."""
    width = buckets.shape[1]
    if all(last):  # the usual case: every stream held (`all`: no __eq__ per state)
        fresh = np.zeros(len(last), dtype=bool)
        held = last
    else:
        fresh = np.array([s is None for s in last], dtype=bool)
        held = [_NONE if s is None else s for s in last]
    size = len(last)
    new_start = np.array(starts, dtype=np.uint64)
    # fromiter: the states' fields straight into the array, no list between
    old_start = np.fromiter(map(_START, held), dtype=np.uint64, count=size)
    old_time = np.fromiter(map(_TIME, held), dtype=np.uint64, count=size)
    old_count = np.fromiter(map(_COUNT, held), dtype=np.uint64, count=size)
    new_count = np.array(counts, dtype=np.uint64)
    if not (
        ((new_start == old_start) | fresh).all()
        and ((np.array(ends, dtype=np.uint64) > old_time) | fresh).all()
        and (new_count >= old_count).all()
    ):
        return None
    # states hold their counts as packed native int64 bytes: joined as they are
    zero = bytes(8 * width)
    old_rows = (
        list(map(_BUCKETS, held))
        if held is last
        else [zero if s is None else s[state_.BUCKETS] for s in last]
    )
    old_buckets = np.frombuffer(b"".join(old_rows), dtype=np.int64).reshape(len(last), width)
    new_buckets = buckets
    if (new_buckets < old_buckets).any():
        return None
    count = (new_count - old_count).astype(np.int64)
    if horizon:  # a new stream that may be one we forgot: a baseline only
        count[fresh & (new_start <= np.uint64(horizon))] = 0
    old_total = np.fromiter(map(_TOTAL, held), dtype=np.float64, count=size)
    total = np.array(totals, dtype=np.float64) - old_total  # x - 0.0 is x, NaN and -0.0 too
    if query:  # as `_increment`: a sum that went down or grew too fast is refused there
        limit = count * MAX_LATENCY_MS / factor
        with np.errstate(invalid="ignore"):
            bad = (count > 0) & ~np.isnan(total) & ~((total >= 0) & (total <= limit))
        if bad.any():
            return None
    kept = np.flatnonzero(count > 0)
    return Plain(count, total, new_buckets - old_buckets, kept)
