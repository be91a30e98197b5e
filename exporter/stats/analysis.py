"""Every treatment against its control, for every metric, from one snapshot.

The comparisons of all experiments are laid out as one long table (a row per
experiment x treatment x metric, table.py) so the statistics run vectorised,
once (columns.py); the experiment-level figures (SRM, percentiles, latency
distributions) are vectorised the same way. The result stays columnar (the
exposition renders it directly); the immutable objects of the API are made
for one experiment when a reader asks for it.
"""

from __future__ import annotations

import math
from collections.abc import ItemsView, Iterable, Iterator, Mapping, Sequence, ValuesView
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..core.aggregate import View
from ..core.experiment_config import ExperimentConfig
from ..core.results import control_of
from . import inference as st
from .columns import OPTIONAL, Comparisons, compute
from .table import METRICS, Pairs, build

Array = npt.NDArray[Any]

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


@dataclass(frozen=True, slots=True)
class LatencyColumns:
    """Mann-Whitney per pair of the table (those it could be computed for)."""

    pair: Array  # index into the table's pairs, ascending
    probability_faster: Array
    u_statistic: Array
    fixed_horizon_p_value: Array


@dataclass(frozen=True, slots=True)
class PercentileColumns:
    """p50/p95/p99 (columns, as PERCENTILES) of every branch with queries."""

    experiment: Array  # ascending
    branch: tuple[str, ...]
    values: Array


@dataclass(frozen=True, slots=True)
class Analysis:
    """The whole analysis as columns: one entry per experiment in the tuples, the
    comparisons, latency tests and percentiles as arrays. `experiment(i)` makes the
    objects of one experiment."""

    experiments: tuple[str, ...]
    controls: tuple[str, ...]
    configs: tuple[ExperimentConfig, ...]
    srm: tuple[SampleRatio | None, ...]
    progress: tuple[float, ...]
    winners: tuple[str | None, ...]
    comparisons: Comparisons
    latency: LatencyColumns
    percentiles: PercentileColumns

    def experiment(
        self, index: int, comparisons: Mapping[str, tuple[MetricComparison, ...]] | None = None
    ) -> ExperimentAnalysis:
        """The objects of one experiment; `comparisons` if they were made already."""
        if comparisons is None:
            lo, hi = np.searchsorted(self.comparisons.table.experiment, [index, index + 1])
            comparisons = _comparisons(self.comparisons, int(lo), int(hi)).get(index, {})
        return ExperimentAnalysis(
            experiment=self.experiments[index],
            control=self.controls[index],
            config=self.configs[index],
            srm=self.srm[index],
            comparisons=MappingProxyType(dict(comparisons)),
            latency=MappingProxyType(_latency_of(self, index)),
            percentiles=MappingProxyType(_percentiles_of(self.percentiles, index)),
            progress=self.progress[index],
            winner=self.winners[index],
        )


class _MadeOnDemand(Mapping[str, ExperimentAnalysis]):
    """A mapping whose values are made on first access; going through them all (items,
    values: the OTLP push) makes the missing ones in one pass first."""

    def items(self) -> ItemsView[str, ExperimentAnalysis]:
        self._make_all()
        return super().items()

    def values(self) -> ValuesView[ExperimentAnalysis]:
        self._make_all()
        return super().values()

    def _make_all(self) -> None:
        raise NotImplementedError


class Analyses(_MadeOnDemand):
    """Experiment name -> its analysis, made on first access (the columns are what the
    exposition uses; most experiments are never asked for one by one)."""

    def __init__(self, columns: Analysis) -> None:
        self.columns = columns
        self._index = {name: i for i, name in enumerate(columns.experiments)}
        self._made: dict[str, ExperimentAnalysis] = {}

    def __getitem__(self, name: str) -> ExperimentAnalysis:
        found = self._made.get(name)
        if found is None:
            found = self._made[name] = self.columns.experiment(self._index[name])
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns.experiments)

    def __len__(self) -> int:
        return len(self.columns.experiments)

    def _make_all(self) -> None:
        if len(self._made) == len(self):
            return
        columns = self.columns
        made = _comparisons(columns.comparisons, 0, len(columns.comparisons))
        for i, name in enumerate(columns.experiments):
            if name not in self._made:
                self._made[name] = columns.experiment(i, made.get(i, {}))


@dataclass(slots=True)
class Held:
    """One experiment's place in the Analysis it was last computed in, and its objects
    once made (kept across recomputations for as long as the experiment is unchanged)."""

    analysis: Analysis
    index: int
    made: ExperimentAnalysis | None = None


class StitchedAnalyses(_MadeOnDemand):
    """Experiment name -> its analysis, each from the Analysis it was last computed in
    (an incremental recompute analyses only the changed experiments); made on first
    access like `Analyses`, so the two answer the same for the same data."""

    def __init__(self, held: Mapping[str, Held]) -> None:
        self._held = held

    def __getitem__(self, name: str) -> ExperimentAnalysis:
        held = self._held[name]
        if held.made is None:
            held.made = held.analysis.experiment(held.index)
        return held.made

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)

    def _make_all(self) -> None:
        """The missing ones, one pass over the rows they span in each Analysis."""
        missing: dict[int, list[Held]] = {}
        for held in self._held.values():
            if held.made is None:
                missing.setdefault(id(held.analysis), []).append(held)
        for group in missing.values():
            columns = group[0].analysis
            indices = [h.index for h in group]
            lo, hi = np.searchsorted(
                columns.comparisons.table.experiment, [min(indices), max(indices) + 1]
            ).tolist()
            made = _comparisons(columns.comparisons, lo, hi)
            for held in group:
                held.made = columns.experiment(held.index, made.get(held.index, {}))


def analyse(
    view: View,
    configs: Mapping[str, ExperimentConfig],
    experiments: Iterable[str] | None = None,
    controls: Mapping[str, str] | None = None,
) -> Analyses:
    """Analyse the named experiments (default all); `controls` overrides the control."""
    return Analyses(analyse_columns(view, configs, experiments, controls))


def analyse_columns(
    view: View,
    configs: Mapping[str, ExperimentConfig],
    experiments: Iterable[str] | None = None,
    controls: Mapping[str, str] | None = None,
) -> Analysis:
    names = list(view.experiments if experiments is None else experiments)
    names = [e for e in names if e in view.experiments]
    setup = [configs.get(e, ExperimentConfig()) for e in names]
    chosen = [
        (controls or {}).get(e) or control_of(view.experiments[e], config)
        for e, config in zip(names, setup, strict=True)
    ]
    n = view.branch.n.tolist()
    ratios = _srm(view, names, setup, n)
    table = build(view, names, chosen)
    results = compute(
        table,
        setup,
        [bool(r is not None and r.detected) for r in ratios],
        _active_seconds(view, names, n),
    )
    progress = [
        min(1.0, min((n[r] for r in view.experiments[e].values()), default=0) / c.min_sample_size)
        for e, c in zip(names, setup, strict=True)
    ]
    return Analysis(
        tuple(names), tuple(chosen), tuple(setup), tuple(ratios), tuple(progress),
        _winners(results, setup), results, _latency(view, table.pairs), _percentiles(view, names),
    )  # fmt: skip


def _active_seconds(view: View, names: Sequence[str], n: list[int]) -> list[float]:
    """First to latest query of each experiment: the span its sample rate is measured over."""
    first, last = view.branch.first.tolist(), view.branch.last.tolist()
    out = []
    for name in names:
        seen = [r for r in view.experiments[name].values() if n[r]]
        out.append(float(max(last[r] for r in seen) - min(first[r] for r in seen)) if seen
                   else 0.0)  # fmt: skip
    return out


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


def _winners(results: Comparisons, configs: Sequence[ExperimentConfig]) -> tuple[str | None, ...]:
    """`winner` of every experiment, looking only at the rows whose verdict is +1."""
    table = results.table
    better: dict[int, list[tuple[float, str]]] = {}
    primary = [c.primary() for c in configs]
    rows = np.flatnonzero(results.verdict == 1).tolist()
    experiment, metric = table.experiment.tolist(), table.metric.tolist()
    event = table.event.tolist()
    difference, lower = results.difference.tolist(), results.lower_is_better.tolist()
    for r in rows:
        i = experiment[r]
        name = table.events[event[r]] if event[r] >= 0 else ""
        if (METRICS[metric[r]], name) == primary[i]:
            d = difference[r]
            gain = (-(d if not lower[r] else -d), table.pairs.branch[table.pair[r]])
            better.setdefault(i, []).append(gain)
    return tuple(min(better[i])[1] if i in better else None for i in range(len(configs)))


