"""The analysis and its rendering as they were before the columnar rewrite (issue 13):
the oracle that tests/test_analysis_columns.py compares the new code with, value for
value and byte for byte. Kept only here."""
# ruff: noqa
# mypy: ignore-errors

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from exporter.core.aggregate import BranchColumns, View
from exporter.core.experiment_config import ExperimentConfig
from exporter.core.moments import sample_variance
from exporter.core.results import control_of
from exporter.stats import inference as st

SRM_THRESHOLD: Final = 0.001
SRM_MIN_EXPECTED: Final = 8.0
PERCENTILES: Final = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """One metric of a treatment against the control. Differences are treatment minus
    control, in the metric's unit (latency in seconds). None where a figure cannot be
    computed yet; p-values with no evidence are 1."""

    metric: str  # success_ratio | latency_mean | event_rate | event_mean
    event: str  # the event name for event metrics, else ""
    lower_is_better: bool
    sample_size_a: int
    sample_size_b: int
    value_a: float
    value_b: float
    difference: float
    relative_difference: float | None
    ci_lower: float | None  # confidence sequence: valid at every look
    ci_upper: float | None
    p_value: float  # always-valid (sequential)
    fixed_horizon_p_value: float  # valid only for one look at a planned sample size
    fixed_horizon_ci_lower: float | None
    fixed_horizon_ci_upper: float | None
    adjusted_p_value: float  # sequential p adjusted across the experiment's comparisons
    probability_better: float | None
    significant: bool  # adjusted_p_value < alpha and both arms at min_sample_size
    # +1 better, -1 worse (by the metric's direction), 0 inconclusive: significant and no
    # sample-ratio mismatch in the experiment, else 0
    verdict: int
    relative_ci_lower: float | None  # confidence sequence for relative_difference (delta
    relative_ci_upper: float | None  # method), unadjusted like ci_*: goes with p_value
    mde: float | None  # minimum detectable effect now (metric's unit), 80% power, sequential
    eta_seconds: float | None  # time until the MDE reaches |difference| at the current rate


_FIELDS: Final = tuple(f.name for f in fields(MetricComparison))


@dataclass(frozen=True, slots=True)
class LatencyDistribution:
    """Mann-Whitney on the latency histograms: how often a treatment query is faster."""

    probability_faster: float  # P(treatment < control) + half the ties, at bucket resolution
    u_statistic: float
    fixed_horizon_p_value: float


@dataclass(frozen=True, slots=True)
class SampleRatio:
    p_value: float
    statistic: float
    detected: bool
    branches: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExperimentAnalysis:
    experiment: str
    control: str
    config: ExperimentConfig
    srm: SampleRatio | None
    comparisons: Mapping[str, tuple[MetricComparison, ...]]  # by treatment branch
    latency: Mapping[str, LatencyDistribution]  # by treatment branch
    percentiles: Mapping[str, Mapping[str, float]]  # branch -> p50/p95/p99 in seconds
    # smallest branch's queries / min_sample_size, at most 1 (1: verdicts may be given)
    progress: float
    # the treatment whose verdict is +1 on the primary metric (the largest gain if several)
    winner: str | None


@dataclass
class _Table:
    """The long table: one entry per (experiment, treatment, metric) to compute."""

    experiment: list[int] = field(default_factory=list)
    branch: list[str] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    event: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)  # prop | rate | mean
    lower_is_better: list[bool] = field(default_factory=list)
    n_a: list[float] = field(default_factory=list)
    n_b: list[float] = field(default_factory=list)
    x_a: list[float] = field(default_factory=list)  # successes or events (prop, rate)
    x_b: list[float] = field(default_factory=list)
    mean_a: list[float] = field(default_factory=list)  # (mean)
    mean_b: list[float] = field(default_factory=list)
    var_a: list[float] = field(default_factory=list)
    var_b: list[float] = field(default_factory=list)

    def counts(self, at: tuple[int, str, str, str], kind: str, n: Pair, x: Pair) -> None:
        """A proportion or a rate at (experiment, branch, metric, event): n trials and x
        successes (or events) per arm, control first."""
        self._append(at, kind, False, n, x, _NO_PAIR, _NO_PAIR)

    def means(
        self, at: tuple[int, str, str, str], lower_is_better: bool, n: Pair, mean: Pair, var: Pair
    ) -> None:
        """A difference of means at (experiment, branch, metric, event), control first."""
        self._append(at, "mean", lower_is_better, n, _NO_PAIR, mean, var)

    def _append(
        self,
        at: tuple[int, str, str, str],
        kind: str,
        lower_is_better: bool,
        n: Pair,
        x: Pair,
        mean: Pair,
        var: Pair,
    ) -> None:
        self.experiment.append(at[0])
        self.branch.append(at[1])
        self.metric.append(at[2])
        self.event.append(at[3])
        self.kind.append(kind)
        self.lower_is_better.append(lower_is_better)
        for (a, b), pair in ((self.n_a, self.n_b), n), ((self.x_a, self.x_b), x), (
            (self.mean_a, self.mean_b), mean), ((self.var_a, self.var_b), var):  # fmt: skip
            a.append(pair[0])
            b.append(pair[1])


Pair = tuple[float, float]
_NO_PAIR: Pair = (math.nan, math.nan)


def analyse(
    view: View,
    configs: Mapping[str, ExperimentConfig],
    experiments: Iterable[str] | None = None,
    controls: Mapping[str, str] | None = None,
) -> dict[str, ExperimentAnalysis]:
    """Analyse the named experiments (default all); `controls` overrides the control."""
    names = list(view.experiments if experiments is None else experiments)
    names = [e for e in names if e in view.experiments]
    setup: list[tuple[str, str, ExperimentConfig]] = []
    ratios: list[SampleRatio | None] = []
    durations: list[float] = []
    table = _Table()
    c = view.branch
    for index, experiment in enumerate(names):
        config = configs.get(experiment, ExperimentConfig())
        rows = view.experiments[experiment]
        control = (controls or {}).get(experiment) or control_of(rows, config)
        setup.append((experiment, control, config))
        ratios.append(_srm(view, experiment, config))
        durations.append(_active_seconds(view, rows))
        if control not in rows:
            continue
        events = _event_stats(view, experiment)
        a = rows[control]
        for branch, b in rows.items():
            if branch != control:
                _add_rows(
                    table, index, branch, c, a, b, events.get(control, {}), events.get(branch, {})
                )
    detected = [bool(r is not None and r.detected) for r in ratios]
    # NaN stands for "cannot be computed yet" here and is left out of every output:
    # numpy's warnings about it would only litter the operator's log
    with np.errstate(divide="ignore", invalid="ignore"):
        results = _compute(table, [cfg for _, _, cfg in setup], detected, durations)
    return {
        experiment: ExperimentAnalysis(
            experiment=experiment,
            control=control,
            config=config,
            srm=ratios[i],
            comparisons=MappingProxyType(results.get(i, {})),
            latency=MappingProxyType(_latency(view, experiment, control)),
            percentiles=MappingProxyType(_percentiles(view, experiment)),
            progress=_progress(view, experiment, config),
            winner=winner(results.get(i, {}), config),
        )
        for i, (experiment, control, config) in enumerate(setup)
    }


def _active_seconds(view: View, rows: Mapping[str, int]) -> float:
    """First to latest query of the experiment: the span its sample rate is measured over."""
    c = view.branch
    seen = [r for r in rows.values() if c.n[r]]
    if not seen:
        return 0.0
    return float(max(c.last[seen]) - min(c.first[seen]))


def _progress(view: View, experiment: str, config: ExperimentConfig) -> float:
    rows = view.experiments[experiment]
    smallest = min((int(view.branch.n[r]) for r in rows.values()), default=0)
    return min(1.0, smallest / config.min_sample_size)


def winner(
    comparisons: Mapping[str, Sequence[MetricComparison]], config: ExperimentConfig
) -> str | None:
    """The treatment whose verdict is "better" on the primary metric; with several, the
    one with the largest gain in the metric's good direction (then the first name)."""
    metric, event = config.primary()
    better = [
        (-(m.difference if not m.lower_is_better else -m.difference), branch)
        for branch, found in comparisons.items()
        for m in found
        if m.metric == metric and m.event == event and m.verdict == 1
    ]
    return min(better)[1] if better else None


