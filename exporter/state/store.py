"""The aggregate on local disk: SQLite in WAL mode, written by group commit.

Each commit writes the current state of every series touched since the last
one (a handful of rows, whatever the number of records behind them), the
experiments removed, and the configs set through the API. In `sync` mode an
ingest call is answered only after the commit that covers it, with
synchronous=FULL, so an acknowledged record survives kill -9 and power loss;
requests arriving during a commit share the next one. In `interval` mode
commits happen on a timer and a crash can lose up to one interval.

The file carries a format version. A newer version, a corrupt file, or other
bucket bounds stop the start with a message saying how to move the file aside;
nothing is ever wiped silently.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import logging
import math
import os
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..core.aggregate import BranchParts, EventParts
from ..core.experiment_config import ExperimentConfig
from ..core.families import Family, Sample
from ..core.validation import MAX_ABS_EVENT_VALUE, MAX_COUNT, MAX_LATENCY_MS
from ..ingest import otlp
from .abmetrics import ABMetrics, Restored, StoreBatch
from .datadir import DataDirError, DataDirLock

_GATHER_TICK = 0.0002  # seconds between looks at whether writes are still under way
_GATHER_MOST = 0.05  # the longest a slow commit's successor waits for writes under way
log = logging.getLogger(__name__)

# 3: a running sum of squares per branch and event (`sq`), summable across replicas
# 4: branch, event and activity rows checksummed over their values' binary form
FORMAT_VERSION = 4
FILE_NAME = "abtest.sqlite3"
Durability = Literal["sync", "interval"]

# Every row carries a CRC-32 of its values: SQLite checks its pages' structure, not
# the numbers in them, and a flipped bit must stop the start, not serve wrong totals.
_TABLES = {
    "branches": (
        "experiment TEXT NOT NULL, branch TEXT NOT NULL, n INTEGER NOT NULL, "
        "ok INTEGER NOT NULL, total_ms REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, "
        "m2 REAL NOT NULL, sq REAL NOT NULL, first REAL NOT NULL, last REAL NOT NULL, "
        "buckets BLOB NOT NULL, "
        "crc INTEGER, PRIMARY KEY (experiment, branch)"
    ),
    "events": (
        "experiment TEXT NOT NULL, branch TEXT NOT NULL, event TEXT NOT NULL, "
        "count INTEGER NOT NULL, total REAL NOT NULL, m2 REAL NOT NULL, sq REAL NOT NULL, "
        "crc INTEGER, PRIMARY KEY (experiment, branch, event)"
    ),
    "configs": "experiment TEXT PRIMARY KEY, config TEXT NOT NULL, crc INTEGER",
    "otlp_streams": "stream TEXT PRIMARY KEY, state TEXT NOT NULL, seen REAL, crc INTEGER",
    "activity": "experiment TEXT PRIMARY KEY, last REAL NOT NULL, crc INTEGER",
    "idempotency": "key TEXT PRIMARY KEY, entry TEXT NOT NULL, crc INTEGER",
}
_V1_TABLES = ("meta", "branches", "events", "configs", "otlp_streams")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, crc INTEGER);\n"
    + "".join(
        f"CREATE TABLE IF NOT EXISTS {name} ({columns});\n" for name, columns in _TABLES.items()
    )
)


class StoreError(Exception):
    """The data file cannot be used; the message says why and what to do."""


@dataclass
class StoreStats:
    commits: int = 0
    failures: int = 0
    last_success: float = 0.0  # unix time
    last_seconds: float = 0.0
    rows_written: int = 0


def crc(values: tuple[Any, ...]) -> int:
    """CRC-32 of a row's values (floats by their exact repr, blobs as hex): the
    checksum of the tables not in _BINARY, and of every table before format 4."""
    return zlib.crc32(_text(values).encode("utf-8", "surrogatepass"))


# Rows a commit writes by the thousand: their checksums are taken over the names (UTF-8,
# joined by \x1f), the numbers packed little-endian (int64 counts, float64 figures:
# exact, as repr was, for a fifth of the writer's cost: repr of a branch row's seven
# floats took 4 us), then a blob if the row ends with one. (names, numbers, ends with a
# blob) per table:
_BINARY: dict[str, tuple[int, struct.Struct, bool]] = {
    "branches": (2, struct.Struct("<2q7d"), True),
    "events": (3, struct.Struct("<q3d"), False),
    "activity": (1, struct.Struct("<d"), False),
}


def checksum(table: str, values: tuple[Any, ...]) -> int:
    """A row's checksum as this format stores it for `table`, to check a row read back:
    -1 (which no CRC-32 is, and which never verifies) for values of kinds the table
    cannot hold, such as text where a count belongs."""
    layout = _BINARY.get(table)
    if layout is None:
        return crc(values)
    try:
        return _packed_crc(layout, values)
    except (TypeError, struct.error):
        return -1


def _packed_crc(layout: tuple[int, struct.Struct, bool], values: tuple[Any, ...]) -> int:
    """The writer's checksum: a value that cannot be packed raises (a bug, and the
    commit fails in one line and is retried) rather than write a row no start accepts."""
    names, numbers, blob = layout
    head = "\x1f".join(values[:names]).encode("utf-8", "surrogatepass")
    value = zlib.crc32(numbers.pack(*values[names : len(values) - blob]), zlib.crc32(head))
    return zlib.crc32(values[-1], value) if blob else value


def _text(values: tuple[Any, ...]) -> str:
    """The text a row's checksum is taken of: one C-level join for a row without blobs,
    the commit writer's usual row."""
    if not any(issubclass(kind, bytes) for kind in set(map(type, values))):
        return "\x1f".join(map(repr, values))
    return "\x1f".join(v.hex() if isinstance(v, bytes) else repr(v) for v in values)


