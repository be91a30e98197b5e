"""The server's background work, each an aiohttp cleanup context: persistence,
comparisons, expiry and the optional OTLP push."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ..state.store import StoreError
from .keys import ANALYZER, ENGINE, METRICS, READINESS, SELF, SETTINGS, STORE

log = logging.getLogger(__name__)


async def _every(interval: float, work: Callable[[], Awaitable[object]]) -> None:
    while True:
        try:
            await work()
        except Exception:  # one failed round must not stop the next ones
            log.exception("background work failed")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running(coroutine: Awaitable[None]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(coroutine)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def persistence(app: web.Application) -> AsyncIterator[None]:
    """Restore the aggregate while already listening (so /-/ready can say 503 until it is
    done, and writes are turned away); write the rest on shutdown."""
    store, readiness = app.get(STORE), app[READINESS]

    async def restore() -> None:
        assert store is not None
        try:
            branches, events = await asyncio.to_thread(store.open)
        except StoreError as exc:
            readiness.failure = str(exc)
            log.error("%s", exc)
        else:
            log.info("restored %d branch and %d event series from %s", branches, events,
                     store.path)  # fmt: skip
            store.start()
            readiness.ready = True
        readiness.settled.set()

    task = None
    if store is None:
        readiness.ready = True
        readiness.settled.set()
    else:
        task = asyncio.create_task(restore())
    yield
    if task is not None:
        await task
    if store is not None and readiness.ready:
        await asyncio.to_thread(store.close)


async def comparisons(app: web.Application) -> AsyncIterator[None]:
    engine = app[ENGINE]

    async def refresh() -> None:
        await asyncio.to_thread(engine.refresh)

    async with running(_every(app[SETTINGS].stats_interval, refresh)):
        yield


async def analyzer(app: web.Application) -> AsyncIterator[None]:
    """The analyzer's rounds: rebuild from Prometheus every --stats-interval."""
    rounds = app[ANALYZER]

    async def read() -> None:
        await asyncio.to_thread(rounds.round)

    async with running(_every(app[SETTINGS].stats_interval, read)):
        yield


async def expiry(app: web.Application) -> AsyncIterator[None]:
    idle_for = app[SETTINGS].expire_after
    assert idle_for is not None
    metrics, self_metrics = app[METRICS], app[SELF]

    async def expire() -> None:
        for experiment in await asyncio.to_thread(metrics.expire, idle_for):
            log.info("experiment %r expired after %.0f s without writes", experiment, idle_for)
            self_metrics.expired()

    async with running(_every(min(60.0, max(1.0, idle_for / 10)), expire)):
        yield


async def otlp_push(app: web.Application) -> AsyncIterator[None]:
    from ..outputs.otlp_push import start_push

    settings = app[SETTINGS]
    assert settings.otlp_push_endpoint is not None
    provider = start_push(
        app[METRICS], settings.otlp_push_endpoint, settings.otlp_push_interval, app[ENGINE]
    )
    yield
    await asyncio.to_thread(provider.shutdown)  # one last push
