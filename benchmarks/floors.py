"""Floors: the least any pure-Python recorder must do per call, timed in the same run as
ours, so a missed ratio can be told apart from a ratio Python cannot reach.

`Floor.record_query` and `Floor.record_event` take the steps no recorder can skip and
keep nothing else: check the number's type and range, find the series by its names (one
dict level a name, as ours), read the clock, keep the record. Ours does these and then
folds the records into exact columns. `timed_block` is the least a timing context
manager does: two clock reads and one kept tuple.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from exporter.core.validation import MAX_ABS_EVENT_VALUE, MAX_LATENCY_MS


class Floor:
    """A recorder that keeps raw records in one flat list, never folded."""

    def __init__(self, series: dict[Any, Any]) -> None:
        """`series`: each series' key, by name one level at a time (experiment, branch[,
        event])."""
        self._series = series
        self._pending: list[Any] = []
        self._clock = time.time

    def record_query(self, experiment: str, branch: str, latency_ms: float, ok: bool) -> None:
        if (
            (latency_ms.__class__ is not float and latency_ms.__class__ is not int)
            or not 0.0 <= latency_ms <= MAX_LATENCY_MS
            or ok.__class__ is not bool
        ):
            raise ValueError(latency_ms)
        key = self._series[experiment][branch]
        self._pending.extend((key, latency_ms, ok, self._clock()))

    def record_event(self, experiment: str, branch: str, event: str, value: float) -> None:
        if (value.__class__ is not float and value.__class__ is not int) or not (
            -MAX_ABS_EVENT_VALUE <= value <= MAX_ABS_EVENT_VALUE
        ):
            raise ValueError(value)
        key = self._series[experiment][branch][event]
        self._pending.extend((key, value, self._clock()))


class _Block:
    __slots__ = ("kept", "started")

    def __init__(self, kept: list[float]) -> None:
        self.kept = kept
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kept.append(time.perf_counter() - self.started)


def timed_blocks(calls: int) -> list[float]:
    """`calls` empty blocks timed by the least timing context manager (one object reused:
    not even an allocation per call)."""
    kept: list[float] = []
    block = _Block(kept)
    for _ in range(calls):
        with block:
            pass
    return kept
