"""Verdicts, relative lift, winner, progress and power, on data whose truth is known, and
checked against references computed here independently (scipy, statsmodels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as sp
from statsmodels.stats.power import NormalIndPower

from exporter import ABMetrics
from exporter.core.experiment_config import ExperimentConfig
from exporter.core.validation import ValidationError
from exporter.stats import inference as st
from exporter.stats.analysis import ExperimentAnalysis, MetricComparison


class Ticking:
    """A clock that moves 0.1 s per reading: every record is 0.1 s after the last."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 0.1
        return self.now


def simulate(
    seed: int,
    arms: dict[str, tuple[int, float, float]],  # branch -> (queries, success p, mean ms)
    config: dict[str, object] | None = None,
    conversions: dict[str, float] | None = None,
) -> ExperimentAnalysis:
    rng = np.random.default_rng(seed)
    metrics = ABMetrics(clock=Ticking())
    if config:
        metrics.configure("e", config)
    for branch, (count, success, mean) in arms.items():
        oks = (rng.random(count) < success).tolist()
        latencies = rng.normal(mean, 10.0, count).clip(0).tolist()
        for latency, ok in zip(latencies, oks, strict=True):
            metrics.record_query("e", branch, latency, ok)
        if conversions:
            for _ in range(int(rng.binomial(count, conversions[branch]))):
                metrics.record_event("e", branch, "conversion", 1.0)
    return metrics.analyse("e")["e"]


def found(analysis: ExperimentAnalysis, branch: str, metric: str) -> MetricComparison:
    return next(m for m in analysis.comparisons[branch] if m.metric == metric)


def test_truly_better_success_and_truly_slower_get_plus_one_and_minus_one() -> None:
    analysis = simulate(1, {"control": (3000, 0.80, 100.0), "treatment": (3000, 0.86, 110.0)})
    success = found(analysis, "treatment", "success_ratio")
    latency = found(analysis, "treatment", "latency_mean")
    assert (success.verdict, latency.verdict) == (1, -1)
    assert success.difference > 0 and latency.difference > 0  # slower is worse
    assert analysis.winner == "treatment"  # primary metric: success_ratio
    assert analysis.progress == 1.0


def test_a_faster_treatment_wins_on_latency_when_latency_is_primary() -> None:
    arms = {"control": (2000, 0.9, 100.0), "fast": (2000, 0.9, 95.0)}
    analysis = simulate(2, arms, {"primary_metric": "latency_mean"})
    assert found(analysis, "fast", "latency_mean").verdict == 1
    assert analysis.winner == "fast"
    assert simulate(2, arms).winner is None  # on success ratio nothing is better


@pytest.mark.parametrize("seed", range(5))
def test_an_a_a_experiment_stays_inconclusive(seed: int) -> None:
    analysis = simulate(
        seed,
        {"control": (2000, 0.8, 100.0), "b": (2000, 0.8, 100.0), "c": (2000, 0.8, 100.0)},
        conversions={"control": 0.1, "b": 0.1, "c": 0.1},
    )
    verdicts = [m.verdict for ms in analysis.comparisons.values() for m in ms]
    assert len(verdicts) == 2 * 4 and set(verdicts) == {0}
    assert analysis.winner is None


def test_a_sample_ratio_mismatch_reads_zero_everywhere() -> None:
    analysis = simulate(3, {"control": (3000, 0.80, 100.0), "treatment": (2000, 0.90, 120.0)})
    assert analysis.srm is not None and analysis.srm.detected
    comparisons = analysis.comparisons["treatment"]
    assert {m.metric for m in comparisons if m.significant} >= {"success_ratio", "latency_mean"}
    assert [m.verdict for m in comparisons] == [0] * len(comparisons)
    assert analysis.winner is None


def test_below_the_minimum_sample_size_is_inconclusive_and_progress_says_how_far() -> None:
    analysis = simulate(
        4,
        {"control": (3000, 0.80, 100.0), "treatment": (3000, 0.90, 120.0)},
        {"min_sample_size": 12000},
    )
    assert analysis.progress == pytest.approx(0.25)
    assert {m.verdict for m in analysis.comparisons["treatment"]} == {0}
    assert analysis.winner is None


