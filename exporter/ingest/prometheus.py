"""Where the analyzer's records enter: the ingest replicas' raw series, read back from
Prometheus (or Thanos, Mimir, VictoriaMetrics: the same instant query API).

One round reads every replica's own series at one evaluation time, checks that every
ingest replica Prometheus knows is in it, and turns each replica's series into one
pre-aggregated part per branch and event. Folding the parts into a fresh `Aggregate`
is the merge: counters add, min/max and first/last take the extremes, and the
replicas' Welford M2 combine exactly by Chan's formula (the same code that folds OTLP
histograms), so the analyzer's statistics come from the one analysis code path.
"""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from ..core.aggregate import BranchParts, EventParts
from ..core.validation import MAX_COUNT

# The raw families an ingest replica publishes, read per replica.
RAW_FAMILIES = (
    "abtest_queries_total",
    "abtest_query_failures_total",
    "abtest_query_duration_seconds_bucket",
    "abtest_query_duration_seconds_sum",
    "abtest_query_duration_seconds_m2",
    "abtest_query_duration_seconds_squared_total",
    "abtest_branch_latency_min_seconds",
    "abtest_branch_latency_max_seconds",
    "abtest_branch_first_query_timestamp_seconds",
    "abtest_branch_last_query_timestamp_seconds",
    "abtest_event_value_count",
    "abtest_event_value_sum",
    "abtest_event_value_m2",
    "abtest_event_value_squared_total",
    "abtest_experiment_last_activity_timestamp_seconds",
)
# How long an ingest replica stays expected after Prometheus last scraped it.
LOOKBACK = "10m"

Target = tuple[str, str]  # (job, instance)


class QueryError(Exception):
    """Prometheus could not be asked, or answered with an error."""


@dataclass(frozen=True, slots=True)
class Inputs:
    """One round's reading: the parts to fold, and whether they are whole."""

    branches: BranchParts
    events: EventParts
    activity: dict[str, float]
    expected: frozenset[Target]  # ingest replicas seen within LOOKBACK
    present: frozenset[Target]  # those scraped successfully at the round's time
    oldest_sample: float | None  # unix time of the stalest replica's latest scrape

    @property
    def complete(self) -> bool:
        return bool(self.present) and self.expected <= self.present


