"""The baseline server for the HTTP rows: bare aiohttp that only parses the same JSON
(`/parse`) or only reads the body and answers 200 (`/ok`), no access log, on the same
event loop the exporter picks (uvloop when installed), so a ratio compares handlers only.

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


def main() -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/parse", parse)
    app.router.add_post("/ok", ok)
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
