"""Review of the pending records' codes (row and serial): what a fold of records whose
series were cleared meanwhile leaves behind, and many threads recording while others
clear, expire and replace."""

from __future__ import annotations

from pathlib import Path

from exporter import ABMetrics
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
    _stale_events(metrics, clock, 17)
    clock.now += 60.0
    metrics.record_event("kept", "b", "x", 2.0)  # one live record among 17 stale ones
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
