"""A small client for apps: buffer records, send them in batches, retry politely.

    from exporter.client import Client

    with Client("http://127.0.0.1:9470") as ab:
        with ab.track("checkout", "treatment"):      # times the block; failure if it raises
            handle_request()
        ab.record_event("checkout", "treatment", "revenue", 42.0)

Records go into a bounded in-memory buffer (recording never blocks on the network
and never raises for the server's sake); a background flusher sends batches when
`batch_size` records are waiting or every `flush_interval` seconds. 429, 5xx and
connection errors are retried with exponential backoff and full jitter, honouring
Retry-After; other 4xx mean the batch itself is wrong and it is dropped (counted,
logged). When the buffer is full, `on_full="drop_oldest"` (the default) drops the
oldest record and counts it; `"block"` makes the caller wait for room. `close()`
(also at exit) flushes what is left.

With `preaggregate=True` the flusher folds what it takes from the buffer into one exact
part per series (count, successes, sum, M2, min, max, buckets in the server's layout,
read once from GET /api/v1/buckets; events likewise) and sends those instead of the
records, so the server's work grows with the number of series, not with the app's
request rate. The statistics stay exact (Welch and sequential tests need the second
moment that OTLP histograms lack). An older server without the bucket endpoint, or a
batch holding a value the server would refuse, is sent as raw records.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import functools
import inspect
import json
import logging
import math
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypedDict, TypeVar, Unpack

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
Record = tuple[
    Any, ...
]  # ("q", experiment, branch, latency_ms, success) | ("e", ..., event, value)
OnFull = Literal["drop_oldest", "block"]


@dataclass
class ClientStats:
    """What happened to recorded records: they end up sent, dropped or refused."""

    sent: int = 0
    dropped_full: int = 0  # the buffer was full (drop_oldest)
    refused: int = 0  # the server answered 4xx: the batch was invalid
    failed: int = 0  # retries ran out
    retries: int = 0


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How a client batches, buffers and retries: one object for Client and AsyncClient,
    so their settings cannot drift apart. Pass one, or the same names as keywords."""

    batch_size: int = 1000  # records per POST
    flush_interval: float = 1.0  # seconds between background flushes
    max_buffer: int = 100_000  # records held while the exporter is unreachable
    on_full: OnFull = "drop_oldest"  # "block" waits for room (Client only)
    timeout: float = 10.0  # seconds per request
    retry_base: float = 0.1  # first backoff, doubled per attempt, with full jitter
    retry_cap: float = 10.0  # longest backoff
    give_up_after: float = 300.0  # seconds a batch is retried for while running
    close_timeout: float = 10.0  # ... and at close, so a wrong URL cannot hold an exit
    token: str | None = None  # sent as a bearer token
    preaggregate: bool = False  # send one exact part per series instead of every record


class ClientOverrides(TypedDict, total=False):
    """ClientOptions' fields as keyword arguments (typed for mypy and IDEs)."""

    batch_size: int
    flush_interval: float
    max_buffer: int
    on_full: OnFull
    timeout: float
    retry_base: float
    retry_cap: float
    give_up_after: float
    close_timeout: float
    token: str | None
    preaggregate: bool


class _Send:
    """The outcome of one attempt: done, retry (after a delay), or give up."""

    DONE, RETRY, REFUSED = "done", "retry", "refused"


def backoff(attempt: int, base: float, cap: float, retry_after: float | None) -> float:
    """Full-jitter exponential backoff; the server's Retry-After wins when given."""
    if retry_after is not None:
        return min(cap, retry_after)
    return random.uniform(0, min(cap, base * 2**attempt))


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _classify(status: int) -> str:
    if status < 300:
        return _Send.DONE
    if status == 429 or status >= 500:
        return _Send.RETRY
    return _Send.REFUSED


def _body(batch: list[Record]) -> bytes:
    queries = [
        {"experiment": r[1], "branch": r[2], "latency_ms": r[3], "success": r[4]}
        for r in batch
        if r[0] == "q"
    ]
    events = [
        {"experiment": r[1], "branch": r[2], "event": r[3], "value": r[4]}
        for r in batch
        if r[0] == "e"
    ]
    return json.dumps({"queries": queries, "events": events}).encode()