def _one(value: Any) -> tuple[Any]:
    """A row of one column (the key a DELETE names)."""
    return (value,)


def _with_crc(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*row, crc(row))


_INSERT_BRANCH = f"INSERT OR REPLACE INTO branches VALUES ({', '.join('?' * 13)})"


def _branch_with_crc(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A branch row as stored (buckets as little-endian int64 bytes, the last value) and
    its checksum."""
    # min and max (+ 0.0): SQLite keeps no -0.0 in a REAL column (it reads back 0.0), so a
    # latency of -0.0 would be checksummed as a value the file cannot give back
    values = (*row[:5], row[5] + 0.0, row[6] + 0.0, *row[7:11], row[11].astype("<i8").tobytes())
    return (*values, _packed_crc(_BINARY["branches"], values))


def _event_with_crc(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*row, _packed_crc(_BINARY["events"], row))


def _activity_with_crc(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*row, _packed_crc(_BINARY["activity"], row))


class Store:
    def __init__(
        self,
        directory: str | Path,
        metrics: ABMetrics,
        durability: Durability = "sync",
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(directory) / FILE_NAME
        self.durability = durability
        self.stats = StoreStats()
        self._metrics = metrics
        self._interval = interval
        self.commit_delay = 0.005  # longest a commit waits for writes under way to join
        # True while a write is being read or applied (set by the server): the writer
        # waits for it rather than commit without it and again right after
        self.busy: Callable[[], bool] = _never
        self._clock = clock
        self._lock = DataDirLock(directory)
        self._connection: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None  # for stream states read on demand
        self.retention = 7 * 24 * 3600.0  # seconds a silent OTLP stream's state is kept
        self._pruned_at = 0.0
        self._failure_logged = -30.0
        self._durable = -1
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[bool]]] = []
        self._waiters_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------

    def open(self) -> tuple[int, int]:
        """Take the directory, open (or create) the file, check every row, and restore
        the aggregate from it. Returns the numbers of branch and event series restored.
        Any problem raises StoreError with one line saying what to do."""
        try:
            self._lock.acquire()
        except DataDirError as exc:
            raise StoreError(str(exc)) from None
        try:
            return self._open()
        except StoreError:
            self._lock.release()
            raise
        except Exception as exc:  # whatever a damaged file makes the reading code raise
            self._lock.release()
            raise StoreError(
                f"{self.path} cannot be restored ({type(exc).__name__}: {exc}). "
                f"Move it aside to start empty: {self._aside()}"
            ) from None

    def _aside(self) -> str:
        return f"mv {self.path} {self.path}.bad (and its -wal and -shm files)"

    def _open(self) -> tuple[int, int]:
        aside = self._aside()
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise StoreError(
                f"{self.path} is not readable and writable by this user (uid {os.getuid()}): "
                "fix its permissions (nothing is wrong with its contents)"
            )
        damage = wal_problem(Path(f"{self.path}-wal"))
        if damage:
            raise StoreError(f"{self.path}-wal is damaged ({damage}). Move it aside: {aside}")
        try:
            connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            synchronous = "FULL" if self.durability == "sync" else "NORMAL"
            connection.execute(f"PRAGMA synchronous={synchronous}")
            check = " ".join(connection.execute("PRAGMA quick_check").fetchone()[0].split())
            if check != "ok":
                raise StoreError(
                    f"{self.path} is damaged ({check}). Move it aside to start empty: {aside}"
                )
            tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
            meta = _read_meta(connection) if "meta" in tables else {}
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc) or "unable to open" in str(exc):
                raise StoreError(
                    f"{self.path} cannot be written ({exc}): check the permissions and free "
                    "space of the data directory (nothing is wrong with its contents)"
                ) from None
            raise StoreError(
                f"{self.path} is not a usable database ({exc}). "
                f"Move it aside to start empty: {aside}"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path} is not a usable database ({exc}). "
                f"Move it aside to start empty: {aside}"
            ) from None
        version = int(meta.get("format_version", FORMAT_VERSION if not tables else 1))
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer abtest-exporter (format {version}; this one "
                f"reads up to {FORMAT_VERSION}). Upgrade, or move it aside: {aside}"
            )
        buckets = list(self._metrics.buckets)
        stored = json.loads(meta["buckets"]) if "buckets" in meta else buckets
        if stored != buckets:
            raise StoreError(
                f"{self.path} holds histograms with bucket bounds {stored}, but the exporter is "
                f"configured with {buckets}. Start with the old bounds, or move the file aside: "
                f"{aside}"
            )
        with _transaction(connection):
            if version < 2 and tables:
                _migrate_v1(connection)
            if version < 3 and tables:
                _migrate_v2(connection)
            for statement in _SCHEMA.split(";")[:-1]:
                connection.execute(statement)
            if version < 4 and tables:
                _migrate_v3(connection)
            if problem := _shape_problem(connection):
                raise StoreError(f"{self.path} is damaged ({problem}). Move it aside: {aside}")
            connection.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?, ?)",
                [
                    _with_crc(("format_version", str(FORMAT_VERSION))),
                    _with_crc(("buckets", json.dumps(buckets))),
                ],
            )
        self._connection = connection
        streams = self._metrics.receiver.streams
        restored = _read(connection, len(buckets), streams.max_streams)
        self._durable = self._metrics.restore(restored)  # already on disk
        self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._metrics.cold_streams(self._cold_stream)
        return len(restored.branches.keys), len(restored.events.keys)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="abtest-store", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is left, close the file and let the directory go."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        if self._connection is not None:
            self.commit()
            self._connection.close()
            self._connection = None
        if self._reader is not None:
            self._metrics.cold_streams(None)
            self._reader.close()
            self._reader = None
        self._lock.release()

    # -- writing ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            if self.durability == "sync":
                self._wake.wait()
                self._gather()
            else:
                self._wake.wait(self._interval)
            self._wake.clear()
            if not self._stopping:
                self.commit()

    def _gather(self) -> None:
        """Group commit: let other writes join this commit, so one serves them all.
        After a quick commit (about an fsync) wait only while writes are being read or
        applied (at most `commit_delay`): with none under way, commit at once, since
        requests that come while a commit runs gather for the next one by themselves and
        waiting longer would only add to everyone's latency. After a slow one (many rows
        changed) wait `commit_delay`, so the next requests' rows join one write, then on
        while writes are under way, for at most as long as that commit took (a commit
        they join is one not written again: two clients sending a thousand parts each
        made a commit apiece, 0.94 a request, each rewriting the same thousand rows)."""
        last = self.stats.last_seconds
        wait = self.commit_delay
        if last >= self.commit_delay:
            time.sleep(self.commit_delay)
            wait = min(last, _GATHER_MOST)
        deadline = time.monotonic() + wait
        while self.busy() and time.monotonic() < deadline:
            time.sleep(_GATHER_TICK)

    def commit(self) -> bool:
        """One group commit of everything changed so far; True if it succeeded."""
        started = time.perf_counter()
        batch = self._metrics.changes_for_store()
        if batch:
            try:
                self._write(batch)
            except Exception as exc:  # the writer must outlive any failure: retry next round
                self.stats.failures += 1
                now = time.monotonic()
                if now - self._failure_logged >= 30:  # one line, then one every 30 s
                    self._failure_logged = now
                    log.error(
                        "writing %s failed (%s: %s); retrying (%d failed writes so far)",
                        self.path, type(exc).__name__, exc, self.stats.failures,
                    )  # fmt: skip
                self._metrics.return_changes(batch)
                return False
            self._metrics.streams_written()
            self.stats.commits += 1
            self.stats.rows_written += len(batch.branches) + len(batch.events)
        self._prune()
        self.stats.last_success = self._clock()
        self.stats.last_seconds = time.perf_counter() - started
        self._durable = max(self._durable, batch.version)
        self._release()
        return True

    def _write(self, batch: StoreBatch) -> None:
        connection = self._connection
        assert connection is not None
        execute = connection.execute

        def many(sql: str, rows: Sequence[Any], row: Callable[[Any], Any]) -> None:
            # an empty executemany still costs a statement look-up: skipped
            if rows:
                connection.executemany(sql, map(row, rows))

        streams, keys = batch.streams, batch.keys
        with _transaction(connection):
            now = self._clock()
            many("INSERT OR REPLACE INTO otlp_streams VALUES (?, ?, ?, ?)", streams.rows,
                 lambda row: _with_crc((*row, now)))  # fmt: skip
            many("DELETE FROM otlp_streams WHERE stream = ?", streams.gone, _one)
            if streams.horizon is not None:
                execute("INSERT OR REPLACE INTO meta VALUES (?, ?, ?)",
                        _with_crc(("otlp_horizon", str(streams.horizon))))  # fmt: skip
            many("INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?)", keys.rows, _with_crc)
            many("DELETE FROM idempotency WHERE key = ?", keys.gone, _one)
            if batch.changes.cleared:
                for table in ("branches", "events", "activity"):
                    execute(f"DELETE FROM {table}")
            for experiment in batch.changes.removed:
                for table in ("branches", "events", "activity"):
                    execute(f"DELETE FROM {table} WHERE experiment = ?", (experiment,))
            many(_INSERT_BRANCH, batch.branches, _branch_with_crc)
            many("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch.events,
                 _event_with_crc)  # fmt: skip
            many("INSERT OR REPLACE INTO activity VALUES (?, ?, ?)", batch.activity,
                 _activity_with_crc)  # fmt: skip
            for experiment, config in batch.configs.items():
                if config is None:
                    execute("DELETE FROM configs WHERE experiment = ?", (experiment,))
                else:
                    row = (experiment, json.dumps(config.to_json()))
                    execute("INSERT OR REPLACE INTO configs VALUES (?, ?, ?)", _with_crc(row))

    def _cold_stream(self, key: str) -> str | None:
        """A stream state from the file (called under the aggregate's lock)."""
        assert self._reader is not None
        row = self._reader.execute(
            "SELECT stream, state, seen, crc FROM otlp_streams WHERE stream = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        if row[3] != crc(tuple(row[:3])):
            raise StoreError(f"{self.path}: an OTLP stream state fails its checksum")
        return str(row[1])

    def _prune(self) -> None:
        """Forget OTLP stream states silent for longer than the retention (once a minute)."""
        now = self._clock()
        if self._reader is None or now - self._pruned_at < 60:
            return
        self._pruned_at = now
        rows = self._reader.execute(
            "SELECT stream, state FROM otlp_streams WHERE seen < ? LIMIT 10000",
            (now - self.retention,),
        ).fetchall()
        if rows:
            gone = [(ast.literal_eval(key), int(json.loads(state)[1])) for key, state in rows]
            self._metrics.forget_streams(gone)
            log.info("forgot %d OTLP streams silent for %.0f s", len(gone), self.retention)

    # -- waiting for durability ---------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def durable(self, version: int, timeout: float) -> bool:
        """Wait until everything up to `version` is on disk (or `timeout` passes)."""
        if self._durable >= version:
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        with self._waiters_lock:
            self._waiters.append((version, loop, future))
        if self._durable >= version:  # a commit finished while we registered
            self._release()
        if not self._wake.is_set():  # set already: the writer is on its way (no lock taken)
            self._wake.set()
        # a timer, not wait_for: wait_for wraps the future in a task on every request
        timer = loop.call_later(timeout, _settle, future, False)
        try:
            return await future
        finally:
            timer.cancel()

    def _release(self) -> None:
        durable = self._durable
        with self._waiters_lock:
            ready = [w for w in self._waiters if w[0] <= durable]
            self._waiters = [w for w in self._waiters if w[0] > durable]
        # one wake-up of each loop for all its waiters, not one per request
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool]]] = {}
        for _, loop, future in ready:
            by_loop.setdefault(loop, []).append(future)
        for loop, futures in by_loop.items():
            loop.call_soon_threadsafe(_resolve, futures)

    def families(self) -> list[Family]:
        stats = self.stats
        return [
            Family(
                "abtest_exporter_persist_last_success_timestamp_seconds",
                "gauge",
                "Unix time of the latest successful write to the data file.",
                [Sample((), stats.last_success)] if stats.last_success else [],
            ),
            Family(
                "abtest_exporter_persist_duration_seconds",
                "gauge",
                "Time the latest write to the data file took.",
                [Sample((), stats.last_seconds)],
            ),
            Family(
                "abtest_exporter_persist_commits_total",
                "counter",
                "Group commits to the data file.",
                [Sample((), stats.commits)],
            ),
            Family(
                "abtest_exporter_persist_failures_total",
                "counter",
                "Failed writes to the data file (retried with the next commit).",
                [Sample((), stats.failures)],
            ),
            Family(
                "abtest_exporter_persist_waiting_requests",
                "gauge",
                "Requests waiting for their records to reach the disk.",
                [Sample((("durability", self.durability),), self.waiting)],
            ),
        ]


