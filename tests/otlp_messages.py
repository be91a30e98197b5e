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
    "field",
    "query_point",
    "text",
    "varint",
]

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA


def text(key: str, value: str) -> KeyValue:
    """A string attribute."""
    return KeyValue(key=key, value=AnyValue(string_value=value))


def query_point(branch: str, buckets: list[int], end: int) -> HistogramDataPoint:
    """A good query point of the usual layout: one bound (0.5), min 0.25, max 0.75, the
    sum half the count, experiment "exp", outcome success, started at 1."""
    count = sum(buckets)
    return HistogramDataPoint(
        attributes=[
            text("abtest.experiment", "exp"),
            text("abtest.branch", branch),
            text("abtest.outcome", "success"),
        ],
        start_time_unix_nano=1,
        time_unix_nano=end,
        count=count,
        sum=0.5 * count,
        min=0.25,
        max=0.75,
        bucket_counts=buckets,
        explicit_bounds=[0.5],
    )


def export_request(metrics: Iterable[Metric]) -> ExportMetricsServiceRequest:
    """One request: the metrics under one resource and one scope."""
    return ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=list(metrics))])]
    )


def varint(value: int) -> bytes:
    """A protobuf varint, in as few bytes as it takes."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, written by hand (for bodies no runtime would write)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload
