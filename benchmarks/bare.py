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

    python -m benchmarks.bare PORT
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

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
    next one)."""

    def __init__(self, directory: Path, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Any] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._db = sqlite3.connect(
            directory / "floor.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY, n INTEGER)")
        self._thread = threading.Thread(target=self._run, name="floor-writer", daemon=True)
        self._thread.start()

    async def write(self, document: Any) -> None:
        future = self._loop.create_future()
        with self._lock:
            self._pending.append(document)
            self._waiters.append(future)
        self._wake.set()
        await future

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                pending, waiters = self._pending, self._waiters
                self._pending, self._waiters = [], []
            if not waiters:
                continue
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO batches VALUES (1, ?)", (len(pending),))
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


async def durable(request: web.Request) -> web.Response:
    await request.app[COMMITS].write(orjson.loads(await request.read()))
    return web.Response(text="{}", content_type="application/json")


async def _writer(app: web.Application) -> AsyncIterator[None]:
    directory = Path(tempfile.mkdtemp(prefix="bare-durable-"))
    app[COMMITS] = GroupCommit(directory, asyncio.get_running_loop())
    yield
    app[COMMITS].close()
    shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/parse", parse)
    app.router.add_post("/ok", ok)
    app.router.add_get("/bytes/{size:[0-9]+}", sized)
    app.router.add_post("/durable", durable)
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
