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
