"""Review of 3f49a43 / b08afc4: reproductions of what the column path and format 4 get
wrong (each test fails on b08afc4)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from exporter import ABMetrics
from exporter.core.aggregate import DEFAULT_BUCKETS
from exporter.ingest.records import MAX_COUNT
from exporter.serve.server import create_app
from exporter.serve.settings import Settings
from exporter.state.store import FILE_NAME, Store, StoreError

WIDTH = len(DEFAULT_BUCKETS) + 1


def _full_part(i: int) -> dict[str, Any]:
    buckets = [0] * WIDTH
    buckets[0] = MAX_COUNT
    return {"experiment": f"e{i}", "branch": "b", "queries": MAX_COUNT, "successes": 0,
            "latency_sum_ms": 0.0, "latency_m2_ms2": 0.0, "latency_min_ms": 0.0,
            "latency_max_ms": 0.0, "buckets": buckets}  # fmt: skip


async def test_a_refused_batch_of_many_full_parts_counts_its_records_exactly(
    aiohttp_client: AiohttpClient,
) -> None:
    """1025 parts of MAX_COUNT queries each: int64 n.sum() wraps (the list pass's sum()
    does not), and the refusal's count goes into a counter, which then goes negative."""
    metrics = ABMetrics()
    settings = Settings(max_body_bytes=50_000_000, max_batch_records=10_000)
    client = await aiohttp_client(create_app(metrics, settings))
    body = {"parts": [_full_part(i) for i in range(1025)]}
    response = await client.post("/api/v1/records", json=body)
    assert response.status == 422, await response.text()
    text = await (await client.get("/metrics")).text()
    line = next(x for x in text.splitlines() if 'reason="limit_count"' in x and x[0] != "#")
    assert int(line.rsplit(" ", 1)[1]) == 1025 * MAX_COUNT, line


def test_a_latency_of_minus_zero_does_not_make_the_next_start_refuse_the_file(
    tmp_path: Path,
) -> None:
    """SQLite keeps no -0.0 in a REAL column (it reads back 0.0), but the checksum is
    taken over -0.0's bits: one record of latency -0.0 (or a part's min/max of -0.0,
    both accepted) and the next start calls the file damaged."""
    metrics = ABMetrics()
    store = Store(tmp_path, metrics)
    store.open()
    metrics.record_query("e", "b", -0.0, True)
    store.commit()
    store.close()
    again = ABMetrics()
    Store(tmp_path, again).open()  # StoreError: a row of branches fails its checksum
    branch = again.get_branch_metrics("e", "b")
    assert branch is not None and branch.query_count == 1


def test_a_row_of_the_wrong_kind_is_refused_whatever_its_stored_checksum(
    tmp_path: Path,
) -> None:
    """checksum() answers -1 for a value the table cannot hold; a stored crc of -1 then
    verifies it: text in a REAL column restored as the activity time."""
    metrics = ABMetrics()
    store = Store(tmp_path, metrics)
    store.open()
    metrics.record_event("e", "b", "x", 5.0)  # an event marks its experiment written
    store.commit()
    store.close()
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        changed = connection.execute("UPDATE activity SET last = 'nan', crc = -1").rowcount
    assert changed == 1
    with pytest.raises(StoreError, match=r"checksum.*mv "):
        Store(tmp_path, ABMetrics()).open()
