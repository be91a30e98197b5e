"""A short soak in CI (benchmarks/soak.py runs it for minutes): exact totals while
scraping every second, and memory that does not keep growing."""

from __future__ import annotations

from benchmarks.soak import soak


def test_short_soak_keeps_exact_totals_and_flat_memory() -> None:
    result = soak(seconds=8, rate=10_000, warmup=2)
    assert result.ingest.errors == 0 and result.ingest.records > 0
    assert result.exact
    assert result.scrapes >= 5
    assert result.rss_end < result.rss_start * 1.25
