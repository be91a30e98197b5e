"""The incremental comparison recompute (ComparisonEngine with its AnalysisCache) equals
a fresh engine's full recompute, text, bytes and read API alike, after any sequence of
writes, deletes, clears, expiries, restores, the analyzer's replace and config changes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from exporter import ABMetrics
from exporter.core.aggregate import BranchParts, EventParts
from exporter.outputs.comparisons import ComparisonEngine
from exporter.outputs.exposition import render_analysis
from exporter.stats.analysis import StitchedAnalyses, analyse

from .conftest import FakeClock
from .test_series_cache import BRANCHES, EVENTS, EXPERIMENTS, _step

CONFIGS: tuple[dict[str, Any], ...] = (
    {"min_sample_size": 2},
    {"min_sample_size": 1, "correction": "bh"},
    {"correction": "none", "alpha": 0.2, "min_sample_size": 1},
    {"allocation": {"control": 1.0, "treatment": 3.0}},
    {"primary_metric": "latency_mean", "min_sample_size": 1},
    {"sequential_tuning": 50.0, "min_sample_size": 1},
)


def _change(metrics: ABMetrics, clock: FakeClock, rng: random.Random) -> str:
    """A step of the series cache's test, or a config the statistics read."""
    if rng.random() < 0.15:
        metrics.configure(rng.choice(EXPERIMENTS), rng.choice(CONFIGS))
        return "config"
    if rng.random() < 0.4:  # enough of one experiment for verdicts and winners
        experiment = rng.choice(EXPERIMENTS)
        for i in range(rng.randint(30, 150)):
            branch = BRANCHES[i % len(BRANCHES)]  # no sample-ratio mismatch
            better = branch == "treatment"  # succeeds more: a winner, once significant
            success = rng.random() < (0.99 if better else 0.3)
            metrics.record_query(experiment, branch, rng.uniform(0, 40.0), success)
            metrics.record_event(experiment, branch, rng.choice(EVENTS), rng.uniform(0, 3))
        return "burst"
    return _step(metrics, clock, rng)


def _same_as_a_full_recompute(engine: ComparisonEngine, metrics: ABMetrics, many: bool) -> None:
    fresh = ComparisonEngine(metrics)
    fresh.refresh()
    ours, full = engine.latest, fresh.latest
    assert ours.version == full.version
    assert ours.text == full.text
    assert ours.parts == full.parts
    assert ours.encoded == full.encoded and b"".join(ours.encoded) == ours.text.encode()
    assert ours.comparisons == full.comparisons
    snapshot = metrics.snapshot()
    assert ours.text == render_analysis(analyse(snapshot.view, snapshot.configs))
    assert list(ours.analyses) == list(full.analyses) == list(snapshot.view.experiments)
    # repr: NaN-safe, and every field of every nested object
    if many:  # all at once (the OTLP push's path), else one by one
        assert repr(list(ours.analyses.items())) == repr(list(full.analyses.items()))
    else:
        for name in full.analyses:
            assert repr(ours.analyses[name]) == repr(full.analyses[name]), name


