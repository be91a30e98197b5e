"""The column-by-column check of a batch takes exactly what the record-by-record one does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.ingest import records
from exporter.ingest.records import parse_batch

NAMES = st.sampled_from(["control", "treatment", "", "x" * 200, "a\nb", 7, None])
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.booleans(),
    st.just("12"),
    st.sampled_from([10**400, -(10**400), -0.0, 1e12, 1e15, -1e15]),  # past float, at the bounds
)
QUERY = st.fixed_dictionaries(
    {"experiment": NAMES, "branch": NAMES, "latency_ms": NUMBERS, "success": NUMBERS}
)
EVENT = st.fixed_dictionaries(
    {"experiment": NAMES, "branch": NAMES, "event": NAMES, "value": NUMBERS}
)


def outcome(body: dict[str, Any]) -> tuple[Any, ...]:
    batch = parse_batch(body, 5.0, 10_000)
    r = batch.records
    return (batch.errors, r.query_keys, r.latency_ms, r.success, r.when, r.event_keys,
            r.event_values)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(QUERY, max_size=4), st.lists(EVENT, max_size=4))
def test_columns_and_records_agree(queries: list[Any], events: list[Any]) -> None:
    body = {"queries": queries, "events": events}
    fast = outcome(body)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(records, "_all_good_queries", lambda *a: False)
        patch.setattr(records, "_all_good_events", lambda *a: False)
        slow = outcome(body)
    assert json.dumps(fast, default=str) == json.dumps(slow, default=str)


@pytest.mark.parametrize("bad", [float("nan"), float("-inf"), 1e16, 10**400, True, "1"])
@pytest.mark.parametrize("at", [0, 1, 2])
def test_one_bad_value_anywhere_refuses_the_batch(bad: object, at: int) -> None:
    """The column checks use min, max and sum: a NaN they pass over is still caught."""
    queries = [{"experiment": "e", "branch": "b", "latency_ms": 5.0, "success": True}] * 3
    events = [{"experiment": "e", "branch": "b", "event": "v", "value": 5.0}] * 3
    queries = [dict(q, latency_ms=bad) if i == at else q for i, q in enumerate(queries)]
    events = [dict(e, value=bad) if i == at else e for i, e in enumerate(events)]
    batch = parse_batch({"queries": queries, "events": events}, 5.0, 10_000)
    assert batch.error_count == 2  # each named by its path, as record by record
    assert [e["field"] for e in batch.errors] == [
        f"queries[{at}].latency_ms",
        f"events[{at}].value",
    ]
