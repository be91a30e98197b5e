"""The exporter's own health figures (`abtest_exporter_*`)."""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections import Counter

from ..core.families import Family, Sample
from ..ingest.otlp import Received, StreamFigures
from ..outputs.process import ProcessMetrics
from ..version import __version__

log = logging.getLogger(__name__)
_LOG_EVERY = 10.0  # seconds between two warnings about refused OTLP points


class SelfMetrics:
    """Counts of what came in and what was turned away, and why."""

    def __init__(self, process: ProcessMetrics | None = None) -> None:
        self.process = process or ProcessMetrics()  # process_*, python_* (the library's own)
        self._lock = threading.Lock()
        self.accepted: Counter[tuple[str, str]] = Counter()  # (source, kind)
        self.rejected: Counter[tuple[str, str]] = Counter()  # (source, reason)
        self.duplicate_points: Counter[str] = Counter()  # by source
        self.repeated_requests: Counter[str] = Counter()  # idempotency-key repeats, by source
        self.uncertain_points = 0
        self.refused_connections = 0
        self._refused_since_log: Counter[str] = Counter()
        self._logged_at = -_LOG_EVERY
        self.expired_experiments = 0
        self.scrapes = 0
        self.last_render_seconds = 0.0
        self.started = time.time()
        self.role = "single"  # set by the server: the analyzer selects replicas by it

    def accept_records(self, source: str, queries: int, events: int) -> None:
        """Count a batch's accepted queries and events, under one taking of the lock."""
        with self._lock:
            accepted = self.accepted
            if queries:
                accepted[source, "query"] += queries
            if events:
                accepted[source, "event"] += events

    def reject(self, source: str, reason: str, count: int = 1) -> None:
        with self._lock:
            self.rejected[source, reason] += count

    def duplicates(self, source: str, count: int) -> None:
        if count:
            with self._lock:
                self.duplicate_points[source] += count

    def repeated(self, source: str) -> None:
        with self._lock:
            self.repeated_requests[source] += 1

    def connection_refused(self) -> None:
        with self._lock:
            self.refused_connections += 1

    def otlp(self, received: Received) -> None:
        """Count what an OTLP request applied (in records) and refused; say what was
        refused in the log (the SDK drops partial_success replies on the floor)."""
        refused = received.refused
        with self._lock:
            self.accepted["otlp", "query"] += int(received.branches.n.sum())
            self.accepted["otlp", "event"] += sum(received.events.count)
            for reason, count in refused.records.items():
                self.rejected["otlp", reason] += count
            self.duplicate_points["otlp"] += received.duplicates
            self.uncertain_points += received.uncertain
            if not refused.points:
                return
            self._refused_since_log.update(refused.records)
            now = time.monotonic()
            if now - self._logged_at < _LOG_EVERY:
                return
            self._logged_at, counts = now, self._refused_since_log
            self._refused_since_log = Counter()
        log.warning(
            "OTLP records refused (%s): %s",
            ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())),
            "; ".join(refused.messages),
        )

    def expired(self) -> None:
        with self._lock:
            self.expired_experiments += 1

    def scraped(self, render_seconds: float) -> None:
        with self._lock:
            self.scrapes += 1
            self.last_render_seconds = render_seconds

    def families(
        self, branches: int, events: int, experiments: int, streams: StreamFigures
    ) -> list[Family]:
        with self._lock:
            accepted = sorted(self.accepted.items())
            rejected = sorted(self.rejected.items())
            scrapes, render_seconds = self.scrapes, self.last_render_seconds
            duplicates = sorted(self.duplicate_points.items())
            repeated = sorted(self.repeated_requests.items())
            uncertain, refused_connections = self.uncertain_points, self.refused_connections
        return [
            Family(
                "abtest_exporter_repeated_requests_total",
                "counter",
                "Writes repeating an Idempotency-Key already applied: answered, not applied.",
                [Sample((("source", s),), n) for s, n in repeated]
                or [Sample((("source", "http"),), 0)],
            ),
            Family(
                "abtest_exporter_otlp_uncertain_points_total",
                "counter",
                "Cumulative OTLP points of a stream possibly forgotten (silent past "
                "--otlp-stream-ttl): taken as a baseline, not counted.",
                [Sample((), uncertain)],
            ),
            Family(
                "abtest_exporter_otlp_streams",
                "gauge",
                "OTLP stream states held (the last point of each stream).",
                [Sample((), streams.held)],
            ),
            Family(
                "abtest_exporter_otlp_stream_evictions_total",
                "counter",
                "OTLP stream states forgotten after --otlp-stream-ttl without a point.",
                [Sample((), streams.evicted)],
            ),
            Family(
                "abtest_exporter_refused_connections_total",
                "counter",
                "Connections closed at once because --max-connections were open.",
                [Sample((), refused_connections)],
            ),
            Family(
                "abtest_exporter_build_info",
                "gauge",
                "Version of the exporter and of Python, and the process's --role (always 1).",
                [
                    Sample(
                        (
                            ("version", __version__),
                            ("python", platform.python_version()),
                            ("role", self.role),
                        ),
                        1,
                    )
                ],
            ),
            Family(
                "abtest_exporter_start_time_seconds",
                "gauge",
                "Unix time the exporter started.",
                [Sample((), self.started)],
            ),
            Family(
                "abtest_exporter_accepted_records_total",
                "counter",
                "Records applied to the aggregate, by source and kind (query or event).",
                [Sample((("source", s), ("kind", k)), n) for (s, k), n in accepted]
                or [Sample((("source", "http"), ("kind", "query")), 0)],
            ),
            Family(
                "abtest_exporter_rejected_records_total",
                "counter",
                "Records refused, by source and reason; nothing of a refused batch is applied.",
                [Sample((("source", s), ("reason", r)), n) for (s, r), n in rejected]
                or [Sample((("source", "http"), ("reason", "invalid_json")), 0)],
            ),
            Family(
                "abtest_exporter_duplicate_points_total",
                "counter",
                "OTLP points skipped as retries or late arrivals already counted, by source.",
                [Sample((("source", s),), n) for s, n in duplicates]
                or [Sample((("source", "otlp"),), 0)],
            ),
            Family(
                "abtest_exporter_series",
                "gauge",
                "Series held in memory, by kind.",
                [
                    Sample((("kind", "branch"),), branches),
                    Sample((("kind", "event"),), events),
                ],
            ),
            Family(
                "abtest_exporter_experiments",
                "gauge",
                "Experiments held in memory.",
                [Sample((), experiments)],
            ),
            Family(
                "abtest_exporter_expired_experiments_total",
                "counter",
                "Experiments removed after going without writes for --expire-after.",
                [Sample((), self.expired_experiments)],
            ),
            Family(
                "abtest_exporter_scrapes_total",
                "counter",
                "Scrapes of /metrics served.",
                [Sample((), scrapes)],
            ),
            Family(
                "abtest_exporter_render_duration_seconds",
                "gauge",
                "Time the previous scrape took to render.",
                [Sample((), render_seconds)],
            ),
        ]
