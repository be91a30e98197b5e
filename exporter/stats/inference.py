"""Test statistics over sufficient statistics, vectorised: one call for every comparison.

Pure functions of numpy arrays (counts, means, variances, histogram buckets);
no I/O and no knowledge of experiments. Distribution functions come from
scipy.special (accurate at any sample size); everything assembled here is
checked against scipy.stats in the tests.

Conventions: `a` is the control, `b` the treatment, differences are `b - a`.
A p-value that cannot be computed (no variance) is 1, an interval or
probability that cannot be is NaN, and callers leave NaN out of any output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class Estimate:
    """A difference with its estimated variance (of the estimate, not of one value)."""

    difference: Array
    variance: Array


def _safe_div(num: Array, den: Array) -> Array:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def normal_p_value(z: Array) -> Array:
    """Two-sided p-value of a standard normal statistic."""
    return np.where(np.isnan(z), 1.0, 2.0 * special.ndtr(-np.abs(z)))


def z_critical(alpha: Array) -> Array:
    return np.asarray(special.ndtri(1.0 - np.asarray(alpha) / 2.0))


# -- fixed-horizon tests -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FixedHorizon:
    p_value: Array
    ci_lower: Array
    ci_upper: Array


def welch(
    n_a: Array, mean_a: Array, var_a: Array, n_b: Array, mean_b: Array, var_b: Array, alpha: Array
) -> tuple[Estimate, FixedHorizon]:
    """Welch's unequal-variance t-test and interval (needs n >= 2 in both arms)."""
    se2_a, se2_b = var_a / n_a, var_b / n_b
    variance = se2_a + se2_b
    diff = mean_b - mean_a
    df = _safe_div(variance**2, se2_a**2 / (n_a - 1) + se2_b**2 / (n_b - 1))
    se = np.sqrt(variance)
    t = _safe_div(diff, se)
    ok = (variance > 0) & np.isfinite(df)
    safe_df = np.where(ok, df, 1.0)
    p = np.where(ok, 2.0 * special.stdtr(safe_df, -np.abs(np.where(ok, t, 0.0))), 1.0)
    half = np.where(ok, special.stdtrit(safe_df, 1.0 - alpha / 2.0) * se, np.nan)
    return Estimate(diff, variance), FixedHorizon(p, diff - half, diff + half)


def _normal(diff: Array, variance: Array, p: Array, alpha: Array) -> tuple[Estimate, FixedHorizon]:
    """A z-test's p-value with its Wald interval (left out where there is no spread)."""
    half = np.where(variance > 0, z_critical(alpha) * np.sqrt(variance), np.nan)
    return Estimate(diff, variance), FixedHorizon(p, diff - half, diff + half)


def two_proportions(
    n_a: Array, x_a: Array, n_b: Array, x_b: Array, alpha: Array
) -> tuple[Estimate, FixedHorizon]:
    """Two-proportion z-test (pooled under the null) and Wald interval (unpooled)."""
    p_a, p_b = x_a / n_a, x_b / n_b
    diff = p_b - p_a
    variance = p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b
    pool = (x_a + x_b) / (n_a + n_b)
    pooled_se = np.sqrt(pool * (1 - pool) * (1 / n_a + 1 / n_b))
    return _normal(diff, variance, normal_p_value(_safe_div(diff, pooled_se)), alpha)


def two_rates(
    n_a: Array, x_a: Array, n_b: Array, x_b: Array, alpha: Array
) -> tuple[Estimate, FixedHorizon]:
    """Events per query as Poisson rates: a z-test on the difference of rates."""
    r_a, r_b = x_a / n_a, x_b / n_b
    diff = r_b - r_a
    variance = r_a / n_a + r_b / n_b
    return _normal(diff, variance, normal_p_value(_safe_div(diff, np.sqrt(variance))), alpha)


