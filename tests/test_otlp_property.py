"""Issue 9: OTLP requests mixing valid and invalid points, retried, interleaved with
restarts (clean and kill -9 alike: durability is a commit after each acknowledged
request, as in sync mode) and with stream states leaving memory. Every valid point is
counted exactly once; nothing else is counted."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from exporter import ABMetrics
from exporter.core.aggregate import DEFAULT_BUCKETS
from exporter.ingest.otlp import OtlpLimits, Receiver, parse
from exporter.state.store import Store

STREAMS = 4  # per temporality
T0 = 1_700_000_000_000_000_000
LIMITS = OtlpLimits(max_streams=2, stream_ttl=60.0)  # memory holds two: the rest on disk


def attributes(stream: int) -> list[dict[str, Any]]:
    return [
        {"key": "abtest.experiment", "value": {"stringValue": "prop"}},
        {"key": "abtest.branch", "value": {"stringValue": f"b{stream}"}},
        {"key": "abtest.outcome", "value": {"stringValue": "success"}},
    ]


def point(stream: int, start: int, end: int, count: int, **extra: Any) -> dict[str, Any]:
    """Shapes vary by stream: within the buckets, no buckets at all, all in the overflow
    bucket with no min or max (the restore must still find every row believable)."""
    shape = {
        0: {"sum": 0.002 * count, "bucketCounts": [str(count), "0"], "explicitBounds": [0.005]},
        1: {"sum": 0.3 * count, "bucketCounts": [str(count)], "explicitBounds": []},
        2: {"sum": 1.5 * count, "bucketCounts": ["0", str(count)], "explicitBounds": [0.005]},
        3: {"sum": 0.004 * count, "bucketCounts": [str(count), "0"], "explicitBounds": [0.005],
            "min": 0.001, "max": 0.005},
    }[stream % 4]  # fmt: skip
    return {
        "attributes": attributes(stream),
        "startTimeUnixNano": str(start),
        "timeUnixNano": str(end),
        "count": str(count),
        **shape,
        **extra,
    }


def request(points: list[dict[str, Any]], temporality: int, unit: str = "s") -> bytes:
    body = {
        "resourceMetrics": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "p"}}]},
            "scopeMetrics": [{"metrics": [{
                "name": "abtest.query.duration", "unit": unit,
                "histogram": {"dataPoints": points, "aggregationTemporality": temporality},
            }]}],
        }]
    }  # fmt: skip
    message = ExportMetricsServiceRequest()
    json_format.ParseDict(body, message)
    return bytes(message.SerializeToString())


@dataclass
class App:
    """What the app recorded: a cumulative total per stream, delta windows per stream."""

    cumulative: list[int] = field(default_factory=lambda: [0] * STREAMS)
    unsent: list[int] = field(default_factory=lambda: [0] * STREAMS)  # delta, since last
    clock: int = T0
    expected: int = 0  # what the exporter must have counted
    exported: list[int] = field(default_factory=lambda: [0] * STREAMS)  # cumulative, counted


class Exporter:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.now = [0.0]
        self.open()

    def open(self) -> None:
        receiver = Receiver(DEFAULT_BUCKETS, LIMITS, clock=lambda: self.now[0])
        self.metrics = ABMetrics(receiver=receiver)
        self.store = Store(self.directory, self.metrics)
        self.store.open()

    def send(self, body: bytes) -> int:
        """Returns the points refused; the write is durable before it is acknowledged."""
        from exporter.ingest.otlp import decode

        parsed = parse(decode(body, "application/x-protobuf"), LIMITS)
        _, received = self.metrics.record_otlp(parsed)
        assert self.store.commit()
        assert received is not None
        return received.refused.points

    def crash(self) -> None:
        """kill -9: nothing after the last commit survives, the lock goes with the process."""
        self.store._lock.release()
        self.open()

    def total(self) -> int:
        return self.metrics.stats().total_queries_recorded


action = st.one_of(
    st.tuples(st.just("record"), st.integers(0, STREAMS - 1), st.integers(1, 50)),
    st.tuples(
        st.just("cumulative"), st.sets(st.integers(0, STREAMS - 1), min_size=1), st.booleans()
    ),
    st.tuples(st.just("delta"), st.sets(st.integers(0, STREAMS - 1), min_size=1), st.booleans()),
    st.tuples(st.just("retry"), st.integers(0, 1000), st.just(False)),
    st.tuples(st.just("crash"), st.just(0), st.just(False)),
    st.tuples(st.just("silence"), st.just(0), st.just(False)),  # states leave memory
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(action, min_size=1, max_size=25))
def test_valid_points_are_counted_exactly_once(actions: list[tuple[Any, Any, Any]]) -> None:
    directory = Path(tempfile.mkdtemp(prefix="abtest-prop-"))
    exporter = Exporter(directory)
    app = App()
    sent: list[bytes] = []
    try:
        for kind, what, with_bad in actions:
            app.clock += 10**9
            if kind == "record":
                app.cumulative[what] += with_bad
                app.unsent[what] += with_bad
            elif kind in ("cumulative", "delta"):
                points = []
                for stream in sorted(what):
                    if kind == "cumulative":
                        total = app.cumulative[stream]
                        if total:
                            points.append(point(stream, T0, app.clock, total))
                            app.expected += total - app.exported[stream]
                            app.exported[stream] = total
                    elif app.unsent[stream]:
                        # a delta stream of its own (another resource would do as well)
                        start = app.clock - 10**9 + 1
                        points.append(point(stream + 100, start, app.clock, app.unsent[stream]))
                        app.expected += app.unsent[stream]
                        app.unsent[stream] = 0
                bad = [point(0, T0, app.clock, 2**63 - 1)] if with_bad else []
                if points or bad:
                    body = request(points + bad, 2 if kind == "cumulative" else 1)
                    assert exporter.send(body) == len(bad)
                    sent.append(body)
                    if with_bad:  # a request of another unit: refused whole
                        exporter.send(request(points, 2, unit="us"))
            elif kind == "retry" and sent:
                exporter.send(sent[what % len(sent)])
            elif kind == "crash":
                exporter.crash()
            elif kind == "silence":
                exporter.now[0] += 3600.0
            assert exporter.total() == app.expected
        figures = exporter.metrics.stream_figures()
        event(f"stream states read back from disk: {'yes' if figures.recalled else 'no'}")
    finally:
        exporter.store.close()
        shutil.rmtree(directory)
