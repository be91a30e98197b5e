"""The in-process hot path's shortcuts: a series seen before skips the name checks, but
never the value checks; pending records are folded exactly, by many threads at once,
and a record racing a clear of its series is dropped rather than re-creating it."""

from __future__ import annotations

import math
import threading
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from exporter import ABMetrics, ValidationError
from exporter.core.aggregate import BranchParts, EventParts
from exporter.core.limits import LimitError, Limits
from exporter.state import abmetrics

from .conftest import FakeClock


@pytest.mark.parametrize(
    ("latency", "success", "reason"),
    [
        (math.nan, True, "invalid_latency"),
        (math.inf, True, "invalid_latency"),
        (-0.5, True, "invalid_latency"),
        (1e12 + 1, True, "invalid_latency"),
        (10**400, True, "invalid_latency"),
        (True, True, "invalid_latency"),
        ("12", True, "invalid_latency"),
        (Decimal("12"), True, "invalid_latency"),
        (Fraction(1, 2), True, "invalid_latency"),
        (None, True, "invalid_latency"),
        (12.0, 1, "invalid_success"),
        (12.0, "yes", "invalid_success"),
        (12.0, None, "invalid_success"),
    ],
)
def test_a_bad_query_after_a_good_one_of_the_same_series_is_refused(
    metrics: ABMetrics, latency: object, success: object, reason: str
) -> None:
    metrics.record_query("e", "b", 12.0, True)
    with pytest.raises(ValidationError) as caught:
        metrics.record_query("e", "b", latency, success)  # type: ignore[arg-type]
    assert caught.value.reason == reason
    branch = metrics.get_branch_metrics("e", "b")
    assert branch is not None
    assert (branch.query_count, branch.success_count, branch.total_latency_ms) == (1, 1, 12.0)


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, 1e15 + 1, -1e16, 10**400, True, "1", Decimal(1), None]
)
def test_a_bad_event_after_a_good_one_of_the_same_series_is_refused(
    metrics: ABMetrics, value: object
) -> None:
    metrics.record_event("e", "b", "revenue", 2.5)
    with pytest.raises(ValidationError) as caught:
        metrics.record_event("e", "b", "revenue", value)  # type: ignore[arg-type]
    assert caught.value.reason == "invalid_value"
    branch = metrics.get_branch_metrics("e", "b")
    assert branch is not None
    event = branch.events["revenue"]
    assert (event.count, event.total) == (1, 2.5)


def test_the_slow_lane_takes_ints_and_float_subclasses_exactly(metrics: ABMetrics) -> None:
    metrics.record_query("e", "b", 7, False)
    metrics.record_query("e", "b", np.float64(3.5), True)
    metrics.record_query("e", "b", 0, True)
    metrics.record_event("e", "b", "units", 3)
    metrics.record_event("e", "b", "units", -1_000_000_000_000_000)
    metrics.record_event("e", "b", "units", np.float64(0.25))
    branch = metrics.get_branch_metrics("e", "b")
    assert branch is not None
    assert (branch.query_count, branch.success_count) == (3, 2)
    assert (branch.total_latency_ms, branch.min_latency_ms, branch.max_latency_ms) == (10.5, 0, 7)
    units = branch.events["units"]
    assert (units.count, units.total) == (3, 3 - 1e15 + 0.25)


@pytest.mark.parametrize(
    "names",
    [("", "b", "x"), ("e", "x" * 129, "x"), ("e", "b", "a\nb"), (1, "b", "x"), (["e"], "b", "x")],
)
def test_names_of_a_new_series_are_still_checked(
    metrics: ABMetrics, names: tuple[object, object, object]
) -> None:
    metrics.record_event("e", "b", "x", 1.0)  # a good series first: others are not waved on
    with pytest.raises(ValidationError) as caught:
        metrics.record_event(*names, 1.0)  # type: ignore[arg-type]
    assert caught.value.reason == "invalid_name"
    if names[2] == "x":  # the bad name is the experiment's or the branch's
        with pytest.raises(ValidationError):
            metrics.record_query(names[0], names[1], 1.0, True)  # type: ignore[arg-type]
    stats = metrics.stats()
    assert (stats.total_events_recorded, stats.total_queries_recorded) == (1, 0)
    assert (stats.experiments_tracked, stats.total_branches_tracked) == (1, 1)


