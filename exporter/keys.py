"""Typed application state keys, shared by the server's modules."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from . import otlp
from .engine import ComparisonEngine
from .manager import ABMetrics
from .selfmetrics import SelfMetrics
from .settings import Settings
from .store import Store


@dataclass
class Readiness:
    """False until the data file is restored: /-/ready answers 503 until then."""

    ready: bool = False


METRICS = web.AppKey("metrics", ABMetrics)
SELF = web.AppKey("self_metrics", SelfMetrics)
SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", ComparisonEngine)
RECEIVER = web.AppKey("otlp_receiver", otlp.Receiver)
STORE = web.AppKey("store", Store)
READINESS = web.AppKey("readiness", Readiness)