def _event_stats(view: View, experiment: str) -> dict[str, dict[str, tuple[int, float, float]]]:
    """branch -> event -> (count, mean, variance)."""
    out: dict[str, dict[str, tuple[int, float, float]]] = {}
    e = view.event
    for row in view.experiment_events.get(experiment, ()):
        key = view.event_keys[row]
        assert key is not None
        count = int(e.count[row])
        out.setdefault(key[1], {})[key[2]] = (
            count,
            float(e.mean[row]),
            sample_variance(count, float(e.m2[row])),
        )
    return out


def _add_rows(
    table: _Table,
    index: int,
    branch: str,
    c: BranchColumns,
    a: int,
    b: int,
    events_a: Mapping[str, tuple[int, float, float]],
    events_b: Mapping[str, tuple[int, float, float]],
) -> None:
    n_a, n_b = int(c.n[a]), int(c.n[b])
    n = (n_a, n_b)
    if n_a and n_b:
        table.counts((index, branch, "success_ratio", ""), "prop", n, (int(c.ok[a]), int(c.ok[b])))
    if n_a >= 2 and n_b >= 2:
        table.means(
            (index, branch, "latency_mean", ""),
            True,
            n,
            (float(c.mean[a]), float(c.mean[b])),
            (sample_variance(n_a, float(c.m2[a])), sample_variance(n_b, float(c.m2[b]))),
        )
    for event in sorted(set(events_a) | set(events_b)):
        count_a, mean_a, var_a = events_a.get(event, (0, 0.0, 0.0))
        count_b, mean_b, var_b = events_b.get(event, (0, 0.0, 0.0))
        if n_a and n_b:
            kind = "prop" if count_a <= n_a and count_b <= n_b else "rate"
            table.counts((index, branch, "event_rate", event), kind, n, (count_a, count_b))
        if count_a >= 2 and count_b >= 2:
            table.means(
                (index, branch, "event_mean", event),
                False,
                (count_a, count_b),
                (mean_a, mean_b),
                (var_a, var_b),
            )


