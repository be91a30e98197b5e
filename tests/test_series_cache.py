"""The cached /metrics render (SeriesRenderer) equals a fresh full render, byte for byte,
after any sequence of writes, deletes, clears, expiries, restores and config changes."""

from __future__ import annotations

import random
import threading

import pytest

from exporter import ABMetrics
from exporter.core.aggregate import BranchParts, EventParts, Records
from exporter.core.experiment_config import ExperimentConfig
from exporter.core.families import Family, Sample
from exporter.core.results import summarise
from exporter.outputs import catalog as cat
from exporter.outputs.exposition import render
from exporter.outputs.series import Renderers, SeriesRenderer
from exporter.outputs.text import Writer
from exporter.state.abmetrics import Restored, Snapshot

from .conftest import FakeClock

# names that need escaping are in the mix: a quote, a backslash
EXPERIMENTS = ("checkout", "search", 'say "hi"', "back\\slash", "e5")
BRANCHES = ("control", "treatment", "b\\2")
EVENTS = ("revenue", "click", 'q"uote')
FORMATS = [(om, role) for om in (False, True) for role in ("single", "ingest", "analyzer")]


def _parts(rng: random.Random) -> tuple[BranchParts, EventParts]:
    branches, events = BranchParts(), EventParts()
    for _ in range(rng.randint(0, 3)):
        key = (rng.choice(EXPERIMENTS), rng.choice(BRANCHES))
        n = rng.randint(0, 4)
        buckets = [0] * 17
        buckets[rng.randrange(17)] = n
        lo, hi = (5.0, 9.0) if n else (float("inf"), float("-inf"))
        first, last = (1e9, 1e9 + 5) if n else (float("inf"), float("-inf"))
        branches.append(key, n, n // 2, 7.0 * n, 1.5 * n, lo, hi, first, last, buckets)
    for _ in range(rng.randint(0, 3)):
        events.append((rng.choice(EXPERIMENTS), rng.choice(BRANCHES), rng.choice(EVENTS)),
                      2, rng.uniform(-5, 5), 0.25)  # fmt: skip
    return branches, events


def _step(metrics: ABMetrics, clock: FakeClock, rng: random.Random) -> str:
    """One random change; returns its name (for the failure message)."""
    op = rng.choice(
        ["query"] * 4 + ["event"] * 4
        + ["batch", "parts", "clear", "clear_all", "expire", "restore", "replace",
           "configure", "unconfigure", "advance", "nothing"]
    )  # fmt: skip
    experiment, branch = rng.choice(EXPERIMENTS), rng.choice(BRANCHES)
    if op == "query":
        metrics.record_query(experiment, branch, rng.uniform(0, 3000), rng.random() < 0.8)
    elif op == "event":
        metrics.record_event(experiment, branch, rng.choice(EVENTS), rng.uniform(-10, 10))
    elif op == "batch":
        records = Records()
        records.add_query((experiment, branch), rng.uniform(0, 50), True, clock())
        records.add_event((experiment, branch, rng.choice(EVENTS)), 1.0)
        metrics.record_batch(records)
    elif op == "parts":
        metrics.record_parts(*_parts(rng))
    elif op == "clear":
        metrics.clear_experiment(experiment)
    elif op == "clear_all":
        metrics.clear_all()
    elif op == "expire":
        metrics.expire(rng.choice((0.5, 30.0)))
    elif op == "restore":
        branches, events = _parts(rng)
        metrics.restore(Restored(branches, events, {experiment: clock() - 3}, {}, [], 0, [], 0))
    elif op == "replace":  # the analyzer's swap of the whole aggregate
        branches, events = _parts(rng)
        metrics.replace(branches, events, {experiment: clock()})
    elif op == "configure":
        metrics.configure(experiment, {"control": branch})
    elif op == "unconfigure":
        metrics.remove_config(experiment)
    elif op == "advance":
        clock.now += rng.choice((0.25, 10.0))
    return op


def _experiment_families(snapshot: Snapshot, openmetrics: bool, role: str) -> str:
    """The experiment families as results.summarise has them (the renderer computes the
    same figures from the columns in one pass)."""
    families: dict[cat.Declared, list[Sample]] = {
        f: []
        for f in (cat.EXPERIMENT_INFO, cat.EXPERIMENT_START, cat.EXPERIMENT_LAST_ACTIVITY,
                  cat.EXPERIMENT_DURATION, cat.BEST_BRANCH)
    }  # fmt: skip
    for experiment in snapshot.view.experiments:
        config = snapshot.configs.get(experiment, ExperimentConfig())
        summary = summarise(snapshot.view, experiment, config, snapshot.taken_at)
        assert summary is not None
        exp = (("experiment", experiment),)
        families[cat.EXPERIMENT_INFO].append(Sample((*exp, ("control", summary.control)), 1))
        if summary.started_at is not None:
            families[cat.EXPERIMENT_START].append(Sample(exp, summary.started_at))
            duration = summary.duration_seconds or 0.0
            families[cat.EXPERIMENT_DURATION].append(Sample(exp, duration))
        if summary.last_activity is not None:
            families[cat.EXPERIMENT_LAST_ACTIVITY].append(Sample(exp, summary.last_activity))
        if summary.best_branch is not None:
            best = (*exp, ("branch", summary.best_branch))
            families[cat.BEST_BRANCH].append(Sample(best, 1))
    out = Writer(openmetrics)
    for declared, samples in families.items():
        if role != "ingest" or declared is cat.EXPERIMENT_LAST_ACTIVITY:
            out.family(Family(declared.name, declared.kind, declared.help, samples))
    return "".join(out.parts)


@pytest.mark.parametrize("seed", range(12))
def test_cached_render_equals_a_full_render(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock(1_700_000_000.0)
    metrics = ABMetrics(clock=clock)
    renderers = {(om, role): SeriesRenderer(om, role) for om, role in FORMATS}
    done: list[str] = []
    for _ in range(120):
        for _ in range(rng.randint(1, 4)):
            done.append(_step(metrics, clock, rng))
        snapshot = metrics.snapshot()
        live = metrics._aggregate.live_view()  # snapshots share the names until they change
        assert snapshot.view.experiments == live.experiments, done[-8:]
        assert snapshot.view.experiment_events == live.experiment_events, done[-8:]
        assert snapshot.view.branch_keys == live.branch_keys, done[-8:]
        assert snapshot.view.event_keys == live.event_keys, done[-8:]
        for (om, role), renderer in renderers.items():
            fresh = render(snapshot, openmetrics=om, role=role, analysis="# A\n", tail="# T\n")
            cached = renderer.render(snapshot, analysis="# A\n", tail="# T\n")
            assert cached == fresh, (om, role, done[-8:])
            assert _experiment_families(snapshot, om, role) in fresh, (om, role, done[-8:])
    assert {"clear", "clear_all", "expire", "restore", "replace", "configure"} <= set(done)


def test_a_reused_row_gets_its_new_name() -> None:
    """A cleared experiment's rows are reused by the next new series: the cache must not
    show the old labels with the new numbers."""
    metrics = ABMetrics()
    renderer = SeriesRenderer()
    metrics.record_query("old", "control", 10.0, True)
    metrics.record_event("old", "control", "buy", 2.0)
    assert 'abtest_queries_total{experiment="old",branch="control"} 1\n' in renderer.render(
        metrics.snapshot()
    )
    metrics.clear_experiment("old")
    metrics.record_query("new", "b", 10.0, True)
    metrics.record_event("new", "b", "sell", 3.0)
    snapshot = metrics.snapshot()
    assert snapshot.view.branch_keys == [("new", "b")]  # the old row, reused
    text = renderer.render(snapshot)
    assert 'experiment="old"' not in text
    assert 'abtest_queries_total{experiment="new",branch="b"} 1\n' in text
    assert 'abtest_event_mean{experiment="new",branch="b",event="sell"} 3.0\n' in text
    assert text == render(snapshot)


def test_only_changed_blocks_are_re_rendered() -> None:
    """A block of unchanged series keeps its cached text (the point of the cache); the
    block of a changed one shows its new value, and no row's own text is held."""
    metrics = ABMetrics()
    renderer = SeriesRenderer()
    size = renderer._events.block  # the cache is what is under test
    for i in range(2 * size):
        metrics.record_event(f"e{i}", "control", "buy", 1.0)
    renderer.render(metrics.snapshot())
    cache = renderer._events
    blocks = cache.blocks["abtest_event_mean"]
    kept, before = blocks[0], blocks[1]
    metrics.record_event(f"e{size}", "control", "buy", 3.0)  # the first row of block 1
    text = renderer.render(metrics.snapshot())
    assert blocks[0] is kept
    assert blocks[1] is not before
    assert (
        f'abtest_event_mean{{experiment="e{size}",branch="control",event="buy"}} 2.0\n'
        in (blocks[1])
    )
    assert f'abtest_event_mean{{experiment="e{size}",branch="control",event="buy"}} 2.0\n' in text
    assert all(t == "" for texts in cache.texts.values() for t in texts)


def test_renders_while_ingest_continues_are_snapshots() -> None:
    """Scrapes on other threads while records arrive: each output is exactly the full
    render of the snapshot it was given."""
    metrics = ABMetrics()
    renderers = Renderers()
    stop = threading.Event()

    def ingest() -> None:
        i = 0
        while not stop.is_set():
            metrics.record_query(f"e{i % 7}", "control", float(i % 50), True)
            metrics.record_event(f"e{i % 5}", "b", "buy", 1.0)
            if i % 500 == 499:
                metrics.clear_experiment(f"e{i % 7}")
            i += 1

    worker = threading.Thread(target=ingest)
    worker.start()
    try:
        for i in range(60):
            snapshot = metrics.snapshot()
            om = bool(i % 2)
            cached = renderers.get(om, "single").render(snapshot)
            assert cached == render(snapshot, openmetrics=om)
    finally:
        stop.set()
        worker.join()
    assert renderers.get(True, "single") is renderers.get(True, "single")


def test_a_format_not_scraped_for_a_while_drops_its_cache() -> None:
    clock = FakeClock(0.0)
    renderers = Renderers(idle=600.0, clock=clock)
    om, text = renderers.get(True, "single"), renderers.get(False, "single")
    assert om is not text
    clock.now = 500.0
    assert renderers.get(True, "single") is om  # Prometheus keeps scraping
    clock.now = 700.0
    assert renderers.get(True, "single") is om
    assert renderers.get(False, "single") is not text  # idle 700 s: made afresh


@pytest.mark.parametrize("seed", range(4))
def test_snapshots_rendered_out_of_order_render_as_themselves(seed: int) -> None:
    """The server renders snapshots in the order it takes them, but a renderer asked for an
    older snapshot after a newer one (a smaller table, an experiment without its last
    write yet) still renders that snapshot, not lines of the newer one."""
    rng = random.Random(seed)
    metrics, kept = ABMetrics(), SeriesRenderer()
    snapshots = []
    for step in range(40):
        e, b = f"e{rng.randrange(4)}", rng.choice(["control", "t1", "t2"])
        if rng.random() < 0.5:
            metrics.record_query(e, b, rng.uniform(1, 100), True)
        else:
            metrics.record_event(e, b, "buy", 1.0)
        if step % 13 == 12:
            metrics.clear_experiment(e)
        snapshots.append(metrics.snapshot())
    for snapshot in rng.sample(snapshots, len(snapshots)):
        assert kept.render(snapshot) == SeriesRenderer().render(snapshot)
