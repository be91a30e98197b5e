"""Rules every name and number must meet before it reaches the aggregate.

One place for them, so the in-process API, the HTTP batch API and (later) OTLP
reject exactly the same things with the same words.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from typing import Final

MAX_NAME_LENGTH: Final = 128
# Sums of this many values stay exact enough and far from overflow: 1e12 ms is
# 31 years, 1e15 is more revenue than any single event carries.
MAX_LATENCY_MS: Final = 1e12
MAX_ABS_EVENT_VALUE: Final = 1e15
# Counts stay exact as floats (and far from int64's wrap) up to 2**53.
MAX_COUNT: Final = 2**53 - 1

# C0/C1 controls, lone surrogates (unencodable as UTF-8) and line/paragraph separators.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


class ValidationError(ValueError):
    """A value the exporter refuses; `reason` is the self-metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def name_problem(value: object, max_length: int = MAX_NAME_LENGTH) -> str | None:
    """Why `value` is not a usable experiment, branch or event name (None if it is)."""
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"must be at most {max_length} characters (got {len(value)})"
    if _FORBIDDEN.search(value):
        return "must not contain control characters, line separators or lone surrogates"
    return None


@functools.lru_cache(maxsize=4096)
def _good_name(name: str, max_length: int) -> bool:
    """name_problem's verdict on a str, remembered across calls: single-record POSTs
    name the same few series over and over."""
    return name_problem(name, max_length) is None


def named(value: object, max_length: int) -> bool:
    """Whether `value` is a usable name, as name_problem judges, remembered."""
    # only names short enough to be good are remembered: the memo is bounded in entries,
    # so a long name (refused anyway) must not become one
    return type(value) is str and len(value) <= max_length and _good_name(value, max_length)


def good_names(names: Iterable[object], max_length: int) -> bool:
    """Whether every one of (distinct) `names` is usable, as name_problem judges."""
    return all(named(name, max_length) for name in names)


def latency_problem(value: object) -> str | None:
    problem, number = _finite(value)
    if problem is not None:
        return problem
    if number < 0:
        return "must be >= 0"
    if number > MAX_LATENCY_MS:
        return f"must be <= {MAX_LATENCY_MS:g} ms"
    return None


def event_value_problem(value: object) -> str | None:
    problem, number = _finite(value)
    if problem is None and abs(number) > MAX_ABS_EVENT_VALUE:
        return f"must be between -{MAX_ABS_EVENT_VALUE:g} and {MAX_ABS_EVENT_VALUE:g}"
    return problem


def _finite(value: object) -> tuple[str | None, float]:
    """(why `value` is not a finite JSON number, or None; the number as a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number", 0.0
    number = _as_float(value)
    if number is None or not math.isfinite(number):
        return "must be finite", 0.0
    return None, number


def success_problem(value: object) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _as_float(value: int | float) -> float | None:
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return None


def check_name(what: str, value: object, max_length: int = MAX_NAME_LENGTH) -> str:
    problem = name_problem(value, max_length)
    if problem is not None:
        raise ValidationError("invalid_name", f"{what} {problem}")
    assert isinstance(value, str)
    return value
