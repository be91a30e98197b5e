"""Comparisons kept fresh off the scrape path.

Recomputed in the background when the aggregate has changed, at most once per
interval, and then only for the experiments that changed (analysis_cache.py); every
scrape in between reuses the last result and its rendered text, so a scrape of a
thousand experiments costs no statistics at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..core.families import Family, Sample
from ..state.abmetrics import ABMetrics
from ..stats.analysis import ExperimentAnalysis
from .analysis_cache import AnalysisCache

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Computed:
    version: int
    analyses: Mapping[str, ExperimentAnalysis] = field(default_factory=dict)
    # the rendered families in pieces, as a scrape appends them (see render_analysis_parts)
    parts: tuple[str, ...] = ()
    computed_at: float = 0.0
    seconds: float = 0.0
    comparisons: int = 0  # treatment x metric pairs published
    # `parts` encoded (UTF-8), piece for piece: made once per recomputation, and only
    # for the experiments that changed, so a scrape writing bytes encodes none of it
    encoded: tuple[bytes, ...] = ()
    changed: int = 0  # experiments analysed again by the latest recomputation

    @property
    def text(self) -> str:
        """The rendered families as one text (a copy: scrapes use `parts`)."""
        return "".join(self.parts)


class ComparisonEngine:
    def __init__(self, metrics: ABMetrics) -> None:
        self._metrics = metrics
        self.latest = Computed(version=-1)  # replaced whole, so readers never see a mix
        self._cache = AnalysisCache()  # used by one refresh at a time (the one refresher)

    def refresh(self) -> bool:
        """Recompute if the aggregate or a config changed; True if it did."""
        if self._metrics.settled_version() == self.latest.version:
            return False  # idle: not even a snapshot
        snapshot = self._metrics.snapshot()
        started = time.perf_counter()
        done = self._cache.update(snapshot.view, snapshot.configs)
        self.latest = Computed(
            snapshot.version,
            done.analyses,
            done.parts,
            snapshot.taken_at,
            time.perf_counter() - started,
            done.comparisons,
            done.encoded,
            done.changed,
        )
        return True

    def families(self) -> list[Family]:
        latest = self.latest
        return [
            Family(
                "abtest_exporter_comparison_duration_seconds",
                "gauge",
                "Time the latest recomputation of all comparisons took.",
                [Sample((), latest.seconds)],
            ),
            Family(
                "abtest_exporter_comparison_timestamp_seconds",
                "gauge",
                "Unix time of the data the published comparisons were computed from.",
                [Sample((), latest.computed_at)] if latest.computed_at else [],
            ),
            Family(
                "abtest_exporter_comparisons",
                "gauge",
                "Metric comparisons published (treatments x metrics).",
                [Sample((), latest.comparisons)],
            ),
        ]
