"""The event loop the server runs on: uvloop when it is installed (the `fast` extra),
asyncio's own otherwise.

uvloop's transports and its loop are written in C (libuv): under many small requests
the loop's own cost per request falls by a large share (see README, Performance), and
nothing in the exporter depends on which loop runs it. Without uvloop, the server logs
once that it uses asyncio's loop and runs the same.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(use_uvloop: bool = True) -> tuple[LoopFactory | None, str]:
    """uvloop's loop factory and "uvloop" if it can be imported (and is wanted), else
    None (asyncio's default loop) and "asyncio"."""
    if use_uvloop:
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            log.info("uvloop is not installed (pip install 'abtest-exporter[fast]'): "
                     "serving on asyncio's own event loop")  # fmt: skip
        else:
            factory: LoopFactory = uvloop.new_event_loop
            return factory, "uvloop"
    return None, "asyncio"


def run(main: Coroutine[Any, Any, T], use_uvloop: bool = True) -> T:
    """`asyncio.run(main)` on the fastest loop available."""
    factory, name = loop_factory(use_uvloop)
    log.debug("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
