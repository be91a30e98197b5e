"""OTLP protobuf messages for the tests and the benchmarks: the types they build points
from, a string attribute, and the one export request around a list of metrics."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    ResourceMetrics,
    ScopeMetrics,
)

__all__ = [
    "CUMULATIVE",
    "DELTA",
    "AnyValue",
    "ExportMetricsServiceRequest",
    "Histogram",
    "HistogramDataPoint",
    "KeyValue",
    "Metric",
    "export_request",
    "text",
]

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA


def text(key: str, value: str) -> KeyValue:
    """A string attribute."""
    return KeyValue(key=key, value=AnyValue(string_value=value))


def export_request(metrics: Iterable[Metric]) -> ExportMetricsServiceRequest:
    """One request: the metrics under one resource and one scope."""
    return ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=list(metrics))])]
    )