# The server's limits (exporter.core.validation), repeated: the client imports no server code.
_MAX_LATENCY_MS = 1e12
_MAX_ABS_EVENT_VALUE = 1e15


def _foldable(batch: list[Record]) -> bool:
    """Every value is one the server accepts: else the raw records go, so that the
    server's answer names the bad field as it always did."""
    for r in batch:
        value = r[-1] if r[0] == "e" else r[3]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if r[0] == "q":
            if r[4] is not True and r[4] is not False:
                return False
            if not 0 <= value <= _MAX_LATENCY_MS:  # also false for NaN
                return False
        elif not abs(value) <= _MAX_ABS_EVENT_VALUE:
            return False
    return True


def _moments(values: list[float]) -> tuple[float, float]:
    """(sum, M2) with correctly rounded sums: two passes, exact to the last bits."""
    total = math.fsum(values)
    mean = total / len(values)
    return total, math.fsum((v - mean) * (v - mean) for v in values)


def parts_body(batch: list[Record], bounds: tuple[float, ...]) -> bytes:
    """The batch folded into `parts` and `event_parts` (see the README): one entry per
    series, buckets non-cumulative in the layout of `bounds` (seconds, `le`, +Inf last)."""
    latencies: dict[tuple[str, str], list[float]] = {}
    successes: dict[tuple[str, str], int] = {}
    values: dict[tuple[str, str, str], list[float]] = {}
    for r in batch:
        if r[0] == "q":
            key = (r[1], r[2])
            if key in latencies:
                latencies[key].append(float(r[3]))
            else:
                latencies[key], successes[key] = [float(r[3])], 0
            successes[key] += r[4]
        else:
            values.setdefault((r[1], r[2], r[3]), []).append(float(r[4]))
    parts = []
    for (experiment, branch), series in latencies.items():
        total, m2 = _moments(series)
        buckets = [0] * (len(bounds) + 1)
        for v in series:
            buckets[bisect_left(bounds, v / 1000.0)] += 1
        parts.append({
            "experiment": experiment, "branch": branch, "queries": len(series),
            "successes": successes[experiment, branch], "latency_sum_ms": total,
            "latency_m2_ms2": m2, "latency_min_ms": min(series),
            "latency_max_ms": max(series), "buckets": buckets,
        })  # fmt: skip
    event_parts = []
    for (experiment, branch, event), series in values.items():
        total, m2 = _moments(series)
        event_parts.append({
            "experiment": experiment, "branch": branch, "event": event,
            "count": len(series), "sum": total, "m2": m2,
        })  # fmt: skip
    return json.dumps({"parts": parts, "event_parts": event_parts}).encode()


def _bounds(answer: object) -> tuple[float, ...] | None:
    """The bounds from GET /api/v1/buckets' answer, or None if it is not one."""
    bounds = answer.get("latency_bounds_seconds") if isinstance(answer, dict) else None
    if not isinstance(bounds, list) or not all(
        isinstance(b, int | float) and not isinstance(b, bool) for b in bounds
    ):
        return None
    return tuple(float(b) for b in bounds)


class _Attempts:
    """One batch's delivery: after each try, the delay before the next, or None when done
    (sent, refused, or out of time), keeping the stats. The batch keeps one idempotency
    key across its retries, so a retry of a write that did land is not counted twice."""

    def __init__(
        self, size: int, stats: ClientStats, retry: _Retry, url: str, give_up: float
    ) -> None:
        self._size, self._stats, self._retry, self._url = size, stats, retry, url
        self._deadline = time.monotonic() + give_up
        self._give_up = give_up
        self._attempt = 0
        self.key = uuid.uuid4().hex

    def after(self, outcome: str, retry_after: float | None, why: str = "") -> float | None:
        if outcome == _Send.DONE:
            self._stats.sent += self._size
            return None
        if outcome == _Send.REFUSED:
            self._stats.refused += self._size
            return None
        delay = backoff(self._attempt, self._retry.base, self._retry.cap, retry_after)
        if time.monotonic() + delay > self._deadline:
            self._stats.failed += self._size
            log.warning(
                "giving up on %d records for %s after %d attempts (%s)",
                self._size, self._url, self._attempt + 1, why or "no success answer",
            )  # fmt: skip
            return None
        if self._attempt == 0:
            log.warning(
                "cannot deliver %d records to %s (%s); retrying for up to %.0f s",
                self._size, self._url, why or "no success answer", self._give_up,
            )  # fmt: skip
        self._stats.retries += 1
        self._attempt += 1
        return delay


