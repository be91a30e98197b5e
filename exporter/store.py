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

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .aggregate import BranchParts, EventParts
from .config import ExperimentConfig
from .exposition import Family, Sample
from .manager import ABMetrics, StoreBatch
from .otlp import Receiver, StreamChanges

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILE_NAME = "abtest.sqlite3"
Durability = Literal["sync", "interval"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS branches (
    experiment TEXT NOT NULL, branch TEXT NOT NULL,
    n INTEGER NOT NULL, ok INTEGER NOT NULL, total_ms REAL NOT NULL,
    lo REAL NOT NULL, hi REAL NOT NULL, m2 REAL NOT NULL,
    first REAL NOT NULL, last REAL NOT NULL, buckets BLOB NOT NULL,
    PRIMARY KEY (experiment, branch)
);
CREATE TABLE IF NOT EXISTS events (
    experiment TEXT NOT NULL, branch TEXT NOT NULL, event TEXT NOT NULL,
    count INTEGER NOT NULL, total REAL NOT NULL, m2 REAL NOT NULL,
    PRIMARY KEY (experiment, branch, event)
);
CREATE TABLE IF NOT EXISTS configs (experiment TEXT PRIMARY KEY, config TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS otlp_streams (stream TEXT PRIMARY KEY, state TEXT NOT NULL);
"""


class StoreError(Exception):
    """The data file cannot be used; the message says why and what to do."""


@dataclass
class StoreStats:
    commits: int = 0
    failures: int = 0
    last_success: float = 0.0  # unix time
    last_seconds: float = 0.0
    rows_written: int = 0


class Store:
    def __init__(
        self,
        directory: str | Path,
        metrics: ABMetrics,
        durability: Durability = "sync",
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        receiver: Receiver | None = None,
    ) -> None:
        self.path = Path(directory) / FILE_NAME
        # OTLP cumulative streams are persisted with the aggregate, so that after a restart
        # an app's next point is counted as an increment, not as everything again
        self._receiver = receiver
        self.durability = durability
        self.stats = StoreStats()
        self._metrics = metrics
        self._interval = interval
        self.commit_delay = 0.005
        self._clock = clock
        self._connection: sqlite3.Connection | None = None
        self._durable = -1
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._waiters_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------

    def open(self) -> tuple[int, int]:
        """Open (or create) the file, check it, and restore the aggregate from it.
        Returns the numbers of branch and event series restored."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        aside = f"mv {self.path} {self.path}.bad (and its -wal and -shm files)"
        try:
            connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            synchronous = "FULL" if self.durability == "sync" else "NORMAL"
            connection.execute(f"PRAGMA synchronous={synchronous}")
            check = connection.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(
                    f"{self.path} is damaged ({check}). Move it aside to start empty: {aside}"
                )
            connection.executescript(_SCHEMA)
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path} is not a usable database ({exc}). "
                f"Move it aside to start empty: {aside}"
            ) from None
        version = int(meta.get("format_version", FORMAT_VERSION))
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
            connection.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("format_version", str(FORMAT_VERSION)), ("buckets", json.dumps(buckets))],
            )
        self._connection = connection
        return self._restore(connection)

    def _restore(self, connection: sqlite3.Connection) -> tuple[int, int]:
        branches, events = BranchParts(), EventParts()
        for e, b, n, ok, total, lo, hi, m2, first, last, buckets in connection.execute(
            "SELECT * FROM branches"
        ):
            counts = np.frombuffer(buckets, dtype="<i8").tolist()  # little-endian int64
            branches.add((e, b), n, ok, total, m2, lo, hi, first, last, counts)
        for e, b, ev, count, total, m2 in connection.execute("SELECT * FROM events"):
            events.add((e, b, ev), count, total, m2)
        configs = {
            experiment: ExperimentConfig.from_mapping(json.loads(text))
            for experiment, text in connection.execute("SELECT * FROM configs")
        }
        self._metrics.record_parts(branches, events, check_limits=False)
        self._metrics.restore_configs(configs)
        if self._receiver is not None:
            self._receiver.streams.load(connection.execute("SELECT * FROM otlp_streams"))
            self._receiver.streams.take_changes()  # already on disk
        restored = self._metrics.changes_for_store()  # already on disk: nothing to write
        self._durable = restored.version
        return len(branches.keys), len(events.keys)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="abtest-store", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is left and close the file."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.commit()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -- writing ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            if self.durability == "sync":
                self._wake.wait()
                # Group commit: give requests arriving right behind this one a moment to
                # join, so one fsync serves several of them.
                time.sleep(self.commit_delay)
            else:
                self._wake.wait(self._interval)
            self._wake.clear()
            if not self._stopping:
                self.commit()

    def commit(self) -> bool:
        """One group commit of everything changed so far; True if it succeeded."""
        started = time.perf_counter()
        streams = StreamChanges(set(), set(), [], [])
        if self._receiver is not None:
            with self._receiver.lock:  # stream states and their increments, together
                batch = self._metrics.changes_for_store()
                streams = self._receiver.streams.take_changes()
        else:
            batch = self._metrics.changes_for_store()
        if batch or streams:
            try:
                self._write(batch, streams)
            except Exception:  # the writer must outlive any failure: retry next round
                log.exception("persisting failed; will retry")
                self.stats.failures += 1
                self._metrics.return_changes(batch)
                if self._receiver is not None:
                    with self._receiver.lock:
                        self._receiver.streams.return_changes(streams)
                return False
            self.stats.commits += 1
            self.stats.rows_written += len(batch.branches) + len(batch.events)
        self.stats.last_success = self._clock()
        self.stats.last_seconds = time.perf_counter() - started
        self._durable = max(self._durable, batch.version)
        self._release()
        return True

    def _write(self, batch: StoreBatch, streams: StreamChanges) -> None:
        connection = self._connection
        assert connection is not None
        with _transaction(connection):
            connection.executemany(
                "INSERT OR REPLACE INTO otlp_streams VALUES (?, ?)", streams.rows
            )
            connection.executemany(
                "DELETE FROM otlp_streams WHERE stream = ?", [(k,) for k in streams.gone]
            )
            if batch.changes.cleared:
                connection.execute("DELETE FROM branches")
                connection.execute("DELETE FROM events")
            for experiment in batch.changes.removed:
                connection.execute("DELETE FROM branches WHERE experiment = ?", (experiment,))
                connection.execute("DELETE FROM events WHERE experiment = ?", (experiment,))
            connection.executemany(
                "INSERT OR REPLACE INTO branches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*row[:10], row[10].astype("<i8").tobytes()) for row in batch.branches],
            )
            connection.executemany(
                "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?)", batch.events
            )
            for experiment, config in batch.configs.items():
                if config is None:
                    connection.execute("DELETE FROM configs WHERE experiment = ?", (experiment,))
                else:
                    connection.execute(
                        "INSERT OR REPLACE INTO configs VALUES (?, ?)",
                        (experiment, json.dumps(config.to_json())),
                    )

    # -- waiting for durability ---------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def durable(self, version: int, timeout: float) -> bool:
        """Wait until everything up to `version` is on disk (or `timeout` passes)."""
        if self._durable >= version:
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._waiters_lock:
            self._waiters.append((version, loop, future))
        if self._durable >= version:  # a commit finished while we registered
            self._release()
        self._wake.set()
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True

    def _release(self) -> None:
        durable = self._durable
        with self._waiters_lock:
            ready = [w for w in self._waiters if w[0] <= durable]
            self._waiters = [w for w in self._waiters if w[0] > durable]
        for _, loop, future in ready:
            loop.call_soon_threadsafe(_resolve, future)

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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (autocommit connections)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self._connection.execute("COMMIT" if kind is None else "ROLLBACK")