def relative_difference(
    n_a: Array, mean_a: Array, var_a: Array, n_b: Array, mean_b: Array, var_b: Array
) -> tuple[Array, Array]:
    """(b - a) / a and its delta-method variance; NaN where the control mean is 0."""
    rel = _safe_div(mean_b - mean_a, mean_a)
    variance = _safe_div(var_b, n_b * mean_a**2) + _safe_div(var_a * mean_b**2, n_a * mean_a**4)
    return rel, variance


# -- always-valid inference ----------------------------------------------------


def sequential_rho(alpha: Array, tuning: Array) -> Array:
    """The mixing parameter that makes the confidence sequence tightest at N = tuning
    (Waudby-Smith et al. 2021, the approximation GrowthBook uses)."""
    log_alpha = np.log(alpha)
    return np.sqrt((-2.0 * log_alpha + np.log(-2.0 * log_alpha + 1.0)) / tuning)


@dataclass(frozen=True, slots=True)
class Sequential:
    p_value: Array
    ci_lower: Array
    ci_upper: Array


def sequential(estimate: Estimate, total_n: Array, alpha: Array, tuning: Array) -> Sequential:
    """Asymptotic confidence sequence and always-valid p-value for a difference.

    With N observations in all, an estimate d whose variance is V (so that
    s^2 = N V is the per-observation scale) and rho from `sequential_rho`:

        half-width = sqrt(N V) * sqrt(2 (N rho^2 + 1) / (N^2 rho^2) * ln(sqrt(N rho^2 + 1) / alpha))
        p          = min(1, sqrt(N rho^2 + 1) * exp(-N^2 rho^2 d^2 / (2 N V (N rho^2 + 1))))

    The p-value is the smallest alpha at which the sequence excludes 0, so
    p < alpha exactly when the interval leaves 0 out, at every look.
    """
    n = total_n.astype(np.float64)
    rho2 = sequential_rho(alpha, tuning) ** 2
    scale = n * rho2 + 1.0
    v = estimate.variance
    ok = v > 0
    safe_v = np.where(ok, v, 1.0)
    half = np.sqrt(n * safe_v) * np.sqrt(
        2.0 * scale / (n**2 * rho2) * np.log(np.sqrt(scale) / alpha)
    )
    exponent = -(n * rho2 * estimate.difference**2) / (2.0 * safe_v * scale)
    p = np.minimum(1.0, np.sqrt(scale) * np.exp(exponent))
    half = np.where(ok, half, np.nan)
    d = estimate.difference
    return Sequential(np.where(ok, p, 1.0), d - half, d + half)


def sequential_multiplier(total_n: Array, alpha: Array, tuning: Array) -> Array:
    """The confidence sequence's half-width in standard errors: half-width / sqrt(V).
    It depends on N, alpha and N* only (the fixed-horizon analogue is z_{1-alpha/2})."""
    return _multiplier(np.asarray(total_n, dtype=np.float64), sequential_rho(alpha, tuning) ** 2,
                       alpha)  # fmt: skip


def _multiplier(n: Array, rho2: Array, alpha: Array) -> Array:
    scale = n * rho2 + 1.0
    return np.asarray(np.sqrt(2.0 * scale / (n * rho2) * np.log(np.sqrt(scale) / alpha)))


def minimum_detectable_effect(
    se: Array, total_n: Array, alpha: Array, tuning: Array, power: float = 0.8
) -> Array:
    """Smallest true difference the always-valid test detects with `power` at the current
    sample: (sequential multiplier + z_power) * SE. NaN where SE is not positive."""
    width = sequential_multiplier(total_n, alpha, tuning) + special.ndtri(power)
    return np.where(se > 0, width * np.where(se > 0, se, 1.0), np.nan)