def _compute(
    table: _Table,
    configs: list[ExperimentConfig],
    srm_detected: Sequence[bool],
    durations: Sequence[float],
) -> dict[int, dict[str, tuple[MetricComparison, ...]]]:
    if not table.experiment:
        return {}
    exp = np.array(table.experiment)
    kind = np.array(table.kind)
    lower = np.array(table.lower_is_better)
    n_a, n_b = np.array(table.n_a, dtype=float), np.array(table.n_b, dtype=float)
    x_a, x_b = np.array(table.x_a, dtype=float), np.array(table.x_b, dtype=float)
    mean_a, mean_b = np.array(table.mean_a), np.array(table.mean_b)
    var_a, var_b = np.array(table.var_a), np.array(table.var_b)
    alpha = np.array([configs[i].alpha for i in table.experiment])
    tuning = np.array([configs[i].sequential_tuning for i in table.experiment])
    min_size = np.array([configs[i].min_sample_size for i in table.experiment])

    size = len(exp)
    difference, variance = np.zeros(size), np.zeros(size)
    fixed_p, fixed_lo, fixed_hi = np.ones(size), np.full(size, np.nan), np.full(size, np.nan)
    better = np.full(size, np.nan)
    # per-observation means and variances, for the relative difference
    unit_mean_a, unit_mean_b = mean_a.copy(), mean_b.copy()
    unit_var_a, unit_var_b = var_a.copy(), var_b.copy()
    for name, test in (("prop", st.two_proportions), ("rate", st.two_rates)):
        m = kind == name
        if m.any():
            est, fixed = test(n_a[m], x_a[m], n_b[m], x_b[m], alpha[m])
            difference[m], variance[m] = est.difference, est.variance
            fixed_p[m], fixed_lo[m], fixed_hi[m] = fixed.p_value, fixed.ci_lower, fixed.ci_upper
            unit_mean_a[m], unit_mean_b[m] = x_a[m] / n_a[m], x_b[m] / n_b[m]
            if name == "prop":
                p_a, p_b = unit_mean_a[m], unit_mean_b[m]
                unit_var_a[m], unit_var_b[m] = p_a * (1 - p_a), p_b * (1 - p_b)
                better[m] = st.beta_probability_better(n_a[m], x_a[m], n_b[m], x_b[m])
            else:
                unit_var_a[m], unit_var_b[m] = unit_mean_a[m], unit_mean_b[m]
                better[m] = st.probability_better(est, lower[m])
    m = kind == "mean"
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
    adjusted = np.ones(size)
    for index in np.unique(exp):
        group = exp == index
        adjusted[group] = _adjust(seq.p_value[group], configs[index].correction)
    significant = (adjusted < alpha) & (n_a >= min_size) & (n_b >= min_size)
    trusted = ~np.array([srm_detected[i] for i in table.experiment], dtype=bool)
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
    mde = _minimum_detectable_effect(se, n_a + n_b, alpha, tuning)
    growth = _growth_to_detect(difference, se, n_a + n_b, alpha, tuning)
    span = np.array([durations[i] for i in table.experiment])
    eta = np.where(span > 0, (growth - 1.0) * span, np.nan)

    # columns as Python lists (NaN as None where a figure may be missing): indexing
    # numpy arrays element by element costs more than the statistics themselves
    def plain(values: Any) -> list[Any]:
        return [float(v) for v in np.asarray(values, dtype=float).tolist()]

    def optional(values: Any) -> list[float | None]:
        return [v if math.isfinite(v) else None for v in plain(values)]

    named: tuple[tuple[str, list[Any]], ...] = (
        ("metric", table.metric),
        ("event", table.event),
        ("lower_is_better", lower.tolist()),
        ("sample_size_a", n_a.astype(int).tolist()),
        ("sample_size_b", n_b.astype(int).tolist()),
        ("value_a", plain(unit_mean_a)),
        ("value_b", plain(unit_mean_b)),
        ("difference", plain(difference)),
        ("relative_difference", optional(relative)),
        ("ci_lower", optional(seq.ci_lower)),
        ("ci_upper", optional(seq.ci_upper)),
        ("p_value", plain(seq.p_value)),
        ("fixed_horizon_p_value", plain(fixed_p)),
        ("fixed_horizon_ci_lower", optional(fixed_lo)),
        ("fixed_horizon_ci_upper", optional(fixed_hi)),
        ("adjusted_p_value", plain(adjusted)),
        ("probability_better", optional(better)),
        ("significant", significant.tolist()),
        ("verdict", verdict.tolist()),
        ("relative_ci_lower", optional(rel_lo)),
        ("relative_ci_upper", optional(rel_hi)),
        ("mde", optional(mde)),
        ("eta_seconds", optional(eta)),
    )
    # built positionally (fast): the names above must be the dataclass's fields, in order
    assert tuple(name for name, _ in named) == _FIELDS
    columns = zip(table.experiment, table.branch, *(c for _, c in named), strict=True)
    out: dict[int, dict[str, list[MetricComparison]]] = {}
    for experiment, branch, *values in columns:
        out.setdefault(experiment, {}).setdefault(branch, []).append(MetricComparison(*values))
    return {e: {b: tuple(ms) for b, ms in by.items()} for e, by in out.items()}


def _srm(view: View, experiment: str, config: ExperimentConfig) -> SampleRatio | None:
    rows = view.experiments[experiment]
    if config.allocation is not None:
        branches = tuple(config.allocation)
        weights = np.array([config.allocation[b] for b in branches])
    else:
        branches = tuple(rows)
        weights = np.ones(len(branches))
    counts = np.array([view.branch.n[rows[b]] if b in rows else 0 for b in branches], dtype=float)
    check = _sample_ratio(counts, weights)
    if check is None:
        return None
    detected = check.p_value < SRM_THRESHOLD and check.min_expected >= SRM_MIN_EXPECTED
    return SampleRatio(check.p_value, check.statistic, detected, branches)


