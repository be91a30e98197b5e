"""The column-wise OTLP paths (`otlp_wire` in `parse`, `otlp_plain` in
`Receiver.increments`, `limits.held_rows` in `ABMetrics._admit_parts` with its rows
handed to `add_parts`, batched stream puts) answer exactly as the point-by-point
reference (points read through the view): the same parts, refusals, duplicates, stream
states (and their order), and aggregate, over random exports with restarts, retries,
late points, bounds changes, refused sums, delta points, streams sent twice, stream and
series limits, counts near MAX_COUNT, streams forgotten by their ttl, and states kept in
a data file (read back on demand, and after a restart)."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exporter import ABMetrics
from exporter.core import limits
from exporter.core.aggregate import DEFAULT_BUCKETS, PartColumns
from exporter.core.limits import Limits
from exporter.core.validation import MAX_COUNT
from exporter.ingest import otlp
from exporter.ingest.otlp import OtlpLimits, Received, Receiver, parse
from exporter.ingest.otlp_state import BUCKETS
from exporter.state.store import Store

from .otlp_messages import (
    CUMULATIVE,
    DELTA,
    Histogram,
    HistogramDataPoint,
    KeyValue,
    Metric,
    export_request,
    text,
)

T0 = 1_700_000_000_000_000_000
NOW = 2_000_000_000.0
STREAMS = 8  # 0-3: durations in s, 4-5: events, 6-7: durations in ms
BOUNDS = ([0.005, 0.05], [0.01], [1.0, 10.0], [5.0, 50.0])
EVENTS = (4, 5)
MILLISECONDS = (6, 7)


class App:
    """Cumulative streams as an app keeps them, and what it sends of them."""

    def __init__(self) -> None:
        self.start = [1] * STREAMS
        self.bounds = [
            BOUNDS[2] if s in EVENTS else BOUNDS[3] if s in MILLISECONDS else BOUNDS[0]
            for s in range(STREAMS)
        ]
        self.buckets = [[0] * (len(b) + 1) for b in self.bounds]
        self.clock = 10
        self.last: list[HistogramDataPoint | None] = [None] * STREAMS

    def point(self, stream: int, op: str, grow: int, rng: random.Random) -> HistogramDataPoint:
        if op == "same" and (last := self.last[stream]) is not None:
            return last  # a retry: exactly what was sent
        self.clock += 1
        if op == "restart":
            self.start[stream] = self.clock
            self.buckets[stream] = [0] * len(self.buckets[stream])
        if op == "bounds" and stream < 4:
            self.bounds[stream] = BOUNDS[1] if self.bounds[stream] == BOUNDS[0] else BOUNDS[0]
            self.buckets[stream] = [0] * (len(self.bounds[stream]) + 1)
            self.start[stream] = self.clock
        scale = 2**50 if op == "big" else 1
        buckets = [b + rng.randint(0, grow) * scale for b in self.buckets[stream]]
        if op == "down" and any(buckets):
            buckets[rng.randrange(len(buckets))] = 0  # went down, same start
        if sum(buckets) > MAX_COUNT:
            buckets = [0] * len(buckets)
        end = self.clock if op != "late" else self.clock - 5
        if op not in ("down", "late"):
            self.buckets[stream] = buckets
        count = sum(buckets)
        total = 0.001 * count if op != "badsum" else 0.0
        point = HistogramDataPoint(
            attributes=attributes(stream),
            start_time_unix_nano=T0 + self.start[stream],
            time_unix_nano=T0 + end * 10**9,
            count=count,
            sum=2.0 * count if stream in EVENTS else total,
            bucket_counts=buckets,
            explicit_bounds=self.bounds[stream],
        )
        self.last[stream] = point
        return point


def attributes(stream: int) -> list[KeyValue]:
    names = [text("abtest.experiment", f"e{stream % 2}"), text("abtest.branch", f"b{stream % 3}")]
    if stream in MILLISECONDS:  # a branch of their own: a stream apart from 0-3's
        names[1] = text("abtest.branch", f"m{stream}")
    if stream not in EVENTS:
        return [*names, text("abtest.outcome", "success" if stream % 2 else "failure")]
    return [*names, text("abtest.event", f"v{stream}")]


def body(points: list[tuple[int, HistogramDataPoint]], deltas: int) -> bytes:
    queries = [p for s, p in points if s < 4]
    events = [p for s, p in points if s in EVENTS]
    milliseconds = [p for s, p in points if s in MILLISECONDS]
    metrics = [
        Metric(name=otlp.QUERY_METRIC, unit="s",
               histogram=Histogram(data_points=queries, aggregation_temporality=CUMULATIVE)),
        Metric(name=otlp.EVENT_METRIC,
               histogram=Histogram(data_points=events, aggregation_temporality=CUMULATIVE)),
        Metric(name=otlp.QUERY_METRIC, unit="ms",
               histogram=Histogram(data_points=milliseconds, aggregation_temporality=CUMULATIVE)),
    ]  # fmt: skip
    if deltas:
        delta = HistogramDataPoint(  # a stream of its own (see test_delta_after_cumulative)
            attributes=attributes(0)[:1] + attributes(3)[1:], start_time_unix_nano=T0 + deltas,
            time_unix_nano=T0 + deltas + 1, count=1, sum=0.001, bucket_counts=[1],
        )  # fmt: skip
        metrics.append(
            Metric(name=otlp.QUERY_METRIC, unit="ms",
                   histogram=Histogram(data_points=[delta], aggregation_temporality=DELTA))
        )  # fmt: skip
    return bytes(export_request(metrics).SerializeToString())


@contextmanager
def reference() -> Iterator[None]:
    """Only the point-by-point paths (points read through the view, not the wire)."""
    with (
        patch.object(otlp, "_wire_chunk", lambda *_: None),
        patch.object(Receiver, "_plain", lambda *_: False),
        patch.object(limits, "held_rows", lambda *_: None),
        patch.object(otlp.Streams, "put_many", put_one_by_one),
    ):
        yield


def put_one_by_one(streams: otlp.Streams, states: dict[bytes, Any], new: set[bytes]) -> None:
    for key, state in states.items():
        streams.put(key, state, key in new)


class Exporter:
    def __init__(self, otlp_limits: OtlpLimits, series: Limits, directory: Path | None) -> None:
        self.now = [0.0]
        self.otlp_limits, self.series, self.directory = otlp_limits, series, directory
        self.store: Store | None = None
        self.open()

    def open(self) -> None:
        """A fresh process; with a directory, its stream states and counts read back from
        the data file (states leave memory and are read back on demand)."""
        receiver = Receiver(DEFAULT_BUCKETS, self.otlp_limits, clock=lambda: self.now[0])
        self.metrics = ABMetrics(limits=self.series, receiver=receiver, clock=lambda: 5.0)
        if self.directory is not None:
            self.store = Store(self.directory, self.metrics)
            self.store.open()

    def restart(self) -> None:
        if self.store is not None:
            self.store.close()
        self.open()

    def send(self, data: bytes) -> Received:
        parsed = parse(otlp.decode(data, "application/x-protobuf"), OtlpLimits(), now=NOW)
        _, received = self.metrics.record_otlp(parsed)
        assert received is not None
        if self.store is not None:
            assert self.store.commit()
        return received

    def state(self) -> Any:
        streams = self.metrics.receiver.streams
        held = [(k, otlp._dump(s), streams.seen(k)) for k, s in streams.held.items()]
        aggregate = self.metrics._aggregate
        tables = []
        for table in (aggregate.branches, aggregate.events):
            size = table.size
            columns = {  # stamps are drawn from one global counter: they differ anyway
                n: c[:size].tolist() for n, c in table.columns.items() if n != "stamp"
            }
            tables.append((list(table.keys), dict(table.ids), repr(columns)))
        figures = (streams.horizon, streams.evicted, streams.stored, len(streams), streams.recalled)
        return held, figures, tables, aggregate.experiments, aggregate.event_names


def answer(received: Received) -> Any:
    refused = received.refused
    return (
        refused.points, dict(refused.records), refused.messages, received.duplicates,
        received.uncertain, received.new_streams, sorted(received.created),
        columns(received.branches), repr(asdict(received.events)),
        received.branch_streams, received.event_streams,
        [(k, otlp._dump(s)) for k, s in received.updates.items()],
    )  # fmt: skip


def columns(parts: PartColumns) -> str:
    """The parts as lists (an array's repr rounds), each array's type with it."""
    return repr([(f.name, str(getattr(parts, f.name).dtype), getattr(parts, f.name).tolist())
                 if f.name != "keys" else parts.keys for f in fields(parts)])  # fmt: skip


OPS = ("next", "same", "late", "restart", "bounds", "down", "badsum", "big")
ops = st.one_of(
    # steady exports, any order and subset: the common case, which the fast path takes
    st.permutations(range(STREAMS)).flatmap(
        lambda order: st.integers(1, STREAMS).map(lambda n: [(s, "next") for s in order[:n]])
    ),
    st.lists(st.tuples(st.integers(0, STREAMS - 1), st.sampled_from(OPS)), max_size=8),
)
export = st.tuples(
    ops,
    st.integers(0, 3),  # growth
    st.integers(0, 3),  # a delta point (1 in 4)
    st.sampled_from([0.0, 0.0, 1.0, 100.0]),  # clock advance (ttl 50)
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(export, min_size=1, max_size=12),
    st.sampled_from([4, 100]),
    st.sampled_from([Limits(), Limits(max_branches=2), Limits(max_series=5)]),
    st.integers(0, 2**32),
    st.sampled_from([4096, 2]),  # points per chunk: several chunks may share a shape
    st.booleans(),  # with a data file: states on disk, read back; a restart at the end
)
def test_column_paths_answer_as_the_reference(
    exports: list[tuple[list[tuple[int, str]], int, int, float]],
    max_streams: int,
    series: Limits,
    seed: int,
    chunk: int,
    stored: bool,
) -> None:
    with tempfile.TemporaryDirectory(prefix="abtest-fast-") as directory:
        compare(exports, max_streams, series, seed, chunk, Path(directory) if stored else None)


def compare(
    exports: list[tuple[list[tuple[int, str]], int, int, float]],
    max_streams: int,
    series: Limits,
    seed: int,
    chunk: int,
    directory: Path | None,
) -> None:
    otlp_limits = OtlpLimits(max_streams=max_streams, stream_ttl=50.0)
    fast, slow = (
        Exporter(otlp_limits, series, directory / name if directory else None)
        for name in ("fast", "slow")
    )
    app, rng = App(), random.Random(seed)
    # every stream once first, growing: then the common case comes up often
    exports = [([(s, "next") for s in range(STREAMS)], 1, 0, 0.0), *exports]
    taken: list[bool] = []
    reasons: set[str] = set()
    original = Receiver._plain

    def spy(self: Receiver, *args: Any) -> bool:
        taken.append(original(self, *args))
        return taken[-1]

    for ops, grow, deltas, advance in exports:
        points = [(s, app.point(s, op, grow, rng)) for s, op in ops]
        data = body(points, app.clock if deltas == 1 else 0)
        for exporter in (fast, slow):
            exporter.now[0] += advance
        with patch.object(otlp, "_CHUNK", chunk):
            with patch.object(Receiver, "_plain", spy):
                got = fast.send(data)
            with reference():
                expected = slow.send(data)
        assert answer(got) == answer(expected)
        assert fast.state() == slow.state()
        reasons.update(got.refused.records)
        if got.duplicates:
            reasons.add("duplicates")
        if got.uncertain:
            reasons.add("uncertain")
    event(f"plain path taken {min(sum(taken), 3)}+ times")
    for seen in sorted(reasons):
        event(f"seen: {seen}")
    if directory is not None:  # what each wrote reads back the same
        for exporter in (fast, slow):
            exporter.restart()
        assert fast.state() == slow.state()
        for exporter in (fast, slow):
            assert exporter.store is not None
            exporter.store.close()


def test_the_plain_path_takes_steady_exports() -> None:
    """The case the fast path is for does take it (else the test above proves little)."""
    exporter = Exporter(OtlpLimits(), Limits(), None)
    app, rng = App(), random.Random(1)
    taken = []
    original = Receiver._plain

    def spy(self: Receiver, *args: Any) -> bool:
        taken.append(original(self, *args))
        return taken[-1]

    recorded = exporter.metrics.stats
    with patch.object(Receiver, "_plain", spy):
        for _ in range(3):  # new streams, then steady
            exporter.send(body([(s, app.point(s, "next", 2, rng)) for s in range(STREAMS)], 0))
        before = queries(app)
        assert recorded().total_queries_recorded == before
        # each state owns its counts: none keeps a whole request's table alive
        assert {type(s[BUCKETS]) for s in exporter.metrics.receiver.streams.held.values()} == {
            bytes
        }
        exporter.send(body([(s, app.point(s, "restart", 2, rng)) for s in range(STREAMS)], 0))
    assert taken == [True, True, True, False]  # a restart: point by point
    assert recorded().total_queries_recorded == before + queries(app)


def queries(app: App) -> int:
    return sum(sum(app.buckets[s]) for s in range(STREAMS) if s not in EVENTS)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(1e-4, 1e5), max_size=12, unique=True).map(sorted),
    st.sampled_from([1.0, 1000.0]),
    st.integers(0, 5),
    st.integers(0, 2**32),
)
def test_rebinning_adds_each_source_bucket_to_its_target(
    bounds: list[float], factor: float, rows: int, seed: int
) -> None:
    """`_rebinned` (runs of sources added up) is the product with the 0/1 matrix that
    sends each source bucket to its target, exactly, for any ascending bounds."""
    receiver = Receiver(DEFAULT_BUCKETS)
    rng = np.random.default_rng(seed)
    increments = rng.integers(0, 2**50, (rows, len(bounds) + 1), dtype=np.int64)
    matrix = np.zeros((len(bounds) + 1, len(DEFAULT_BUCKETS) + 1), dtype=np.int64)
    matrix[np.arange(len(bounds) + 1), receiver._targets(tuple(bounds), factor)] = 1
    got = receiver._rebinned(increments, tuple(bounds), factor)
    assert got.dtype == np.int64 and got.tolist() == (increments @ matrix).tolist()
