"""Rendering a snapshot as Prometheus text (0.0.4) or OpenMetrics 1.0.

Written by hand rather than through prometheus_client: the aggregate is
already columnar, so each family is one pass over numpy columns turned into
strings, several times faster than building client objects per scrape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..core.aggregate import escape
from ..core.experiment_config import ExperimentConfig
from ..core.families import Family, Sample
from ..core.results import summarise
from ..state.abmetrics import Snapshot
from ..stats.analysis import ExperimentAnalysis, LatencyDistribution, MetricComparison, SampleRatio

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    return repr(float(value))


class Writer:
    """Accumulates families; knows the two formats' small differences."""

    def __init__(self, openmetrics: bool) -> None:
        self.openmetrics = openmetrics
        self.parts: list[str] = []

    def header(self, name: str, kind: str, help_text: str) -> None:
        if self.openmetrics and kind == "counter":
            name = name.removesuffix("_total")
        self.parts.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")

    def lines(self, name: str, labels: Iterable[str], values: Iterable[str]) -> None:
        """`labels` are pre-rendered `k="v",...` strings (may be empty)."""
        self.parts.append(
            "".join(
                f"{name}{{{label}}} {value}\n" if label else f"{name} {value}\n"
                for label, value in zip(labels, values, strict=True)
            )
        )

    def family(self, family: Family) -> None:
        if not family.samples:
            return
        self.header(family.name, family.kind, family.help)
        self.lines(
            family.name,
            (",".join(f'{k}="{escape(v)}"' for k, v in s.labels) for s in family.samples),
            (format_value(s.value) for s in family.samples),
        )

    def finish(self) -> str:
        if self.openmetrics:
            self.parts.append("# EOF\n")
        return "".join(self.parts)


def _floats(values: Iterable[float]) -> list[str]:
    """Values known to be finite (inf only ever appears as a bucket bound)."""
    return list(map(repr, values))


def render(
    snapshot: Snapshot,
    extra: Sequence[Family] = (),
    openmetrics: bool = False,
    analysis: str = "",
    tail: str = "",
) -> str:
    """Every family of the design, from one consistent snapshot; `analysis` is the
    pre-rendered comparison block (see render_analysis), the same in both formats;
    `tail` is families already rendered in the asked format by another writer (the
    process metrics, see process.py)."""
    out = Writer(openmetrics)
    _branch_families(out, snapshot)
    _event_families(out, snapshot)
    _experiment_families(out, snapshot)
    out.parts.append(analysis)
    for family in extra:
        out.family(family)
    out.parts.append(tail)
    return out.finish()


def _branch_families(out: Writer, snapshot: Snapshot) -> None:
    view = snapshot.view
    rows = [r for r, key in enumerate(view.branch_keys) if key is not None]
    if not rows:
        return
    labels = view.branch_labels
    c = view.branch
    n = c["n"][rows]
    n_list = n.tolist()
    seen = [r for r, count in zip(rows, n_list, strict=True) if count]
    seen_labels = [labels[r] for r in seen]
    row_labels = [labels[r] for r in rows]

    out.header("abtest_queries_total", "counter", "Queries recorded per branch.")
    out.lines("abtest_queries_total", row_labels, map(str, n_list))
    out.header("abtest_query_failures_total", "counter", "Failed queries per branch.")
    out.lines("abtest_query_failures_total", row_labels, map(str, (n - c["ok"][rows]).tolist()))

    name = "abtest_query_duration_seconds"
    out.header(name, "histogram", "Query latency per branch.")
    bounds = [format_value(b) for b in (*view.bounds, math.inf)]
    cumulative = np.cumsum(c["buckets"][rows], axis=1).tolist()
    sums = _floats((c["total"][rows] / 1000.0).tolist())
    parts: list[str] = []
    for label, counts, total, count in zip(row_labels, cumulative, sums, n_list, strict=True):
        parts.extend(
            f'{name}_bucket{{{label},le="{le}"}} {v}\n'
            for le, v in zip(bounds, counts, strict=True)
        )
        parts.append(f"{name}_count{{{label}}} {count}\n{name}_sum{{{label}}} {total}\n")
    out.parts.append("".join(parts))

    if not seen:
        return
    ok = c["ok"][seen]
    count = c["n"][seen]
    gauges = (
        ("abtest_branch_success_ratio", "Share of queries that succeeded (0..1).", ok / count),
        (
            "abtest_branch_latency_mean_seconds",
            "Mean query latency.",
            c["total"][seen] / count / 1000.0,
        ),
        ("abtest_branch_latency_min_seconds", "Fastest query latency.", c["lo"][seen] / 1000.0),
        ("abtest_branch_latency_max_seconds", "Slowest query latency.", c["hi"][seen] / 1000.0),
        (
            "abtest_branch_first_query_timestamp_seconds",
            "Unix time of the branch's first query.",
            c["first"][seen],
        ),
        (
            "abtest_branch_last_query_timestamp_seconds",
            "Unix time of the branch's latest query.",
            c["last"][seen],
        ),
    )
    for gauge, help_text, values in gauges:
        out.header(gauge, "gauge", help_text)
        out.lines(gauge, seen_labels, _floats(values.tolist()))


