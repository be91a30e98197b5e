"""Rendering a snapshot as Prometheus text (0.0.4) or OpenMetrics 1.0.

Written by hand rather than through prometheus_client: the aggregate is
already columnar, so each family is one pass over numpy columns turned into
strings, several times faster than building client objects per scrape; the
series families are rendered (and kept between scrapes) by series.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..core.families import Family
from ..state.abmetrics import Snapshot
from ..stats.analysis import ExperimentAnalysis, LatencyDistribution, MetricComparison, SampleRatio
from . import catalog as cat
from .series import SeriesRenderer
from .text import Writer, branch_label, escape, event_label, format_value

__all__ = [
    "OPENMETRICS_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "SeriesRenderer",
    "Writer",
    "accepts_gzip",
    "branch_label",
    "escape",
    "event_label",
    "format_value",
    "negotiate",
    "render",
    "render_analysis",
]

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def render(
    snapshot: Snapshot,
    extra: Sequence[Family] = (),
    openmetrics: bool = False,
    analysis: str = "",
    tail: str = "",
    role: str = "single",
) -> str:
    """Every family of the design, rendered in full from one consistent snapshot; the
    server keeps a SeriesRenderer per format instead, which re-renders only the series
    that changed. `analysis` is the pre-rendered comparison block (see render_analysis),
    the same in both formats; `tail` is families already rendered in the asked format by
    another writer (the process metrics, see process.py). An `ingest` replica writes only
    what adds up or merges (no per-replica verdicts); the `analyzer` only what it derives
    (its raw sums would be counted twice by Prometheus)."""
    return SeriesRenderer(openmetrics, role).render(snapshot, extra, analysis, tail)


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
