"""Rendering a snapshot as Prometheus text (0.0.4) or OpenMetrics 1.0.

Written by hand rather than through prometheus_client: the aggregate is
already columnar, so each family is one pass over numpy columns turned into
strings, several times faster than building client objects per scrape; the
series families are rendered (and kept between scrapes) by series.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress
from typing import Any, Final, TypeVar

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
    of one experiment's lines of one family (see analysis_sections). Rendered once per
    recomputation and reused by every scrape (whose own join copies them into its
    answer); a label is built once per comparison and shared by all the gauges."""
    return join_sections(analysis_sections(analyses.columns), HEADERS)


# Each experiment's text is kept in SLOTS pieces, one per family it appears in (two for
# the gauges that also carry the latency test's line, which the full render writes after
# every experiment's comparisons): an incremental recompute re-renders only the changed
# experiments' pieces, and `join_sections` lays out any set of them, each family whole.
_LATENCY_EXTRA: Final = ("probability_better", "fixed_horizon_p_value")
SLOTS: Final[tuple[cat.Declared, ...]] = (
    cat.PROGRESS, cat.WINNER, cat.SRM_P_VALUE, cat.SRM_DETECTED, cat.PERCENTILE,
    *(d for (gauge, _), declared in zip(cat.COMPARISON_GAUGES, cat.COMPARISONS, strict=True)
      for d in ((declared, declared) if gauge in _LATENCY_EXTRA else (declared,))),
)  # fmt: skip


def _header(family: cat.Declared) -> str:
    out = Writer(openmetrics=False)
    out.declare(family)
    return out.parts[0]


# (header, the family's slots), in output order
HEADERS: Final[tuple[tuple[str, tuple[int, ...]], ...]] = tuple(
    (_header(family), tuple(i for i, f in enumerate(SLOTS) if f is family))
    for family in dict.fromkeys(SLOTS)
)
HEADERS_ENCODED: Final = tuple((text.encode(), slots) for text, slots in HEADERS)

AnyText = TypeVar("AnyText", str, bytes)


def join_sections(
    sections: Sequence[Sequence[AnyText]], headers: Sequence[tuple[AnyText, tuple[int, ...]]]
) -> tuple[AnyText, ...]:
    """The families of these experiments' sections (SLOTS pieces each, in order), each
    family's header then its pieces (some empty); a family no experiment has is left out."""
    if not sections:
        return ()
    out: list[AnyText] = []
    columns = list(zip(*sections, strict=True))  # per slot, every experiment's piece
    for header, slots in headers:
        if any(any(columns[slot]) for slot in slots):
            out.append(header)
            for slot in slots:
                out.extend(columns[slot])  # empty pieces too: no pass over them all
    return tuple(out)


def analysis_sections(analysis: Analysis) -> list[tuple[str, ...]]:
    """Each experiment's lines in every family of SLOTS ("" where it has none): what the
    full render writes, cut at the experiments' boundaries."""
    size = len(analysis.experiments)
    names = [escape(name) for name in analysis.experiments]
    slots: list[list[str]] = [
        [f'abtest_experiment_progress_ratio{{experiment="{exp}"}} {progress!r}\n'
         for exp, progress in zip(names, analysis.progress, strict=True)],
        [f'abtest_experiment_winner{{experiment="{exp}",branch="{escape(winner)}"}} 1\n'
         if winner is not None else ""
         for exp, winner in zip(names, analysis.winners, strict=True)],
        [f'abtest_srm_p_value{{experiment="{exp}"}} {r.p_value!r}\n' if r else ""
         for exp, r in zip(names, analysis.srm, strict=True)],
        [f'abtest_srm_detected{{experiment="{exp}"}} {"1" if r.detected else "0"}\n' if r else ""
         for exp, r in zip(names, analysis.srm, strict=True)],
        _percentile_slot(analysis, names),
        *_comparison_slots(analysis, names),
    ]  # fmt: skip
    assert len(slots) == len(SLOTS)
    return list(zip(*slots, strict=True)) if size else []


def _percentile_slot(analysis: Analysis, names: list[str]) -> list[str]:
    columns = analysis.percentiles
    bases = [
        f'experiment="{names[e]}",branch="{escape(branch)}",percentile="'
        for e, branch in zip(columns.experiment.tolist(), columns.branch, strict=True)
    ]
    keys = [f'{name[1:]}"}} ' for name, _ in PERCENTILES]
    labels = [base + key for base in bases for key in keys]
    of = np.repeat(columns.experiment, len(keys))
    return _lines(cat.PERCENTILE.name, labels, columns.values.ravel(), of, len(names))


def _comparison_slots(analysis: Analysis, names: list[str]) -> list[list[str]]:
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
    latency_of = pairs.experiment[latency.pair]
    extra = {
        "probability_better": latency.probability_faster,
        "fixed_horizon_p_value": latency.fixed_horizon_p_value,
    }
    size = len(names)
    out = []
    for (gauge, _), declared in zip(cat.COMPARISON_GAUGES, cat.COMPARISONS, strict=True):
        column = getattr(results, gauge)
        if gauge == "significant":
            column = column.astype(int)
        out.append(_lines(declared.name, *_present(labels, column, table.experiment, gauge), size))
        if gauge in extra:
            found = _present(latency_labels, extra[gauge], latency_of, gauge)
            out.append(_lines(declared.name, *found, size))
    return out


def _present(
    labels: list[str], column: Any, experiment: Any, gauge: str
) -> tuple[list[str], Any, Any]:
    """The rows that have a value: an optional field's NaN is None, left out."""
    if gauge in OPTIONAL:
        kept = np.isfinite(column)
        if not kept.all():
            return list(compress(labels, kept.tolist())), column[kept], experiment[kept]
    return labels, column, experiment


CHUNK = 4096  # lines per piece: a join of some 600 kB, well under a millisecond


def _lines(name: str, labels: list[str], values: Any, experiment: Any, size: int) -> list[str]:
    """`name{label} value` lines (each label already ends with `} `) joined per experiment
    (`experiment`: each line's, ascending; `size` experiments, "" for one without lines).
    The values are written in bulk by `reprs`, CHUNK lines at a time so that no step
    holds the GIL long; no string is made per line but the value's."""
    out = [""] * size
    if not len(labels):
        return out
    items: list[str] = [f"{name}{{", "", "", "\n"] * len(labels)
    items[1::4] = labels
    for start in range(0, len(labels), CHUNK):
        items[4 * start + 2 : 4 * (start + CHUNK) : 4] = reprs(values[start : start + CHUNK])
    bounds = np.searchsorted(experiment, np.arange(size + 1))
    edges = bounds.tolist()
    for e in np.flatnonzero(np.diff(bounds)).tolist():
        out[e] = "".join(items[4 * edges[e] : 4 * edges[e + 1]])
    return out