@dataclass(frozen=True, slots=True)
class _Retry:
    base: float
    cap: float
    give_up: float  # seconds a batch is retried for while running
    at_close: float  # ... and at close: a wrong URL must not hold an app's exit for long


_clock = time.perf_counter


class _Tracker:
    """`track()`: a context manager and a decorator that time a block and record it."""

    __slots__ = ("_branch", "_experiment", "_record", "_started")

    def __init__(
        self, record: Callable[[str, str, float, bool], None], experiment: str, branch: str
    ) -> None:
        self._record = record
        self._experiment = experiment
        self._branch = branch
        self._started = 0.0

    def __enter__(self) -> _Tracker:
        self._started = _clock()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        elapsed = (_clock() - self._started) * 1000.0
        self._record(self._experiment, self._branch, elapsed, kind is None)

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        record, experiment, branch = self._record, self._experiment, self._branch
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def timed_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                with _Tracker(record, experiment, branch):
                    return await function(*args, **kwargs)

            return timed_async  # type: ignore[return-value]

        @functools.wraps(function)
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            with _Tracker(record, experiment, branch):
                return function(*args, **kwargs)

        return timed


class _QueryTracker(_Tracker):
    """The client's `track()`, the hot path of a busy app: built without an __init__
    call (see `_Recording.track`), and its exit appends the timed query to the buffer
    itself while the buffer is below both its capacity and its batch size."""

    __slots__ = ("_buffer",)
    _buffer: _Buffer

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        elapsed = (_clock() - self._started) * 1000.0
        buffer = self._buffer
        items = buffer.items
        # room, and no batch due after this one (two threads racing past `below` leave
        # the batch to the next record or the flush interval: late, never lost)
        if len(items) < buffer.below:
            items.append(("q", self._experiment, self._branch, elapsed, kind is None))
        else:
            buffer.put_one(("q", self._experiment, self._branch, elapsed, kind is None))

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        put = self._buffer.put_one
        return _Tracker(lambda e, b, ms, ok: put(("q", e, b, ms, ok)), self._experiment,
                        self._branch)(function)  # fmt: skip


_new_tracker = object.__new__


class _Buffer:
    """The bounded buffer both clients share, with its full-buffer policy."""

    def __init__(self, capacity: int, on_full: OnFull, stats: ClientStats) -> None:
        if on_full not in ("drop_oldest", "block"):
            raise ValueError("on_full must be 'drop_oldest' or 'block'")
        self.items: collections.deque[Record] = collections.deque()
        self._capacity = capacity
        self._on_full = on_full
        self._stats = stats
        self._room = threading.Condition()
        self.wanted = threading.Event()  # set when a batch is ready to go
        self.trigger = 1

    @property
    def trigger(self) -> int:
        """Records that make a batch ready (the client's batch size)."""
        return self._trigger

    @trigger.setter
    def trigger(self, records: int) -> None:
        self._trigger = records
        # below this many held, one more record needs no policy and readies no batch
        self.below = min(self._capacity, records - 1)

    def __len__(self) -> int:
        return len(self.items)

    def put_one(self, record: Record) -> None:
        """put() with the batch size set by the client (`trigger`)."""
        items = self.items
        if len(items) < self._capacity:
            items.append(record)
            if len(items) >= self._trigger:
                self.wanted.set()
        else:
            self.put(record, self._trigger)

    def put(self, record: Record, batch_size: int) -> None:
        items = self.items
        if len(items) >= self._capacity:
            with self._room:
                if self._on_full == "block":
                    self.wanted.set()
                    while len(items) >= self._capacity:
                        self._room.wait(0.1)
                else:
                    while len(items) >= self._capacity:
                        items.popleft()
                        self._stats.dropped_full += 1
        items.append(record)
        if len(items) >= batch_size:
            self.wanted.set()

    def take(self, count: int) -> list[Record]:
        items, batch = self.items, list[Record]()
        with self._room:
            while items and len(batch) < count:
                batch.append(items.popleft())
            self._room.notify_all()
        return batch