def _latency(view: View, experiment: str, control: str) -> dict[str, LatencyDistribution]:
    rows = view.experiments[experiment]
    c = view.branch
    if control not in rows or not c.n[rows[control]]:
        return {}
    treatments = [b for b, r in rows.items() if b != control and c.n[r]]
    if not treatments:
        return {}
    a = np.repeat(c.buckets[[rows[control]]], len(treatments), axis=0)
    b = c.buckets[[rows[t] for t in treatments]]
    test = st.mann_whitney(a, b)
    return {
        t: LatencyDistribution(1.0 - float(test.auc[i]), float(test.u[i]), float(test.p_value[i]))
        for i, t in enumerate(treatments)
        if np.isfinite(test.p_value[i])
    }


def _percentiles(view: View, experiment: str) -> dict[str, Mapping[str, float]]:
    rows = view.experiments[experiment]
    c = view.branch
    seen = [(b, r) for b, r in rows.items() if c.n[r]]
    if not seen:
        return {}
    index = [r for _, r in seen]
    values = st.bucket_percentiles(
        c.buckets[index],
        np.array(view.bounds),
        c.lo[index],
        c.hi[index],
        np.array([q for _, q in PERCENTILES]),
    )
    return {
        branch: MappingProxyType(
            {name: float(values[i, j]) for j, (name, _) in enumerate(PERCENTILES)}
        )
        for i, (branch, _) in enumerate(seen)
    }


from exporter.outputs import catalog as cat
from exporter.outputs.exposition import Writer, escape


def render_analysis(analyses: Mapping[str, ExperimentAnalysis]) -> str:
    """The comparison, SRM and percentile families. Rendered once per recomputation
    and reused by every scrape until the next one."""
    labels: list[str] = []
    comparisons: list[MetricComparison] = []
    latency: list[tuple[str, LatencyDistribution]] = []
    srm: list[tuple[str, SampleRatio]] = []
    percentiles: list[str] = []
    progress: list[str] = []
    winners: list[str] = []
    for name, analysis in analyses.items():
        exp, control = escape(name), escape(analysis.control)
        progress.append(
            f'abtest_experiment_progress_ratio{{experiment="{exp}"}} {analysis.progress!r}\n'
        )
        if analysis.winner is not None:
            branch = escape(analysis.winner)
            winners.append(f'abtest_experiment_winner{{experiment="{exp}",branch="{branch}"}} 1\n')
        if analysis.srm is not None:
            srm.append((f'experiment="{exp}"', analysis.srm))
        for branch, by_name in analysis.percentiles.items():
            prefix = f'experiment="{exp}",branch="{escape(branch)}",percentile='
            percentiles.extend(
                f'abtest_branch_latency_percentile_seconds{{{prefix}"{key[1:]}"}} {v!r}\n'
                for key, v in by_name.items()
            )
        for branch, found in analysis.comparisons.items():
            base = f'experiment="{exp}",control="{control}",branch="{escape(branch)}"'
            labels.extend(f'{base},metric="{m.metric}",event="{escape(m.event)}"' for m in found)
            comparisons.extend(found)
            if branch in analysis.latency:
                label = f'{base},metric="latency_distribution",event=""'
                latency.append((label, analysis.latency[branch]))
    out = Writer(openmetrics=False)
    if progress:
        out.declare(cat.PROGRESS)
        out.parts.append("".join(progress))
    if winners:
        out.declare(cat.WINNER)
        out.parts.append("".join(winners))
    if srm:
        out.declare(cat.SRM_P_VALUE)
        out.lines("abtest_srm_p_value", (s for s, _ in srm), (repr(r.p_value) for _, r in srm))
        out.declare(cat.SRM_DETECTED)
        out.lines(
            "abtest_srm_detected", (s for s, _ in srm), ("1" if r.detected else "0" for _, r in srm)
        )
    if percentiles:
        out.declare(cat.PERCENTILE)
        out.parts.append("".join(percentiles))
    extra: dict[str, list[tuple[str, float]]] = {
        "probability_better": [(label, d.probability_faster) for label, d in latency],
        "fixed_horizon_p_value": [(label, d.fixed_horizon_p_value) for label, d in latency],
    }
    for (gauge, _), declared in zip(cat.COMPARISON_GAUGES, cat.COMPARISONS, strict=True):
        name = declared.name
        values: list[Any] = [getattr(m, gauge) for m in comparisons]
        if gauge == "significant":
            values = [int(v) for v in values]
        lines = [
            f"{name}{{{label}}} {value!r}\n"
            for label, value in zip(labels, values, strict=True)
            if value is not None
        ]
        lines.extend(f"{name}{{{label}}} {value!r}\n" for label, value in extra.get(gauge, ()))
        if lines:
            out.declare(declared)
            out.parts.append("".join(lines))
    return "".join(out.parts)