def test_concurrent_threads_give_exact_counts_and_sums() -> None:
    metrics = ABMetrics()
    threads, per_thread = 4, 6000  # past the fold bound: folds race the appends

    def work(seed: int) -> None:
        for i in range(per_thread):
            branch = f"b{(i + seed) % 3}"
            metrics.record_query("e", branch, float(i % 50), i % 4 != 0)
            metrics.record_event("e", branch, "revenue", 0.5 * (i % 8))

    workers = [threading.Thread(target=work, args=(s,)) for s in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    experiment = metrics.get_experiment_metrics("e")
    assert experiment is not None
    branches = experiment.branches.values()
    assert sum(b.query_count for b in branches) == threads * per_thread
    assert sum(b.success_count for b in branches) == threads * per_thread * 3 // 4
    expected_latency = threads * sum(float(i % 50) for i in range(per_thread))
    assert sum(b.total_latency_ms for b in branches) == expected_latency
    assert sum(b.events["revenue"].count for b in branches) == threads * per_thread
    expected_revenue = threads * sum(0.5 * (i % 8) for i in range(per_thread))
    assert sum(b.events["revenue"].total for b in branches) == expected_revenue


def test_pending_records_stay_bounded(metrics: ABMetrics) -> None:
    for _ in range(10_000):
        metrics.record_query("e", "b", 1.0, True)
        metrics.record_event("e", "b", "x", 1.0)
        assert len(metrics._queries) < abmetrics._FOLD_AT
        assert len(metrics._events) < abmetrics._FOLD_AT
    stats = metrics.stats()
    assert (stats.total_queries_recorded, stats.total_events_recorded) == (10_000, 10_000)


class ClearingClock(FakeClock):
    """Runs `action` once, from inside a record call: after its key was found, before its
    record is appended (the window a clear on another thread can hit)."""

    def __init__(self) -> None:
        super().__init__()
        self.action: object = None

    def __call__(self) -> float:
        action, self.action = self.action, None
        if callable(action):
            action()
        return self.now


def test_a_record_racing_a_clear_of_its_series_is_dropped_not_recreated() -> None:
    clock = ClearingClock()
    metrics = ABMetrics(clock=clock, limits=Limits(max_experiments=1))
    metrics.record_query("e", "b", 1.0, True)
    metrics.record_event("e", "b", "x", 1.0)
    clock.action = lambda: metrics.clear_experiment("e")
    metrics.record_query("e", "b", 2.0, True)  # its key was found, then the clear came
    assert metrics.experiments() == []
    metrics.record_query("other", "b", 3.0, True)  # the freed slot of the limit
    with pytest.raises(LimitError):
        metrics.record_query("e", "b", 4.0, True)
    clock.action = lambda: metrics.clear_all()
    metrics.record_event("other", "b", "x", 5.0)
    assert metrics.experiments() == []
    stats = metrics.stats()
    assert (stats.total_queries_recorded, stats.total_events_recorded) == (0, 0)


def test_a_record_racing_a_clear_never_lands_in_the_series_that_reuses_its_row() -> None:
    """Pending records hold their series' code (row and serial), not its row alone: a
    freed row taken by another series, or the same names made again, is not theirs."""
    clock = ClearingClock()
    metrics = ABMetrics(clock=clock)
    metrics.record_query("e", "b", 1.0, True)
    metrics.record_event("f", "b", "x", 1.0)

    def clear_and_reuse(experiment: str) -> None:
        metrics.clear_experiment(experiment)
        metrics.record_query("new", "b", 10.0, True)  # takes a freed branch row
        metrics.record_event("new", "b", "x", 10.0)  # and a freed event row
        metrics.record_query(experiment, "b", 20.0, False)  # the same names again
        metrics.record_event(experiment, "b", "x", 20.0)

    clock.action = lambda: clear_and_reuse("e")
    metrics.record_query("e", "b", 2.0, True)  # its code was found, then the clear came
    clock.action = lambda: clear_and_reuse("f")
    metrics.record_event("f", "b", "x", 2.0)
    new = metrics.get_branch_metrics("new", "b")
    assert new is not None
    assert (new.query_count, new.total_latency_ms, new.events["x"].total) == (2, 20.0, 20.0)
    for experiment in ("e", "f"):  # only what was written after its clear
        branch = metrics.get_branch_metrics(experiment, "b")
        assert branch is not None
        assert (branch.query_count, branch.failure_count, branch.total_latency_ms) == (
            1, 1, 20.0,
        )  # fmt: skip
        assert (branch.events["x"].count, branch.events["x"].total) == (1, 20.0)


def test_a_record_racing_a_replace_of_the_aggregate_is_dropped() -> None:
    """The analyzer swaps in a fresh aggregate whose rows start at 0 again: a code from
    the old one must not fit a row of the new one."""
    clock = ClearingClock()
    metrics = ABMetrics(clock=clock)
    metrics.record_query("e", "b", 1.0, True)
    parts = BranchParts()
    buckets = [0] * (len(metrics.buckets) + 1)
    buckets[-1] = 5  # five queries of 10 s each
    parts.append(("e", "b"), 5, 5, 50_000.0, 0.0, 10_000.0, 10_000.0, 1.0, 1.0, buckets)
    clock.action = lambda: metrics.replace(parts, EventParts(), {"e": 1.0})
    metrics.record_query("e", "b", 2.0, True)
    branch = metrics.get_branch_metrics("e", "b")
    assert branch is not None
    assert (branch.query_count, branch.total_latency_ms) == (5, 50_000.0)


def test_names_are_shared_between_the_series_of_an_experiment(metrics: ABMetrics) -> None:
    for v in range(3):
        metrics.record_event("".join(["exp", "-1"]), "".join(["con", "trol"]), f"event-{v}", 1.0)
    keys = [k for k in metrics.snapshot().view.event_keys if k is not None]
    assert len(keys) == 3
    assert len({id(k[0]) for k in keys}) == 1
    assert len({id(k[1]) for k in keys}) == 1


def test_events_mark_their_experiment_written_at_their_latest_record(
    metrics: ABMetrics, clock: FakeClock
) -> None:
    for at, event in ((100.0, "x"), (300.0, "y"), (200.0, "x")):
        clock.now = at
        metrics.record_event("e", "b", event, 1.0)
    clock.now = 400.0
    experiment = metrics.get_experiment_metrics("e")
    assert experiment is not None
    assert experiment.last_activity == 300.0


def test_a_clear_of_another_experiment_drops_nothing_racing_it() -> None:
    clock = ClearingClock()
    metrics = ABMetrics(clock=clock)
    metrics.record_query("gone", "b", 1.0, True)
    metrics.record_query("kept", "b", 1.0, True)
    metrics.record_event("kept", "b", "x", 1.0)
    clock.action = lambda: metrics.clear_experiment("gone")
    metrics.record_query("kept", "b", 2.0, False)
    clock.action = lambda: metrics.clear_experiment("gone")
    metrics.record_event("kept", "b", "x", 2.0)
    branch = metrics.get_branch_metrics("kept", "b")
    assert branch is not None
    assert (branch.query_count, branch.failure_count, branch.total_latency_ms) == (2, 1, 3.0)
    assert (branch.events["x"].count, branch.events["x"].total) == (2, 3.0)
    assert metrics.experiments() == ["kept"]


def test_the_store_is_handed_each_changed_series_once_with_its_state(metrics: ABMetrics) -> None:
    for i in range(300):  # rows past the change flags' first room (64): they grow
        metrics.record_query(f"e{i % 100}", f"b{i % 3}", 1.0 + i, True)
        metrics.record_event(f"e{i % 100}", f"b{i % 3}", "x", 2.0)
    first = metrics.changes_for_store()
    assert len(first.branches) == 300 and len(first.events) == 300
    assert {(b[0], b[1], b[2]) for b in first.branches} == {
        (f"e{i % 100}", f"b{i % 3}", 1) for i in range(300)
    }
    assert not metrics.changes_for_store()  # nothing changed since
    metrics.record_query("e7", "b1", 5.0, False)
    metrics.record_event("e8", "b2", "x", 3.0)
    again = metrics.changes_for_store()
    assert [(b[0], b[1], b[2], b[3]) for b in again.branches] == [("e7", "b1", 2, 1)]
    assert [(e[0], e[1], e[2], e[3], e[4]) for e in again.events] == [("e8", "b2", "x", 2, 5.0)]


def test_a_failed_store_write_hands_the_same_series_again_with_those_changed_since(
    metrics: ABMetrics,
) -> None:
    for i in range(200):
        metrics.record_query(f"e{i}", "b", 1.0, True)
        metrics.record_event(f"e{i}", "b", "x", 1.0)
    failed = metrics.changes_for_store()
    metrics.record_query("late", "b", 1.0, True)  # a series past the new flags' room
    metrics.record_query("e5", "b", 2.0, True)
    metrics.return_changes(failed)
    again = metrics.changes_for_store()
    assert sorted(b[0] for b in again.branches) == sorted([f"e{i}" for i in range(200)] + ["late"])
    assert next(b[2] for b in again.branches if b[0] == "e5") == 2
    assert sorted(e[0] for e in again.events) == sorted(f"e{i}" for i in range(200))
    assert not metrics.changes_for_store()
