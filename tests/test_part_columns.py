"""Parts checked column by column take exactly what the part-by-part pass takes."""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.aggregate import DEFAULT_BUCKETS
from exporter.core.validation import MAX_LATENCY_MS
from exporter.ingest import part_columns, records
from exporter.ingest.records import parse_batch

WIDTH = len(DEFAULT_BUCKETS) + 1
NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 0.0, -0.0, 1, 5.0, 5000.0, 3.6e6, 3.6e6 + 1, 2**53, 1e308, True]),
    st.none(),
    st.text(max_size=2),
)


@st.composite
def good_part(draw: Any) -> dict[str, Any]:
    """A part some records could have produced (the usual shape), with exact edges."""
    values = draw(st.lists(st.floats(0, 3.6e6, allow_nan=False), min_size=1, max_size=6))
    n = len(values)
    total = math.fsum(values)
    mean = total / n
    slots = [0] * WIDTH
    for v in values:
        slots[bisect.bisect_left(DEFAULT_BUCKETS, v / 1000.0)] += 1
    return {
        "experiment": draw(st.sampled_from(["e", "exp-2", "ü"])),
        "branch": draw(st.sampled_from(["control", "t"])),
        "queries": n,
        "successes": draw(st.integers(0, n)),
        "latency_sum_ms": total,
        "latency_m2_ms2": math.fsum((v - mean) ** 2 for v in values),
        "latency_min_ms": min(values),
        "latency_max_ms": max(values),
        "buckets": slots,
    }


@st.composite
def part(draw: Any) -> Any:
    base = draw(good_part())
    change = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6]))
    if change == 0:
        return base
    if change == 6:  # just past one of the agreement checks
        n, lo, hi = base["queries"], base["latency_min_ms"], base["latency_max_ms"]
        edge = draw(st.integers(0, 6))
        if edge == 0:
            base["successes"] = n + 1
        elif edge == 1:
            base["latency_min_ms"] = draw(st.sampled_from([-1e-300, -0.5, math.nan]))
        elif edge == 2:
            base["latency_m2_ms2"] = n * (hi - lo) ** 2 / 4 * 1.01 + 1.0
        elif edge == 3:
            base["latency_sum_ms"] = hi * n * 1.01 + 1.0
        elif edge == 4:
            base["latency_max_ms"] = draw(st.sampled_from([3.6e6 + 1, math.inf, lo - 1]))
        elif edge == 5:  # one count too many, in a slot already used
            base["buckets"] = [c + 1 if c else 0 for c in base["buckets"]]
        else:  # at the ceiling, the sum past n x the limit by less than the slack
            slots = [0] * WIDTH
            slots[-1] = n
            base.update(latency_min_ms=MAX_LATENCY_MS, latency_max_ms=MAX_LATENCY_MS,
                        latency_m2_ms2=0.0, latency_sum_ms=n * MAX_LATENCY_MS * (1 + 5e-10),
                        buckets=slots)  # fmt: skip
        return base
    if change == 1:  # a field set to something odd
        key = draw(st.sampled_from(part_columns.FIELDS))
        base[key] = draw(NUMBER)
    elif change == 2:  # a field dropped, or one added
        if draw(st.booleans()):
            del base[draw(st.sampled_from(part_columns.FIELDS))]
        else:
            base["extra"] = 1
    elif change == 3:  # buckets disagreeing or odd
        slot = draw(st.integers(0, WIDTH - 1))
        base["buckets"] = list(base["buckets"])
        base["buckets"][slot] = draw(st.one_of(st.integers(-1, 3), st.just(True), st.just(1.0)))
        if draw(st.booleans()):
            base["buckets"] = base["buckets"][:-1]
    elif change == 4:  # statistics nudged past what the records allow
        key = draw(st.sampled_from(["latency_sum_ms", "latency_m2_ms2", "latency_min_ms"]))
        base[key] = base[key] * draw(st.sampled_from([0.5, 1 - 1e-8, 1 + 1e-8, 2.0])) + draw(
            st.sampled_from([0.0, 1e-6, 1.0])
        )
    else:
        return draw(st.sampled_from([None, [], "part", 3]))
    return base


def _parsed(items: list[Any], columns: bool) -> tuple[Any, ...]:
    with pytest.MonkeyPatch.context() as patch:
        if not columns:
            patch.setattr(records, "take_all", lambda *args: None)
        batch = parse_batch({"parts": items}, 7.0, 10_000)
    p = batch.parts
    taken = [p.n, p.ok, p.total_ms, p.m2, p.lo, p.hi, p.first, p.last, p.buckets, p.sq]
    # columns (arrays) and parts taken one by one (lists) compared as the same numbers
    plain = [c.tolist() if isinstance(c, np.ndarray) else [_listed(v) for v in c] for c in taken]
    return repr((p.keys, plain)), batch.errors, batch.error_count, batch.reasons


def _listed(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


@settings(max_examples=500, deadline=None)
@given(st.lists(good_part(), max_size=4), part(), st.integers(0, 4))
def test_columns_take_exactly_what_the_part_by_part_pass_takes(
    good: list[Any], odd: Any, at: int
) -> None:
    """Good parts and one odd one (the fast path's decision rests on it)."""
    items = [*good[:at], odd, *good[at:]]
    assert _parsed(items, columns=True) == _parsed(items, columns=False)


@settings(max_examples=100, deadline=None)
@given(st.lists(good_part(), min_size=1, max_size=20))
def test_good_parts_are_taken_by_columns(items: list[Any]) -> None:
    taken = part_columns.take_all(items, 7.0, 200, records.MAX_COUNT, DEFAULT_BUCKETS)
    assert taken is not None  # the usual batch takes the fast path (or this measures nothing)
    assert _parsed(items, columns=True) == _parsed(items, columns=False)


def test_the_columns_read_the_fields_the_part_by_part_pass_checks() -> None:
    assert tuple(records._part_fields(10)[0]) == part_columns.FIELDS