def _comparisons(
    results: Comparisons, lo: int, hi: int
) -> dict[int, dict[str, tuple[MetricComparison, ...]]]:
    """The objects of rows lo..hi by experiment and treatment, every value as the columns
    hold it (NaN as None where the field is optional)."""
    table = results.table

    def column(name: str) -> list[Any]:
        if name == "metric":
            return [METRICS[m] for m in table.metric[lo:hi].tolist()]
        if name == "event":
            return [table.events[e] if e >= 0 else "" for e in table.event[lo:hi].tolist()]
        values: list[Any] = getattr(results, name)[lo:hi].tolist()
        if name in OPTIONAL:
            return [v if math.isfinite(v) else None for v in values]
        return values

    columns = [column(name) for name in _FIELDS]
    experiments = table.experiment[lo:hi].tolist()
    branches = [table.pairs.branch[p] for p in table.pair[lo:hi].tolist()]
    out: dict[int, dict[str, list[MetricComparison]]] = {}
    for experiment, branch, *values in zip(experiments, branches, *columns, strict=True):
        out.setdefault(experiment, {}).setdefault(branch, []).append(MetricComparison(*values))
    return {e: {b: tuple(ms) for b, ms in by.items()} for e, by in out.items()}


def _srm(
    view: View, names: Sequence[str], configs: Sequence[ExperimentConfig], n: list[int]
) -> list[SampleRatio | None]:
    """The chi-square check of every experiment, those with as many branches together."""
    out: list[SampleRatio | None] = [None] * len(names)
    groups: dict[int, list[tuple[int, tuple[str, ...], list[float], list[float]]]] = {}
    for i, (name, config) in enumerate(zip(names, configs, strict=True)):
        rows = view.experiments[name]
        if config.allocation is not None:
            branches = tuple(config.allocation)
            weights = [float(config.allocation[b]) for b in branches]
        else:
            branches = tuple(rows)
            weights = [1.0] * len(branches)
        counts = [float(n[rows[b]]) if b in rows else 0.0 for b in branches]
        if len(counts) >= 2 and sum(counts) > 0:
            groups.setdefault(len(counts), []).append((i, branches, counts, weights))
    for found in groups.values():
        statistic, p, expected = st.sample_ratio_rows(
            np.array([c for _, _, c, _ in found]), np.array([w for _, _, _, w in found])
        )
        rows_ = zip(found, statistic.tolist(), p.tolist(), expected.tolist(), strict=True)
        for (i, branches, _, _), chi2, p_value, smallest in rows_:
            detected = p_value < SRM_THRESHOLD and smallest >= SRM_MIN_EXPECTED
            out[i] = SampleRatio(p_value, chi2, detected, branches)
    return out


def _latency(view: View, pairs: Pairs) -> LatencyColumns:
    """Mann-Whitney of every pair whose arms both have queries, in one call."""
    c = view.branch
    ok = np.flatnonzero((c.n[pairs.control_row] > 0) & (c.n[pairs.treatment_row] > 0))
    test = st.mann_whitney(c.buckets[pairs.control_row[ok]], c.buckets[pairs.treatment_row[ok]])
    kept = np.isfinite(test.p_value)
    return LatencyColumns(ok[kept], 1.0 - test.auc[kept], test.u[kept], test.p_value[kept])


def _latency_of(analysis: Analysis, index: int) -> dict[str, LatencyDistribution]:
    pairs = analysis.comparisons.table.pairs
    columns = analysis.latency
    of = pairs.experiment[columns.pair]
    lo, hi = np.searchsorted(of, [index, index + 1]).tolist()
    return {
        pairs.branch[p]: LatencyDistribution(faster, u, fixed)
        for p, faster, u, fixed in zip(
            columns.pair[lo:hi].tolist(),
            columns.probability_faster[lo:hi].tolist(),
            columns.u_statistic[lo:hi].tolist(),
            columns.fixed_horizon_p_value[lo:hi].tolist(),
            strict=True,
        )
    }


def _percentiles(view: View, names: Sequence[str]) -> PercentileColumns:
    c = view.branch
    n = c.n.tolist()
    experiment: list[int] = []
    branch: list[str] = []
    index: list[int] = []
    for i, name in enumerate(names):
        for b, r in view.experiments[name].items():
            if n[r]:
                experiment.append(i)
                branch.append(b)
                index.append(r)
    values = st.bucket_percentiles(
        c.buckets[index],
        np.array(view.bounds),
        c.lo[index],
        c.hi[index],
        np.array([q for _, q in PERCENTILES]),
    )
    return PercentileColumns(np.array(experiment, dtype=np.int64), tuple(branch), values)


def _percentiles_of(columns: PercentileColumns, index: int) -> dict[str, Mapping[str, float]]:
    lo, hi = np.searchsorted(columns.experiment, [index, index + 1]).tolist()
    return {
        branch: MappingProxyType(dict(zip((name for name, _ in PERCENTILES), row, strict=True)))
        for branch, row in zip(columns.branch[lo:hi], columns.values[lo:hi].tolist(), strict=True)
    }
