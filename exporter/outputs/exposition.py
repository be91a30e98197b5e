"""Rendering a snapshot as Prometheus text (0.0.4) or OpenMetrics 1.0.

Written by hand rather than through prometheus_client: the aggregate is
already columnar, so each family is one pass over numpy columns turned into
strings, several times faster than building client objects per scrape; the
series families are rendered (and kept between scrapes) by series.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress
from typing import Any

import numpy as np

from ..core.families import Family
from ..state.abmetrics import Snapshot
from ..stats.analysis import PERCENTILES, Analyses, Analysis
from ..stats.columns import OPTIONAL
from ..stats.table import METRICS
from . import catalog as cat
from .floats import reprs
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
    analysis: str | Sequence[str] = "",
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


def render_analysis(analyses: Analyses) -> str:
    """The comparison, SRM and percentile families as one text."""
    return "".join(render_analysis_parts(analyses))


def render_analysis_parts(analyses: Analyses) -> tuple[str, ...]:
    """The comparison, SRM and percentile families, straight from the columns, in pieces
    of at most CHUNK lines. Rendered once per recomputation and reused by every scrape
    (whose own join copies them into its answer); a label is built once per comparison
    and shared by all the gauges. No piece takes long to make, so the thread doing it
    never holds the GIL (and the event loop) for long."""
    analysis = analyses.columns
    names = [escape(name) for name in analysis.experiments]
    out = Writer(openmetrics=False)
    if names:
        out.declare(cat.PROGRESS)
        out.parts.append("".join(
            f'abtest_experiment_progress_ratio{{experiment="{exp}"}} {progress!r}\n'
            for exp, progress in zip(names, analysis.progress, strict=True)
        ))  # fmt: skip
    winners = [
        f'abtest_experiment_winner{{experiment="{exp}",branch="{escape(winner)}"}} 1\n'
        for exp, winner in zip(names, analysis.winners, strict=True)
        if winner is not None
    ]
    if winners:
        out.declare(cat.WINNER)
        out.parts.append("".join(winners))
    srm = [(f'experiment="{e}"', r) for e, r in zip(names, analysis.srm, strict=True) if r]
    if srm:
        out.declare(cat.SRM_P_VALUE)
        out.lines("abtest_srm_p_value", (s for s, _ in srm), (repr(r.p_value) for _, r in srm))
        out.declare(cat.SRM_DETECTED)
        out.lines(
            "abtest_srm_detected", (s for s, _ in srm), ("1" if r.detected else "0" for _, r in srm)
        )
    _percentile_family(out, analysis, names)
    _comparison_families(out, analysis, names)
    return tuple(out.parts)


def _percentile_family(out: Writer, analysis: Analysis, names: list[str]) -> None:
    columns = analysis.percentiles
    if not columns.branch:
        return
    out.declare(cat.PERCENTILE)
    bases = [
        f'experiment="{names[e]}",branch="{escape(branch)}",percentile="'
        for e, branch in zip(columns.experiment.tolist(), columns.branch, strict=True)
    ]
    keys = [f'{name[1:]}"}} ' for name, _ in PERCENTILES]
    labels = [base + key for base in bases for key in keys]
    out.parts.extend(
        _lines("abtest_branch_latency_percentile_seconds", labels, columns.values.ravel())
    )


def _comparison_families(out: Writer, analysis: Analysis, names: list[str]) -> None:
    results = analysis.comparisons
    table = results.table
    pairs = table.pairs
    controls = [escape(control) for control in analysis.controls]
    # `experiment="..",control="..",branch=".."` per pair, then `{that},metric=..,event=..} `
    # per comparison: the part of a line that all the gauges share
    bases = np.array(
        [f'experiment="{names[e]}",control="{controls[e]}",branch="{escape(branch)}"'
         for e, branch in zip(pairs.experiment.tolist(), pairs.branch, strict=True)] or [""],
        dtype=object,
    )  # fmt: skip
    width = len(table.events) + 1
    suffixes = np.array(
        [f',metric="{metric}",event="{escape(event)}"}} '
         for metric in METRICS for event in ("", *table.events)],
        dtype=object,
    )  # fmt: skip
    labels = (bases[table.pair] + suffixes[table.metric * width + table.event + 1]).tolist()
    latency = analysis.latency
    latency_labels = (bases[latency.pair] + ',metric="latency_distribution",event=""} ').tolist()
    extra = {
        "probability_better": latency.probability_faster,
        "fixed_horizon_p_value": latency.fixed_horizon_p_value,
    }
    for (gauge, _), declared in zip(cat.COMPARISON_GAUGES, cat.COMPARISONS, strict=True):
        column = getattr(results, gauge)
        if gauge == "significant":
            column = column.astype(int)
        lines = _lines(declared.name, *_present(labels, column, gauge))
        if gauge in extra:
            lines.extend(_lines(declared.name, *_present(latency_labels, extra[gauge], gauge)))
        if lines:
            out.declare(declared)
            out.parts.extend(lines)


def _present(labels: list[str], column: Any, gauge: str) -> tuple[list[str], Any]:
    """The rows that have a value: an optional field's NaN is None, left out."""
    if gauge in OPTIONAL:
        kept = np.isfinite(column)
        if not kept.all():
            return list(compress(labels, kept.tolist())), column[kept]
    return labels, column


CHUNK = 4096  # lines per piece: a join of some 600 kB, well under a millisecond


def _lines(name: str, labels: list[str], values: Any) -> list[str]:
    """`name{label} value` lines (each label already ends with `} `) in pieces of CHUNK
    lines: each piece is one join of the lines' parts, no string made per line but the
    value's (written in bulk by `reprs`)."""
    pieces = []
    pattern: list[str] = [f"{name}{{", "", "", "\n"]
    for start in range(0, len(labels), CHUNK):
        chunk = labels[start : start + CHUNK]
        items = pattern * len(chunk)
        items[1::4] = chunk
        items[2::4] = reprs(values[start : start + CHUNK])
        pieces.append("".join(items))
    return pieces
