"""The baseline server for the HTTP rows: bare aiohttp that only parses the same JSON
(`/parse`) or only reads the body and answers 200 (`/ok`), or sends a prebuilt body of a
given size (`/bytes/N`: the transport's share of a large scrape), no access log, on the
same event loop the exporter picks (uvloop when installed), so a ratio compares handlers
only.

`/durable` is the floor of any ingest that acknowledges only what is on disk: read,
orjson.loads, queue the document, wait for a writer thread's group commit (one row,
SQLite in WAL mode with synchronous=FULL, as the exporter's sync durability) to resolve
the waiting futures, then answer. Nothing is validated or aggregated: what the exporter
spends beyond it is its own work, not the price of durability.

`/folded` is the floor of an ingest that also checks and keeps what it is sent: the
records decoded and range-checked by msgspec in one pass, names checked (memoised),
each record folded into its series' count, successes, sum, sum of squares, min, max and
bucket in plain Python, and each commit writing the series changed since the last one.
No limits, checksums, idempotency keys, self-metrics or middleware: what a ratio leaves
once this is paid is what any exporter of these records has for everything else.

    python -m benchmarks.bare PORT
"""

from __future__ import annotations

import array
import asyncio
import bisect
import json
import math
import shutil
import sqlite3
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import orjson
from aiohttp import web

from exporter.core.aggregate import DEFAULT_BUCKETS
from exporter.core.validation import MAX_LATENCY_MS, MAX_NAME_LENGTH, named
from exporter.serve.eventloop import loop_factory


async def parse(request: web.Request) -> web.Response:
    json.loads(await request.read())
    return web.Response(text="{}", content_type="application/json")


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="{}", content_type="application/json")


_BODIES: dict[int, bytes] = {}


async def sized(request: web.Request) -> web.Response:
    size = min(int(request.match_info["size"]), 1 << 30)
    body = _BODIES.get(size)
    if body is None:
        _BODIES.clear()
        body = _BODIES[size] = (b"x" * 99 + b"\n") * (size // 100) + b"x" * (size % 100)
    return web.Response(body=body, content_type="text/plain")


class GroupCommit:
    """Documents queued by the loop, committed by one thread, their futures resolved by
    one call_soon_threadsafe per commit (requests arriving during a commit share the
    next one). What is kept and written is `_take`'s, `_taken`'s and `_write`'s."""

    name = "floor"
    schema = "CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY, n INTEGER)"

    def __init__(self, directory: Path, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Any] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._db = sqlite3.connect(
            directory / f"{self.name}.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(self.schema)
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-writer", daemon=True)
        self._thread.start()

    async def write(self, document: Any) -> None:
        future = self._loop.create_future()
        with self._lock:
            self._take(document)
            self._waiters.append(future)
        self._wake.set()
        await future

    def _take(self, document: Any) -> None:
        self._pending.append(document)

    def _taken(self) -> Any:
        """What the next commit writes, taken under the lock."""
        pending, self._pending = self._pending, []
        return pending

    def _write(self, taken: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO batches VALUES (1, ?)", (len(taken),))

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                taken, waiters = self._taken(), self._waiters
                self._waiters = []
            if not waiters:
                continue
            self._db.execute("BEGIN IMMEDIATE")
            self._write(taken)
            self._db.execute("COMMIT")
            self._loop.call_soon_threadsafe(_resolve, waiters)

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._db.close()


def _resolve(waiters: list[asyncio.Future[None]]) -> None:
    for future in waiters:
        if not future.done():
            future.set_result(None)


COMMITS = web.AppKey("commits", GroupCommit)


class _Query(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    experiment: str
    branch: str
    latency_ms: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_LATENCY_MS)]
    success: bool


class _Records(msgspec.Struct, forbid_unknown_fields=True):
    queries: list[_Query] = []


_DECODE = msgspec.json.Decoder(_Records).decode
_BOUNDS = [bound * 1000.0 for bound in DEFAULT_BUCKETS]
_ROW = f"INSERT OR REPLACE INTO series VALUES ({', '.join('?' * 9)})"


class Folding(GroupCommit):
    """Records folded into per-series sums on the loop; each commit writes the series
    changed since the last one."""

    name = "folded"
    schema = (
        "CREATE TABLE IF NOT EXISTS series (experiment TEXT, branch TEXT, n INTEGER, "
        "ok INTEGER, total REAL, sq REAL, lo REAL, hi REAL, buckets BLOB, "
        "PRIMARY KEY (experiment, branch))"
    )

    def __init__(self, directory: Path, loop: asyncio.AbstractEventLoop) -> None:
        self._series: dict[tuple[str, str], list[Any]] = {}
        self._changed: set[tuple[str, str]] = set()
        super().__init__(directory, loop)

    async def fold(self, body: bytes) -> bool:
        """Check and keep `body`'s records, once they are on disk; False if any is bad."""
        try:
            queries = _DECODE(body).queries
        except msgspec.DecodeError:
            return False
        if not all(named(q.experiment, MAX_NAME_LENGTH) and named(q.branch, MAX_NAME_LENGTH)
                   for q in queries):  # fmt: skip
            return False
        await self.write(queries)
        return True

    def _take(self, document: Any) -> None:
        for q in document:
            key = (q.experiment, q.branch)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0, 0, 0.0, 0.0, math.inf, -math.inf,
                                              [0] * (len(_BOUNDS) + 1)]  # fmt: skip
            latency = q.latency_ms
            series[0] += 1
            series[1] += q.success
            series[2] += latency
            series[3] += latency * latency
            series[4] = min(series[4], latency)
            series[5] = max(series[5], latency)
            series[6][bisect.bisect_left(_BOUNDS, latency)] += 1
            self._changed.add(key)

    def _taken(self) -> Any:
        changed, self._changed = self._changed, set()
        return [(*key, *s[:6], array.array("q", s[6]).tobytes())
                for key in changed for s in (self._series[key],)]  # fmt: skip

    def _write(self, taken: Any) -> None:
        self._db.executemany(_ROW, taken)


FOLDS = web.AppKey("folds", Folding)


async def folded(request: web.Request) -> web.Response:
    if not await request.app[FOLDS].fold(await request.read()):
        return web.Response(status=400, text="{}", content_type="application/json")
    return web.Response(text="{}", content_type="application/json")


async def durable(request: web.Request) -> web.Response:
    await request.app[COMMITS].write(orjson.loads(await request.read()))
    return web.Response(text="{}", content_type="application/json")


async def _writer(app: web.Application) -> AsyncIterator[None]:
    directory = Path(tempfile.mkdtemp(prefix="bare-durable-"))
    app[COMMITS] = GroupCommit(directory, asyncio.get_running_loop())
    app[FOLDS] = Folding(directory, asyncio.get_running_loop())
    yield
    app[COMMITS].close()
    app[FOLDS].close()
    shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/parse", parse)
    app.router.add_post("/ok", ok)
    app.router.add_get("/bytes/{size:[0-9]+}", sized)
    app.router.add_post("/durable", durable)
    app.router.add_post("/folded", folded)
    app.router.add_get("/-/ready", lambda _: ok_get())
    app.cleanup_ctx.append(_writer)
    factory, _ = loop_factory()
    loop = factory() if factory is not None else asyncio.new_event_loop()
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop
    )


async def ok_get() -> web.Response:
    return web.Response(text="ok")


if __name__ == "__main__":
    main()
