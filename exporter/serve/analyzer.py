"""The analyzer role: every --stats-interval, rebuild the global aggregate from the
ingest replicas' series in Prometheus and recompute the derived families from it.

A round whose inputs are not whole (a replica Prometheus knows is not in the last
scrape, or a query failed) changes nothing: the last good output stays published and
`abtest_analyzer_inputs_complete` says 0, so a partial sum is never shown as whole.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass

import aiohttp

from ..core.families import Family, Sample
from ..ingest.prometheus import Inputs, PrometheusSource, QueryError, Target
from ..outputs.comparisons import ComparisonEngine
from ..state.abmetrics import ABMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Status:
    """The latest round, for the analyzer's own families."""

    complete: bool = False
    expected: int = 0
    present: int = 0
    lag_seconds: float | None = None
    last_success: float | None = None
    problem: str = ""


class Analyzer:
    def __init__(
        self,
        source: PrometheusSource,
        metrics: ABMetrics,
        engine: ComparisonEngine,
        token: str | None = None,
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.engine = engine
        self.token = token
        self.status = Status()
        self.replicas: frozenset[Target] = frozenset()
        self._lock = threading.Lock()  # one round at a time

    def round(self, now: float | None = None) -> Status:
        """Read, check, and (when whole) replace the aggregate and its analysis."""
        at = time.time() if now is None else now
        with self._lock:
            last = self.status
            try:
                inputs = self.source.read(at)
            except QueryError as exc:
                self.status = Status(
                    False, last.expected, 0, last.lag_seconds, last.last_success, str(exc)
                )
                log.warning("analyzer round failed, keeping the last output: %s", exc)
                return self.status
            self.replicas = inputs.expected | inputs.present
            self.status = self._apply(inputs, at, last)
            return self.status

    def _apply(self, inputs: Inputs, at: float, last: Status) -> Status:
        lag = at - inputs.oldest_sample if inputs.oldest_sample is not None else None
        if not inputs.complete:
            missing = sorted(f"{job}/{instance}" for job, instance in
                             inputs.expected - inputs.present)  # fmt: skip
            problem = (
                f"ingest replicas not scraped: {', '.join(missing)}"
                if missing
                else "no ingest replica found (check --prometheus-selector)"
            )
            if last.complete or last.problem != problem:
                log.warning("analyzer inputs incomplete, keeping the last output: %s", problem)
            return Status(
                False, len(inputs.expected), len(inputs.present), lag, last.last_success, problem
            )
        self.metrics.replace(inputs.branches, inputs.events, inputs.activity)
        self.engine.refresh()
        return Status(True, len(inputs.expected), len(inputs.present), lag, at)

    def families(self) -> list[Family]:
        status = self.status
        return [
            Family(
                "abtest_analyzer_inputs_complete",
                "gauge",
                "1 when the latest round read every ingest replica Prometheus knows, else 0 "
                "(the last good output stays published).",
                [Sample((), int(status.complete))],
            ),
            Family(
                "abtest_analyzer_ingest_replicas",
                "gauge",
                "Ingest replicas Prometheus knows (seen in the last 10 minutes) and those in "
                "its latest scrape.",
                [
                    Sample((("state", "expected"),), status.expected),
                    Sample((("state", "scraped"),), status.present),
                ],
            ),
            Family(
                "abtest_analyzer_source_lag_seconds",
                "gauge",
                "Age of the stalest replica's latest scrape at the latest round.",
                [Sample((), status.lag_seconds)] if status.lag_seconds is not None else [],
            ),
            Family(
                "abtest_analyzer_last_success_timestamp_seconds",
                "gauge",
                "Unix time of the latest round whose inputs were complete.",
                [Sample((), status.last_success)] if status.last_success is not None else [],
            ),
        ]

    async def forward_delete(self, path: str) -> dict[str, int | str]:
        """Send a DELETE to every ingest replica Prometheus scrapes (its targets API
        gives their addresses); answers by replica: the status, or why it failed."""
        targets = await asyncio.to_thread(self._replica_urls)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        results: dict[str, int | str] = {}
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for base in targets:
                try:
                    async with session.delete(base + path, headers=headers) as response:
                        results[base] = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    results[base] = f"failed: {exc}"
        return results

    def _replica_urls(self) -> list[str]:
        wanted = self.replicas
        urls = []
        for target in self.source.targets():
            labels = target.get("labels", {})
            if (labels.get("job", ""), labels.get("instance", "")) in wanted:
                parts = urllib.parse.urlsplit(target.get("scrapeUrl", ""))
                urls.append(f"{parts.scheme}://{parts.netloc}")
        return sorted(set(urls))
