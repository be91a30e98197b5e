"""The benchmark suite's smoke run: small sizes, bounds ten times looser than the targets.

It guards against a 10x regression, not against noise: the full table comes from
`python -m benchmarks.suite` (see the README's Performance section).
"""

from __future__ import annotations

from benchmarks import suite


def test_in_process_recording_stays_far_below_prometheus_client() -> None:
    query, _otel, event = suite.record_query_rows(5_000, 1)
    assert query.ratio <= 1.0, query.cells()
    assert event.ratio <= 1.0, event.cells()


def test_render_and_comparisons_stay_within_ten_times_their_targets() -> None:
    cold, steady, _gzip, recompute, changed, scrape = suite.render_rows(50, 10, 1)
    assert cold.ratio <= 1.0 and steady.ratio <= 1.0, (cold.cells(), steady.cells())
    assert steady.ratio < cold.ratio, (cold.cells(), steady.cells())
    assert recompute.median <= 1000 and changed.median <= 1000, (recompute.cells(), changed.cells())
    assert scrape.median <= 600, scrape.cells()


def test_client_track_and_otlp_ingest_stay_within_ten_times_their_targets() -> None:
    track = suite.track_row(5_000, 1)
    assert track.median <= 5_000, track.cells()
    otlp = suite.otlp_row(200, 3, 1)
    assert otlp.median >= 4_000, otlp.cells()


def test_memory_per_branch_stays_below_prometheus_client() -> None:
    memory = suite.memory_row(100, 10)
    assert memory.ratio <= 3.0, memory.cells()