def _adjust(p: Any, method: str) -> Any:
    """Holm (family-wise) or Benjamini-Hochberg (false discovery rate) adjusted p-values."""
    m = len(p)
    if m == 0 or method == "none":
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate(ranked * (m - np.arange(m)))
    elif method == "bh":
        adjusted = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    else:
        raise ValueError(f"unknown correction {method!r}")
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def _sample_ratio(counts: Any, weights: Any) -> st.RatioCheck | None:
    """Chi-square goodness of fit of branch counts to the expected allocation."""
    total = float(counts.sum())
    if len(counts) < 2 or total <= 0:
        return None
    expected = total * weights / weights.sum()
    statistic = float(((counts - expected) ** 2 / expected).sum())
    p = float(st.special.chdtrc(len(counts) - 1, statistic))
    return st.RatioCheck(statistic, p, float(expected.min()))


def _sequential_multiplier(total_n: Any, alpha: Any, tuning: Any) -> Any:
    """The confidence sequence's half-width in standard errors: half-width / sqrt(V).
    It depends on N, alpha and N* only (the fixed-horizon analogue is z_{1-alpha/2})."""
    n = np.asarray(total_n, dtype=np.float64)
    rho2 = st.sequential_rho(alpha, tuning) ** 2
    scale = n * rho2 + 1.0
    return np.asarray(np.sqrt(2.0 * scale / (n * rho2) * np.log(np.sqrt(scale) / alpha)))


def _minimum_detectable_effect(
    se: Any, total_n: Any, alpha: Any, tuning: Any, power: float = 0.8
) -> Any:
    """Smallest true difference the always-valid test detects with `power` at the current
    sample: (sequential multiplier + z_power) * SE. NaN where SE is not positive."""
    width = _sequential_multiplier(total_n, alpha, tuning) + st.special.ndtri(power)
    return np.where(se > 0, width * np.where(se > 0, se, 1.0), np.nan)


def _growth_to_detect(
    effect: Any,
    se: Any,
    total_n: Any,
    alpha: Any,
    tuning: Any,
    power: float = 0.8,
    max_growth: float = 1e9,
) -> Any:
    """The factor k by which the sample must grow (same split, same per-observation
    variance, so SE shrinks as 1/sqrt(k)) until the minimum detectable effect reaches
    |effect|: 1 when it already has, NaN when it cannot be computed or needs more than
    `max_growth`. Bisection in log k (the MDE falls monotonically with k)."""
    target = np.abs(effect)
    ok = (target > 0) & (se > 0) & np.isfinite(target)
    safe_se = np.where(ok, se, 1.0)

    def mde(k: Any) -> Any:
        return _minimum_detectable_effect(safe_se / np.sqrt(k), total_n * k, alpha, tuning, power)

    lo, hi = np.zeros(np.shape(target)), np.full(np.shape(target), np.log(max_growth))
    done = mde(np.ones(np.shape(target))) <= target
    reachable = mde(np.exp(hi)) <= target
    for _ in range(60):
        mid = (lo + hi) / 2.0
        above = mde(np.exp(mid)) > target
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    growth = np.where(done, 1.0, np.exp(hi))
    return np.where(ok & (done | reachable), growth, np.nan)
