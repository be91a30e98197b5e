"""The OTLP stream store and identity memos stay bounded in time and memory."""

from __future__ import annotations

import time

from exporter.ingest.otlp import Streams
from exporter.ingest.otlp_state import NO_WINDOWS, Stream


def test_expiring_every_stream_at_once_is_linear() -> None:
    """With `Streams` a plain dict, `expire` took its first item again after each delete:
    a dict skips every deleted slot before its first live one, so forgetting all of the
    default 100k streams at once (every app restarted) took ~5 s under the lock. It must
    cost a few times what putting them there did (a ratio in the same run: ~4 when
    linear, over 100 when quadratic)."""
    count, now = 100_000, [0.0]
    state: Stream = (1, 2, 0, 0.0, b"", (), NO_WINDOWS)
    ratios = []
    for _ in range(3):
        now[0] = 0.0
        streams = Streams(max_streams=count, ttl=60, clock=lambda: now[0])
        states = {f"k{i}".encode(): state for i in range(count)}
        began = time.perf_counter()
        streams.put_many(states, set())
        put = time.perf_counter() - began
        now[0] = 120.0
        began = time.perf_counter()
        streams.expire()
        ratios.append((time.perf_counter() - began) / put)
        assert len(streams) == 0 and streams.evicted == count and streams.horizon == 2
    assert min(ratios) < 16, ratios  # ~4 here


def test_expire_forgets_only_the_silent_ones_oldest_first() -> None:
    now = [0.0]
    streams = Streams(max_streams=10, ttl=60, clock=lambda: now[0])
    for i, key in enumerate([b"a", b"b", b"c"]):
        now[0] = float(i * 10)  # a: 0, b: 10, c: 20
        streams.put(key, (1, 10 + i, 0, 0.0, b"", (), NO_WINDOWS), True)
    now[0] = 30.0
    streams.put(b"a", (1, 20, 0, 0.0, b"", (), NO_WINDOWS), False)  # a sends again: last
    now[0] = 85.0  # cutoff 25: b (10) and c (20) silent, a (30) not
    streams.expire()
    assert list(streams.held) == [b"a"] and streams.horizon == 12 and streams.evicted == 2


def test_a_large_attribute_is_not_remembered_per_point() -> None:
    """The identity memos (by attribute run for the wire, by KeyValues for the view) are
    bounded in entries (32k), not bytes: a point with a 100 kB attribute per request kept
    ~100 kB (~200 kB when its identity is refused: both memos) per request, up to 32k of
    them (3-6 GB)."""
    from exporter.ingest import otlp
    from exporter.ingest.otlp import parse

    from .otlp_messages import (
        CUMULATIVE,
        ExportMetricsServiceRequest,
        Histogram,
        HistogramDataPoint,
        Metric,
        export_request,
        text,
    )
    from .test_otlp_columns import LIMITS, NOW

    def request(i: int, branch: str) -> ExportMetricsServiceRequest:
        names = [
            text("abtest.experiment", "e"),
            text("abtest.branch", branch),
            text("abtest.outcome", "success"),
            text("service", f"{i}" + "x" * 100_000),
        ]
        point = HistogramDataPoint(attributes=names, start_time_unix_nano=1, time_unix_nano=2,
                                   count=1, sum=0.5, bucket_counts=[1])  # fmt: skip
        histogram = Histogram(data_points=[point], aggregation_temporality=CUMULATIVE)
        return export_request([Metric(name=otlp.QUERY_METRIC, unit="s", histogram=histogram)])

    otlp._RUN_IDENTITIES._scopes.clear()
    otlp._RUN_IDENTITIES._held = 0
    otlp._IDENTITIES.answers.clear()
    for i in range(20):
        assert len(parse(request(i, "b"), LIMITS, now=NOW).points) == 1  # taken
        assert not parse(request(i, "b" * 40), LIMITS, now=NOW).points  # refused: too long
    held = sum(map(len, otlp._RUN_IDENTITIES._scopes.values())) + len(otlp._IDENTITIES.answers)
    assert held == 0
