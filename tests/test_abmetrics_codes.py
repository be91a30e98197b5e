"""Review of the pending records' codes (row and serial): what a fold of records whose
series were cleared meanwhile leaves behind, and many threads recording while others
clear, expire and replace."""

from __future__ import annotations

import itertools
import random
import sys
import threading
import time
from pathlib import Path

import pytest

from exporter import ABMetrics
from exporter.core import tables
from exporter.core.aggregate import FEW, BranchParts, EventParts, Records
from exporter.state.store import Store

from .test_abmetrics_hotpath import ClearingClock


def _stale_events(metrics: ABMetrics, clock: ClearingClock, how_many: int) -> None:
    """`how_many` records of ("gone", "b", "x") that found their code before a clear of
    "gone" and are appended after it (nested calls stand for threads racing the clear)."""
    depth = 0

    def deeper() -> None:
        nonlocal depth
        depth += 1
        if depth < how_many:
            clock.action = deeper
            metrics.record_event("gone", "b", "x", 1.0)
        else:
            metrics.clear_experiment("gone")

    clock.action = deeper
    metrics.record_event("gone", "b", "x", 1.0)


def test_a_fold_left_with_few_live_records_writes_an_activity_row_that_restores(
    tmp_path: Path,
) -> None:
    """More than FEW pending records, all but a few of them dropped (their series was
    cleared): the few left took the small-batch fold with numpy columns, so the
    experiment's latest write became an np.float64, whose repr the data file's checksum
    was taken of; the file then failed its checksum on the next start."""
    clock = ClearingClock()
    metrics = ABMetrics(clock=clock)
    store = Store(tmp_path, metrics)
    store.open()
    metrics.record_event("gone", "b", "x", 1.0)
    metrics.record_event("kept", "b", "x", 1.0)
    assert store.commit()
    _stale_events(metrics, clock, FEW + 1)
    clock.now += 60.0
    metrics.record_event("kept", "b", "x", 2.0)  # one live record among FEW + 1 stale ones
    batch = metrics.changes_for_store()
    metrics.return_changes(batch)
    assert [(e, type(at)) for e, at in batch.activity] == [("kept", float)]
    assert store.commit()
    store.close()
    restored = ABMetrics()
    Store(tmp_path, restored).open()  # raised: "a row of activity fails its checksum"
    branch = restored.get_branch_metrics("kept", "b")
    assert branch is not None
    assert (branch.events["x"].count, branch.events["x"].total) == (2, 3.0)
    assert restored.get_experiment_metrics("gone") is None