def _read(
    connection: sqlite3.Connection, bucket_count: int, max_streams: int | None = None
) -> Restored:
    """Every row, its checksum and its invariants checked; a ValueError names the first
    row that fails."""
    branches, events = BranchParts(), EventParts()
    for row in _rows(connection, "branches"):
        e, b, n, ok, total, lo, hi, m2, sq, first, last, blob = row
        counts = np.frombuffer(blob, dtype="<i8").tolist()  # little-endian int64
        problem = _branch_problem(n, ok, total, lo, hi, m2, first, last, counts, bucket_count)
        if problem is None and not (_finite(sq) and sq >= 0):
            problem = "sum of squares out of range"
        if problem:
            raise ValueError(f"branch row {(e, b)!r}: {problem}")
        branches.append((e, b), n, ok, total, m2, lo, hi, first, last, counts, sq)
    for e, b, ev, count, total, m2, sq in _rows(connection, "events"):
        if not (_whole(count) and _finite(total, m2, sq) and m2 >= -_slack(total, count)
                and sq >= 0 and abs(total) <= count * MAX_ABS_EVENT_VALUE):  # fmt: skip
            raise ValueError(f"event row {(e, b, ev)!r}: figures out of range")
        events.append((e, b, ev), count, total, max(m2, 0.0), sq)
    configs = {
        experiment: ExperimentConfig.from_mapping(json.loads(text))
        for experiment, text in _rows(connection, "configs")
    }
    activity = {e: float(last) for e, last in _rows(connection, "activity")}
    rows = list(_rows(connection, "otlp_streams"))
    for _, state, _ in rows:
        otlp.check_state(state)
    if max_streams is not None:  # the most recently seen in memory, the rest read on demand
        rows = sorted(rows, key=lambda row: float(row[2] or 0))[-max_streams:]
    streams = [(ast.literal_eval(key), state) for key, state, _ in rows]
    stored = connection.execute("SELECT COUNT(*) FROM otlp_streams").fetchone()[0]
    horizon = int(_read_meta(connection).get("otlp_horizon", "0"))
    keys = list(_rows(connection, "idempotency"))
    return Restored(branches, events, activity, configs, streams, horizon, keys, stored)


def _read_meta(connection: sqlite3.Connection) -> dict[str, str]:
    """The meta table, its checksums checked (format 1 had none: checked by use)."""
    columns = [row[1] for row in connection.execute("PRAGMA table_info(meta)")]
    if "crc" not in columns:
        return dict(connection.execute("SELECT key, value FROM meta").fetchall())
    return {str(key): str(value) for key, value in _rows(connection, "meta")}


def _rows(
    connection: sqlite3.Connection, table: str, old: bool = False
) -> Iterator[tuple[Any, ...]]:
    """Each row of `table`, its checksum checked (`old`: as formats before 4 took it)."""
    for *values, stored in connection.execute(f"SELECT * FROM {table}"):
        row = tuple(values)
        expected = crc(row) if old else checksum(table, row)
        if expected < 0 or stored != expected:  # -1: a value the table cannot hold
            raise ValueError(f"a row of {table} fails its checksum: {row[:3]!r}")
        yield row


def _whole(*values: Any) -> bool:
    return all(isinstance(v, int) and 0 <= v <= MAX_COUNT for v in values)


def _finite(*values: Any) -> bool:
    return all(isinstance(v, float | int) and math.isfinite(v) for v in values)


def _slack(total: float, count: int) -> float:
    """Rounding room for M2 computed in floating point."""
    return 1e-9 * (abs(total) + 1.0) ** 2 / max(count, 1)


def _branch_problem(
    n: Any, ok: Any, total: Any, lo: Any, hi: Any, m2: Any, first: Any, last: Any,
    counts: list[int], bucket_count: int,
) -> str | None:  # fmt: skip
    if not (_whole(n, ok) and ok <= n):
        return "counts out of range (0 <= ok <= n)"
    if len(counts) != bucket_count + 1 or min(counts) < 0 or sum(counts) != n:
        return "histogram buckets do not add up to the query count"
    if not (_finite(total, m2) and 0 <= total <= n * MAX_LATENCY_MS and m2 >= -_slack(total, n)):
        return "latency sum or spread out of range"
    if n:
        if not (_finite(lo, hi, first, last) and 0 <= lo <= hi <= MAX_LATENCY_MS
                and first <= last):  # fmt: skip
            return "min/max or first/last out of range"
        tolerance = 1e-9 * max(abs(total), 1.0)
        if not lo * n - tolerance <= total <= hi * n + tolerance:
            return "latency sum outside n x [min, max]"
    return None


def _shape_problem(connection: sqlite3.Connection) -> str | None:
    """A table whose columns are not the ones this format writes. Rows are read with
    SELECT *, so a flipped bit in a column's name in the schema opens and restores, then
    fails every later write: it must stop the start instead."""
    expected = sqlite3.connect(":memory:")
    try:
        expected.executescript(_SCHEMA)
        for table in ("meta", *_TABLES):
            want = expected.execute(f"PRAGMA table_info({table})").fetchall()
            have = connection.execute(f"PRAGMA table_info({table})").fetchall()
            if have != want:
                names = [c[1] for c in have], [c[1] for c in want]
                return f"table {table} has columns {names[0]}, not {names[1]}"
    finally:
        expected.close()
    return None


def _migrate_v1(connection: sqlite3.Connection) -> None:
    """Format 1 had no checksums, no activity and no idempotency tables: add them, and
    checksum the rows as they are (their invariants are checked on the read that follows)."""
    connection.execute("ALTER TABLE otlp_streams ADD COLUMN seen REAL")
    connection.execute("UPDATE otlp_streams SET seen = ?", (time.time(),))
    # format 1 named a stream by its identity's text; format 2 by a digest of that text
    renamed = [
        (repr(otlp.stream_key(text)), text)
        for (text,) in connection.execute("SELECT stream FROM otlp_streams").fetchall()
    ]
    connection.executemany("UPDATE otlp_streams SET stream = ? WHERE stream = ?", renamed)
    for table in _V1_TABLES:
        connection.execute(f"ALTER TABLE {table} ADD COLUMN crc INTEGER")
        rows = connection.execute(f"SELECT rowid, * FROM {table}").fetchall()
        connection.executemany(
            f"UPDATE {table} SET crc = ? WHERE rowid = ?",
            [(crc(tuple(row[1:-1])), row[0]) for row in rows],
        )


def _migrate_v2(connection: sqlite3.Connection) -> None:
    """Format 2 kept no sum of squares: rebuild it from each row as M2 + total²/n (the
    reconstruction loses the digits a running sum would have kept; new records add
    their squares exactly). Each row's checksum is checked before it is rewritten, so a
    damaged row is never given a fresh, valid one."""
    branches = [(*row[:8], _rebuilt(row[2], row[4], row[7]), *row[8:])
                for row in _rows(connection, "branches", old=True)]  # fmt: skip
    events = [(*row, _rebuilt(row[3], row[4], row[5]))
              for row in _rows(connection, "events", old=True)]  # fmt: skip
    _rewrite(connection, "branches", branches, crc)
    _rewrite(connection, "events", events, crc)


def _migrate_v3(connection: sqlite3.Connection) -> None:
    """Format 4 checksums branch, event and activity rows over their binary form. Each
    row's old checksum is checked before it gets the new one, so a damaged row is never
    given a fresh, valid one."""
    for table in _BINARY:
        rows = list(_rows(connection, table, old=True))
        # a row that cannot be packed gets -1, and the read that follows refuses it
        _rewrite(connection, table, rows, functools.partial(checksum, table))


def _rewrite(
    connection: sqlite3.Connection,
    table: str,
    rows: list[tuple[Any, ...]],
    sign: Callable[[tuple[Any, ...]], int],
) -> None:
    """`table` made anew in this format's shape, holding `rows`, each with `sign`'s
    checksum (inside the opening transaction: all of it, or the file as it was)."""
    connection.execute(f"DROP TABLE {table}")
    connection.execute(f"CREATE TABLE {table} ({_TABLES[table]})")
    if rows:
        marks = ", ".join("?" * (len(rows[0]) + 1))
        connection.executemany(
            f"INSERT INTO {table} VALUES ({marks})", [(*row, sign(row)) for row in rows]
        )


def _rebuilt(n: Any, total: Any, m2: Any) -> float:
    if not (isinstance(n, int) and n > 0 and _finite(total, m2)):
        return 0.0
    return float(m2) + float(total) * float(total) / n


_WAL_MAGIC = (0x377F0682, 0x377F0683)


def wal_problem(path: Path) -> str | None:
    """What is wrong with a write-ahead log, if anything. SQLite stops replaying a log at
    the first frame whose checksum fails and silently drops every commit after it; a torn
    last transaction after a crash is normal, but a bad frame with valid commits of the same
    log after it means acknowledged writes would vanish."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < 32:
        return None
    magic, _, page_size, _, salt1, salt2 = struct.unpack(">6I", data[:24])
    if magic not in _WAL_MAGIC:
        return "bad header" if any(data[:32]) else None
    order = ">" if magic & 1 else "<"
    s0, s1 = _wal_checksum(data[:24], order, 0, 0)
    if (s0, s1) != struct.unpack(">2I", data[24:32]):
        return "its header fails its checksum"
    frame = 24 + page_size
    offset, index, broken = 32, 0, None
    while offset + frame <= len(data):
        header = data[offset : offset + 24]
        _, commit, f1, f2, c0, c1 = struct.unpack(">6I", header)
        if (f1, f2) != (salt1, salt2):
            break  # a frame of an older log generation: the end of this one
        if broken is None:
            s0, s1 = _wal_checksum(header[:8], order, s0, s1)
            s0, s1 = _wal_checksum(data[offset + 24 : offset + frame], order, s0, s1)
            if (s0, s1) != (c0, c1):
                broken = index
        elif commit:
            return f"frame {broken} fails its checksum and commits follow it"
        offset += frame
        index += 1
    return None


def _wal_checksum(data: bytes, order: str, s0: int, s1: int) -> tuple[int, int]:
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _never() -> bool:
    return False


def _settle(future: asyncio.Future[bool], durable: bool) -> None:
    """A waiter's answer: True once on disk, False when its timeout came first."""
    if not future.done():
        future.set_result(durable)


def _resolve(futures: list[asyncio.Future[bool]]) -> None:
    for future in futures:
        _settle(future, True)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (autocommit connections)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self._connection.execute("COMMIT" if kind is None else "ROLLBACK")
