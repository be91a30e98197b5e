"""Each statistic against scipy's reference implementation, or against the paper's
equations worked independently here, on ordinary and extreme aggregates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from exporter import ABMetrics
from exporter.stats import inference as st

REL = 1e-9


def arr(*values: float) -> np.ndarray:
    return np.array(values, dtype=float)


WELCH_CASES = [
    # (n_a, mean_a, var_a, n_b, mean_b, var_b)
    (10, 1.0, 1.0, 12, 2.0, 1.5),
    (2, 5.0, 0.5, 2, 5.5, 0.25),  # smallest n a t-test allows
    (1_000_000_000, 80.0, 400.0, 900_000_000, 80.001, 410.0),  # huge n
    (50, 1e6, 1e-8, 60, 1e6 + 1e-5, 2e-8),  # tiny variance next to a large mean
    (30, 3.0, 0.0, 40, 3.5, 2.0),  # one arm without spread
    (5000, 0.1, 1e-4, 20, 0.3, 4.0),  # very unequal arms
]


@pytest.mark.parametrize(("n_a", "mean_a", "var_a", "n_b", "mean_b", "var_b"), WELCH_CASES)
def test_welch_matches_scipy(
    n_a: int, mean_a: float, var_a: float, n_b: int, mean_b: float, var_b: float
) -> None:
    est, fixed = st.welch(
        arr(n_a), arr(mean_a), arr(var_a), arr(n_b), arr(mean_b), arr(var_b), arr(0.05)
    )
    ref = sp.ttest_ind_from_stats(
        mean_b, math.sqrt(var_b), n_b, mean_a, math.sqrt(var_a), n_a, equal_var=False
    )
    assert fixed.p_value[0] == pytest.approx(ref.pvalue, rel=REL)
    assert est.difference[0] == mean_b - mean_a
    # the interval: Welch-Satterthwaite degrees of freedom and scipy's t quantile
    se2_a, se2_b = var_a / n_a, var_b / n_b
    df = (se2_a + se2_b) ** 2 / (se2_a**2 / (n_a - 1) + se2_b**2 / (n_b - 1))
    lo, hi = sp.t.interval(0.95, df, loc=mean_b - mean_a, scale=math.sqrt(se2_a + se2_b))
    assert fixed.ci_lower[0] == pytest.approx(lo, rel=REL, abs=1e-15)
    assert fixed.ci_upper[0] == pytest.approx(hi, rel=REL, abs=1e-15)


def test_welch_without_any_variance_has_no_evidence() -> None:
    _, fixed = st.welch(arr(5), arr(1.0), arr(0.0), arr(5), arr(2.0), arr(0.0), arr(0.05))
    assert fixed.p_value[0] == 1.0
    assert np.isnan(fixed.ci_lower[0]) and np.isnan(fixed.ci_upper[0])


PROPORTION_CASES = [
    # (n_a, x_a, n_b, x_b)
    (1000, 100, 1000, 130),
    (1, 0, 1, 1),  # n = 1
    (50, 0, 60, 3),  # p = 0 in the control
    (80, 80, 90, 85),  # p = 1 in the control
    (10**9, 5 * 10**7, 10**9, 50_010_000),  # huge n
]


@pytest.mark.parametrize(("n_a", "x_a", "n_b", "x_b"), PROPORTION_CASES)
def test_two_proportion_z_test_matches_scipy(n_a: int, x_a: int, n_b: int, x_b: int) -> None:
    est, fixed = st.two_proportions(arr(n_a), arr(x_a), arr(n_b), arr(x_b), arr(0.05))
    # the pooled two-proportion z-test is the uncorrected 2x2 chi-square test (z^2 = chi^2)
    table = [[x_a, n_a - x_a], [x_b, n_b - x_b]]
    ref = sp.chi2_contingency(table, correction=False).pvalue
    assert fixed.p_value[0] == pytest.approx(ref, rel=REL)
    p_a, p_b = x_a / n_a, x_b / n_b
    variance = p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b
    assert est.variance[0] == pytest.approx(variance, rel=REL)
    if variance == 0:  # 0% against 100%: no spread, so no interval (left out)
        assert np.isnan(fixed.ci_lower[0]) and np.isnan(fixed.ci_upper[0])
        return
    lo, hi = sp.norm.interval(0.95, loc=p_b - p_a, scale=math.sqrt(variance))
    assert fixed.ci_lower[0] == pytest.approx(lo, rel=REL)
    assert fixed.ci_upper[0] == pytest.approx(hi, rel=REL)


def test_identical_extreme_proportions_have_no_evidence() -> None:
    for x in (0, 40):  # both 0% or both 100%
        est, fixed = st.two_proportions(arr(40), arr(x), arr(40), arr(x), arr(0.05))
        assert fixed.p_value[0] == 1.0
        assert est.variance[0] == 0.0
        seq = st.sequential(est, arr(80), arr(0.05), arr(5000))
        assert seq.p_value[0] == 1.0 and np.isnan(seq.ci_lower[0])


def test_rate_z_test_matches_the_normal_reference() -> None:
    est, fixed = st.two_rates(arr(1000), arr(1500), arr(1200), arr(2000), arr(0.05))
    r_a, r_b = 1.5, 2000 / 1200
    se = math.sqrt(r_a / 1000 + r_b / 1200)
    assert fixed.p_value[0] == pytest.approx(2 * sp.norm.sf(abs(r_b - r_a) / se), rel=REL)
    assert est.difference[0] == pytest.approx(r_b - r_a, rel=REL)


def paper_sequential(
    d: float, v: float, n: float, alpha: float, tuning: float
) -> tuple[float, float]:
    """Waudby-Smith et al. (2021), asymptotic confidence sequence with the normal-mixture
    boundary, written out directly from the equations: (p-value, half-width)."""
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning
    sigma = math.sqrt(n * v)  # per-observation scale of an estimate with variance v
    half = sigma * math.sqrt(
        (2 * (n * rho2 + 1)) / (n**2 * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha)
    )
    # the e-value of the mixture martingale (in logs: it can exceed any float);
    # its inverse is the always-valid p-value
    log_e = n**2 * rho2 * d**2 / (2 * sigma**2 * (n * rho2 + 1)) - 0.5 * math.log(n * rho2 + 1)
    return min(1.0, math.exp(-log_e)), half


SEQUENTIAL_CASES = [
    # (difference, variance of the estimate, total n, alpha, N*)
    (0.03, 0.0001, 2000, 0.05, 5000),
    (0.03, 0.0001, 20_000, 0.05, 5000),
    (-1.5, 0.25, 100, 0.01, 1000),
    (0.0, 1.0, 10, 0.05, 5000),
    (2e-4, 1e-10, 2e9, 0.05, 5000),  # huge n
    (1.0, 1e-30, 4, 0.1, 50),  # tiny variance: p underflows to 0
]


@pytest.mark.parametrize(("d", "v", "n", "alpha", "tuning"), SEQUENTIAL_CASES)
def test_sequential_matches_the_papers_equations(
    d: float, v: float, n: float, alpha: float, tuning: float
) -> None:
    seq = st.sequential(st.Estimate(arr(d), arr(v)), arr(n), arr(alpha), arr(tuning))
    p, half = paper_sequential(d, v, n, alpha, tuning)
    assert seq.p_value[0] == pytest.approx(p, rel=REL, abs=1e-300)
    assert seq.ci_lower[0] == pytest.approx(d - half, rel=REL)
    assert seq.ci_upper[0] == pytest.approx(d + half, rel=REL)


def test_sequential_p_and_interval_agree_and_are_wider_than_fixed() -> None:
    rng = np.random.default_rng(3)
    d = rng.normal(0, 0.05, 2000)
    v = rng.uniform(1e-5, 1e-3, 2000)
    n = rng.integers(10, 100_000, 2000).astype(float)
    alpha = np.full(2000, 0.05)
    seq = st.sequential(st.Estimate(d, v), n, alpha, np.full(2000, 5000.0))
    excluded = (seq.ci_lower > 0) | (seq.ci_upper < 0)
    assert np.array_equal(seq.p_value < 0.05, excluded)
    fixed_half = sp.norm.ppf(0.975) * np.sqrt(v)
    assert np.all(seq.ci_upper - d > fixed_half)


def test_relative_difference_delta_method() -> None:
    rel, var = st.relative_difference(arr(100), arr(10.0), arr(4.0), arr(200), arr(12.0), arr(9.0))
    assert rel[0] == pytest.approx(0.2, rel=REL)
    assert var[0] == pytest.approx(9.0 / (200 * 100) + 4.0 * 144 / (100 * 10**4), rel=REL)
    rel, _ = st.relative_difference(arr(100), arr(0.0), arr(0.0), arr(100), arr(1.0), arr(1.0))
    assert np.isnan(rel[0])  # control mean 0: left out


def test_probability_better_is_direction_aware() -> None:
    est = st.Estimate(arr(-0.01, -0.01), arr(0.0001, 0.0001))
    higher, lower = st.probability_better(est, np.array([False, True]))
    assert higher == pytest.approx(sp.norm.cdf(-1.0), rel=REL)
    assert lower == pytest.approx(sp.norm.cdf(1.0), rel=REL)
    # Beta posteriors stay defined at 0% and 100%
    prob = st.beta_probability_better(arr(50), arr(0), arr(50), arr(0))
    assert prob[0] == pytest.approx(0.5)


def test_holm_and_benjamini_hochberg() -> None:
    p = arr(0.01, 0.04, 0.03, 0.005)
    assert np.allclose(st.adjust(p, "holm"), [0.03, 0.06, 0.06, 0.02], rtol=REL)
    assert np.allclose(st.adjust(p, "bh"), sp.false_discovery_control(p, method="bh"), rtol=REL)
    assert np.array_equal(st.adjust(p, "none"), p)
    assert st.adjust(arr(0.9, 0.8), "holm").max() == 1.0


@pytest.mark.parametrize(
    ("counts", "weights"),
    [
        ((5000, 5100), (1, 1)),
        ((5000, 5600, 4800), (1, 1, 1)),
        ((900, 100), (90, 10)),
        ((10**9, 10**9 + 10**6), (1, 1)),
        ((8, 0), (1, 1)),
    ],
)
def test_sample_ratio_matches_scipy_chisquare(
    counts: tuple[int, ...], weights: tuple[int, ...]
) -> None:
    c, w = np.array(counts, dtype=float), np.array(weights, dtype=float)
    check = st.sample_ratio(c, w)
    assert check is not None
    ref = sp.chisquare(c, c.sum() * w / w.sum())
    assert check.statistic == pytest.approx(ref.statistic, rel=REL)
    assert check.p_value == pytest.approx(ref.pvalue, rel=REL, abs=1e-300)


def expand(buckets: np.ndarray) -> np.ndarray:
    """Bucketed data as raw values: every value in bucket k is k (so ties are the same)."""
    return np.repeat(np.arange(len(buckets)), buckets.astype(int))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((5, 10, 30, 20, 5, 0), (2, 8, 20, 30, 15, 5)),
        ((0, 0, 100, 0), (0, 0, 99, 1)),
        ((1, 0, 0), (0, 0, 1)),
        ((400, 3000, 2500, 900, 200, 10), (420, 2900, 2600, 950, 150, 30)),
    ],
)
def test_mann_whitney_from_buckets_matches_scipy(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    buckets_a, buckets_b = np.array([a], dtype=float), np.array([b], dtype=float)
    test = st.mann_whitney(buckets_a, buckets_b)
    ref = sp.mannwhitneyu(
        expand(buckets_b[0]), expand(buckets_a[0]), use_continuity=True, method="asymptotic"
    )
    assert test.u[0] == pytest.approx(ref.statistic, rel=REL)
    assert test.p_value[0] == pytest.approx(ref.pvalue, rel=REL)
    assert test.auc[0] == pytest.approx(ref.statistic / (sum(a) * sum(b)), rel=REL)


def test_mann_whitney_with_everything_tied_is_left_out() -> None:
    test = st.mann_whitney(np.array([[0, 5, 0]]), np.array([[0, 7, 0]]))
    assert np.isnan(test.p_value[0])


def test_percentiles_from_buckets() -> None:
    values = np.linspace(0.0005, 0.0995, 1000)  # uniform over (0, 0.1) s
    bounds = np.array([0.01, 0.025, 0.05, 0.1])
    counts = np.bincount(np.searchsorted(bounds, values), minlength=5)
    got = st.bucket_percentiles(
        counts[None, :], bounds, arr(values.min()), arr(values.max()), arr(0.5, 0.95, 0.99)
    )[0]
    exact = np.percentile(values, [50, 95, 99])
    # interpolation inside a bucket is exact for uniform data, up to one value's spacing
    assert np.allclose(got, exact, atol=2e-4)
    # everything in +Inf: the estimate stays within the observed min and max
    got = st.bucket_percentiles(
        np.array([[0, 0, 0, 0, 10]]), bounds, arr(12.0), arr(20.0), arr(0.5)
    )
    assert 12.0 <= got[0, 0] <= 20.0


def test_end_to_end_welch_from_recorded_queries() -> None:
    """The aggregate's Welford moments feed the same p-value scipy gets from raw data."""
    rng = np.random.default_rng(11)
    a = rng.lognormal(4.0, 0.5, 3000)
    b = rng.lognormal(4.02, 0.5, 2500)
    metrics = ABMetrics()
    for value in a:
        metrics.record_query("e", "control", float(value), True)
    for value in b:
        metrics.record_query("e", "treatment", float(value), bool(value < 80))
    comparison = metrics.compare_branches("e", "control", "treatment")
    assert comparison is not None
    latency = next(m for m in comparison.metrics if m.metric == "latency_mean")
    ref = sp.ttest_ind(b / 1000, a / 1000, equal_var=False)
    assert latency.fixed_horizon_p_value == pytest.approx(ref.pvalue, rel=1e-7)
    assert latency.difference == pytest.approx((b.mean() - a.mean()) / 1000, rel=1e-9)
    success = next(m for m in comparison.metrics if m.metric == "success_ratio")
    ref_p = sp.chi2_contingency(
        [[3000, 0], [int((b < 80).sum()), int((b >= 80).sum())]], correction=False
    ).pvalue
    assert success.fixed_horizon_p_value == pytest.approx(ref_p, rel=REL)
