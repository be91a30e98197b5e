"""The columnar analysis and its rendering against the implementation they replaced
(tests/legacy_analysis.py): every value identical, the text byte for byte, on
randomised aggregates covering each config and shape the outputs branch on."""

from __future__ import annotations

import random
from dataclasses import fields
from typing import Any

import numpy as np
import pytest

from exporter import ABMetrics
from exporter.core.experiment_config import ExperimentConfig
from exporter.outputs.comparisons import ComparisonEngine
from exporter.outputs.exposition import CHUNK, render_analysis
from exporter.stats import inference as st
from exporter.stats.analysis import analyse

from . import legacy_analysis as legacy
from .conftest import FakeClock

EVENTS = ("signup", "purchase", 'odd "name"\\x', "click")


def plain(value: Any) -> Any:
    """A comparable form: dataclasses as their fields, floats as their exact repr (NaN
    equal to NaN, -0.0 apart from 0.0)."""
    if hasattr(value, "__dataclass_fields__"):
        return (type(value).__name__, tuple(plain(getattr(value, f.name)) for f in fields(value)))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict | tuple | list) or hasattr(value, "items"):
        if hasattr(value, "items"):
            return tuple((k, plain(v)) for k, v in value.items())
        return tuple(plain(v) for v in value)
    return value


def populate(seed: int) -> ABMetrics:
    rng = random.Random(seed)
    clock = FakeClock()
    metrics = ABMetrics(clock=clock)
    for e in range(21):
        name = f"exp-{e}" if e % 5 else f'exp "{e}"\\'
        shape = e % 7
        branches = ["control", "b", "c", "d"][: 1 + rng.randrange(4)]
        if shape == 1:
            branches = ["control"]  # one branch: nothing to compare
        if shape == 2:
            branches = ["first", "second", "third"]  # no branch named control
        aa = shape == 3  # A/A: the same data in both arms
        for b, branch in enumerate(branches):
            if shape == 4 and b == len(branches) - 1 and b:
                metrics.record_event(name, branch, "signup", 1.0)  # events, zero queries
                continue
            queries = rng.choice((0, 1, 2, 5, 40, 300)) if not aa else 200
            p_ok = 0.8 if aa else rng.uniform(0.5, 1.0)
            shift = 0.0 if aa else rng.uniform(-20.0, 20.0)
            for q in range(queries):
                clock.now += rng.uniform(0.0, 2.0)
                ok = (q % 10) < p_ok * 10 if aa else rng.random() < p_ok
                latency = 100.0 + shift + (q % 17 if aa else rng.expovariate(1 / 30))
                metrics.record_query(name, branch, latency, ok)
            for event in rng.sample(EVENTS, rng.randrange(len(EVENTS) + 1)):
                for v in range(rng.choice((1, 2, 3, 30, 400))):
                    metrics.record_event(name, branch, event, rng.choice((1.0, 2.5, -4.0)) * v)
        config: dict[str, Any] = {
            "correction": ("holm", "bh", "none")[e % 3],
            "alpha": rng.choice((0.05, 0.1, 0.2)),
            "min_sample_size": rng.choice((1, 10, 100)),
            "sequential_tuning": rng.choice((100.0, 5000.0)),
            "primary_metric": rng.choice(
                ("success_ratio", "latency_mean", "event_rate:signup", "event_mean:purchase")
            ),
        }
        if shape == 5:
            config["allocation"] = {b: float(1 + i) for i, b in enumerate(branches)} | {"gone": 1.0}
        if shape == 6 and len(branches) > 1:
            config["control"] = branches[-1]
        metrics.configure(name, ExperimentConfig.from_mapping(config))
    for w in range(2):  # clear winners, two of them (the second time with equal gains)
        for branch, share in (("control", 6), ("b", 9), ("c", 9 if w else 8)):
            for q in range(300):
                metrics.record_query(f"win-{w}", branch, 50.0 + q % 7, q % 10 < share)
        metrics.configure(f"win-{w}", {"min_sample_size": 10, "correction": ("holm", "bh")[w]})
    return metrics


