"""Rendering a snapshot as Prometheus text (0.0.4) or OpenMetrics 1.0.

Written by hand rather than through prometheus_client: the aggregate is
already columnar, so each family is one pass over numpy columns turned into
strings, several times faster than building client objects per scrape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import compress
from typing import Any

import numpy as np

from ..core.aggregate import BranchColumns, BranchKey, EventKey
from ..core.experiment_config import ExperimentConfig
from ..core.families import Family, Sample
from ..core.results import summarise
from ..state.abmetrics import Snapshot
from ..stats.analysis import PERCENTILES, Analyses, Analysis
from ..stats.columns import OPTIONAL
from ..stats.table import METRICS
from . import catalog as cat
from .floats import reprs

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def escape(value: str) -> str:
    """Escape a label value for the exposition formats."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def branch_label(key: BranchKey) -> str:
    return f'experiment="{escape(key[0])}",branch="{escape(key[1])}"'


def event_label(key: EventKey) -> str:
    return f'experiment="{escape(key[0])}",branch="{escape(key[1])}",event="{escape(key[2])}"'


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

    def declare(self, family: cat.Declared) -> None:
        self.header(family.name, family.kind, family.help)

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
    analysis: str | Sequence[str] = "",
    tail: str = "",
    role: str = "single",
) -> str:
    """Every family of the design, from one consistent snapshot; `analysis` is the
    pre-rendered comparison block (see render_analysis_parts), the same in both formats;
    `tail` is families already rendered in the asked format by another writer (the
    process metrics, see process.py). An `ingest` replica writes only what adds up or
    merges (no per-replica verdicts); the `analyzer` only what it derives (its raw sums
    would be counted twice by Prometheus)."""
    out = Writer(openmetrics)
    raw, derived = role != "analyzer", role != "ingest"
    _branch_families(out, snapshot, raw, derived)
    _event_families(out, snapshot, raw, derived)
    _experiment_families(out, snapshot, raw, derived)
    if derived:
        out.parts.extend((analysis,) if isinstance(analysis, str) else analysis)
    for family in extra:
        out.family(family)
    out.parts.append(tail)
    return out.finish()


def _branch_families(out: Writer, snapshot: Snapshot, raw: bool, derived: bool) -> None:
    view = snapshot.view
    live = {r: key for r, key in enumerate(view.branch_keys) if key is not None}
    if not live:
        return
    rows = list(live)
    n_list = view.branch.n[rows].tolist()
    seen = [r for r, count in zip(rows, n_list, strict=True) if count]
    labels = {r: branch_label(key) for r, key in live.items()}
    seen_labels = [labels[r] for r in seen]
    row_labels = [labels[r] for r in rows]
    c = view.branch
    if raw:
        _raw_branch_families(out, view.bounds, c, rows, row_labels, n_list)
    if not seen:
        return
    ok = c.ok[seen]
    count = c.n[seen]
    gauges = (
        *(
            ((cat.SUCCESS_RATIO, ok / count), (cat.LATENCY_MEAN, c.total[seen] / count))
            if derived
            else ()
        ),
        *(
            (
                (cat.LATENCY_MIN, c.lo[seen]),
                (cat.LATENCY_MAX, c.hi[seen]),
                (cat.FIRST_QUERY, c.first[seen]),
                (cat.LAST_QUERY, c.last[seen]),
            )
            if raw
            else ()
        ),
    )
    for gauge, values in gauges:
        out.declare(gauge)
        out.lines(gauge.name, seen_labels, _floats(values.tolist()))


def _raw_branch_families(
    out: Writer,
    bounds: Sequence[float],
    c: BranchColumns,
    rows: list[int],
    row_labels: list[str],
    n_list: list[int],
) -> None:
    n = c.n[rows]
    out.declare(cat.QUERIES)
    out.lines(cat.QUERIES.name, row_labels, map(str, n_list))
    out.declare(cat.FAILURES)
    out.lines(cat.FAILURES.name, row_labels, map(str, (n - c.ok[rows]).tolist()))

    name = cat.DURATION.name
    out.declare(cat.DURATION)
    bounds_text = [format_value(b) for b in (*bounds, math.inf)]
    cumulative = np.cumsum(c.buckets[rows], axis=1).tolist()
    sums = _floats(c.total[rows].tolist())
    parts: list[str] = []
    for label, counts, total, count in zip(row_labels, cumulative, sums, n_list, strict=True):
        parts.extend(
            f'{name}_bucket{{{label},le="{le}"}} {v}\n'
            for le, v in zip(bounds_text, counts, strict=True)
        )
        parts.append(f"{name}_count{{{label}}} {count}\n{name}_sum{{{label}}} {total}\n")
    out.parts.append("".join(parts))
    m2 = c.m2[rows]
    out.declare(cat.DURATION_SQUARES)
    out.lines(cat.DURATION_SQUARES.name, row_labels, _floats(c.sq[rows].tolist()))
    out.declare(cat.DURATION_M2)
    out.lines(cat.DURATION_M2.name, row_labels, _floats(m2.tolist()))


def _event_families(out: Writer, snapshot: Snapshot, raw: bool, derived: bool) -> None:
    view = snapshot.view
    rows = [r for r, key in enumerate(view.event_keys) if key is not None]
    if not rows:
        return
    labels = [event_label(key) for key in view.event_keys if key is not None]
    c = view.event
    count = c.count[rows]
    counts, sums = list(map(str, count.tolist())), _floats(c.total[rows].tolist())
    if raw:
        _raw_event_families(out, labels, counts, sums)
        m2 = c.m2[rows]
        out.declare(cat.EVENT_SQUARES)
        out.lines(cat.EVENT_SQUARES.name, labels, _floats(c.sq[rows].tolist()))
        out.declare(cat.EVENT_M2)
        out.lines(cat.EVENT_M2.name, labels, _floats(m2.tolist()))
    if derived:
        out.declare(cat.EVENT_MEAN)
        out.lines(cat.EVENT_MEAN.name, labels, _floats(c.mean[rows].tolist()))


def _raw_event_families(out: Writer, labels: list[str], counts: list[str], sums: list[str]) -> None:
    if out.openmetrics:
        # OpenMetrics forbids a negative summary _sum, and event values may be negative
        # (refunds): there the two series are families of their own, same sample names.
        out.declare(cat.EVENT_VALUE_COUNT)
        out.lines(cat.EVENT_VALUE_COUNT.name, labels, counts)
        out.declare(cat.EVENT_VALUE_SUM)
        out.lines(cat.EVENT_VALUE_SUM.name, labels, sums)
    else:
        out.declare(cat.EVENT_VALUE)
        out.parts.append(
            "".join(
                f"abtest_event_value_count{{{label}}} {n}\nabtest_event_value_sum{{{label}}} {t}\n"
                for label, n, t in zip(labels, counts, sums, strict=True)
            )
        )


def _experiment_families(out: Writer, snapshot: Snapshot, raw: bool, derived: bool) -> None:
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
    # the latest write merges by max across replicas: an ingest replica keeps it
    for declared, samples, shown in (
        (cat.EXPERIMENT_INFO, info, derived),
        (cat.EXPERIMENT_START, start, derived),
        (cat.EXPERIMENT_LAST_ACTIVITY, last, True),
        (cat.EXPERIMENT_DURATION, duration, derived),
        (cat.BEST_BRANCH, best, derived),
    ):
        if shown:
            out.family(Family(declared.name, declared.kind, declared.help, samples))


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
