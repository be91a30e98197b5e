"""Review of perf-otlp4: reproductions of what it broke (see the commits' messages)."""

from __future__ import annotations

import time

from exporter.ingest.otlp import Streams
from exporter.ingest.otlp_state import NO_WINDOWS


def test_expiring_every_stream_at_once_is_not_quadratic() -> None:
    """With `Streams` a plain dict, `expire` took its first item again after each delete:
    a dict skips every deleted slot before its first live one, so forgetting all of the
    default 100k streams at once (every app restarted) took ~5 s under the lock (an
    OrderedDict: 0.15 s)."""
    now = [0.0]
    streams = Streams(max_streams=100_000, ttl=60, clock=lambda: now[0])
    state = (1, 2, 0, 0.0, b"", (), NO_WINDOWS)
    streams.put_many({f"k{i}".encode(): state for i in range(100_000)}, set())
    now[0] = 120.0
    began = time.perf_counter()
    streams.expire()
    assert len(streams) == 0 and streams.evicted == 100_000 and streams.horizon == 2
    assert time.perf_counter() - began < 1.5  # fixed: ~0.15 s; quadratic: ~5 s


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