@pytest.mark.parametrize("seed", range(5))
def test_threads_recording_while_others_clear_keep_exact_totals(seed: int) -> None:
    """Recorders write to series never cleared ("kept"), to one cleared over and over
    ("churn") and to short-lived experiments (whose rows are freed and taken again);
    a clearer and a reader run meanwhile. "kept" must hold exactly what was written to
    it, and every series only its own records (each kind has its own latency/value)."""
    rng = random.Random(seed)
    metrics = ABMetrics()
    threads, per_thread = 4, 3000
    stop = threading.Event()
    errors: list[BaseException] = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)

    def recorder(t: int) -> None:
        try:
            local = random.Random(seed * 100 + t)
            for i in range(per_thread):
                metrics.record_query("kept", f"b{t}", 1.0, True)
                metrics.record_event("kept", f"b{t}", "x", 2.0)
                if local.random() < 0.5:
                    metrics.record_query("churn", "b", 1000.0, False)
                    metrics.record_event("churn", "b", "x", 1000.0)
                if local.random() < 0.1:
                    name = f"tmp{t}-{i % 7}"
                    metrics.record_query(name, "b", 7.0, False)
                    metrics.record_event(name, f"b{i % 3}", "y", 7.0)
                if i % 97 == 0:  # a single-record POST: the pending shortcut
                    _post_one(metrics, "kept", f"b{t}", 1.0, True, 2.0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def clearer() -> None:
        try:
            while not stop.is_set():
                what = rng.random()
                if what < 0.5:
                    metrics.clear_experiment("churn")
                else:
                    for name in metrics.experiments():
                        if name.startswith("tmp"):
                            metrics.clear_experiment(name)
                time.sleep(rng.random() * 1e-3)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                metrics.stats()
                time.sleep(rng.random() * 1e-3)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    workers = [threading.Thread(target=recorder, args=(t,)) for t in range(threads)]
    others = [threading.Thread(target=clearer), threading.Thread(target=reader)]
    try:
        for w in workers + others:
            w.start()
        for w in workers:
            w.join()
        stop.set()
        for w in others:
            w.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors
    batches = len(range(0, per_thread, 97))
    kept = metrics.get_experiment_metrics("kept")
    assert kept is not None
    for t in range(threads):
        branch = kept.branches[f"b{t}"]
        n = per_thread + batches
        assert (branch.query_count, branch.failure_count) == (n, 0)
        assert (branch.total_latency_ms, branch.min_latency_ms, branch.max_latency_ms) == (
            float(n), 1.0, 1.0,
        )  # fmt: skip
        assert set(branch.events) == {"x"}
        assert (branch.events["x"].count, branch.events["x"].total) == (n, 2.0 * n)
    view = metrics.snapshot().view
    for experiment, rows in view.experiments.items():
        figure = 1.0 if experiment == "kept" else 1000.0 if experiment == "churn" else 7.0
        for row in rows.values():
            n = int(view.branch.n[row])
            assert view.branch.total[row] == figure * n / 1000.0  # in seconds
            assert int(view.branch.ok[row]) == (n if experiment == "kept" else 0)
        for row in view.experiment_events.get(experiment, []):
            count = int(view.event.count[row])
            expected = 2.0 if experiment == "kept" else figure
            assert view.event.total[row] == expected * count
    stats = metrics.stats()
    assert stats.total_queries_recorded == sum(
        int(view.branch.n[r]) for rows in view.experiments.values() for r in rows.values()
    )


@pytest.mark.parametrize("start", [2**29 - 2, 2**29 - 1, 2**29, 2**29 + 1])
def test_series_made_one_after_the_other_at_the_serial_wrap_have_distinct_codes(
    monkeypatch: pytest.MonkeyPatch, start: int
) -> None:
    """Serials are 29 bits: where they wrap, two series made one after the other (the
    cleared one and the one taking its row) must not share one, or a record racing the
    clear lands in the series that reused the row."""
    monkeypatch.setattr(tables, "_serials", itertools.count(start))
    clock = ClearingClock()
    metrics = ABMetrics(clock=clock)
    metrics.record_query("e", "b", 1.0, True)  # row 0, the serial at `start`

    def clear_and_reuse() -> None:
        metrics.clear_experiment("e")
        metrics.record_query("new", "b", 10.0, True)  # row 0 again, the next serial

    clock.action = clear_and_reuse
    metrics.record_query("e", "b", 2.0, False)  # found its code, then the clear came
    new = metrics.get_branch_metrics("new", "b")
    assert new is not None
    assert (new.query_count, new.failure_count, new.total_latency_ms) == (1, 0, 10.0)
    assert metrics.get_branch_metrics("e", "b") is None


@pytest.mark.parametrize("seed", range(5))
def test_threads_recording_while_all_is_cleared_expired_and_replaced(seed: int) -> None:
    """Every series gets records of one figure only (its own latency, value and success):
    whatever clear_all, expire and replace (with parts of the same figures) drop, what
    is left in each series must be made of its own records, with nothing left pending."""
    rng = random.Random(seed)
    metrics = ABMetrics()
    threads, per_thread = 4, 2000
    stop = threading.Event()
    errors: list[BaseException] = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    slots = len(metrics.buckets) + 1

    def figure(t: int) -> float:
        return float(t + 1)

    def recorder(t: int) -> None:
        try:
            for i in range(per_thread):
                experiment = f"e{i % 3}"
                metrics.record_query(experiment, f"b{t}", figure(t), t % 2 == 0)
                metrics.record_event(experiment, f"b{t}", "x", 10 * figure(t))
                if i % 61 == 0:
                    _post_one(metrics, experiment, f"b{t}", figure(t), t % 2 == 0, 10 * figure(t))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def disturber() -> None:
        try:
            while not stop.is_set():
                what = rng.random()
                if what < 0.3:
                    metrics.clear_all()
                elif what < 0.6:
                    metrics.expire(0.0)
                elif what < 0.8:
                    metrics.clear_experiment(f"e{rng.randrange(3)}")
                else:
                    parts, events = BranchParts(), EventParts()
                    for t in range(threads):
                        x, buckets = figure(t), [0] * slots
                        buckets[0] = 2  # 1..4 ms: the first bucket
                        ok = 2 if t % 2 == 0 else 0
                        parts.append(("e0", f"b{t}"), 2, ok, 2 * x, 0.0, x, x, 1.0, 1.0, buckets)
                        events.append(("e0", f"b{t}", "x"), 2, 20 * x, 0.0, 200 * x * x)
                    metrics.replace(parts, events, {"e0": 1.0})
                time.sleep(rng.random() * 2e-3)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    workers = [threading.Thread(target=recorder, args=(t,)) for t in range(threads)]
    other = threading.Thread(target=disturber)
    try:
        for w in [*workers, other]:
            w.start()
        for w in workers:
            w.join()
        stop.set()
        other.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors
    view = metrics.snapshot().view
    assert not metrics._queries and not metrics._events
    for experiment, rows in view.experiments.items():
        for branch, row in rows.items():
            t = int(branch[1:])
            n = int(view.branch.n[row])
            assert int(view.branch.ok[row]) == (n if t % 2 == 0 else 0)
            assert view.branch.total[row] == figure(t) * n / 1000.0
            if n:
                assert view.branch.lo[row] == view.branch.hi[row] == figure(t) / 1000.0
        for row in view.experiment_events.get(experiment, []):
            key = view.event_keys[row]
            assert key is not None
            count = int(view.event.count[row])
            assert view.event.total[row] == 10 * figure(int(key[1][1:])) * count


def _post_one(
    metrics: ABMetrics, experiment: str, branch: str, latency: float, ok: bool, value: float
) -> None:
    """What a POST of one query and one event "x" applies (record_batch's pending path)."""
    records = Records()
    records.add_query((experiment, branch), latency, ok, 1.0)
    records.add_event((experiment, branch, "x"), value)
    metrics.record_batch(records)
