"""Simulations: watching A/A tests continuously must not produce winners; a real
effect must. Seeded, so every run sees the same data."""

from __future__ import annotations

import numpy as np

from exporter import ABMetrics
from exporter.core.aggregate import Records
from exporter.stats import inference as st

ALPHA = 0.05


def test_sequential_p_stays_honest_under_continuous_peeking() -> None:
    """2000 A/A experiments, each looked at after every one of 60 batches."""
    rng = np.random.default_rng(2021)
    experiments, looks, per_look = 2000, 60, 100
    ones = np.ones(experiments)
    x_a = np.zeros(experiments)
    x_b = np.zeros(experiments)
    ever_sequential = np.zeros(experiments, dtype=bool)
    ever_fixed = np.zeros(experiments, dtype=bool)
    for look in range(1, looks + 1):
        x_a += rng.binomial(per_look, 0.3, experiments)
        x_b += rng.binomial(per_look, 0.3, experiments)
        n = ones * look * per_look
        est, fixed = st.two_proportions(n, x_a, n, x_b, ALPHA * ones)
        seq = st.sequential(est, 2 * n, ALPHA * ones, 5000 * ones)
        ever_sequential |= seq.p_value < ALPHA
        ever_fixed |= fixed.p_value < ALPHA
    sequential_rate, fixed_rate = ever_sequential.mean(), ever_fixed.mean()
    # the always-valid p-value keeps its promise however often it is looked at ...
    print(f"A/A, 60 looks: sequential {sequential_rate:.4f}, fixed-horizon {fixed_rate:.4f}")
    assert sequential_rate <= ALPHA + 0.01, sequential_rate
    # ... while the fixed-horizon p-value, watched the same way, cries wolf several times over
    assert fixed_rate >= 3 * ALPHA, fixed_rate


def feed(
    metrics: ABMetrics,
    rng: np.random.Generator,
    experiment: str,
    per_arm: int,
    arms: dict[str, tuple[float, float]],
) -> None:
    """`arms`: branch -> (success probability, median latency in ms)."""
    records = Records()
    for branch, (success, median) in arms.items():
        latencies = rng.lognormal(np.log(median), 0.5, per_arm)
        oks = rng.random(per_arm) < success
        for latency, ok in zip(latencies.tolist(), oks.tolist(), strict=True):
            records.add_query((experiment, branch), latency, ok, 0.0)
    metrics.record_batch(records)


def test_the_significant_gauge_under_peeking_in_aa_experiments() -> None:
    """The `significant` flag, as published, after every batch of 150 A/A experiments."""
    rng = np.random.default_rng(7)
    metrics = ABMetrics()
    experiments, looks = 150, 50
    same = {"control": (0.9, 50.0), "treatment": (0.9, 50.0)}
    ever_significant: set[str] = set()
    ever_fixed: set[str] = set()
    for _ in range(looks):
        for e in range(experiments):
            feed(metrics, rng, f"aa-{e}", 60, same)
        for name, analysis in metrics.analyse().items():
            for m in analysis.comparisons["treatment"]:
                if m.significant:
                    ever_significant.add(name)
                if m.metric == "success_ratio" and m.fixed_horizon_p_value < ALPHA:
                    ever_fixed.add(name)
    significant_rate = len(ever_significant) / experiments
    fixed_rate = len(ever_fixed) / experiments
    print(f"A/A gauges, 50 looks: significant {significant_rate:.4f}, fixed {fixed_rate:.4f}")
    assert significant_rate <= ALPHA + 0.03, significant_rate
    assert fixed_rate > ALPHA + 0.1, fixed_rate


def test_a_real_effect_turns_significant_on() -> None:
    rng = np.random.default_rng(99)
    metrics = ABMetrics()
    arms = {"control": (0.90, 60.0), "treatment": (0.93, 50.0)}
    history = []
    for _ in range(40):
        feed(metrics, rng, "ab", 250, arms)
        comparison = metrics.compare_branches("ab", "control", "treatment")
        assert comparison is not None
        history.append({m.metric: m for m in comparison.metrics})
    first, last = history[0], history[-1]
    assert not first["success_ratio"].significant  # 250 per arm is not enough evidence yet
    success, latency = last["success_ratio"], last["latency_mean"]
    assert success.significant and latency.significant
    assert success.ci_lower is not None and success.ci_lower > 0
    assert latency.ci_upper is not None and latency.ci_upper < 0  # faster
    assert success.probability_better is not None and success.probability_better > 0.99
    # lower latency is better: the treatment is faster, so it is likely better
    assert latency.probability_better is not None and latency.probability_better > 0.99
    assert success.adjusted_p_value >= success.p_value
    distribution = metrics.compare_branches("ab", "control", "treatment")
    assert distribution is not None and distribution.latency_distribution is not None
    assert distribution.latency_distribution.probability_faster > 0.55
    assert distribution.is_significant and distribution.confidence == 0.95


def test_minimum_sample_size_holds_significance_back() -> None:
    rng = np.random.default_rng(5)
    metrics = ABMetrics()
    metrics.configure("big-effect", {"min_sample_size": 5000})
    feed(metrics, rng, "big-effect", 2000, {"control": (0.5, 50.0), "treatment": (0.8, 50.0)})
    analysis = metrics.analyse("big-effect")["big-effect"]
    success = next(m for m in analysis.comparisons["treatment"] if m.metric == "success_ratio")
    assert success.adjusted_p_value < 1e-10
    assert not success.significant


def test_sample_ratio_mismatch_is_detected_against_the_allocation() -> None:
    rng = np.random.default_rng(1)
    metrics = ABMetrics()
    feed(metrics, rng, "split", 1000, {"control": (0.9, 50.0)})
    feed(metrics, rng, "split", 800, {"treatment": (0.9, 50.0)})
    srm = metrics.analyse("split")["split"].srm
    assert srm is not None and srm.detected and srm.p_value < 1e-5
    # with the allocation configured as 55/45, the same counts are fine
    metrics.configure("split", {"allocation": {"control": 55, "treatment": 45}})
    srm = metrics.analyse("split")["split"].srm
    assert srm is not None and not srm.detected and srm.p_value > 0.01