class _Recording:
    """What both clients share: the buffer, recording, and the retry policy."""

    def _setup(self, url: str, options: ClientOptions) -> None:
        self.url = url.rstrip("/") + "/api/v1/records"
        self.options = options
        self.stats = ClientStats()
        self._buffer = _Buffer(options.max_buffer, options.on_full, self.stats)
        self._batch_size = options.batch_size
        self._interval = options.flush_interval
        self._timeout = options.timeout
        self._retry = _Retry(
            options.retry_base, options.retry_cap, options.give_up_after, options.close_timeout
        )
        self._headers = {"Content-Type": "application/json"}
        if options.token:
            self._headers["Authorization"] = f"Bearer {options.token}"
        self._take = options.batch_size
        self._bounds: tuple[float, ...] | None = None  # learnt from the server
        self._bounds_url = url.rstrip("/") + "/api/v1/buckets"
        if options.preaggregate:  # parts: take the whole buffer each flush, whatever it holds
            self._take = options.max_buffer
            self._batch_size = max(options.batch_size, options.max_buffer // 2)
        self._buffer.trigger = self._batch_size

    def _encode(self, batch: list[Record]) -> bytes:
        if self._bounds is not None and _foldable(batch):
            return parts_body(batch, self._bounds)
        return _body(batch)

    def _attempts(self, batch: list[Record], closing: bool = False) -> _Attempts:
        retry = self._retry
        give_up = min(retry.give_up, retry.at_close) if closing else retry.give_up
        return _Attempts(len(batch), self.stats, retry, self.url, give_up)

    def record_query(self, experiment: str, branch: str, latency_ms: float, success: bool) -> None:
        self._buffer.put(("q", experiment, branch, latency_ms, success), self._batch_size)

    def record_event(self, experiment: str, branch: str, event: str, value: float) -> None:
        self._buffer.put(("e", experiment, branch, event, value), self._batch_size)

    def track(self, experiment: str, branch: str) -> _Tracker:
        """Time a block (or every call of a decorated function): success unless it raises."""
        tracker = _new_tracker(_QueryTracker)  # no __init__ call: a quarter of the cost
        tracker._buffer = self._buffer
        tracker._experiment = experiment
        tracker._branch = branch
        return tracker


class Client(_Recording):
    """Synchronous client with a background flusher thread."""

    def __init__(
        self,
        url: str,
        options: ClientOptions | None = None,
        **overrides: Unpack[ClientOverrides],
    ) -> None:
        self._setup(url, replace(options or ClientOptions(), **overrides))
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="abtest-client", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> None:
        """Send everything recorded so far (retrying as configured) before returning."""
        while len(self._buffer):
            self._send_batch()

    def close(self) -> None:
        """Send what is left, retrying for at most `close_timeout` seconds per batch."""
        if not self._closed.is_set():
            self._closed.set()
            self._buffer.wanted.set()
            self._thread.join()
            while len(self._buffer):
                self._send_batch(closing=True)
            atexit.unregister(self.close)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._buffer.wanted.wait(self._interval)
            self._buffer.wanted.clear()
            if self._closed.is_set():
                return
            while len(self._buffer) and not self._closed.is_set():
                self._send_batch()

    def _send_batch(self, closing: bool = False) -> None:
        with self._send_lock:
            batch = self._buffer.take(self._take)
            if batch:
                self._deliver(batch, closing)

    def _learn_bounds(self) -> None:
        request = urllib.request.Request(self._bounds_url, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                self._bounds = _bounds(json.loads(response.read()))
        except (urllib.error.URLError, OSError, ValueError):
            self._bounds = None  # raw records this time; asked again next batch

    def _deliver(self, batch: list[Record], closing: bool = False) -> None:
        if self.options.preaggregate and self._bounds is None:
            self._learn_bounds()
        body, attempts = self._encode(batch), self._attempts(batch, closing)
        headers = {**self._headers, "Idempotency-Key": attempts.key}
        while (delay := attempts.after(*self._post(body, headers))) is not None:
            time.sleep(delay)

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[str, float | None, str]:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return _classify(response.status), None, ""
        except urllib.error.HTTPError as exc:
            outcome = _classify(exc.code)
            if outcome == _Send.REFUSED:
                log.error("the exporter refused a batch: %s %s", exc.code, exc.read()[:500])
            return outcome, parse_retry_after(exc.headers.get("Retry-After")), f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return _Send.RETRY, None, str(getattr(exc, "reason", exc))


class AsyncClient(_Recording):
    """asyncio client: recording is a plain call, sending happens in a background task."""

    def __init__(
        self,
        url: str,
        options: ClientOptions | None = None,
        **overrides: Unpack[ClientOverrides],
    ) -> None:
        options = replace(options or ClientOptions(), **overrides)
        if options.on_full == "block":
            raise ValueError('on_full="block" would stall the event loop: use "drop_oldest"')
        self._setup(url, options)
        self._task: asyncio.Task[None] | None = None
        self._session: Any = None
        self._send_lock: asyncio.Lock | None = None

    async def __aenter__(self) -> AsyncClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        self._send_lock = asyncio.Lock()
        self._task = asyncio.create_task(self._run())

    async def flush(self) -> None:
        while len(self._buffer):
            await self._send_batch()

    async def close(self) -> None:
        """Send what is left, retrying for at most `close_timeout` seconds per batch."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            while len(self._buffer):
                await self._send_batch(closing=True)
            await self._session.close()

    async def _run(self) -> None:
        while True:
            await _wait_event(self._buffer.wanted, self._interval)
            self._buffer.wanted.clear()
            while len(self._buffer):
                await self._send_batch()

    async def _send_batch(self, closing: bool = False) -> None:
        assert self._send_lock is not None
        async with self._send_lock:
            batch = self._buffer.take(self._take)
            if batch:
                await self._deliver(batch, closing)

    async def _learn_bounds(self) -> None:
        import aiohttp

        try:
            async with self._session.get(self._bounds_url, headers=self._headers) as response:
                answer = await response.json() if response.status == 200 else None
                self._bounds = _bounds(answer)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            self._bounds = None

    async def _deliver(self, batch: list[Record], closing: bool = False) -> None:
        if self.options.preaggregate and self._bounds is None:
            await self._learn_bounds()
        body, attempts = self._encode(batch), self._attempts(batch, closing)
        headers = {**self._headers, "Idempotency-Key": attempts.key}
        while (delay := attempts.after(*await self._post(body, headers))) is not None:
            await asyncio.sleep(delay)

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[str, float | None, str]:
        import aiohttp

        try:
            async with self._session.post(self.url, data=body, headers=headers) as response:
                outcome = _classify(response.status)
                if outcome == _Send.REFUSED:
                    log.error("the exporter refused a batch: %s", await response.text())
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return outcome, retry_after, f"HTTP {response.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return _Send.RETRY, None, f"{type(exc).__name__}: {exc}"


async def _wait_event(event: threading.Event, timeout: float) -> None:
    """Wait for a threading.Event from asyncio without a thread: poll it briefly."""
    deadline = time.monotonic() + timeout
    while not event.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(min(0.01, timeout))


def otel_instruments(meter: Any, unit: str = "ms") -> OtelInstruments:
    """The conventional instruments on an OpenTelemetry `Meter`, for apps that prefer the
    SDK: push them with its OTLP exporter to this exporter's /v1/metrics."""
    if unit not in ("ms", "s"):
        raise ValueError("unit must be 'ms' or 's'")
    return OtelInstruments(
        meter.create_histogram("abtest.query.duration", unit=unit, description="A/B query latency"),
        meter.create_histogram("abtest.event.value", description="A/B custom event values"),
        1.0 if unit == "ms" else 0.001,
    )


@dataclass(frozen=True)
class OtelInstruments:
    duration: Any
    value: Any
    scale: float  # from milliseconds to the duration instrument's unit

    def record_query(self, experiment: str, branch: str, latency_ms: float, success: bool) -> None:
        self.duration.record(
            latency_ms * self.scale,
            {
                "abtest.experiment": experiment,
                "abtest.branch": branch,
                "abtest.outcome": "success" if success else "failure",
            },
        )

    def record_event(self, experiment: str, branch: str, event: str, value: float) -> None:
        self.value.record(
            value, {"abtest.experiment": experiment, "abtest.branch": branch, "abtest.event": event}
        )

    def track(self, experiment: str, branch: str) -> _Tracker:
        return _Tracker(self.record_query, experiment, branch)


__all__ = [
    "AsyncClient",
    "Client",
    "ClientStats",
    "OtelInstruments",
    "otel_instruments",
]
