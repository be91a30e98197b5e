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

from .keys import INFLIGHT, READINESS, SELF, SETTINGS, STORE
from .refusals import Refusal, source_of

OPEN_PATHS = frozenset({"/-/healthy", "/-/ready"})
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _authorised(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    # headers arrive as latin-1 or with escaped undecodable bytes: compare bytes as sent
    sent = given.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent, token.encode())


@web.middleware
async def otlp_port_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The OTLP listener (--otlp-port) serves OTLP and the probes, nothing else."""
    otlp_port = request.app[SETTINGS].otlp_port
    if otlp_port and request.path not in OTLP_PORT_PATHS:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if sockname and sockname[1] == otlp_port:
            return web.Response(status=404, text="this port serves only POST /v1/metrics\n")
    return await handler(request)


OTLP_PORT_PATHS = frozenset({"/v1/metrics", "/-/healthy", "/-/ready"})


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in OPEN_PATHS:
        settings = request.app[SETTINGS]
        token = settings.token if request.method in WRITE_METHODS else settings.metrics_token
        if token and not _authorised(request, token):
            request.app[SELF].reject(source_of(request), "unauthorized")
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


@web.middleware
async def release_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    finally:
        release(request)


HELD_BYTES = web.RequestKey("held_bytes", int)
# What a body may cost once decoded, per byte, at worst (measured with bodies of empty
# records and empty points): JSON records up to 26x their text, OTLP up to 58x.
DECODED_WEIGHT = {"http": 32, "otlp": 64}


def hold(request: web.Request, size: int) -> bool:
    """Charge `size` bytes of this request to the in-flight budget; False if it is full."""
    own = request.get(HELD_BYTES, 0)
    if not request.app[INFLIGHT].reserve(size, own):
        return False
    request[HELD_BYTES] = own + size
    return True


def release(request: web.Request) -> None:
    """Give back what the request holds (once its body is applied, before it waits)."""
    if held := request.get(HELD_BYTES, 0):
        request.app[INFLIGHT].release(held)
        request[HELD_BYTES] = 0


def admit_write(request: web.Request) -> None:
    """Turn a write away, before its body is read, while the data file is being restored,
    when the disk writer is behind or memory is short: better a retry later than falling
    over."""
    app = request.app
    settings, store, source = app[SETTINGS], app.get(STORE), source_of(request)
    if not app[READINESS].ready:
        raise Refusal(
            503, "the exporter is restoring its data; retry shortly", "restoring", source,
            {"Retry-After": "1"},
        )  # fmt: skip
    if store is not None and store.waiting >= settings.max_pending_writes:
        raise Refusal(
            429, "too many writes are waiting for the disk; retry shortly", "write_queue_full",
            source, {"Retry-After": "1"},
        )  # fmt: skip
    if settings.max_memory_bytes and rss_bytes() > settings.max_memory_bytes:
        raise Refusal(
            503, "the exporter is short of memory; retry later", "memory_short", source,
            {"Retry-After": "5"},
        )  # fmt: skip


async def durable(request: web.Request, version: int) -> bool:
    """In sync durability, wait until `version` is on disk; False if that takes too long."""
    app = request.app
    store = app.get(STORE)
    if store is None or store.durability != "sync":
        return True
    return await store.durable(version, app[SETTINGS].durable_timeout)
