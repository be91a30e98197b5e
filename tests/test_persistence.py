"""Nothing acknowledged is lost: restarts, SIGKILL under load, and a data file that
cannot be trusted."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from exporter import ABMetrics
from exporter.state import store as store_module
from exporter.state.store import FILE_NAME, Store, StoreError, crc

from .crashing import crash_cycle
from .helpers import Exporter, http, wait_for
from .test_exposition import key, samples


def scrape_totals(exporter: Exporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, raw = http(exporter.url + "/metrics")
    assert status == 200
    return samples(raw.decode())


def test_restart_restores_everything_and_counters_continue(tmp_path: Path) -> None:
    data = str(tmp_path)
    first = Exporter(data_dir=data)
    queries = [
        {"experiment": "e", "branch": b, "latency_ms": 10.0 + i, "success": i % 3 != 0}
        for i, b in enumerate(["control", "treatment"] * 50)
    ]
    events = [{"experiment": "e", "branch": "treatment", "event": "revenue", "value": 4.5}] * 7
    assert first.post({"queries": queries, "events": events})[0] == 200
    config = {"control": "control", "alpha": 0.01}
    assert http(first.url + "/api/v1/experiments/e/config", config, method="PUT")[0] == 200
    assert first.post({"queries": [{**queries[0], "experiment": "gone"}]})[0] == 200
    assert http(first.url + "/api/v1/experiments/gone", method="DELETE")[0] == 200
    before = first.get("/api/v1/experiments/e")
    first.stop()

    second = Exporter(data_dir=data)
    try:
        after = second.get("/api/v1/experiments/e")
        assert after["branches"] == before["branches"]
        assert second.get("/api/v1/experiments/e/config")["alpha"] == 0.01
        assert [s["experiment"] for s in second.get("/api/v1/experiments")["experiments"]] == ["e"]
        # counters continue where they were: Prometheus sees no reset
        assert second.post({"queries": queries[:2]})[0] == 200
        found = scrape_totals(second)
        assert found[key("abtest_queries_total", experiment="e", branch="control")] == 51
        assert (
            found[
                key("abtest_event_value_count", experiment="e", branch="treatment", event="revenue")
            ]
            == 7
        )
        assert any(
            name == "abtest_exporter_persist_last_success_timestamp_seconds" for name, _ in found
        )
    finally:
        second.stop()


def test_sigkill_under_concurrent_ingest_loses_no_acknowledged_record(tmp_path: Path) -> None:
    """Kill -9 at random moments while four clients write; every 200 must survive.
    (benchmarks/crash.py runs the same with more kills.)"""
    result = crash_cycle(str(tmp_path), kills=4, seed=1234)
    assert result.acknowledged["queries"] > 0
    for what in ("queries", "failures", "events"):
        # every acknowledged record is there; of the unanswered ones, some may be
        low, high = result.acknowledged[what], result.acknowledged[what] + result.uncertain[what]
        assert low <= result.totals[what] <= high, (what, result)


def test_sigkill_with_two_exporters_racing_for_the_directory(tmp_path: Path) -> None:
    """Issue 9, item 1: each restart is two processes at once; one serves, one stops."""
    result = crash_cycle(str(tmp_path), kills=3, seed=99, race=True)
    assert result.races == 3 and result.acknowledged["queries"] > 0
    for what in ("queries", "failures", "events"):
        low, high = result.acknowledged[what], result.acknowledged[what] + result.uncertain[what]
        assert low <= result.totals[what] <= high, (what, result)


def test_sigkill_exact_when_nothing_is_in_flight(tmp_path: Path) -> None:
    """With no request in flight at the kill, the totals equal the acknowledged ones exactly."""
    exporter = Exporter(data_dir=str(tmp_path))
    sent = 0
    for i in range(20):
        batch = [{"experiment": "x", "branch": "b", "latency_ms": float(i), "success": True}] * 37
        assert exporter.post({"queries": batch})[0] == 200
        sent += 37
    exporter.process.send_signal(signal.SIGKILL)
    exporter.process.wait(10)
    restarted = Exporter(data_dir=str(tmp_path), port=exporter.port)
    try:
        assert restarted.get("/api/v1/stats")["total_queries_recorded"] == sent
    finally:
        restarted.stop()


def run_serve(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "9",
            "--data-dir",
            str(data_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_corrupt_file_stops_the_start_and_says_how_to_move_it(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database" * 100)
    result = run_serve(tmp_path)
    assert result.returncode == 2
    assert "not a usable database" in result.stderr and "mv " in result.stderr
    assert (tmp_path / FILE_NAME).read_bytes().startswith(b"this is not")  # never wiped


def test_a_newer_format_stops_the_start(tmp_path: Path) -> None:
    store = Store(tmp_path, ABMetrics())
    store.open()
    store.close()
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        connection.execute(  # as a newer exporter would write it, checksum and all
            "UPDATE meta SET value = '99', crc = ? WHERE key = 'format_version'",
            (crc(("format_version", "99")),),
        )
    result = run_serve(tmp_path)
    assert result.returncode == 2 and "newer abtest-exporter (format 99" in result.stderr


def test_other_bucket_bounds_stop_the_start(tmp_path: Path) -> None:
    store = Store(tmp_path, ABMetrics(buckets=(0.1, 1.0)))
    store.open()
    store.close()
    with pytest.raises(StoreError, match="bucket bounds"):
        Store(tmp_path, ABMetrics()).open()


def test_interval_durability_writes_on_a_timer(tmp_path: Path) -> None:
    metrics = ABMetrics()
    store = Store(tmp_path, metrics, durability="interval", interval=0.1)
    store.open()
    store.start()
    metrics.record_query("e", "b", 5.0, True)
    metrics.record_event("e", "b", "x", 2.0)
    wait_for(lambda: store.stats.commits >= 1, 5, "a timed commit")
    store.close()
    restored = ABMetrics()
    Store(tmp_path, restored).open()
    branch = restored.get_branch_metrics("e", "b")
    assert branch is not None and branch.query_count == 1 and branch.events["x"].total == 2.0


def test_expiry_removes_idle_experiments_everywhere(tmp_path: Path) -> None:
    exporter = Exporter(["--expire-after", "1"], data_dir=str(tmp_path))
    try:
        exporter.post(
            {"queries": [{"experiment": "old", "branch": "b", "latency_ms": 1, "success": True}]}
        )
        wait_for(lambda: exporter.get("/api/v1/stats")["experiments_tracked"] == 0, 10, "expiry")
        found = scrape_totals(exporter)
        assert found[key("abtest_exporter_expired_experiments_total")] == 1
        assert not any(dict(labels).get("experiment") == "old" for _, labels in found)
    finally:
        exporter.stop()
    restarted = Exporter(data_dir=str(tmp_path))
    try:
        assert restarted.get("/api/v1/stats")["experiments_tracked"] == 0  # expiry was persisted
    finally:
        restarted.stop()


def test_the_store_file_is_sqlite_in_wal_mode(tmp_path: Path) -> None:
    store = Store(tmp_path, ABMetrics())
    store.open()
    try:
        with sqlite3.connect(tmp_path / FILE_NAME) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        assert meta["format_version"] == "4"
        assert json.loads(meta["buckets"])[0] == 0.001
    finally:
        store.close()


async def _one_commit_serves_the_write_under_way(metrics: ABMetrics, store: Store) -> None:
    """With another write under way, the first write's commit waits; once the second is
    applied and nothing is under way, one commit serves both."""
    under_way = threading.Event()
    under_way.set()
    store.busy = under_way.is_set
    store.start()
    try:
        metrics.record_query("e", "control", 5.0, True)
        first = asyncio.create_task(store.durable(metrics.settled_version(), 60))
        await asyncio.sleep(0.3)
        assert not first.done() and store.stats.commits == 0  # waiting for the other write
        metrics.record_query("e", "treatment", 7.0, False)
        second = asyncio.create_task(store.durable(metrics.settled_version(), 60))
        under_way.clear()
        assert await asyncio.wait_for(first, 30) and await asyncio.wait_for(second, 30)
        assert store.stats.commits == 1  # one commit served both
    finally:
        store.close()


async def test_a_commit_gathers_the_writes_still_under_way(tmp_path: Path) -> None:
    metrics = ABMetrics()
    store = Store(tmp_path, metrics)
    store.open()
    store.commit_delay = 60.0  # only the writes under way may hold a commit back
    await _one_commit_serves_the_write_under_way(metrics, store)
    restored = ABMetrics()
    Store(tmp_path, restored).open()
    assert restored.stats().total_queries_recorded == 2


async def test_after_a_slow_commit_the_writes_under_way_join_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that took long saves that long if the writes being applied join the next
    one: after `commit_delay` (here 300 times shorter than the wait), it waits while they
    are under way, for at most as long as the last commit took, instead of committing
    each on its own."""
    monkeypatch.setattr(store_module, "_GATHER_MOST", 60.0)
    metrics = ABMetrics()
    store = Store(tmp_path, metrics)
    store.open()
    store.commit_delay = 0.001
    store.stats.last_seconds = 60.0  # as if the last commit had been slow
    await _one_commit_serves_the_write_under_way(metrics, store)


async def test_a_lone_write_is_committed_without_waiting_out_the_delay(tmp_path: Path) -> None:
    metrics = ABMetrics()
    store = Store(tmp_path, metrics)
    store.open()
    store.commit_delay = 60.0  # nothing is under way: no reason to wait for anyone
    store.start()
    try:
        metrics.record_query("e", "control", 5.0, True)
        assert await asyncio.wait_for(store.durable(metrics.settled_version(), 60), 30)
        assert store.stats.commits == 1
    finally:
        store.close()