def _event_families(out: Writer, snapshot: Snapshot) -> None:
    view = snapshot.view
    rows = [r for r, key in enumerate(view.event_keys) if key is not None]
    if not rows:
        return
    labels = [view.event_labels[r] for r in rows]
    c = view.event
    count = c["count"][rows]
    counts, sums = list(map(str, count.tolist())), _floats(c["total"][rows].tolist())
    if out.openmetrics:
        # OpenMetrics forbids a negative summary _sum, and event values may be negative
        # (refunds): there the two series are families of their own, same sample names.
        out.header("abtest_event_value_count", "unknown", "Custom events per branch and event.")
        out.lines("abtest_event_value_count", labels, counts)
        out.header("abtest_event_value_sum", "unknown", "Sum of custom event values.")
        out.lines("abtest_event_value_sum", labels, sums)
    else:
        out.header("abtest_event_value", "summary", "Custom event values per branch and event.")
        out.parts.append(
            "".join(
                f"abtest_event_value_count{{{label}}} {n}\nabtest_event_value_sum{{{label}}} {t}\n"
                for label, n, t in zip(labels, counts, sums, strict=True)
            )
        )
    out.header("abtest_event_mean", "gauge", "Mean value of a custom event.")
    out.lines("abtest_event_mean", labels, _floats(c["mean"][rows].tolist()))


def _experiment_families(out: Writer, snapshot: Snapshot) -> None:
    info: list[Sample] = []
    start: list[Sample] = []
    last: list[Sample] = []
    duration: list[Sample] = []
    best: list[Sample] = []
    for experiment in snapshot.view.experiments:
        config = snapshot.configs.get(experiment, ExperimentConfig())
        summary = summarise(snapshot.view, experiment, config, snapshot.taken_at)
        if summary is None:
            continue
        exp = (("experiment", experiment),)
        info.append(Sample((*exp, ("control", summary.control)), 1))
        if summary.started_at is not None:
            start.append(Sample(exp, summary.started_at))
            duration.append(Sample(exp, summary.duration_seconds or 0.0))
        if summary.last_activity is not None:
            last.append(Sample(exp, summary.last_activity))
        if summary.best_branch is not None:
            best.append(Sample((*exp, ("branch", summary.best_branch)), 1))
    for family in (
        Family(
            "abtest_experiment_info", "gauge", "Experiment and its control branch (always 1).", info
        ),
        Family(
            "abtest_experiment_start_timestamp_seconds",
            "gauge",
            "Unix time of the experiment's first query.",
            start,
        ),
        Family(
            "abtest_experiment_last_activity_timestamp_seconds",
            "gauge",
            "Unix time of the experiment's latest write (queries, events, OTLP); idle "
            "experiments expire after --expire-after.",
            last,
        ),
        Family(
            "abtest_experiment_duration_seconds",
            "gauge",
            "Time since the experiment's first query.",
            duration,
        ),
        Family(
            "abtest_experiment_best_branch",
            "gauge",
            "Branch with the highest success ratio (ties: more queries, then name). Always 1.",
            best,
        ),
    ):
        out.family(family)


def accepts_gzip(accept_encoding: str) -> bool:
    """True when gzip (or *) is accepted with a q-value above 0."""
    for part in accept_encoding.split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        if coding.lower() in ("gzip", "x-gzip", "*"):
            q = next((p[2:] for p in params if p.replace(" ", "").startswith("q=")), "1")
            try:
                return float(q.strip("= ")) > 0
            except ValueError:
                return False
    return False


def negotiate(accept: str) -> bool:
    """True when the client prefers OpenMetrics (as Prometheus does when it can)."""
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media == "application/openmetrics-text":
            q = next((p[2:] for p in params if p.startswith("q=")), "1")
            try:
                return float(q) > 0
            except ValueError:
                return True
    return False


