"""OTLP out (optional): the aggregate pushed to an OpenTelemetry Collector.

A MeterProvider with a periodic reader and the SDK's OTLP/HTTP exporter does the
sending. The histogram cannot be rebuilt from observable instruments, so the
exporter is wrapped: at each export it adds one scope built from a single
snapshot (so every family describes the same moment), in the SDK's own data
model. Names follow OTel conventions (dots, units as metadata): abtest.queries,
abtest.query.failures, abtest.query.duration (s), abtest.event.value,
abtest.branch.success_ratio, abtest.branch.latency.mean/min/max (s),
abtest.event.mean, abtest.comparison.<gauge>, abtest.srm.p_value and
abtest.experiment.{progress_ratio,winner}, with the labels as abtest.* attributes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from ..state.abmetrics import ABMetrics, Snapshot
from ..stats.analysis import ExperimentAnalysis
from ..version import __version__
from . import catalog as cat
from .comparisons import ComparisonEngine

SCOPE = InstrumentationScope("abtest-exporter", __version__)


def snapshot_metrics(
    snapshot: Snapshot, analyses: Mapping[str, ExperimentAnalysis], started_ns: int
) -> list[Metric]:
    """The exposition's families as OTel metrics (cumulative since `started_ns`)."""
    view, now = snapshot.view, int(snapshot.taken_at * 1e9)
    c = view.branch
    queries: list[NumberDataPoint] = []
    failures: list[NumberDataPoint] = []
    durations: list[HistogramDataPoint] = []
    gauges: dict[cat.Declared, list[NumberDataPoint]] = {}

    def gauge(family: cat.Declared, attributes: dict[str, str], value: float | None) -> None:
        if value is not None and math.isfinite(value):
            gauges.setdefault(family, []).append(NumberDataPoint(attributes, 0, now, value))

    for row, key in enumerate(view.branch_keys):
        if key is None:
            continue
        attributes = {"abtest.experiment": key[0], "abtest.branch": key[1]}
        n, ok = int(c.n[row]), int(c.ok[row])
        queries.append(NumberDataPoint(attributes, started_ns, now, n))
        failures.append(NumberDataPoint(attributes, started_ns, now, n - ok))
        durations.append(
            HistogramDataPoint(
                attributes,
                started_ns,
                now,
                n,
                float(c.total[row]),
                [int(b) for b in c.buckets[row]],
                list(view.bounds),
                float(c.lo[row]) if n else 0.0,
                float(c.hi[row]) if n else 0.0,
            )
        )
        if n:
            gauge(cat.SUCCESS_RATIO, attributes, ok / n)
            gauge(cat.LATENCY_MEAN, attributes, float(c.total[row]) / n)
            gauge(cat.LATENCY_MIN, attributes, float(c.lo[row]))
            gauge(cat.LATENCY_MAX, attributes, float(c.hi[row]))
    values: list[HistogramDataPoint] = []
    e = view.event
    for row, event_key in enumerate(view.event_keys):
        if event_key is None:
            continue
        attributes = {
            "abtest.experiment": event_key[0],
            "abtest.branch": event_key[1],
            "abtest.event": event_key[2],
        }
        count, total = int(e.count[row]), float(e.total[row])
        values.append(
            HistogramDataPoint(attributes, started_ns, now, count, total, [count], [], 0.0, 0.0)
        )
        gauge(cat.EVENT_MEAN, attributes, float(e.mean[row]) if count else None)
    for name, analysis in analyses.items():
        if analysis.srm is not None:
            gauge(cat.SRM_P_VALUE, {"abtest.experiment": name}, analysis.srm.p_value)
        gauge(cat.PROGRESS, {"abtest.experiment": name}, analysis.progress)
        if analysis.winner is not None:
            winner = {"abtest.experiment": name, "abtest.branch": analysis.winner}
            gauge(cat.WINNER, winner, 1.0)
        for branch, comparisons in analysis.comparisons.items():
            for m in comparisons:
                attributes = {
                    "abtest.experiment": name,
                    "abtest.control": analysis.control,
                    "abtest.branch": branch,
                    "abtest.metric": m.metric,
                    "abtest.event": m.event,
                }
                for (field, _), declared in zip(
                    cat.COMPARISON_GAUGES, cat.COMPARISONS, strict=True
                ):
                    value = getattr(m, field)
                    gauge(declared, attributes, float(value) if value is not None else None)
    cumulative = AggregationTemporality.CUMULATIVE
    metrics = [
        _metric(cat.QUERIES, Sum(queries, cumulative, True)),
        _metric(cat.FAILURES, Sum(failures, cumulative, True)),
        _metric(cat.DURATION, Histogram(durations, cumulative)),
        _metric(cat.EVENT_VALUE, Histogram(values, cumulative)),
    ]
    metrics.extend(
        _metric(family, Gauge(points))
        for family, points in sorted(gauges.items(), key=lambda item: item[0].otel)
    )
    return [m for m in metrics if m.data.data_points]


def _metric(family: cat.Declared, data: Any) -> Metric:
    return Metric(family.otel, family.help, family.unit, data)


class SnapshotExporter(MetricExporter):
    """Wraps an exporter: each export carries the aggregate as it is at that moment."""

    def __init__(
        self, inner: MetricExporter, metrics: ABMetrics, engine: ComparisonEngine | None
    ) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._metrics = metrics
        self._engine = engine
        self._started_ns = int(metrics.now() * 1e9)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        snapshot = self._metrics.snapshot()
        analyses = self._engine.latest.analyses if self._engine is not None else {}
        ours = ScopeMetrics(SCOPE, snapshot_metrics(snapshot, analyses, self._started_ns), "")
        resource_metrics: Sequence[ResourceMetrics] = metrics_data.resource_metrics
        first = resource_metrics[0]
        merged = ResourceMetrics(first.resource, [*first.scope_metrics, ours], first.schema_url)
        return self._inner.export(
            MetricsData([merged, *resource_metrics[1:]]), timeout_millis, **kwargs
        )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def start_push(
    metrics: ABMetrics,
    endpoint: str,
    interval: float,
    engine: ComparisonEngine | None = None,
    service_name: str = "abtest-exporter",
) -> MeterProvider:
    """Push every `interval` seconds to an OTLP/HTTP endpoint (`.../v1/metrics`).
    Call `.shutdown()` on the result to stop (it pushes one last time)."""
    exporter = SnapshotExporter(OTLPMetricExporter(endpoint=endpoint), metrics, engine)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval * 1000)
    provider = MeterProvider(
        resource=Resource.create({"service.name": service_name, "service.version": __version__}),
        metric_readers=[reader],
    )
    # one instrument of our own, so the reader always has something to send with ours
    provider.get_meter("abtest-exporter").create_observable_gauge(
        "abtest.exporter.up", callbacks=[_up], description="1 while the exporter runs."
    )
    return provider


def _up(options: Any) -> list[Any]:
    from opentelemetry.metrics import Observation

    return [Observation(1)]
