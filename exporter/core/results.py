"""Immutable results of reading the aggregate, and how they are built from a View.

Every figure of an empty branch or unseen event is 0 (never a division error
or NaN), as in the module this data model descends from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from types import MappingProxyType
from typing import Any

from .aggregate import View
from .experiment_config import ExperimentConfig
from .moments import sample_variance


@dataclass(frozen=True, slots=True)
class EventMetrics:
    event: str
    count: int
    total: float
    mean: float
    variance: float


@dataclass(frozen=True, slots=True)
class BranchMetrics:
    branch: str
    query_count: int
    success_count: int
    failure_count: int
    total_latency_ms: float
    min_latency_ms: float
    max_latency_ms: float
    avg_latency_ms: float
    latency_variance_ms2: float
    success_rate: float
    error_rate: float
    events: Mapping[str, EventMetrics]
    first_query: float | None  # unix seconds
    last_query: float | None
    # (upper bound in seconds, cumulative count); the last bound is +Inf
    latency_buckets: tuple[tuple[float, int], ...]

    def event_average(self, event: str) -> float:
        found = self.events.get(event)
        return found.mean if found is not None else 0.0


@dataclass(frozen=True, slots=True)
class ExperimentMetrics:
    experiment: str
    control: str
    branches: Mapping[str, BranchMetrics]
    total_queries: int
    started_at: float | None
    last_activity: float | None
    duration_seconds: float | None

    def get_branch(self, branch: str) -> BranchMetrics | None:
        return self.branches.get(branch)


@dataclass(frozen=True, slots=True)
class ExperimentSummary:
    experiment: str
    control: str
    branch_count: int
    total_queries: int
    best_branch: str | None
    best_success_rate: float
    avg_latency_ms: float
    started_at: float | None
    last_activity: float | None
    duration_seconds: float | None


@dataclass(frozen=True, slots=True)
class MetricsStats:
    experiments_tracked: int
    total_branches_tracked: int
    total_queries_recorded: int
    total_events_recorded: int


_MS = 1000.0


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def build_branch(view: View, row: int, name: str, event_rows: list[int]) -> BranchMetrics:
    c = view.branch
    n = int(c.n[row])
    ok = int(c.ok[row])
    total = float(c.total[row]) * _MS  # the seed's API speaks milliseconds
    events: dict[str, EventMetrics] = {}
    for event_row in event_rows:
        key = view.event_keys[event_row]
        assert key is not None
        count = int(view.event.count[event_row])
        events[key[2]] = EventMetrics(
            key[2],
            count,
            float(view.event.total[event_row]),
            float(view.event.mean[event_row]) if count else 0.0,
            sample_variance(count, float(view.event.m2[event_row])),
        )
    cumulative = c.buckets[row].cumsum().tolist()
    return BranchMetrics(
        branch=name,
        query_count=n,
        success_count=ok,
        failure_count=n - ok,
        total_latency_ms=total,
        min_latency_ms=float(c.lo[row]) * _MS if n else 0.0,
        max_latency_ms=float(c.hi[row]) * _MS if n else 0.0,
        avg_latency_ms=_ratio(total, n),
        latency_variance_ms2=sample_variance(n, float(c.m2[row])) * _MS * _MS,
        success_rate=_ratio(ok, n),
        error_rate=_ratio(n - ok, n),
        events=MappingProxyType(events),
        first_query=float(c.first[row]) if n else None,
        last_query=float(c.last[row]) if n else None,
        latency_buckets=tuple(zip((*view.bounds, math.inf), cumulative, strict=True)),
    )


def events_by_branch(view: View, experiment: str) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for row in view.experiment_events.get(experiment, ()):
        key = view.event_keys[row]
        assert key is not None
        grouped.setdefault(key[1], []).append(row)
    return grouped


def control_of(branches: Mapping[str, Any], config: ExperimentConfig) -> str:
    """The configured control, else a branch named "control", else the first seen."""
    if config.control is not None:
        return config.control
    if "control" in branches or not branches:
        return "control"
    return next(iter(branches))


def build_experiment(
    view: View, experiment: str, config: ExperimentConfig, now: float
) -> ExperimentMetrics | None:
    rows = view.experiments.get(experiment)
    if rows is None:
        return None
    grouped = events_by_branch(view, experiment)
    branches = {
        name: build_branch(view, row, name, grouped.get(name, [])) for name, row in rows.items()
    }
    started, last = activity(view, experiment, rows)
    return ExperimentMetrics(
        experiment=experiment,
        control=control_of(rows, config),
        branches=MappingProxyType(branches),
        total_queries=sum(b.query_count for b in branches.values()),
        started_at=started,
        last_activity=last,
        duration_seconds=max(0.0, now - started) if started is not None else None,
    )


def activity(
    view: View, experiment: str, rows: Mapping[str, int]
) -> tuple[float | None, float | None]:
    """(first query, latest write): the latest of its queries and of any other write."""
    c = view.branch
    seen = [r for r in rows.values() if c.n[r]]
    touched = view.touched.get(experiment)
    if not seen:
        return None, touched
    last = float(max(c.last[seen]))
    return float(min(c.first[seen])), max(last, touched) if touched is not None else last


def best_branch(candidates: Iterable[tuple[str, int, int]]) -> tuple[str, float] | None:
    """Highest success rate among (name, queries, successes) with queries; ties go to
    more queries, then to the alphabetically first name, so the answer never flickers."""
    ranked = [(-(ok / n), -n, name) for name, n, ok in candidates if n]
    if not ranked:
        return None
    rate, _, name = min(ranked)
    return name, -rate


def summarise(
    view: View, experiment: str, config: ExperimentConfig, now: float
) -> ExperimentSummary | None:
    """The experiment's summary straight from the columns (no per-branch objects)."""
    rows = view.experiments.get(experiment)
    if rows is None:
        return None
    c = view.branch
    index = list(rows.values())
    counts = c.n[index].tolist()
    best = best_branch(zip(rows, counts, c.ok[index].tolist(), strict=True))
    total = sum(counts)
    started, last = activity(view, experiment, rows)
    return ExperimentSummary(
        experiment=experiment,
        control=control_of(rows, config),
        branch_count=len(rows),
        total_queries=total,
        best_branch=best[0] if best else None,
        best_success_rate=best[1] if best else 0.0,
        avg_latency_ms=_ratio(float(c.total[index].sum()) * _MS, total),
        started_at=started,
        last_activity=last,
        duration_seconds=max(0.0, now - started) if started is not None else None,
    )


def to_json(value: Any) -> Any:
    """Plain JSON types; infinite bucket bounds become the string "+Inf"."""
    if is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_json"):
            return value.to_json()
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "+Inf" if value > 0 else None
    return value
