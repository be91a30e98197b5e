"""Small batches are folded in plain Python: they must give the vectorised path's bits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core import aggregate
from exporter.core.aggregate import Aggregate, Records
from exporter.core.tables import Table

KEYS = [("a", "control"), ("a", "treatment"), ("b", "control")]
EVENTS = [("a", "control", "buy"), ("a", "treatment", "buy"), ("b", "control", "revenue")]
# ties, signed zeros, bucket edges (5 ms is a bound), huge and tiny values
LATENCY = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 5.0, 5.000000001, 12.5, 1e-9, 3.6e6]),
    st.floats(0, 3.6e6, allow_nan=False),
)
VALUE = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e12]), st.floats(-1e12, 1e12, allow_nan=False)
)
QUERY = st.tuples(st.sampled_from(KEYS), LATENCY, st.booleans(), st.sampled_from([1.0, 2.0, 3.5]))
EVENT = st.tuples(st.sampled_from(EVENTS), VALUE)
BATCH = st.tuples(st.lists(QUERY, max_size=aggregate.FEW), st.lists(EVENT, max_size=aggregate.FEW))


def _records(batch: tuple[list[tuple], list[tuple]]) -> Records:  # type: ignore[type-arg]
    records = Records()
    for key, latency, success, when in batch[0]:
        records.add_query(key, latency, success, when)
    for key, value in batch[1]:
        records.add_event(key, value)
    return records


def _bits(table: Table[Any]) -> dict[str, bytes]:
    """Every column of the table, so a column added later that only the vectorised merge
    fills shows up here. Change stamps are numbered across the process, so two aggregates
    compare by their order: the same rows stamped by the same writes."""
    bits = {name: column[: table.size].tobytes() for name, column in table.columns.items()}
    stamps = table.columns["stamp"][: table.size]
    bits["stamp"] = np.unique(stamps, return_inverse=True)[1].tobytes()
    return bits


@settings(max_examples=200, deadline=None)
@given(st.lists(BATCH, min_size=1, max_size=6))
def test_small_batches_fold_to_the_same_bits_as_numpy(
    batches: list[tuple[list[tuple], list[tuple]]],  # type: ignore[type-arg]
) -> None:
    few, vectorised = Aggregate(), Aggregate()
    for batch in batches:
        few.add(_records(batch), 10.0)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(aggregate, "FEW", 0)  # every batch through numpy
            vectorised.add(_records(batch), 10.0)
    assert _bits(few.branches) == _bits(vectorised.branches)
    assert _bits(few.events) == _bits(vectorised.events)
    assert few.changes == vectorised.changes
    assert few.version == vectorised.version


def test_one_record_lands_in_its_row_exactly() -> None:
    agg = Aggregate()
    records = Records()
    records.add_query(("a", "control"), 12.0, True, 5.0)
    records.add_query(("a", "control"), 30.0, False, 4.0)
    records.add_event(("a", "control", "buy"), 2.0)
    agg.add(records, 5.0)
    row = agg.branches.ids["a", "control"]
    c = agg.branches.columns
    assert (c["n"][row], c["ok"][row], c["total"][row]) == (2, 1, 42.0)
    assert (c["mean"][row], c["m2"][row], c["sq"][row]) == (21.0, 162.0, 1044.0)
    assert (c["lo"][row], c["hi"][row], c["first"][row], c["last"][row]) == (12.0, 30.0, 4.0, 5.0)
    slot_12 = int(np.searchsorted(agg.bounds, 0.012))
    slot_30 = int(np.searchsorted(agg.bounds, 0.030))
    assert c["buckets"][row][slot_12] == 1 and c["buckets"][row][slot_30] == 1
    assert c["buckets"][row].sum() == 2
    event = agg.events.ids["a", "control", "buy"]
    assert (agg.events.columns["count"][event], agg.events.columns["total"][event]) == (1, 2.0)
    assert agg.changes.branches.rows() == [row] and agg.changes.events.rows() == [event]


@pytest.mark.parametrize("size", [1, aggregate.FEW, aggregate.FEW + 1])
def test_an_experiments_latest_write_is_a_float_whatever_the_fold(size: int) -> None:
    """A clock that gives ints: the experiment's latest write is kept as a float by the
    small fold as by numpy (the data file's checksum packs what it is given)."""
    agg = Aggregate()
    records = Records()
    records.add_event(("a", "control", "buy"), 1.0)
    agg.add(records, 5.0)
    row = agg.events.ids["a", "control", "buy"]
    agg.add_events([row] * size, [1.0] * size, [100] * size)
    assert agg.touched["a"] == 100.0 and type(agg.touched["a"]) is float


def test_a_batch_of_one_time_folds_as_one_of_many_times() -> None:
    """An HTTP batch's records share one time (a list of one float): its first and last
    times are taken without a pass, and must be what the pass over the times gives."""
    shared, general = Aggregate(), Aggregate()
    records = Records()
    for i in range(aggregate.FEW * 3):
        records.add_query(KEYS[i % 3], float(i), i % 2 == 0, 7.25)
    for agg in (shared, general):
        agg.add(Records(), 1.0)
        rows = agg.branch_rows(records.query_keys)
        when: Any = records.when if agg is shared else np.array(records.when)
        agg.add_queries(rows, records.latency_ms, records.success, when)
    assert _bits(shared.branches) == _bits(general.branches)
    row = shared.branches.ids[KEYS[0]]
    assert shared.branches.columns["first"][row] == shared.branches.columns["last"][row] == 7.25


def test_times_as_many_as_the_records_or_the_fold_refuses_them() -> None:
    """One time for every record: a shorter list of one time is an error, not a batch
    whose first and last are that time."""
    agg = Aggregate()
    agg.add(Records(), 1.0)
    rows = agg.branch_rows([KEYS[0]] * (aggregate.FEW + 1))
    n = len(rows)
    with pytest.raises(ValueError):
        agg.add_queries(rows, [1.0] * n, [True] * n, [7.0] * 3)


def test_a_clock_before_1970_still_moves_an_experiments_latest_write() -> None:
    """The small event fold took -1.0 as 'no time yet': earlier times never counted."""
    for size in (1, aggregate.FEW, aggregate.FEW + 1):
        agg = Aggregate()
        records = Records()
        records.add_event(("a", "control", "buy"), 1.0)
        agg.add(records, -10.0)
        row = agg.events.ids["a", "control", "buy"]
        agg.add_events([row] * size, [1.0] * size, [-2.0] * size)
        assert agg.touched["a"] == -2.0, size