def growth_to_detect(
    effect: Array,
    se: Array,
    total_n: Array,
    alpha: Array,
    tuning: Array,
    power: float = 0.8,
    max_growth: float = 1e9,
) -> Array:
    """The factor k by which the sample must grow (same split, same per-observation
    variance, so SE shrinks as 1/sqrt(k)) until the minimum detectable effect reaches
    |effect|: 1 when it already has, NaN when it cannot be computed or needs more than
    `max_growth`. Bisection in log k (the MDE falls monotonically with k), over only the
    entries that need it, with rho computed once (it depends on alpha and N* alone)."""
    target = np.abs(effect)
    shape = np.shape(target)
    ok = (target > 0) & (se > 0) & np.isfinite(target)
    safe_se = np.where(ok, se, 1.0)
    n, a = np.broadcast_to(total_n, shape), np.broadcast_to(alpha, shape)
    rho2 = np.broadcast_to(sequential_rho(alpha, tuning) ** 2, shape)
    z_power = special.ndtri(power)

    def mde(k: Array, at: Any = ...) -> Array:
        """minimum_detectable_effect(safe_se / sqrt(k), total_n * k, ...) at entries `at`."""
        se_k = safe_se[at] / np.sqrt(k)
        width = _multiplier((n[at] * k).astype(np.float64), rho2[at], a[at]) + z_power
        return np.where(se_k > 0, width * np.where(se_k > 0, se_k, 1.0), np.nan)

    top = np.full(shape, np.log(max_growth))
    done = mde(np.ones(shape)) <= target
    reachable = mde(np.exp(top)) <= target
    growth = np.where(done, 1.0, np.exp(top))
    search = np.nonzero(ok & ~done & reachable)
    lo, hi = np.zeros(len(search[0])), top[search]
    for _ in range(60):
        mid = (lo + hi) / 2.0
        above = mde(np.exp(mid), search) > target[search]
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    growth[search] = np.exp(hi)
    return np.where(ok & (done | reachable), growth, np.nan)


# -- Bayesian ----------------------------------------------------------------


def probability_better(estimate: Estimate, lower_is_better: Array) -> Array:
    """P(treatment better) under a flat prior and a normal posterior for the difference."""
    z = _safe_div(estimate.difference, np.sqrt(estimate.variance))
    z = np.where(lower_is_better, -z, z)
    return np.where(np.isnan(z), np.nan, special.ndtr(z))


def beta_probability_better(n_a: Array, x_a: Array, n_b: Array, x_b: Array) -> Array:
    """P(p_b > p_a) with uniform Beta(1, 1) priors, normal approximation of the
    posteriors: defined even at 0% or 100%, where the plain estimate has no spread."""
    mean_a, mean_b = (x_a + 1) / (n_a + 2), (x_b + 1) / (n_b + 2)
    var_a = mean_a * (1 - mean_a) / (n_a + 3)
    var_b = mean_b * (1 - mean_b) / (n_b + 3)
    return np.asarray(special.ndtr((mean_b - mean_a) / np.sqrt(var_a + var_b)))


# -- multiple comparisons ----------------------------------------------------


def adjust(p: Array, method: str) -> Array:
    """Holm (family-wise) or Benjamini-Hochberg (false discovery rate) adjusted p-values."""
    adjusted: Array = adjust_rows(p[None, :], method)[0]
    return adjusted


def adjust_rows(p: Array, method: str) -> Array:
    """`adjust` applied to each row of a matrix (one family of comparisons per row)."""
    m = p.shape[1]
    if m == 0 or method == "none":
        return p.copy()
    order = np.argsort(p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)
    if method == "holm":
        adjusted = np.maximum.accumulate(ranked * (m - np.arange(m)), axis=1)
    elif method == "bh":
        reverse = (ranked * m / np.arange(1, m + 1))[:, ::-1]
        adjusted = np.minimum.accumulate(reverse, axis=1)[:, ::-1]
    else:
        raise ValueError(f"unknown correction {method!r}")
    out = np.empty(p.shape)
    np.put_along_axis(out, order, np.minimum(adjusted, 1.0), axis=1)
    return out


