"""Timing helpers: best of several rounds, since these machines are shared and noisy."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(rounds: int, run: Callable[[], object]) -> float:
    """The fastest of `rounds` runs, in seconds."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def verdict(name: str, ratio: float, target: float) -> bool:
    ok = ratio <= target
    print(f"  {name}: {ratio:.3f}x (target <= {target}x) {'OK' if ok else 'MISSED'}")
    return ok