def test_relative_lift_and_its_interval_match_an_independent_reference() -> None:
    """From the raw samples: means and variances (numpy, scipy), the delta method by
    numerical differentiation of b / a - 1, and the confidence sequence written out."""
    rng = np.random.default_rng(5)
    raw = {
        "control": (rng.random(4000) < 0.80, rng.normal(100.0, 10.0, 4000)),
        "treatment": (rng.random(3000) < 0.83, rng.normal(104.0, 12.0, 3000)),
    }
    metrics = ABMetrics(clock=Ticking())
    for branch, (oks, latencies) in raw.items():
        for ok, latency in zip(oks.tolist(), latencies.tolist(), strict=True):
            metrics.record_query("e", branch, latency, ok)
    analysis = metrics.analyse("e")["e"]
    alpha, tuning = 0.05, 5000.0
    for metric in ("success_ratio", "latency_mean"):
        m = found(analysis, "treatment", metric)
        index = 0 if metric == "success_ratio" else 1
        a = raw["control"][index].astype(float) / (1 if index == 0 else 1000)  # seconds
        b = raw["treatment"][index].astype(float) / (1 if index == 0 else 1000)
        mean_a, mean_b = float(np.mean(a)), float(np.mean(b))
        if metric == "success_ratio":  # Bernoulli: p (1 - p)
            var_a, var_b = mean_a * (1 - mean_a), mean_b * (1 - mean_b)
        else:
            var_a, var_b = float(sp.tvar(a)), float(sp.tvar(b))
        n_a, n_b = len(a), len(b)
        rel = mean_b / mean_a - 1
        assert m.relative_difference == pytest.approx(rel, rel=1e-9)
        h = 1e-7 * mean_a
        grad_a = ((mean_b / (mean_a + h) - 1) - (mean_b / (mean_a - h) - 1)) / (2 * h)
        grad_b = (((mean_b + h) / mean_a - 1) - ((mean_b - h) / mean_a - 1)) / (2 * h)
        variance = grad_a**2 * var_a / n_a + grad_b**2 * var_b / n_b
        # the asymptotic confidence sequence (Waudby-Smith et al. 2021), written out
        n = n_a + n_b
        rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning
        half = math.sqrt(n * variance) * math.sqrt(
            2 * (n * rho2 + 1) / (n**2 * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha)
        )
        assert m.relative_ci_lower == pytest.approx(rel - half, rel=1e-6), metric
        assert m.relative_ci_upper == pytest.approx(rel + half, rel=1e-6), metric
        # wider than the one-look normal interval at the same level (scipy's quantile)
        assert half > sp.norm.ppf(1 - alpha / 2) * math.sqrt(variance)


def test_the_relative_interval_covers_the_true_lift() -> None:
    """Coverage, simulated: 4000 experiments, 20 looks each; the sequence must hold the
    true lift at every look in at least 1 - alpha of them."""
    rng = np.random.default_rng(7)
    runs, looks, step = 4000, 20, 200
    p_a, p_b = 0.30, 0.33
    x_a = rng.binomial(step, p_a, (runs, looks)).cumsum(axis=1).astype(float)
    x_b = rng.binomial(step, p_b, (runs, looks)).cumsum(axis=1).astype(float)
    n = np.broadcast_to((np.arange(looks) + 1.0) * step, (runs, looks))
    m_a, m_b = x_a / n, x_b / n
    rel, var = st.relative_difference(n, m_a, m_a * (1 - m_a), n, m_b, m_b * (1 - m_b))
    seq = st.sequential(st.Estimate(rel, var), 2 * n, np.full_like(n, 0.05), np.full_like(n, 5000))
    truth = p_b / p_a - 1
    held = ((seq.ci_lower <= truth) & (truth <= seq.ci_upper)).all(axis=1).mean()
    assert held >= 0.95


