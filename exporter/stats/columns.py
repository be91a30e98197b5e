"""Every comparison's statistics at once, kept as columns.

The tests of inference.py run once over the whole long table (table.py); the
p-values are adjusted within each experiment; the result stays a set of arrays
that the exposition renders directly. Objects (MetricComparison) are made only
when a reader asks for one experiment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..core.experiment_config import ExperimentConfig
from . import inference as st
from .table import MEAN, PROP, RATE, Table

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class Comparisons:
    """One entry per row of the table, each column as MetricComparison's field of the
    same name (NaN where that field is None)."""

    table: Table
    lower_is_better: Array
    sample_size_a: Array
    sample_size_b: Array
    value_a: Array
    value_b: Array
    difference: Array
    relative_difference: Array
    ci_lower: Array
    ci_upper: Array
    p_value: Array
    fixed_horizon_p_value: Array
    fixed_horizon_ci_lower: Array
    fixed_horizon_ci_upper: Array
    adjusted_p_value: Array
    probability_better: Array
    significant: Array
    verdict: Array
    relative_ci_lower: Array
    relative_ci_upper: Array
    mde: Array
    eta_seconds: Array

    def __len__(self) -> int:
        return len(self.table)


# the fields that are None (NaN here) when they cannot be computed
OPTIONAL: Final = frozenset(
    {"relative_difference", "ci_lower", "ci_upper", "fixed_horizon_ci_lower",
     "fixed_horizon_ci_upper", "probability_better", "relative_ci_lower", "relative_ci_upper",
     "mde", "eta_seconds"}
)  # fmt: skip
COLUMNS: Final = tuple(f.name for f in fields(Comparisons) if f.name != "table")


def compute(
    table: Table,
    configs: Sequence[ExperimentConfig],
    srm_detected: Sequence[bool],
    durations: Sequence[float],
) -> Comparisons:
    """Statistics of every row; `configs`, `srm_detected` and `durations` are per
    experiment (the table's `experiment` indexes them)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _compute(table, configs, srm_detected, durations)


def _compute(
    table: Table,
    configs: Sequence[ExperimentConfig],
    srm_detected: Sequence[bool],
    durations: Sequence[float],
) -> Comparisons:
    exp, kind, lower = table.experiment, table.kind, table.lower_is_better
    n_a, n_b, x_a, x_b = table.n_a, table.n_b, table.x_a, table.x_b
    mean_a, mean_b, var_a, var_b = table.mean_a, table.mean_b, table.var_a, table.var_b
    alpha = np.array([c.alpha for c in configs], dtype=float)[exp]
    tuning = np.array([c.sequential_tuning for c in configs], dtype=float)[exp]
    min_size = np.array([c.min_sample_size for c in configs], dtype=float)[exp]

    size = len(exp)
    difference, variance = np.zeros(size), np.zeros(size)
    fixed_p, fixed_lo, fixed_hi = np.ones(size), np.full(size, np.nan), np.full(size, np.nan)
    better = np.full(size, np.nan)
    # per-observation means and variances, for the relative difference
    unit_mean_a, unit_mean_b = mean_a.copy(), mean_b.copy()
    unit_var_a, unit_var_b = var_a.copy(), var_b.copy()
    for code, test in ((PROP, st.two_proportions), (RATE, st.two_rates)):
        m = kind == code
        if m.any():
            est, fixed = test(n_a[m], x_a[m], n_b[m], x_b[m], alpha[m])
            difference[m], variance[m] = est.difference, est.variance
            fixed_p[m], fixed_lo[m], fixed_hi[m] = fixed.p_value, fixed.ci_lower, fixed.ci_upper
            unit_mean_a[m], unit_mean_b[m] = x_a[m] / n_a[m], x_b[m] / n_b[m]
            if code == PROP:
                p_a, p_b = unit_mean_a[m], unit_mean_b[m]
                unit_var_a[m], unit_var_b[m] = p_a * (1 - p_a), p_b * (1 - p_b)
                better[m] = st.beta_probability_better(n_a[m], x_a[m], n_b[m], x_b[m])
            else:
                unit_var_a[m], unit_var_b[m] = unit_mean_a[m], unit_mean_b[m]
                better[m] = st.probability_better(est, lower[m])
    m = kind == MEAN
    if m.any():
        est, fixed = st.welch(n_a[m], mean_a[m], var_a[m], n_b[m], mean_b[m], var_b[m], alpha[m])
        difference[m], variance[m] = est.difference, est.variance
        fixed_p[m], fixed_lo[m], fixed_hi[m] = fixed.p_value, fixed.ci_lower, fixed.ci_upper
        better[m] = st.probability_better(est, lower[m])

    estimate = st.Estimate(difference, variance)
    seq = st.sequential(estimate, n_a + n_b, alpha, tuning)
    relative, relative_var = st.relative_difference(
        n_a, unit_mean_a, unit_var_a, n_b, unit_mean_b, unit_var_b
    )
    adjusted = _adjust_within(seq.p_value, exp, [c.correction for c in configs])
    significant = (adjusted < alpha) & (n_a >= min_size) & (n_b >= min_size)
    trusted = ~np.array(srm_detected, dtype=bool)[exp] if size else np.ones(0, dtype=bool)
    direction = np.where(lower, -1, 1)
    verdict = np.where(significant & trusted, np.sign(difference) * direction, 0).astype(int)
    # the relative lift's own confidence sequence: delta-method variance, same N and alpha
    rel_ok = np.isfinite(relative) & np.isfinite(relative_var)
    rel_seq = st.sequential(
        st.Estimate(np.where(rel_ok, relative, 0.0), np.where(rel_ok, relative_var, 0.0)),
        n_a + n_b,
        alpha,
        tuning,
    )
    rel_lo = np.where(rel_ok, rel_seq.ci_lower, np.nan)
    rel_hi = np.where(rel_ok, rel_seq.ci_upper, np.nan)
    # power: SE from the arms' per-observation variances pooled (weighted by n)
    pooled = (n_a * unit_var_a + n_b * unit_var_b) / (n_a + n_b)
    se = np.sqrt(np.where(pooled > 0, pooled, 0.0) * (1.0 / n_a + 1.0 / n_b))
    mde = st.minimum_detectable_effect(se, n_a + n_b, alpha, tuning)
    growth = st.growth_to_detect(difference, se, n_a + n_b, alpha, tuning)
    span = np.array(durations, dtype=float)[exp] if size else np.zeros(0)
    eta = np.where(span > 0, (growth - 1.0) * span, np.nan)
    return Comparisons(
        table, lower, n_a.astype(int), n_b.astype(int), unit_mean_a, unit_mean_b,
        difference, relative, seq.ci_lower, seq.ci_upper, seq.p_value, fixed_p, fixed_lo,
        fixed_hi, adjusted, better, significant, verdict, rel_lo, rel_hi,
        np.asarray(mde, dtype=float), eta,
    )  # fmt: skip


def _adjust_within(p: Array, experiment: Array, corrections: Sequence[str]) -> Array:
    """p adjusted within each experiment (the table's rows of one experiment are
    contiguous): experiments with the same correction and count of comparisons are
    adjusted together, as rows of one matrix."""
    adjusted = np.ones(len(p))
    if not len(p):
        return adjusted
    starts = np.flatnonzero(np.r_[True, experiment[1:] != experiment[:-1]])
    counts = np.diff(np.r_[starts, len(p)])
    methods = [corrections[i] for i in experiment[starts].tolist()]
    groups: dict[tuple[str, int], list[int]] = {}
    for start, count, method in zip(starts.tolist(), counts.tolist(), methods, strict=True):
        groups.setdefault((method, count), []).append(start)
    for (method, count), first in groups.items():
        at = np.array(first)[:, None] + np.arange(count)
        adjusted[at] = st.adjust_rows(p[at], method)
    return adjusted