@pytest.mark.parametrize("seed", range(10))
def test_incremental_recompute_equals_a_full_one(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock(1_700_000_000.0)
    metrics = ABMetrics(clock=clock)
    engine = ComparisonEngine(metrics)
    done: list[str] = []
    partial = winners = 0
    for _ in range(60):
        for _ in range(rng.randint(1, 3)):
            done.append(_change(metrics, clock, rng))
        if engine.refresh():
            partial += 0 < engine.latest.changed < len(engine.latest.analyses)
        _same_as_a_full_recompute(engine, metrics, rng.random() < 0.5)
        winners += "abtest_experiment_winner{" in engine.latest.text
    assert {"replace", "config", "burst"} <= set(done) and {"clear", "clear_all"} & set(done)
    assert partial > 5  # the incremental path was taken, not only full recomputes
    assert winners  # verdicts were given: the figures compared are not all void


def test_only_the_changed_experiments_are_analysed_again() -> None:
    metrics = ABMetrics()
    for e in range(6):
        for branch in ("control", "treatment"):
            metrics.record_query(f"e{e}", branch, 10.0 + e, True)
            metrics.record_event(f"e{e}", branch, "buy", 1.0)
    engine = ComparisonEngine(metrics)
    assert engine.refresh() and engine.latest.changed == 6
    before = engine.latest.analyses["e0"]
    metrics.record_event("e4", "treatment", "buy", 5.0)  # an event row only
    assert engine.refresh() and engine.latest.changed == 1
    assert engine.latest.analyses["e0"] is before  # unchanged: the same objects, kept
    metrics.configure("e2", {"min_sample_size": 1})
    assert engine.refresh() and engine.latest.changed == 1
    metrics.clear_experiment("e1")
    assert engine.refresh() and engine.latest.changed == 0
    assert "e1" not in engine.latest.analyses and 'experiment="e1"' not in engine.latest.text
    metrics.record_query("new", "control", 3.0, True)
    metrics.record_query("new", "b", 4.0, True)
    assert engine.refresh() and engine.latest.changed == 1
    assert list(engine.latest.analyses) == ["e0", "e2", "e3", "e4", "e5", "new"]
    _same_as_a_full_recompute(engine, metrics, False)
    assert engine.latest.analyses["e4"].comparisons["treatment"]


def test_analyses_left_mostly_stale_are_redone_so_memory_stays_bounded() -> None:
    metrics = ABMetrics()
    names = [f"e{e}" for e in range(40)]
    for name in names:
        metrics.record_query(name, "control", 10.0, True)
        metrics.record_query(name, "b", 12.0, True)
    engine = ComparisonEngine(metrics)
    engine.refresh()
    for round_ in range(60):
        for name in names[round_ % 40 : round_ % 40 + 3]:  # three at a time, sliding
            metrics.record_query(name, "b", 11.0 + round_, True)
        engine.refresh()
        analyses = engine.latest.analyses
        assert isinstance(analyses, StitchedAnalyses)
        held = {id(analyses._held[n].analysis): analyses._held[n] for n in names}
        assert sum(len(h.analysis.experiments) for h in held.values()) <= 2 * 40 + 40
    _same_as_a_full_recompute(engine, metrics, True)


def test_the_analyzers_replace_with_the_same_figures_redoes_nothing() -> None:
    """The analyzer swaps the whole aggregate every round (new rows, new stamps): the
    experiments whose names and figures are those of last round are not analysed again."""

    def parts(
        slower: float = 2.0, span: float = 60.0, treatment: str = "treatment"
    ) -> tuple[BranchParts, EventParts]:
        """Experiment b's treatment `slower`, c's queries over `span` seconds, a's
        treatment named `treatment`; the rest as ever."""
        branches, events = BranchParts(), EventParts()
        for e in ("a", "b", "c"):
            for i, branch in enumerate(("control", treatment if e == "a" else "treatment")):
                buckets = [0] * 17
                buckets[3 + i] = 50
                total = 50 * (10.0 + i * (slower if e == "b" else 1.0))
                last = 1e9 + (span if e == "c" else 60.0)
                branches.append((e, branch), 50, 40 + 5 * i, total, 3.0, 5.0, 90.0,
                                1e9, last, buckets)  # fmt: skip
                events.append((e, branch, "buy"), 20, 30.0 + i, 4.0)
        return branches, events

    metrics = ABMetrics()
    engine = ComparisonEngine(metrics)
    metrics.replace(*parts(), {"a": 1e9 + 60})
    assert engine.refresh() and engine.latest.changed == 3
    metrics.replace(*parts(), {"a": 1e9 + 61})
    assert engine.refresh() and engine.latest.changed == 0
    _same_as_a_full_recompute(engine, metrics, False)
    metrics.replace(*parts(slower=3.0), {"a": 1e9 + 62})  # b's treatment is slower
    assert engine.refresh() and engine.latest.changed == 1
    _same_as_a_full_recompute(engine, metrics, True)
    assert engine.latest.analyses["b"].comparisons["treatment"][1].difference > 0
    eta = engine.latest.analyses["c"].comparisons["treatment"][0].eta_seconds
    metrics.replace(*parts(slower=3.0, span=600.0), {"a": 1e9 + 63})  # c's span only
    assert engine.refresh() and engine.latest.changed == 1
    assert engine.latest.analyses["c"].comparisons["treatment"][0].eta_seconds != eta
    _same_as_a_full_recompute(engine, metrics, False)
    metrics.replace(*parts(3.0, 600.0, "t2"), {"a": 1e9 + 64})  # a's treatment renamed
    assert engine.refresh() and engine.latest.changed == 1
    assert list(engine.latest.analyses["a"].comparisons) == ["t2"]
    _same_as_a_full_recompute(engine, metrics, True)