@pytest.mark.parametrize(
    ("n_a", "n_b", "alpha", "tuning"),
    [(1000, 1000, 0.05, 5000.0), (250, 4000, 0.01, 1000.0), (10**6, 10**6, 0.1, 5000.0)],
)
def test_mde_matches_a_power_calculation(n_a: int, n_b: int, alpha: float, tuning: float) -> None:
    """Sequential MDE = (c + z_0.8) * SE, c the sequence's multiplier: the fixed-horizon
    power calculation of statsmodels at the one-sided level where z equals c."""
    sd = 0.4
    se = sd * math.sqrt(1 / n_a + 1 / n_b)
    total = np.array([float(n_a + n_b)])
    mde = st.minimum_detectable_effect(
        np.array([se]), total, np.array([alpha]), np.array([tuning])
    )[0]
    c = float(st.sequential_multiplier(total, np.array([alpha]), np.array([tuning]))[0])
    half = st.sequential(
        st.Estimate(np.array([0.0]), np.array([se**2])),
        total,
        np.array([alpha]),
        np.array([tuning]),
    ).ci_upper[0]
    assert c * se == pytest.approx(half, rel=1e-12)

    def power(effect: float) -> float:
        return float(
            NormalIndPower().power(
                effect_size=effect,
                nobs1=n_a,
                alpha=float(sp.norm.sf(c)),
                ratio=n_b / n_a,
                alternative="larger",
            )
        )

    # statsmodels' own solve_power stops at ~1e-5: invert its power function tightly
    effect = optimize.brentq(lambda d: power(d) - 0.8, 1e-9, 100.0, xtol=1e-15, rtol=1e-15)
    assert mde == pytest.approx(effect * sd, rel=1e-6)
    assert power(mde / sd) == pytest.approx(0.8, abs=1e-9)
    # and the fixed-horizon closed form, for scale: the sequential MDE is larger
    fixed = (sp.norm.ppf(1 - alpha / 2) + sp.norm.ppf(0.8)) * se
    assert mde > fixed


def test_published_mde_and_eta_follow_their_definitions() -> None:
    analysis = simulate(8, {"control": (1500, 0.80, 100.0), "treatment": (1500, 0.815, 100.5)})
    m = found(analysis, "treatment", "success_ratio")
    assert m.verdict == 0 and m.mde is not None and m.eta_seconds is not None
    n_a, n_b, p_a, p_b = m.sample_size_a, m.sample_size_b, m.value_a, m.value_b
    pooled = (n_a * p_a * (1 - p_a) + n_b * p_b * (1 - p_b)) / (n_a + n_b)
    se = math.sqrt(pooled * (1 / n_a + 1 / n_b))
    args = (np.array([0.05]), np.array([5000.0]))
    assert m.mde == pytest.approx(
        float(st.minimum_detectable_effect(np.array([se]), np.array([n_a + n_b + 0.0]), *args)[0]),
        rel=1e-12,
    )
    assert m.mde > abs(m.difference)  # not detectable yet, so there is time to wait
    # after the ETA, at the same rate, the sample has grown by k and the MDE is the effect
    span = 2 * 1500 * 0.1 - 0.1  # 3000 queries recorded 0.1 s apart
    k = 1 + m.eta_seconds / span
    later = st.minimum_detectable_effect(
        np.array([se / math.sqrt(k)]), np.array([(n_a + n_b) * k]), *args
    )[0]
    assert later == pytest.approx(abs(m.difference), rel=1e-6)
    # a clear effect is already detectable: nothing to wait for
    clear = found(
        simulate(1, {"control": (3000, 0.8, 100.0), "t": (3000, 0.86, 100.0)}), "t", "success_ratio"
    )
    assert clear.eta_seconds == 0.0


def test_no_eta_without_an_effect_to_detect() -> None:
    growth = st.growth_to_detect(
        np.array([0.0, 1e-9, 0.05]),
        np.array([0.01, 0.01, 0.0]),
        np.full(3, 1000.0),
        np.full(3, 0.05),
        np.full(3, 5000.0),
    )
    assert np.isnan(growth).all()  # no effect; too small for 1e9 x the sample; no spread


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("latency_mean", ("latency_mean", "")),
        ("event_rate:conversion", ("event_rate", "conversion")),
        ("event_mean:revenue", ("event_mean", "revenue")),
    ],
)
def test_primary_metric_config(value: str, parsed: tuple[str, str]) -> None:
    config = ExperimentConfig.from_mapping({"primary_metric": value})
    assert config.primary() == parsed and config.to_json()["primary_metric"] == value
    assert ExperimentConfig().primary() == ("success_ratio", "")


@pytest.mark.parametrize("value", ["revenue", "event_rate", "latency_mean:x", 3, "event_mean:"])
def test_a_bad_primary_metric_is_named(value: object) -> None:
    with pytest.raises(ValidationError, match="primary_metric"):
        ExperimentConfig.from_mapping({"primary_metric": value})


def test_winner_on_an_event_rate() -> None:
    analysis = simulate(
        9,
        {"control": (3000, 0.8, 100.0), "treatment": (3000, 0.8, 100.0)},
        {"primary_metric": "event_rate:conversion"},
        conversions={"control": 0.10, "treatment": 0.16},
    )
    assert analysis.winner == "treatment"
