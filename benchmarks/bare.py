"""The baseline server for the HTTP rows: bare aiohttp that only parses the same JSON
(`/parse`) or only reads the body and answers 200 (`/ok`), or sends a prebuilt body of a
given size (`/bytes/N`: the transport's share of a large scrape), no access log, on the
same event loop the exporter picks (uvloop when installed), so a ratio compares handlers
only.

    python -m benchmarks.bare PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

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


def main() -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/parse", parse)
    app.router.add_post("/ok", ok)
    app.router.add_get("/bytes/{size:[0-9]+}", sized)
    app.router.add_get("/-/ready", lambda _: ok_get())
    factory, _ = loop_factory()
    loop = factory() if factory is not None else asyncio.new_event_loop()
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop
    )


async def ok_get() -> web.Response:
    return web.Response(text="ok")


if __name__ == "__main__":
    main()
