"""The comparison block recomputed for the changed experiments only.

An experiment's analysis and text depend on nothing but its own rows (branch and event
rows: counts, moments, histograms, first and last query times), its branch and event
row lists and its config: every statistic is per row or per experiment, and no wall
clock enters it. So the cache keeps per experiment a signature of those, its place in
the Analysis it was last computed in, and its text in each family (str and bytes);
a recompute analyses and renders only the experiments whose signature moved, then lays
the pieces out in the view's experiment order, as a full render does (a fresh cache *is*
the full render, so the two cannot drift).

The signature's stamp is the largest change stamp of the experiment's rows: stamps only
grow (next_stamp), so any write to a row it holds raises it, and a row added or freed
changes the row lists it also holds. A moved signature is then checked against what the
experiment was analysed from (its branch names, event keys and row figures, exactly):
the analyzer rebuilds its whole aggregate every round, with new rows and stamps, and
an experiment whose figures did not change is not analysed again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np

from ..core.aggregate import View
from ..core.experiment_config import ExperimentConfig
from ..stats.analysis import Held, StitchedAnalyses, analyse_columns
from .exposition import HEADERS, HEADERS_ENCODED, analysis_sections, join_sections

Signature = tuple[Any, ...]
# Re-analyse the experiments of mostly-stale Analyses once the Analyses held span more
# than this many times the live experiments (each keeps all its arrays alive).
_SPREAD: Final = 2


@dataclass(frozen=True, slots=True)
class Entry:
    signature: Signature
    content: tuple[Any, ...]  # the names and figures analysed (see _contents)
    held: Held
    texts: tuple[str, ...]  # per family slot (exposition.SLOTS)
    encoded: tuple[bytes, ...]
    comparisons: int


@dataclass(frozen=True, slots=True)
class Recomputed:
    analyses: StitchedAnalyses
    parts: tuple[str, ...]
    encoded: tuple[bytes, ...]
    comparisons: int
    changed: int  # experiments analysed this time


class AnalysisCache:
    """Per experiment, what the last recompute made of it; one writer at a time."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._bounds: tuple[float, ...] | None = None
        self._layout: _Layout | None = None

    def update(self, view: View, configs: Mapping[str, ExperimentConfig]) -> Recomputed:
        if view.bounds != self._bounds:  # the percentiles' bucket bounds: all change
            self._entries, self._bounds = {}, view.bounds
        layout = self._layout
        if layout is None or not layout.fits(view):
            layout = self._layout = _Layout(view)
        # what each experiment's analysis depends on, in the view's experiment order
        signatures = {
            name: (configs.get(name), branches, events, stamp)
            for (name, branches, events), stamp in zip(
                layout.shapes, layout.stamps(view), strict=True
            )
        }
        old = self._entries
        moved = [
            name
            for name, signature in signatures.items()
            if (entry := old.get(name)) is None or entry.signature != signature
        ]
        entries = {name: old[name] for name in signatures if name in old}
        # rows rewritten with what they held (the analyzer's replace, every round): the
        # same names and figures analyse the same, so the entry stays
        redo: set[str] = set()
        found = dict(zip(moved, _contents(view, [signatures[n] for n in moved]), strict=True))
        for name in moved:
            entry = entries.get(name)
            same = entry is not None and entry.signature[0] == configs.get(name)
            if same and entry is not None and entry.content == found[name]:
                entries[name] = replace(entry, signature=signatures[name])
        redo.update(name for name in moved if entries.get(name) is None
                    or entries[name].signature != signatures[name])  # fmt: skip
        redo.update(_stale(old, signatures, redo))
        if redo:
            order = [name for name in signatures if name in redo]
            analysis = analyse_columns(view, configs, order)
            sections = analysis_sections(analysis)
            counts = np.bincount(
                analysis.comparisons.table.experiment, minlength=len(order)
            ).tolist()
            more = [name for name in order if name not in found]  # the stale ones
            found.update(zip(more, _contents(view, [signatures[n] for n in more]), strict=True))
            for i, name in enumerate(analysis.experiments):
                texts = sections[i]
                entries[name] = Entry(
                    signatures[name],
                    found[name],
                    Held(analysis, i),
                    texts,
                    tuple(text.encode() for text in texts),
                    counts[i],
                )
            entries = {name: entries[name] for name in signatures}  # the view's order
        self._entries = entries
        kept = list(entries.values())
        return Recomputed(
            StitchedAnalyses({name: entry.held for name, entry in entries.items()}),
            join_sections([entry.texts for entry in kept], HEADERS),
            join_sections([entry.encoded for entry in kept], HEADERS_ENCODED),
            sum(entry.comparisons for entry in kept),
            len(redo),
        )


