"""Who may call, and when a write must wait or be turned away.

Writes (POST, PUT, DELETE: ingest, OTLP, configuration, clearing) need the
write token when one is configured; reads (/metrics, the GET API, the landing
page) need the metrics token when one is configured; /-/healthy and /-/ready
are always open. Tokens are compared in constant time and a refusal says
nothing about why.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from .keys import SELF, SETTINGS, STORE

OPEN_PATHS = frozenset({"/-/healthy", "/-/ready"})
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _source(request: web.Request) -> str:
    return "otlp" if request.path == "/v1/metrics" else "http"


def _authorised(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in OPEN_PATHS:
        settings = request.app[SETTINGS]
        token = settings.token if request.method in WRITE_METHODS else settings.metrics_token
        if token and not _authorised(request, token):
            request.app[SELF].reject(_source(request), "unauthorized")
            return web.Response(
                status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"}
            )
    return await handler(request)


def rss_bytes() -> int:
    """Resident memory of this process (Linux), 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def admit_write(request: web.Request) -> web.Response | None:
    """Turn a write away, before anything is applied, when the disk writer is behind
    or memory is short: better a retry later than falling over."""
    app = request.app
    settings, store = app[SETTINGS], app.get(STORE)
    if store is not None and store.waiting >= settings.max_pending_writes:
        app[SELF].reject(_source(request), "write_queue_full")
        return web.json_response(
            {"error": "too many writes are waiting for the disk; retry shortly"},
            status=429,
            headers={"Retry-After": "1"},
        )
    if settings.max_memory_bytes and rss_bytes() > settings.max_memory_bytes:
        app[SELF].reject(_source(request), "memory_short")
        return web.json_response(
            {"error": "the exporter is short of memory; retry later"},
            status=503,
            headers={"Retry-After": "5"},
        )
    return None


async def durable(request: web.Request, version: int) -> web.Response | None:
    """In sync durability, wait until `version` is on disk; a 503 if that takes too long."""
    app = request.app
    store = app.get(STORE)
    if store is None or store.durability != "sync":
        return None
    if await store.durable(version, app[SETTINGS].durable_timeout):
        return None
    return web.json_response(
        {"error": "applied in memory but not yet on disk; the disk is too slow or failing"},
        status=503,
        headers={"Retry-After": "5"},
    )
