"""A simulated experiment, so a newcomer sees live data within seconds."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from ..state.abmetrics import ABMetrics
from .background import running
from .keys import METRICS


@dataclass(frozen=True, slots=True)
class Arm:
    branch: str
    weight: float
    success: float  # chance a query succeeds
    latency_ms: float  # median latency
    conversion: float  # chance a query converts
    revenue: float  # mean revenue of a conversion


# checkout-button: the treatment converts better and is faster.
# search-ranking: the split is off (sample-ratio mismatch) and the new ranker is slower.
DEMO: dict[str, tuple[Arm, ...]] = {
    "checkout-button": (
        Arm("control", 1.0, 0.97, 80.0, 0.10, 40.0),
        Arm("treatment", 1.0, 0.975, 65.0, 0.13, 42.0),
    ),
    "search-ranking": (
        Arm("control", 1.2, 0.99, 120.0, 0.05, 20.0),
        Arm("new-ranker", 1.0, 0.985, 150.0, 0.05, 20.0),
        Arm("new-ranker-lite", 1.0, 0.99, 110.0, 0.05, 20.0),
    ),
}


def simulate(metrics: ABMetrics, rng: random.Random, queries: int) -> None:
    """Feed `queries` simulated queries, spread over the demo experiments."""
    for experiment, arms in DEMO.items():
        weights = [arm.weight for arm in arms]
        for arm in rng.choices(arms, weights, k=queries // len(DEMO)):
            latency = rng.lognormvariate(0.0, 0.4) * arm.latency_ms
            metrics.record_query(experiment, arm.branch, latency, rng.random() < arm.success)
            if rng.random() < arm.conversion:
                metrics.record_event(experiment, arm.branch, "conversion", 1.0)
                revenue = rng.expovariate(1.0 / arm.revenue)
                metrics.record_event(experiment, arm.branch, "revenue", round(revenue, 2))


def demo_context(
    rate: float = 200.0, seed: int | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context that feeds the demo at `rate` queries per second."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        async def feed() -> None:
            rng = random.Random(seed)
            while True:
                simulate(app[METRICS], rng, max(1, int(rate / 10)))
                await asyncio.sleep(0.1)

        async with running(feed()):
            yield

    return context