class _Layout:
    """Each experiment's rows, from the view's name maps; remade only when those change
    (snapshots share the maps until a series is added or removed), so that finding the
    latest stamp of every experiment is one vectorised pass."""

    def __init__(self, view: View) -> None:
        self.experiments, self.experiment_events = view.experiments, view.experiment_events
        branch_size = len(view.branch_keys)
        self.shapes: list[tuple[str, tuple[tuple[str, int], ...], tuple[int, ...]]] = []
        flat: list[int] = []
        starts: list[int] = []
        sentinel = branch_size + len(view.event_keys)  # a stamp 0: no segment is empty
        for name, rows in view.experiments.items():
            events = tuple(view.experiment_events.get(name, ()))
            self.shapes.append((name, tuple(rows.items()), events))
            starts.append(len(flat))
            flat.append(sentinel)
            flat.extend(rows.values())
            flat.extend(row + branch_size for row in events)
        self.flat = np.array(flat, dtype=np.intp)
        self.starts = np.array(starts, dtype=np.intp)

    def fits(self, view: View) -> bool:
        return (
            view.experiments is self.experiments
            and view.experiment_events is self.experiment_events
        )

    def stamps(self, view: View) -> list[int]:
        """The largest change stamp of each experiment's rows."""
        if not len(self.starts):
            return []
        every = np.concatenate([view.branch.stamp, view.event.stamp, np.zeros(1, np.int64)])
        found: list[int] = np.maximum.reduceat(every[self.flat], self.starts).tolist()
        return found


def _contents(view: View, signatures: Sequence[Signature]) -> list[tuple[Any, ...]]:
    """What the analysis of each experiment (by its signature) reads, by name rather than
    row: branch names, event keys, every figure of their rows as bytes (exact: NaN and
    all), gathered in one pass per table."""
    b, e = view.branch, view.event
    branch_rows = np.array([row for _, rows, _, _ in signatures for _, row in rows], np.intp)
    event_rows = np.array([row for _, _, events, _ in signatures for row in events], np.intp)
    scalars = (b.n, b.ok, b.total, b.mean, b.m2, b.sq, b.lo, b.hi, b.first, b.last)
    branch = np.column_stack([*(c[branch_rows] for c in scalars), b.buckets[branch_rows]])
    event = np.column_stack([c[event_rows] for c in (e.count, e.total, e.mean, e.m2, e.sq)])
    wide, narrow = branch.shape[1] * 8, event.shape[1] * 8
    branch_bytes, event_bytes = (
        branch.astype(np.float64).tobytes(),
        event.astype(np.float64).tobytes(),
    )
    keys = view.event_keys
    out = []
    i = j = 0
    for _, rows, events, _ in signatures:
        i_, j_ = i + len(rows), j + len(events)
        out.append((
            tuple(name for name, _ in rows), tuple(map(keys.__getitem__, events)),
            branch_bytes[i * wide : i_ * wide], event_bytes[j * narrow : j_ * narrow],
        ))  # fmt: skip
        i, j = i_, j_
    return out


def _stale(old: Mapping[str, Entry], live: Mapping[str, Signature], changed: set[str]) -> list[str]:
    """Unchanged experiments to analyse again anyway: those of Analyses mostly made of
    experiments that changed or left since, once those hold too much (memory)."""
    kept: dict[int, list[str]] = {}
    sizes: dict[int, int] = {}
    for name in live:
        entry = old.get(name)
        if entry is not None and name not in changed:
            key = id(entry.held.analysis)
            kept.setdefault(key, []).append(name)
            sizes[key] = len(entry.held.analysis.experiments)
    if sum(sizes.values()) <= _SPREAD * max(len(live), 1):
        return []
    return [name for key, names in kept.items() if 2 * len(names) < sizes[key] for name in names]
