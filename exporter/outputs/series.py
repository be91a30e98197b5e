"""The branch, event and experiment families, rendered row by row and kept between scrapes.

Between two scrapes most series do not change, so re-rendering all of them (hundreds of
thousands of lines) is mostly repeated work. A `SeriesRenderer` keeps each family's text
in blocks of a few rows, with the aggregate's change stamp each row was rendered from; a
render re-renders only the blocks holding a row whose stamp moved (vectorised over their
rows) and joins. A fresh renderer renders every row: it *is* the full render, so the two
cannot drift.

Memory, per format scraped (text and OpenMetrics keep separate caches): the blocks' text,
each row's label and key. Measured at 1000 experiments x 4 branches x 10 events with the
default 16 buckets: about 43 MB, 1.3 times the size of those families' /metrics text (a
row's own text is let go of once its block is joined). It shrinks with the series: freed
rows are reused, a clear drops everything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from ..core.aggregate import BranchKey, EventKey, View
from ..core.experiment_config import ExperimentConfig
from ..core.families import Family
from ..core.results import best_branch, control_of
from ..state.abmetrics import Snapshot
from . import catalog as cat
from .body import chunks
from .gzipped import GzipCache
from .text import Writer, escape, format_value

K = TypeVar("K", bound=Hashable)
Ints = npt.NDArray[np.int64]

# the families each table's rows appear in, in output order
_BRANCH_RAW = (cat.QUERIES, cat.FAILURES, cat.DURATION, cat.DURATION_SQUARES, cat.DURATION_M2)
_BRANCH_DERIVED = (cat.SUCCESS_RATIO, cat.LATENCY_MEAN)  # only rows with queries
_BRANCH_SEEN_RAW = (cat.LATENCY_MIN, cat.LATENCY_MAX, cat.FIRST_QUERY, cat.LAST_QUERY)
_EVENT_VALUE_TEXT = (cat.EVENT_VALUE,)  # both sample lines under one family
_EVENT_VALUE_OM = (cat.EVENT_VALUE_COUNT, cat.EVENT_VALUE_SUM)
_EVENT_RAW = (cat.EVENT_SQUARES, cat.EVENT_M2)
_EVENT_DERIVED = (cat.EVENT_MEAN,)
# Rows per joined block: a changed row re-renders its block, so blocks stay small (a
# branch row's histogram alone is ~2 kB), yet few enough for the writer and the gzip cache.
_BRANCH_BLOCK, _EVENT_BLOCK = 4, 8


class _Rows(Generic[K]):
    """One table's cache: per row, the stamp and key it was rendered from and its label;
    per family, the rows' text joined by blocks. A row's own text lives only during a
    render ("" between renders, and where the family leaves the row out): a changed row
    re-renders its whole block, which halves what the cache holds."""

    def __init__(self, families: Sequence[cat.Declared], block: int) -> None:
        self.block = block
        self.stamps: Ints = np.empty(0, dtype=np.int64)
        self.keys: list[K | None] = []
        self.labels: list[str] = []
        self.texts: dict[str, list[str]] = {f.name: [] for f in families}
        # each family's rows joined by blocks of `block` rows: a scrape re-joins only the
        # blocks with a changed row, then hands the blocks to the writer as they are
        self.blocks: dict[str, list[str]] = {f.name: [] for f in families}
        self.dirty: set[int] = set()

    def changed(
        self, keys: Sequence[K | None], stamps: Ints, label: Callable[[list[K]], list[str]]
    ) -> tuple[list[int], list[int]]:
        """(live rows to render: every live row of a block with a changed row, the live
        rows that changed); the changed rows' stamps, keys and labels (a reused row's
        new key gets a new label) are taken."""
        changed = self._take(keys, stamps, label)
        if len(changed) == len(keys) or not self.dirty:
            return changed, changed
        size, block, held = len(keys), self.block, self.keys
        return [
            r
            for b in sorted(self.dirty)
            for r in range(b * block, min(b * block + block, size))
            if held[r] is not None
        ], changed

    def _take(
        self, keys: Sequence[K | None], stamps: Ints, label: Callable[[list[K]], list[str]]
    ) -> list[int]:
        size, held = len(keys), len(self.keys)
        if size != held:  # the table grew, or was cleared and started over
            grown = np.full(size, -1, dtype=np.int64)
            if size > held:  # a smaller table (an older snapshot, a clear) renders afresh:
                grown[:held] = self.stamps  # a partly kept last block would keep old rows
            self.stamps = grown
            pad = max(0, size - held)
            del self.keys[size:], self.labels[size:]
            self.keys.extend([None] * pad)
            self.labels.extend([""] * pad)
            for texts in self.texts.values():
                del texts[size:]
                texts.extend([""] * pad)
        blocks = -(-size // self.block)
        for joined in self.blocks.values():
            del joined[blocks:]
            joined.extend([""] * (blocks - len(joined)))
        found = np.flatnonzero(stamps[:size] != self.stamps)
        self.stamps[found] = stamps[found]
        self.dirty = set((found // self.block).tolist())
        rows = found.tolist()
        if len(rows) == size:  # every row (a cold render, or after a clear)
            self.keys = list(keys)
            live = [r for r, key in enumerate(keys) if key is not None]
            if len(live) == size:
                self.labels = label(self.keys)  # type: ignore[arg-type]
                return live
            freed = [r for r, key in enumerate(keys) if key is None]
            self.labels = [""] * size
            renamed = [(r, keys[r]) for r in live]
        else:
            new = [keys[r] for r in rows]
            cached = self.keys
            live = [r for r, key in zip(rows, new, strict=True) if key is not None]
            freed = [r for r, key in zip(rows, new, strict=True) if key is None]
            renamed = [
                (r, key)
                for r, key, old in zip(rows, new, [cached[r] for r in rows], strict=True)
                if key is not None and key != old
            ]
            for row, key in zip(rows, new, strict=True):
                cached[row] = key
        if renamed:
            labels = self.labels
            for (row, _), text in zip(renamed, label([k for _, k in renamed]), strict=True):  # type: ignore[misc]
                labels[row] = text
        for row in freed:
            self.labels[row] = ""
        return live

    def join(self) -> None:
        """Re-join the blocks holding a changed row, in every family, and let go of the
        rows' own text."""
        starts = [block * self.block for block in sorted(self.dirty)]
        size = self.block
        for name, texts in self.texts.items():
            joined = self.blocks[name]
            if len(starts) * size >= len(texts):  # every block (a cold render)
                for start in starts:
                    joined[start // size] = "".join(texts[start : start + size])
                texts[:] = [""] * len(texts)
                continue
            for start in starts:
                joined[start // size] = "".join(texts[start : start + size])
                texts[start : start + size] = [""] * len(texts[start : start + size])
        self.dirty = set()

    def put(self, family: cat.Declared, rows: list[int], lines: list[str]) -> None:
        texts = self.texts[family.name]
        if len(rows) == len(texts):  # every row (a cold render): no scatter needed
            texts[:] = lines
            return
        for row, line in zip(rows, lines, strict=True):
            texts[row] = line

    def emit(self, out: Writer, family: cat.Declared) -> None:
        out.declare(family)
        out.parts.extend(self.blocks[family.name])


def _branch_labels(keys: list[BranchKey]) -> list[str]:
    labels = [f'experiment="{e}",branch="{b}"' for e, b in keys]
    if _plain(labels, 4):
        return labels
    return [f'experiment="{escape(e)}",branch="{escape(b)}"' for e, b in keys]


def _event_labels(keys: list[EventKey]) -> list[str]:
    labels = [f'experiment="{e}",branch="{b}",event="{n}"' for e, b, n in keys]
    if _plain(labels, 6):
        return labels
    return [
        f'experiment="{escape(e)}",branch="{escape(b)}",event="{escape(n)}"' for e, b, n in keys
    ]


def _plain(labels: list[str], quotes: int) -> bool:
    """Whether no name needed escaping (the rule, not the exception): one scan of all
    the labels instead of three per name."""
    joined = "".join(labels)
    return "\\" not in joined and "\n" not in joined and joined.count('"') == quotes * len(labels)


def _lines(name: str, labels: list[str], values: npt.NDArray[Any] | list[Any]) -> list[str]:
    """One sample line per row. Values are ints or floats known to be finite (inf only
    ever appears as a bucket bound), and repr is exact for both."""
    head = name + "{"
    if not isinstance(values, list):
        values = values.tolist()
    return [f"{head}{label}}} {v!r}\n" for label, v in zip(labels, values, strict=True)]


@dataclass(frozen=True, slots=True)
class _Experiment:
    """An experiment's lines that change only when its rows, config or last write do."""

    label: str
    info: str
    start: str  # "" when no query yet (then `started` is None)
    last: str | None
    best: str | None
    started: float | None


class SeriesRenderer:
    """Renders a snapshot's families in one format for one role, reusing the text of
    rows that did not change since its last render. Thread-safe: renders take turns."""

    def __init__(self, openmetrics: bool = False, role: str = "single") -> None:
        self.openmetrics, self.role = openmetrics, role
        # an `ingest` replica writes only what adds up or merges; the `analyzer` only
        # what it derives (its raw sums would be counted twice by Prometheus)
        self.raw, self.derived = role != "analyzer", role != "ingest"
        self._version = -1  # of the latest snapshot rendered
        # re-entrant: the server holds it across its snapshot and the render, so that
        # scrapes render their snapshots in the order they were taken
        self.lock = threading.RLock()
        self.gzip = GzipCache()  # the deflated runs of the previous answer
        self._reset(())

    def _reset(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._le = [f',le="{format_value(b)}"}} ' for b in (*bounds, float("inf"))]
        self._branch_families = (
            (_BRANCH_RAW if self.raw else ())
            + (_BRANCH_DERIVED if self.derived else ())
            + (_BRANCH_SEEN_RAW if self.raw else ())
        )
        value = _EVENT_VALUE_OM if self.openmetrics else _EVENT_VALUE_TEXT
        self._event_families = ((*value, *_EVENT_RAW) if self.raw else ()) + (
            _EVENT_DERIVED if self.derived else ()
        )
        self._branches: _Rows[BranchKey] = _Rows(self._branch_families, _BRANCH_BLOCK)
        self._events: _Rows[EventKey] = _Rows(self._event_families, _EVENT_BLOCK)
        self._experiment_cache = _Experiments()

    def render(
        self,
        snapshot: Snapshot,
        extra: Sequence[Family] = (),
        analysis: str | Sequence[str] = "",
        tail: str = "",
    ) -> str:
        """Every family of the design, from one consistent snapshot; `analysis` is the
        pre-rendered comparison block (one string or its pieces), `tail` families already
        rendered in this format (the process metrics)."""
        return "".join(self.render_pieces(snapshot, extra, analysis, tail))

    def render_gzip(
        self,
        snapshot: Snapshot,
        extra: Sequence[Family] = (),
        analysis: str | Sequence[str] = "",
        tail: str = "",
    ) -> bytes:
        """The same, gzipped: only the runs of pieces that changed are deflated again."""
        return self.gzip.compress(self.render_pieces(snapshot, extra, analysis, tail))

    def render_chunks(
        self,
        snapshot: Snapshot,
        extra: Sequence[Family] = (),
        analysis: Sequence[str] = (),
        tail: str = "",
        analysis_encoded: Sequence[bytes] = (),
    ) -> list[bytes]:
        """The same, encoded in chunks (see body.py); `analysis_encoded` is `analysis`
        already encoded, piece for piece."""
        pieces = self.render_pieces(snapshot, extra, analysis, tail)
        return chunks(pieces, (analysis, analysis_encoded))

    def render_pieces(
        self,
        snapshot: Snapshot,
        extra: Sequence[Family] = (),
        analysis: str | Sequence[str] = "",
        tail: str = "",
    ) -> list[str]:
        """The response as the pieces it is made of (unchanged ones the same objects as
        in the previous render)."""
        with self.lock:
            if snapshot.version < self._version:  # older than the cache: render it whole
                fresh = SeriesRenderer(self.openmetrics, self.role)
                return fresh.render_pieces(snapshot, extra, analysis, tail)
            self._version = snapshot.version
            out = Writer(self.openmetrics)
            view = snapshot.view
            if view.bounds != self._bounds:
                self._reset(view.bounds)
            changed = self._branch_rows(out, view)
            self._event_rows(out, view)
            self._experiment_families(out, snapshot, changed)
        if self.derived:
            out.parts.extend((analysis,) if isinstance(analysis, str) else analysis)
        for family in extra:
            out.family(family)
        out.parts.append(tail)
        return out.pieces()

    # -- branches ----------------------------------------------------------------

    def _branch_rows(self, out: Writer, view: View) -> set[str]:
        """Brings the branch rows up to date and writes their families; returns the
        experiments with a changed row."""
        cache, c = self._branches, view.branch
        live, moved = cache.changed(view.branch_keys, c.stamp, _branch_labels)
        if live:
            self._render_branches(view, live)
        cache.join()
        if not _any_live(view.branch_keys):
            return _experiments_of(view.branch_keys, moved)
        families = self._branch_families
        seen = bool(np.count_nonzero(c.n))
        for family in families:
            if seen or family in _BRANCH_RAW:
                cache.emit(out, family)
        return _experiments_of(view.branch_keys, moved)

    def _render_branches(self, view: View, rows: list[int]) -> None:
        cache, c = self._branches, view.branch
        labels = [cache.labels[r] for r in rows]
        at = np.asarray(rows)  # indexing with a list converts it on every column
        n = c.n[at]
        n_list = n.tolist()
        if self.raw:
            cache.put(cat.QUERIES, rows, _lines(cat.QUERIES.name, labels, n_list))
            failures = n - c.ok[at]
            cache.put(cat.FAILURES, rows, _lines(cat.FAILURES.name, labels, failures))
            histograms = self._histograms(c.buckets[at], labels, n_list, c.total[at].tolist())
            cache.put(cat.DURATION, rows, histograms)
            cache.put(
                cat.DURATION_SQUARES, rows, _lines(cat.DURATION_SQUARES.name, labels, c.sq[at])
            )
            cache.put(cat.DURATION_M2, rows, _lines(cat.DURATION_M2.name, labels, c.m2[at]))
        unseen = [r for r, count in zip(rows, n_list, strict=True) if not count]
        seen_families = (_BRANCH_DERIVED if self.derived else ()) + (
            _BRANCH_SEEN_RAW if self.raw else ()
        )
        if unseen:
            blank = [""] * len(unseen)
            for family in seen_families:
                cache.put(family, unseen, blank)
        seen = [r for r, count in zip(rows, n_list, strict=True) if count] if unseen else rows
        if not seen:
            return
        seen_labels = [cache.labels[r] for r in seen] if unseen else labels
        seen_at = np.asarray(seen)
        count = c.n[seen_at]
        columns = {
            cat.SUCCESS_RATIO.name: lambda: c.ok[seen_at] / count,
            cat.LATENCY_MEAN.name: lambda: c.total[seen_at] / count,
            cat.LATENCY_MIN.name: lambda: c.lo[seen_at],
            cat.LATENCY_MAX.name: lambda: c.hi[seen_at],
            cat.FIRST_QUERY.name: lambda: c.first[seen_at],
            cat.LAST_QUERY.name: lambda: c.last[seen_at],
        }
        for family in seen_families:
            cache.put(family, seen, _lines(family.name, seen_labels, columns[family.name]()))

    def _histograms(
        self, buckets: Ints, labels: list[str], counts: list[int], sums: list[float]
    ) -> list[str]:
        name = cat.DURATION.name
        le = self._le
        out = []
        for label, cumulative, count, total in zip(
            labels, np.cumsum(buckets, axis=1).tolist(), counts, sums, strict=True
        ):
            head = f"{name}_bucket{{{label}"
            out.append(
                "".join([f"{head}{bound}{v}\n" for bound, v in zip(le, cumulative, strict=True)])
                + f"{name}_count{{{label}}} {count}\n{name}_sum{{{label}}} {total!r}\n"
            )
        return out

    # -- events ------------------------------------------------------------------

    def _event_rows(self, out: Writer, view: View) -> None:
        cache, c = self._events, view.event
        live, _ = cache.changed(view.event_keys, c.stamp, _event_labels)
        if live:
            labels = [cache.labels[r] for r in live]
            at = np.asarray(live)  # indexing with a list converts it on every column
            lines: dict[str, Callable[[], list[str]]] = {
                cat.EVENT_VALUE_COUNT.name: lambda: _lines(
                    cat.EVENT_VALUE_COUNT.name, labels, c.count[at]
                ),
                cat.EVENT_VALUE_SUM.name: lambda: _lines(
                    cat.EVENT_VALUE_SUM.name, labels, c.total[at]
                ),
                cat.EVENT_VALUE.name: lambda: [
                    f"abtest_event_value_count{{{label}}} {n}\n"
                    f"abtest_event_value_sum{{{label}}} {t!r}\n"
                    for label, n, t in zip(
                        labels, c.count[at].tolist(), c.total[at].tolist(), strict=True
                    )
                ],
                cat.EVENT_SQUARES.name: lambda: _lines(cat.EVENT_SQUARES.name, labels, c.sq[at]),
                cat.EVENT_M2.name: lambda: _lines(cat.EVENT_M2.name, labels, c.m2[at]),
                cat.EVENT_MEAN.name: lambda: _lines(cat.EVENT_MEAN.name, labels, c.mean[at]),
            }
            for family in self._event_families:
                cache.put(family, live, lines[family.name]())
        cache.join()
        if not _any_live(view.event_keys):
            return
        for family in self._event_families:
            cache.emit(out, family)

    # -- experiments -------------------------------------------------------------

    def _experiment_families(self, out: Writer, snapshot: Snapshot, changed: set[str]) -> None:
        view, configs = snapshot.view, snapshot.configs
        cache = self._experiment_cache
        dirty = set(changed)
        if view.touched != cache.touched:  # one C-level comparison when nothing moved
            before = cache.touched
            dirty.update(e for e, at in view.touched.items() if before.get(e) != at)
            dirty.update(before.keys() - view.touched.keys())  # no last write (any more)
            cache.touched = dict(view.touched)
        if configs != cache.configs:
            before_configs = cache.configs
            dirty.update(e for e in configs.keys() | before_configs.keys()
                         if configs.get(e) != before_configs.get(e))  # fmt: skip
            cache.configs = dict(configs)
        order = list(view.experiments)
        entries = cache.entries
        stale = [e for e in order if e in dirty or e not in entries]
        made = _summaries(view, stale, configs) if stale else {}
        fresh = {e: made.get(e) or entries[e] for e in order}
        if dirty or order != cache.order:
            cache.rebuild(order, fresh)
        # the latest write merges by max across replicas: an ingest replica keeps it
        for declared, text, shown in (
            (cat.EXPERIMENT_INFO, cache.info, self.derived),
            (cat.EXPERIMENT_START, cache.start, self.derived),
            (cat.EXPERIMENT_LAST_ACTIVITY, cache.last, True),
            (
                cat.EXPERIMENT_DURATION,
                cache.durations(snapshot.taken_at) if self.derived else "",
                self.derived,
            ),
            (cat.BEST_BRANCH, cache.best, self.derived),
        ):
            if shown and text:
                out.declare(declared)
                out.parts.append(text)


class _Experiments:
    """The experiment families' cache: each experiment's lines (which change only with
    its rows, its config or its last write) and the families joined; the durations,
    which move with the clock, are the only lines rendered on every scrape."""

    def __init__(self) -> None:
        self.touched: dict[str, float] = {}
        self.configs: dict[str, ExperimentConfig] = {}
        self.order: list[str] = []
        self.entries: dict[str, _Experiment] = {}
        self.info = self.start = self.last = self.best = ""
        self._prefixes: list[str] = []
        self._started: npt.NDArray[np.float64] = np.empty(0)

    def rebuild(self, order: list[str], entries: dict[str, _Experiment]) -> None:
        self.order, self.entries = order, entries  # experiments gone are dropped here
        listed = [entries[e] for e in order]
        self.info = "".join([x.info for x in listed])
        self.start = "".join([x.start for x in listed])
        self.last = "".join([x.last for x in listed if x.last is not None])
        self.best = "".join([x.best for x in listed if x.best is not None])
        name = cat.EXPERIMENT_DURATION.name
        self._prefixes = [f"{name}{{{x.label}}} " for x in listed if x.started is not None]
        self._started = np.array([x.started for x in listed if x.started is not None], dtype=float)

    def durations(self, now: float) -> str:
        values = np.maximum(0.0, now - self._started).tolist()  # finite: repr is exact
        return "".join([f"{p}{v!r}\n" for p, v in zip(self._prefixes, values, strict=True)])


def _any_live(keys: Sequence[Hashable | None]) -> bool:
    """Whether a row is in use (stops at the first; list.count(None) compares every key)."""
    return next((True for key in keys if key is not None), False)


def _experiments_of(keys: Sequence[BranchKey | None], rows: list[int]) -> set[str]:
    return {key[0] for row in rows if (key := keys[row]) is not None}


def _summaries(
    view: View, experiments: Iterable[str], configs: Mapping[str, ExperimentConfig]
) -> dict[str, _Experiment]:
    """The lines of `experiments`: results.summarise's figures, from the columns taken
    as lists once (a numpy call per experiment would cost more than the lines)."""
    c = view.branch
    n, ok, first, last = c.n.tolist(), c.ok.tolist(), c.first.tolist(), c.last.tolist()
    default = ExperimentConfig()
    out = {}
    for experiment in experiments:
        rows = view.experiments[experiment]
        label = f'experiment="{escape(experiment)}"'
        control = control_of(rows, configs.get(experiment) or default)
        seen = [r for r in rows.values() if n[r]]
        latest = view.touched.get(experiment)
        started = None
        if seen:
            started = min([first[r] for r in seen])
            last_query = max([last[r] for r in seen])
            latest = max(last_query, latest) if latest is not None else last_query
        best = best_branch((name, n[r], ok[r]) for name, r in rows.items())
        out[experiment] = _Experiment(
            label=label,
            info=f'{cat.EXPERIMENT_INFO.name}{{{label},control="{escape(control)}"}} 1\n',
            start=_line(cat.EXPERIMENT_START, label, started) if started is not None else "",
            last=_line(cat.EXPERIMENT_LAST_ACTIVITY, label, latest) if latest is not None else None,
            best=(
                f'{cat.BEST_BRANCH.name}{{{label},branch="{escape(best[0])}"}} 1\n'
                if best is not None
                else None
            ),
            started=started,
        )
    return out


def _line(family: cat.Declared, label: str, value: float) -> str:
    return f"{family.name}{{{label}}} {format_value(value)}\n"


class Renderers:
    """A server's renderers, one per (format, role) asked for, made on first use: each
    keeps its own cache, so a format never scraped costs no memory, and one not scraped
    for `idle` seconds (a person's curl, say) is dropped with its cache."""

    def __init__(self, idle: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._made: dict[tuple[bool, str], tuple[SeriesRenderer, float]] = {}
        self._idle, self._clock = idle, clock

    def get(self, openmetrics: bool, role: str) -> SeriesRenderer:
        now = self._clock()
        with self._lock:
            for key, (_, used) in list(self._made.items()):
                if now - used > self._idle:
                    del self._made[key]
            found = self._made.get((openmetrics, role))
            renderer = found[0] if found is not None else SeriesRenderer(openmetrics, role)
            self._made[openmetrics, role] = (renderer, now)
            return renderer