COMPARISON_GAUGES: tuple[tuple[str, str], ...] = (
    (
        "difference",
        "Treatment minus control in the metric's unit (seconds for latency_mean, 0..1 for ratios).",
    ),
    (
        "relative_difference",
        "Difference relative to the control's value (0.05 is 5% above); left out when the "
        "control's value is 0.",
    ),
    (
        "ci_lower",
        "Lower end of the always-valid confidence sequence for the difference: "
        "safe to watch continuously.",
    ),
    ("ci_upper", "Upper end of the always-valid confidence sequence for the difference."),
    (
        "p_value",
        "Always-valid (sequential) p-value: stays honest however often it is looked at.",
    ),
    (
        "fixed_horizon_p_value",
        "Classic p-value (Welch t, two-proportion z, Mann-Whitney for latency_distribution): "
        "valid only for one look at a sample size fixed in advance.",
    ),
    ("fixed_horizon_ci_lower", "Lower end of the classic (one-look) confidence interval."),
    ("fixed_horizon_ci_upper", "Upper end of the classic (one-look) confidence interval."),
    (
        "adjusted_p_value",
        "Sequential p-value adjusted across the experiment's treatments and metrics "
        "(Holm or Benjamini-Hochberg).",
    ),
    (
        "significant",
        "1 when the adjusted p-value is below alpha and both arms have the minimum sample "
        "size, else 0: the gauge to alert on.",
    ),
    (
        "probability_better",
        "Probability that the treatment is better (for latency: lower), Bayesian with a "
        "flat prior; for latency_distribution the chance a treatment query is faster.",
    ),
    (
        "verdict",
        "+1 treatment better, -1 worse (by the metric's direction: lower latency is better), "
        "0 inconclusive: significant (adjusted p below alpha, both arms at min_sample_size) "
        "and no sample-ratio mismatch, else 0.",
    ),
    (
        "relative_ci_lower",
        "Lower end of the always-valid confidence sequence for relative_difference (delta "
        "method); unadjusted, like ci_lower: it goes with p_value.",
    ),
    ("relative_ci_upper", "Upper end of the confidence sequence for relative_difference."),
    (
        "mde",
        "Minimum detectable effect at the current sample, in the metric's unit: the true "
        "difference the always-valid test detects with 80% power at alpha.",
    ),
    (
        "eta_seconds",
        "Estimated time until the minimum detectable effect reaches the observed difference, "
        "at the current rate (0: already there); left out when it cannot be reached.",
    ),
)


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
        out.header("abtest_experiment_progress_ratio", "gauge", PROGRESS_HELP)
        out.parts.append("".join(progress))
    if winners:
        out.header("abtest_experiment_winner", "gauge", WINNER_HELP)
        out.parts.append("".join(winners))
    if srm:
        out.header("abtest_srm_p_value", "gauge", SRM_HELP)
        out.lines("abtest_srm_p_value", (s for s, _ in srm), (repr(r.p_value) for _, r in srm))
        out.header("abtest_srm_detected", "gauge", "1 when the sample-ratio mismatch test fails.")
        out.lines(
            "abtest_srm_detected", (s for s, _ in srm), ("1" if r.detected else "0" for _, r in srm)
        )
    if percentiles:
        out.header(
            "abtest_branch_latency_percentile_seconds",
            "gauge",
            "Latency percentile estimated from the histogram buckets, within the observed "
            "min and max.",
        )
        out.parts.append("".join(percentiles))
    extra: dict[str, list[tuple[str, float]]] = {
        "probability_better": [(label, d.probability_faster) for label, d in latency],
        "fixed_horizon_p_value": [(label, d.fixed_horizon_p_value) for label, d in latency],
    }
    for gauge, help_text in COMPARISON_GAUGES:
        name = f"abtest_comparison_{gauge}"
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
            out.header(name, "gauge", help_text)
            out.parts.append("".join(lines))
    return "".join(out.parts)


PROGRESS_HELP = (
    "Smallest branch's queries as a share of min_sample_size, at most 1: below 1 no "
    "verdict is given yet."
)
WINNER_HELP = (
    "The treatment whose verdict is better (+1) on the experiment's primary_metric "
    "(default success_ratio); absent when none is. Always 1. Unlike best_branch, "
    "significance-aware."
)
SRM_HELP = (
    "Sample-ratio mismatch: chi-square p-value of branch query counts against the "
    "configured allocation (default equal). Below 0.001 the split is broken."
)
