"""Typed application state keys, shared by the server's modules."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from ..outputs.comparisons import ComparisonEngine
from ..outputs.series import Renderers
from ..state.abmetrics import ABMetrics
from ..state.store import Store
from .analyzer import Analyzer
from .selfmetrics import SelfMetrics
from .settings import Settings


@dataclass
class Readiness:
    """False until the data file is restored: /-/ready answers 503 and writes are turned
    away until then. `failure` says why the restore failed (the server then stops)."""

    ready: bool = False
    failure: str | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # restored or failed


class InFlight:
    """Request bodies held at once, in bytes: past the budget a write is asked to retry
    (one body is always let through, so a single large one still fits)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held = 0

    def reserve(self, size: int, own: int = 0) -> bool:
        """Take `size` more bytes for a request already holding `own`."""
        if self.held - own and self.held + size > self.budget:
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size


METRICS = web.AppKey("metrics", ABMetrics)
SELF = web.AppKey("self_metrics", SelfMetrics)
SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", ComparisonEngine)
INFLIGHT = web.AppKey("inflight", InFlight)
STORE = web.AppKey("store", Store)
READINESS = web.AppKey("readiness", Readiness)
ANALYZER = web.AppKey("analyzer", Analyzer)
RENDERERS = web.AppKey("renderers", Renderers)  # /metrics' per-series text, kept between scrapes