@dataclass(slots=True)
class _Branch:
    n: float = 0.0
    failures: float = 0.0
    total: float = 0.0
    m2: float | None = None
    squares: float | None = None
    lo: float = math.inf
    hi: float = -math.inf
    first: float = math.inf
    last: float = -math.inf
    buckets: dict[float, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Event:
    count: float = 0.0
    total: float = 0.0
    m2: float | None = None
    squares: float | None = None


def ingest_matchers(selector: str) -> str:
    """`{selector, role="ingest"}` of the build info: the replicas to read."""
    inner = f"{selector}," if selector.strip() else ""
    return f'{{{inner}role="ingest"}}'


def raw_query(selector: str) -> str:
    names = "|".join(RAW_FAMILIES)
    inner = f",{selector}" if selector.strip() else ""
    return (
        f'{{__name__=~"{names}"{inner}}} and on(job, instance) '
        f"abtest_exporter_build_info{ingest_matchers(selector)}"
    )


class PrometheusSource:
    """Reads the ingest replicas' series through the instant query API."""

    def __init__(
        self, url: str, selector: str, bounds: Sequence[float], timeout: float = 10.0
    ) -> None:
        self.url = url.rstrip("/")
        self.selector = selector
        self.bounds = tuple(bounds)
        self.timeout = timeout

    def _get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=self.timeout) as response:
                return json.load(response)
        except (OSError, ValueError) as exc:
            raise QueryError(f"query failed: {exc}") from None

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (labels and scrapeUrl), from the targets API."""
        body = self._get("/api/v1/targets?state=active")
        found: list[dict[str, Any]] = body.get("data", {}).get("activeTargets", [])
        return found

    def query(self, promql: str, at: float) -> list[dict[str, Any]]:
        """An instant vector at `at` (one time for every query of a round)."""
        params = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        body = self._get(f"/api/v1/query?{params}")
        data = body.get("data", {}) if isinstance(body, dict) else {}
        if body.get("status") != "success" or data.get("resultType") != "vector":
            raise QueryError(f"query refused: {body.get('error', body)!r}"[:300])
        result: list[dict[str, Any]] = data.get("result", [])
        return result

    def read(self, at: float) -> Inputs:
        matchers = ingest_matchers(self.selector)
        seen = f"max_over_time(abtest_exporter_build_info{matchers}[{LOOKBACK}])"
        expected = {_target(s["metric"]) for s in self.query(seen, at)}
        scraped = {
            _target(s["metric"]): float(s["value"][1])
            for s in self.query(f"timestamp(abtest_exporter_build_info{matchers})", at)
        }
        branches: dict[tuple[Target, str, str], _Branch] = {}
        events: dict[tuple[Target, str, str, str], _Event] = {}
        activity: dict[str, float] = {}
        for sample in self.query(raw_query(self.selector), at):
            _take(sample["metric"], _finite(sample), branches, events, activity)
        return Inputs(
            *self._parts(branches, events),
            activity,
            frozenset(expected),
            frozenset(scraped),
            min(scraped.values()) if scraped else None,
        )

    def _parts(
        self,
        branches: dict[tuple[Target, str, str], _Branch],
        events: dict[tuple[Target, str, str, str], _Event],
    ) -> tuple[BranchParts, EventParts]:
        bounds = (*self.bounds, math.inf)
        branch_parts, event_parts = BranchParts(), EventParts()
        # first-seen order, as one process would have it (the default control is the
        # branch seen first): by first query time, then name
        order = sorted(branches.items(), key=lambda item: (item[1].first, item[0][1:], item[0]))
        for (_, experiment, branch), b in order:
            if sorted(b.buckets) != list(bounds):
                raise QueryError(
                    f"{experiment}/{branch}: the replicas' bucket bounds differ from this "
                    "analyzer's (--buckets must be the same everywhere)"
                )
            cumulative = [round(b.buckets[le]) for le in bounds]
            counts = [cumulative[0], *(hi - lo for lo, hi in pairwise(cumulative))]
            n = round(b.n)
            if min(counts) < 0 or not 0 <= b.failures <= n <= MAX_COUNT or sum(counts) != n:
                raise QueryError(
                    f"{experiment}/{branch}: the replicas' counts do not add up (queries "
                    f"{b.n:g}, failures {b.failures:g}, buckets {cumulative}): not an exporter?"
                )
            branch_parts.append(
                (experiment, branch),
                n,
                n - round(b.failures),
                b.total * 1000.0,
                _m2(n, b.total, b.m2, b.squares) * 1e6,
                b.lo * 1000.0,
                b.hi * 1000.0,
                b.first,
                b.last,
                counts,
                None if b.squares is None else b.squares * 1e6,
            )
        for (_, experiment, branch, event), e in sorted(events.items()):
            count = round(e.count)
            m2 = _m2(count, e.total, e.m2, e.squares)
            event_parts.append((experiment, branch, event), count, e.total, m2, e.squares)
        return branch_parts, event_parts


def _finite(sample: dict[str, Any]) -> float:
    """A sample's value; a series that is not finite (NaN, Inf) cannot come from an ingest
    replica, so the round fails (and keeps its last output) rather than publish it."""
    value = float(sample["value"][1])
    if not math.isfinite(value):
        name = sample["metric"].get("__name__", "a series")
        raise QueryError(f"{name} {sample['metric']!r} is {value}: not from an ingest replica")
    return value


def _m2(n: int, total: float, m2: float | None, squares: float | None) -> float:
    """The replica's M2; from its sum of squares only when it published no M2 (that
    loses digits when the spread is small next to the mean)."""
    if m2 is not None:
        return m2
    if squares is None or n == 0:
        return 0.0
    return max(squares - total * total / n, 0.0)


def _target(labels: dict[str, str]) -> Target:
    return labels.get("job", ""), labels.get("instance", "")


def _take(
    labels: dict[str, str],
    value: float,
    branches: dict[tuple[Target, str, str], _Branch],
    events: dict[tuple[Target, str, str, str], _Event],
    activity: dict[str, float],
) -> None:
    name, experiment = labels.get("__name__", ""), labels.get("experiment", "")
    if name == "abtest_experiment_last_activity_timestamp_seconds":
        activity[experiment] = max(value, activity.get(experiment, value))
        return
    target, branch = _target(labels), labels.get("branch", "")
    if name.startswith("abtest_event_value"):
        e = events.setdefault((target, experiment, branch, labels.get("event", "")), _Event())
        if name == "abtest_event_value_count":
            e.count = value
        elif name == "abtest_event_value_sum":
            e.total = value
        elif name == "abtest_event_value_m2":
            e.m2 = value
        else:
            e.squares = value
        return
    b = branches.setdefault((target, experiment, branch), _Branch())
    match name:
        case "abtest_queries_total":
            b.n = value
        case "abtest_query_failures_total":
            b.failures = value
        case "abtest_query_duration_seconds_bucket":
            try:
                b.buckets[float(labels.get("le", ""))] = value
            except ValueError:
                raise QueryError(f"a bucket without a numeric le: {labels!r}") from None
        case "abtest_query_duration_seconds_sum":
            b.total = value
        case "abtest_query_duration_seconds_m2":
            b.m2 = value
        case "abtest_query_duration_seconds_squared_total":
            b.squares = value
        case "abtest_branch_latency_min_seconds":
            b.lo = value
        case "abtest_branch_latency_max_seconds":
            b.hi = value
        case "abtest_branch_first_query_timestamp_seconds":
            b.first = value
        case "abtest_branch_last_query_timestamp_seconds":
            b.last = value
