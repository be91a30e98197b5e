"""Guards an adversarial review found missing: no series past MAX_COUNT on any way in,
no write lost to expiry racing it, no refused name kept by the name memo."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from exporter import ABMetrics
from exporter.core.aggregate import BranchParts, EventParts, Records
from exporter.core.limits import LimitError
from exporter.core.validation import MAX_COUNT
from exporter.state.store import Store


def _full_part(metrics: ABMetrics, key: tuple[str, str], n: int) -> BranchParts:
    parts = BranchParts()
    buckets = [n] + [0] * len(metrics.buckets)  # all in the first bucket (0 ms)
    parts.append(key, n, 0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, buckets)
    return parts


def test_record_batch_never_takes_a_series_past_max_count(tmp_path: Path) -> None:
    """record_parts and record_otlp refuse a part that would take a series past MAX_COUNT
    (limit_count); record_batch (POST /api/v1/records: records and `parts`) checks no
    count, neither on the pending path nor on the direct one. The acknowledged series
    then holds more than MAX_COUNT and the data file no longer restores."""
    metrics = ABMetrics()
    store = Store(tmp_path, metrics)
    store.open()
    try:
        metrics.record_batch(
            Records(), parts=(_full_part(metrics, ("e", "c"), MAX_COUNT), EventParts())
        )
        one = Records()
        one.add_query(("e", "c"), 1.0, True, 2.0)
        with contextlib.suppress(LimitError):  # refused, counted: fine
            metrics.record_batch(one)  # a single record: the pending path
        assert store.commit()
    finally:
        store.close()
    restored = ABMetrics()
    Store(tmp_path, restored).open()  # raises: "counts out of range"
    assert restored.stats().total_queries_recorded <= MAX_COUNT


def test_http_parts_past_max_count_are_acknowledged_then_the_file_will_not_restore(
    tmp_path: Path,
) -> None:
    """Over HTTP: a part of MAX_COUNT queries (a valid part), then one query record of the
    same series. Both are answered 200 and durable; the next start cannot restore."""
    from exporter.core.aggregate import DEFAULT_BUCKETS
    from exporter.serve.settings import Settings

    from .helpers import http
    from .test_exactly_once import Server

    part = {
        "experiment": "e", "branch": "control", "queries": MAX_COUNT, "successes": 0,
        "latency_sum_ms": 0.0, "latency_m2_ms2": 0.0, "latency_min_ms": 0.0,
        "latency_max_ms": 0.0, "buckets": [MAX_COUNT] + [0] * len(DEFAULT_BUCKETS),
    }  # fmt: skip
    query = {"experiment": "e", "branch": "control", "latency_ms": 1.0, "success": True}
    with Server(Settings(data_dir=str(tmp_path)), lambda app: None) as server:
        first = http(server.url + "/api/v1/records", {"parts": [part]})
        second = http(server.url + "/api/v1/records", {"queries": [query]})
    assert first[0] == 200, first
    restorable = True
    try:
        Store(tmp_path, ABMetrics()).open()
    except Exception:
        restorable = False
    # a series cannot hold more than MAX_COUNT: the second write must be refused (4xx,
    # nothing applied), not acknowledged into a data file that no longer restores
    assert (second[0], restorable) == (422, True), second


class _CountingLock:
    """The manager's lock, counting how often it is taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> None:
        self._lock.acquire()
        self.taken += 1

    def __exit__(self, *_: object) -> None:
        self._lock.release()


def test_expire_finds_and_removes_idle_experiments_in_one_hold_of_the_lock() -> None:
    """expire() runs in a thread while requests are applied: had it let the lock go
    between finding an experiment idle and removing it, a write landing in between would
    be acknowledged and then removed with an experiment no longer idle."""
    now = [1000.0]
    metrics = ABMetrics(clock=lambda: now[0])
    for experiment in ("old", "older"):
        first = Records()
        first.add_query((experiment, "c"), 1.0, True, now[0])
        metrics.record_batch(first)
    now[0] += 3600.0
    fresh = Records()
    fresh.add_query(("fresh", "c"), 1.0, True, now[0])
    metrics.record_batch(fresh)
    lock = _CountingLock()
    metrics._lock = lock  # type: ignore[assignment]
    assert sorted(metrics.expire(idle_for=600.0)) == ["old", "older"]
    assert lock.taken == 1
    assert metrics.experiments() == ["fresh"]


def test_refused_names_are_not_kept_after_their_request() -> None:
    """validation._good_name memoises verdicts with an lru_cache of 4096 entries, bounded in
    count, not in bytes: every name a small batch carries is kept as a cache key, the
    refused ones too. A single-record POST whose name is a unique 8 MiB string (the body
    limit; a few KiB gzipped) is refused 400, yet leaves its 8 MiB behind: 4096 such
    requests pin ~32 GiB, far past the in-flight budget (128 MiB) meant to bound bodies."""
    import gc
    import tracemalloc

    from exporter.ingest.records import parse_batch

    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20):
            name = f"{i:04d}" + "x" * (1 << 20)  # 1 MiB, unique, too long
            body = {"queries": [{"experiment": name, "branch": "b", "latency_ms": 1.0,
                                 "success": True}]}  # fmt: skip
            batch = parse_batch(body, 0.0, 1000)
            assert batch.error_count == 1 and batch.reasons == {"invalid_name": 1}
            del name, body, batch
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 4 << 20, f"{retained / (1 << 20):.0f} MiB kept after 20 refused requests"
