"""Timing helpers: best of several rounds, since these machines are shared and noisy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence


def best_of(rounds: int, run: Callable[[], object]) -> float:
    """The fastest of `rounds` runs, in seconds."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def run_threads(targets: Sequence[Callable[[], object]]) -> float:
    """Run each target on a thread of its own; the seconds until the last one ends."""
    started = time.monotonic()
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def verdict(name: str, ratio: float, target: float) -> bool:
    ok = ratio <= target
    print(f"  {name}: {ratio:.3f}x (target <= {target}x) {'OK' if ok else 'MISSED'}")
    return ok