@pytest.mark.parametrize("seed", range(6))
def test_values_and_text_are_those_of_the_per_experiment_implementation(seed: int) -> None:
    metrics = populate(seed)
    snapshot = metrics.snapshot()
    new = analyse(snapshot.view, snapshot.configs)
    old = legacy.analyse(snapshot.view, snapshot.configs)
    assert list(new) == list(old) and len(old) >= 20
    for name, expected in old.items():
        assert plain(new[name]) == plain(expected), name
    every = analyse(snapshot.view, snapshot.configs).items()  # made in one pass
    assert plain(dict(every)) == plain(old)
    compared = sum(len(m) for a in old.values() for m in a.comparisons.values())
    assert compared > 50 and len(new.columns.comparisons) == compared
    assert any(m.verdict for a in old.values() for ms in a.comparisons.values() for m in ms)
    assert [new[f"win-{w}"].winner for w in range(2)] == ["b", "b"]
    text = render_analysis(new)
    assert text == legacy.render_analysis(old)
    assert text.count("\n") > 500


def test_one_experiment_with_another_control_is_the_same_too() -> None:
    metrics = populate(1)
    snapshot = metrics.snapshot()
    for name in list(snapshot.view.experiments)[:8]:
        branches = list(snapshot.view.experiments[name])
        args = (snapshot.view, snapshot.configs, [name], {name: branches[-1]})
        assert plain(analyse(*args)[name]) == plain(legacy.analyse(*args)[name])


def test_nothing_to_analyse() -> None:
    metrics = ABMetrics()
    analyses = analyse(metrics.snapshot().view, {})
    assert len(analyses) == 0 and render_analysis(analyses) == ""
    metrics.record_query("solo", "control", 10.0, True)
    analyses = analyse(metrics.snapshot().view, {})
    assert analyses["solo"].comparisons == {} and analyses["solo"].latency == {}
    assert render_analysis(analyses) == legacy.render_analysis(
        legacy.analyse(metrics.snapshot().view, {})
    )


def test_the_engine_publishes_the_count_and_text_of_the_columns() -> None:
    metrics = populate(2)
    engine = ComparisonEngine(metrics)
    assert engine.refresh()
    latest = engine.latest
    old = legacy.analyse(metrics.snapshot().view, metrics.snapshot().configs)
    assert latest.text == legacy.render_analysis(old)
    assert max(part.count("\n") for part in latest.parts) <= CHUNK  # short holds of the GIL
    assert latest.comparisons == sum(len(m) for a in old.values() for m in a.comparisons.values())
    assert latest.analyses["exp-1"] is latest.analyses["exp-1"]  # made once, then kept


@pytest.mark.parametrize("method", ["holm", "bh", "none"])
def test_adjusting_rows_at_once_equals_one_at_a_time(method: str) -> None:
    rng = np.random.default_rng(3)
    p = rng.choice([0.001, 0.01, 0.04, 0.2, 0.5, 1.0], size=(7, 9))  # with ties
    rows = st.adjust_rows(p, method)
    for i in range(len(p)):
        assert np.array_equal(rows[i], legacy._adjust(p[i], method))
        assert np.array_equal(st.adjust(p[i], method), legacy._adjust(p[i], method))


def test_growth_and_power_are_those_of_the_plain_bisection() -> None:
    rng = np.random.default_rng(5)
    size = 5000
    effect = rng.choice([0.0, np.nan, 1e-6, 0.01, 0.3, 5.0], size) * rng.choice([-1, 1], size)
    se = rng.choice([0.0, 1e-4, 0.01, 0.2, 3.0], size)
    n = rng.integers(2, 100_000, size).astype(float)
    alpha, tuning = rng.choice([0.01, 0.05, 0.2], size), rng.choice([100.0, 5000.0], size)
    new = st.growth_to_detect(effect, se, n, alpha, tuning)
    assert np.array_equal(new, legacy._growth_to_detect(effect, se, n, alpha, tuning), True)
    assert np.isfinite(new).sum() > 1000 and (new > 1).sum() > 500
    assert np.array_equal(
        st.minimum_detectable_effect(se, n, alpha, tuning),
        legacy._minimum_detectable_effect(se, n, alpha, tuning),
        equal_nan=True,
    )