# -- sample-ratio mismatch ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class RatioCheck:
    statistic: float
    p_value: float
    min_expected: float


def sample_ratio(counts: Array, weights: Array) -> RatioCheck | None:
    """Chi-square goodness of fit of branch counts to the expected allocation."""
    total = float(counts.sum())
    if len(counts) < 2 or total <= 0:
        return None
    statistic, p, min_expected = sample_ratio_rows(counts[None, :], weights[None, :])
    return RatioCheck(float(statistic[0]), float(p[0]), float(min_expected[0]))


def sample_ratio_rows(counts: Array, weights: Array) -> tuple[Array, Array, Array]:
    """`sample_ratio` for each row of two matrices, as (statistic, p-value, smallest
    expected count); rows must have at least two branches and a positive total."""
    total = counts.sum(axis=1)[:, None]
    expected = total * weights / weights.sum(axis=1)[:, None]
    statistic = ((counts - expected) ** 2 / expected).sum(axis=1)
    p = special.chdtrc(counts.shape[1] - 1, statistic)
    return statistic, np.asarray(p), expected.min(axis=1)


# -- latency distributions from histogram buckets -----------------------------


@dataclass(frozen=True, slots=True)
class RankTest:
    u: Array  # Mann-Whitney U of the treatment
    auc: Array  # P(treatment value > control value) + half the ties
    p_value: Array  # two-sided, normal approximation with tie and continuity correction


def mann_whitney(buckets_a: Array, buckets_b: Array) -> RankTest:
    """Mann-Whitney U from bucket counts (rows are pairs, columns buckets): values in
    the same bucket count as ties, so the test sees the data at the buckets' resolution."""
    a = buckets_a.astype(np.float64)
    b = buckets_b.astype(np.float64)
    n_a, n_b = a.sum(axis=1), b.sum(axis=1)
    below_a = np.cumsum(a, axis=1) - a
    u = (b * (below_a + a / 2.0)).sum(axis=1)
    pairs = n_a * n_b
    total = n_a + n_b
    ties = ((a + b) ** 3 - (a + b)).sum(axis=1)
    sigma2 = pairs / 12.0 * ((total + 1) - _safe_div(ties, total * (total - 1)))
    ok = (pairs > 0) & (sigma2 > 0)
    sigma = np.sqrt(np.where(ok, sigma2, 1.0))
    z = (np.abs(u - pairs / 2.0) - 0.5) / sigma
    p = np.where(ok, np.clip(2.0 * special.ndtr(-z), 0.0, 1.0), np.nan)
    return RankTest(u, _safe_div(u, pairs), p)


def bucket_percentiles(
    buckets: Array, bounds: Array, low: Array, high: Array, quantiles: Array
) -> Array:
    """Percentiles per row from non-cumulative bucket counts, interpolated linearly inside
    a bucket and clamped to the observed [low, high] (which also bounds the +Inf bucket)."""
    counts = buckets.astype(np.float64)
    cumulative = np.cumsum(counts, axis=1)
    total = cumulative[:, -1:]
    uppers = np.concatenate([bounds, [np.inf]])
    lowers = np.concatenate([[0.0], bounds])
    out = np.full((len(counts), len(quantiles)), np.nan)
    for j, q in enumerate(quantiles):
        rank = q * total[:, 0]
        # the first bucket whose cumulative count reaches the rank
        index = np.minimum((cumulative < rank[:, None]).sum(axis=1), counts.shape[1] - 1)
        rows = np.arange(len(counts))
        below = cumulative[rows, index] - counts[rows, index]
        inside = _safe_div(rank - below, counts[rows, index])
        lower = np.maximum(lowers[index], low)
        upper = np.minimum(uppers[index], high)
        value = lower + (upper - lower) * np.nan_to_num(inside, nan=0.5)
        out[:, j] = np.where(total[:, 0] > 0, np.clip(value, low, high), np.nan)
    return out
