"""Checking a JSON batch of records: all of it is good, or nothing is applied.

Every problem is reported with its field path (`queries[3].latency_ms`), so a
client can fix a whole batch in one round.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import numpy as np

from ..core.aggregate import DEFAULT_BUCKETS, BranchParts, EventParts, PartColumns, Records
from ..core.validation import (
    MAX_ABS_EVENT_VALUE,
    MAX_LATENCY_MS,
    MAX_NAME_LENGTH,
    event_value_problem,
    good_names,
    latency_problem,
    name_problem,
    named,
    success_problem,
)
from .part_columns import SLACK as _SLACK
from .part_columns import take_all

MAX_REPORTED_ERRORS: Final = 100
MAX_COUNT: Final = 2**53 - 1  # counts stay exact as JSON numbers and as floats
LISTS: Final = ("queries", "events", "parts", "event_parts")

Check = Callable[[object], "str | None"]

Fields = dict[str, tuple[Check, str]]


def _name_check(max_name_length: int) -> Check:
    """name_problem, remembering the names found good in this batch: records and parts
    repeat a few names many times."""
    good: set[str] = set()

    def name(value: object) -> str | None:
        if type(value) is str and value in good:
            return None
        problem = name_problem(value, max_name_length)
        if problem is None:
            good.add(value)  # type: ignore[arg-type]  # a str: name_problem checked it
        return problem

    return name


def _fields(max_name_length: int) -> tuple[Fields, Fields]:
    name = _name_check(max_name_length)

    queries: Fields = {
        "experiment": (name, "invalid_name"),
        "branch": (name, "invalid_name"),
        "latency_ms": (latency_problem, "invalid_latency"),
        "success": (success_problem, "invalid_success"),
    }
    events: Fields = {
        "experiment": (name, "invalid_name"),
        "branch": (name, "invalid_name"),
        "event": (name, "invalid_name"),
        "value": (event_value_problem, "invalid_value"),
    }
    return queries, events


class Batch:
    """A checked batch: its records, a client's pre-aggregated parts (made on first use:
    most batches carry none, and a single-record POST paid for their sixteen empty
    lists), and the problems found, by field and by reason."""

    __slots__ = ("_event_parts", "_parts", "error_count", "errors", "reasons", "records",
                 "too_large")  # fmt: skip

    def __init__(self) -> None:
        self.records = Records()
        self._parts: BranchParts | PartColumns | None = None
        self._event_parts: EventParts | None = None
        self.errors: list[dict[str, str]] = []
        self.error_count = 0
        self.too_large = False  # over the records-per-batch limit: answered with 413
        # rejected records by reason, for the self-metrics (a dict: a Counter costs more
        # to build, and every good batch builds one)
        self.reasons: dict[str, int] = {}

    @property
    def parts(self) -> BranchParts | PartColumns:
        """The query parts: columns when every one passed the column checks."""
        if self._parts is None:
            self._parts = BranchParts()
        return self._parts

    def take_columns(self, columns: PartColumns) -> None:
        assert self._parts is None, "columns are the whole of a batch's query parts"
        self._parts = columns

    def listed_parts(self) -> BranchParts:
        """The parts taken one by one (only when the column checks took none)."""
        if self._parts is None:
            self._parts = BranchParts()
        assert isinstance(self._parts, BranchParts)
        return self._parts

    @property
    def event_parts(self) -> EventParts:
        if self._event_parts is None:
            self._event_parts = EventParts()
        return self._event_parts

    @property
    def has_parts(self) -> bool:
        """Whether any part (of either kind) was taken."""
        return bool(
            (self._parts is not None and self._parts.keys)
            or (self._event_parts is not None and self._event_parts.keys)
        )

    def fail(self, path: str, message: str, reason: str) -> None:
        self.error_count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"field": path, "message": message})

    @property
    def part_records(self) -> tuple[int, int]:
        """The queries and events the parts stand for (counted like records)."""
        if not self.has_parts:
            return 0, 0
        n = self.parts.n  # summed as Python ints: int64 wraps past 1024 parts of MAX_COUNT
        return sum(n.tolist() if isinstance(n, np.ndarray) else n), sum(self.event_parts.count)


def parse_batch(
    body: object,
    now: float,
    max_records: int,
    max_name_length: int = MAX_NAME_LENGTH,
    bounds: Sequence[float] = DEFAULT_BUCKETS,
) -> Batch:
    """Validate a decoded `{"queries", "events", "parts", "event_parts"}` document (each
    list optional); a part counts as one entry towards `max_records`."""
    batch = Batch()
    if type(body) is not dict and not isinstance(body, Mapping):
        batch.fail("$", "the body must be a JSON object", "invalid_type")
        return batch
    for key in body:
        if key not in LISTS:
            batch.fail(str(key), f"unknown field (expected {', '.join(LISTS)})", "invalid_type")
    lists: dict[str, list[Any]] = {}
    for key in LISTS:
        value = body.get(key, [])
        if not isinstance(value, list):
            batch.fail(key, "must be a list", "invalid_type")
        else:
            lists[key] = value
    total = sum(len(v) for v in lists.values())
    if total > max_records:
        batch.fail("$", f"too many records: {total} > limit {max_records}", "too_many_records")
        batch.too_large = True
        return batch
    queries, events = lists.get("queries", []), lists.get("events", [])
    if queries and _all_good_queries(batch.records, queries, now, max_name_length):
        queries = []  # checked and taken column by column
    if events and _all_good_events(batch.records, events, max_name_length):
        events = []
    if queries or events:  # some record is wrong: field by field, to name every problem
        query_fields, event_fields = _fields(max_name_length)
    for index, record in enumerate(queries):
        if _check_record(batch, f"queries[{index}]", record, query_fields):
            batch.records.add_query(
                (record["experiment"], record["branch"]),
                float(record["latency_ms"]),
                record["success"],
                now,
            )
    for index, record in enumerate(events):
        if _check_record(batch, f"events[{index}]", record, event_fields):
            batch.records.add_event(
                (record["experiment"], record["branch"], record["event"]), float(record["value"])
            )
    if "parts" in body or "event_parts" in body:
        part_fields, event_part_fields = _part_fields(max_name_length)
        parts = lists.get("parts", [])
        columns = take_all(parts, now, max_name_length, MAX_COUNT, bounds) if parts else None
        if columns is not None:
            batch.take_columns(columns)
            parts = []  # every part good: checked and taken as columns
        for index, part in enumerate(parts):
            path = f"parts[{index}]"
            if _check_record(batch, path, part, part_fields) and _check_part(
                batch, path, part, bounds
            ):
                batch.listed_parts().append(
                    (part["experiment"], part["branch"]),
                    part["queries"],
                    part["successes"],
                    float(part["latency_sum_ms"]),
                    float(part["latency_m2_ms2"]),
                    float(part["latency_min_ms"]),
                    float(part["latency_max_ms"]),
                    now,
                    now,
                    list(part["buckets"]),
                )
        for index, part in enumerate(lists.get("event_parts", [])):
            path = f"event_parts[{index}]"
            if _check_record(batch, path, part, event_part_fields) and _check_event_part(
                batch, path, part
            ):
                batch.event_parts.append(
                    (part["experiment"], part["branch"], part["event"]),
                    part["count"],
                    float(part["sum"]),
                    float(part["m2"]),
                )
    return batch


_NUMBER = (int, float)  # exact types: JSON gives no subclasses, and bool is left out
_NUMBER_TYPES = frozenset(_NUMBER)
_BOOL = frozenset({bool})


def _in_range(values: Sequence[Any], low: float, high: float) -> bool:
    """Every value an int or a float (not a bool) within [low, high], in C-level passes
    (min, max, sum) rather than a comparison per value in Python. min and max pass over a
    NaN, so the sum checks for one; it cannot overflow once max is within range."""
    return (
        set(map(type, values)) <= _NUMBER_TYPES
        and min(values) >= low
        and max(values) <= high
        and not math.isnan(sum(values))
    )


def _columns(items: list[Any], names: tuple[str, str, str, str]) -> list[list[Any]]:
    """The four fields of each record as four columns; TypeError or KeyError when a record
    is not an object of exactly those four keys."""
    if set(map(len, items)) != {4}:
        raise KeyError("not four fields")
    return [[r[name] for r in items] for name in names]


_FEW: Final = 8  # records checked one by one: the column passes' set-up costs more


def _few_good_queries(records: Records, items: list[Any], now: float, max_length: int) -> bool:
    """_all_good_queries for a few records, one by one (same verdicts; False also for
    what the column pass would take but is not a plain dict: the careful pass decides)."""
    for r in items:
        if type(r) is not dict or len(r) != 4:
            return False
        try:
            experiment, branch, latency, outcome = (
                r["experiment"], r["branch"], r["latency_ms"], r["success"]
            )  # fmt: skip
        except KeyError:
            return False
        if not (
            type(outcome) is bool
            and type(latency) in _NUMBER_TYPES
            and 0.0 <= latency <= MAX_LATENCY_MS  # False for NaN too
            and named(experiment, max_length)
            and named(branch, max_length)
        ):
            return False
    for r in items:
        records.add_query((r["experiment"], r["branch"]), float(r["latency_ms"]), r["success"], now)
    return True


def _few_good_events(records: Records, items: list[Any], max_length: int) -> bool:
    """_all_good_events for a few records, one by one (see _few_good_queries)."""
    for r in items:
        if type(r) is not dict or len(r) != 4:
            return False
        try:
            experiment, branch, name, value = r["experiment"], r["branch"], r["event"], r["value"]
        except KeyError:
            return False
        if not (
            type(value) in _NUMBER_TYPES
            and -MAX_ABS_EVENT_VALUE <= value <= MAX_ABS_EVENT_VALUE  # False for NaN too
            and named(experiment, max_length)
            and named(branch, max_length)
            and named(name, max_length)
        ):
            return False
    for r in items:
        records.add_event((r["experiment"], r["branch"], r["event"]), float(r["value"]))
    return True


def _all_good_queries(records: Records, items: list[Any], now: float, max_length: int) -> bool:
    """The common case, column by column: every query is good, so take them all at once
    (each distinct name is checked once, the values in C-level passes). False, taking
    nothing, if any is not: the record-by-record pass then names every problem."""
    if len(items) <= _FEW:
        return _few_good_queries(records, items, now, max_length)
    try:
        experiments, branches, latencies, outcomes = _columns(
            items, ("experiment", "branch", "latency_ms", "success")
        )
        if not good_names(set(experiments) | set(branches), max_length):
            return False
    except (TypeError, KeyError):  # not an object, a key missing, an unhashable name
        return False
    if not _in_range(latencies, 0.0, MAX_LATENCY_MS):
        return False  # also a NaN, an infinity, a bool, an int beyond float range
    if not set(map(type, outcomes)) <= _BOOL:
        return False
    records.query_keys.extend(zip(experiments, branches, strict=True))
    records.latency_ms.extend(map(float, latencies))
    records.success.extend(outcomes)
    records.when.extend([now] * len(items))
    return True


def _all_good_events(records: Records, items: list[Any], max_length: int) -> bool:
    """Like _all_good_queries, for events."""
    if len(items) <= _FEW:
        return _few_good_events(records, items, max_length)
    try:
        experiments, branches, names, values = _columns(
            items, ("experiment", "branch", "event", "value")
        )
        if not good_names(set(experiments) | set(branches) | set(names), max_length):
            return False
    except (TypeError, KeyError):
        return False
    if not _in_range(values, -MAX_ABS_EVENT_VALUE, MAX_ABS_EVENT_VALUE):
        return False
    records.event_keys.extend(zip(experiments, branches, names, strict=True))
    records.event_values.extend(map(float, values))
    return True


def _count_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer"
    if not 1 <= value <= MAX_COUNT:
        return f"must be between 1 and {MAX_COUNT}"
    return None


def _successes_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return "must be an integer >= 0"
    return None


def _number_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    try:
        return None if math.isfinite(float(value)) else "must be finite"
    except OverflowError:
        return "must be finite"


def _m2_problem(value: object) -> str | None:
    problem = _number_problem(value)
    if problem is None and float(value) < 0:  # type: ignore[arg-type]
        return "must be >= 0"
    return problem


_INT = frozenset({int})


def _buckets_problem(value: object) -> str | None:
    # type, min and max over the list in C (a bool's type is not int): one part's 17
    # counts were a generator of isinstance checks, per part of every pre-aggregated batch
    if not isinstance(value, list) or not (
        set(map(type, value)) <= _INT
        and (not value or (min(value) >= 0 and max(value) <= MAX_COUNT))
    ):
        return "must be a list of integers >= 0"
    return None


def _part_fields(max_name_length: int) -> tuple[Fields, Fields]:
    name = _name_check(max_name_length)

    parts: Fields = {
        "experiment": (name, "invalid_name"),
        "branch": (name, "invalid_name"),
        "queries": (_count_problem, "invalid_part"),
        "successes": (_successes_problem, "invalid_part"),
        "latency_sum_ms": (_number_problem, "invalid_latency"),
        "latency_m2_ms2": (_m2_problem, "invalid_latency"),
        "latency_min_ms": (latency_problem, "invalid_latency"),
        "latency_max_ms": (latency_problem, "invalid_latency"),
        "buckets": (_buckets_problem, "invalid_part"),
    }
    events: Fields = {
        "experiment": (name, "invalid_name"),
        "branch": (name, "invalid_name"),
        "event": (name, "invalid_name"),
        "count": (_count_problem, "invalid_part"),
        "sum": (_number_problem, "invalid_value"),
        "m2": (_m2_problem, "invalid_value"),
    }
    return parts, events


def _check_part(batch: Batch, path: str, part: Mapping[str, Any], bounds: Sequence[float]) -> bool:
    """The fields agree with each other: what records could have produced this part."""
    n, lo, hi = part["queries"], float(part["latency_min_ms"]), float(part["latency_max_ms"])
    total, m2, buckets = (
        float(part["latency_sum_ms"]),
        float(part["latency_m2_ms2"]),
        part["buckets"],
    )
    problems: list[tuple[str, str]] = []
    if part["successes"] > n:
        problems.append(("successes", "must be <= queries"))
    if lo > hi:
        problems.append(("latency_min_ms", "must be <= latency_max_ms"))
    elif not lo * n * (1 - _SLACK) <= total <= hi * n * (1 + _SLACK) + _SLACK:
        problems.append(("latency_sum_ms", "mean must lie between latency_min_ms and _max_ms"))
    elif total > n * MAX_LATENCY_MS:
        problems.append(("latency_sum_ms", f"must be <= queries x {MAX_LATENCY_MS:g}"))
    # Popoviciu: a variance is at most (max - min)^2 / 4
    if m2 > n * (hi - lo) ** 2 / 4 * (1 + _SLACK) + _SLACK * max(1.0, total * total / n):
        problems.append(("latency_m2_ms2", "larger than any records within min..max allow"))
    if len(buckets) != len(bounds) + 1:
        problems.append(("buckets", f"must hold {len(bounds) + 1} counts (GET /api/v1/buckets)"))
    elif sum(buckets) != n:
        problems.append(("buckets", "must add up to queries"))
    else:
        first = bisect.bisect_left(bounds, lo / 1000.0)
        last = bisect.bisect_left(bounds, hi / 1000.0)
        used = [i for i, count in enumerate(buckets) if count]
        if used[0] != first or used[-1] != last:
            problems.append(("buckets", "the first and last used buckets must hold min and max"))
    for key, message in problems:
        batch.fail(f"{path}.{key}", message, "invalid_part")
    return not problems


def _check_event_part(batch: Batch, path: str, part: Mapping[str, Any]) -> bool:
    n, total, m2 = part["count"], float(part["sum"]), float(part["m2"])
    problems: list[tuple[str, str]] = []
    if abs(total) > n * MAX_ABS_EVENT_VALUE:
        problems.append(("sum", f"must be within count x {MAX_ABS_EVENT_VALUE:g}"))
    if m2 > n * MAX_ABS_EVENT_VALUE**2 * (1 + _SLACK):  # values within +-limit: var <= limit^2
        problems.append(("m2", "larger than any values within the limits allow"))
    for key, message in problems:
        batch.fail(f"{path}.{key}", message, "invalid_part")
    return not problems


def _check_record(
    batch: Batch, path: str, record: object, fields: Mapping[str, tuple[Check, str]]
) -> bool:
    if not isinstance(record, Mapping):
        batch.fail(path, "must be an object", "invalid_type")
        return False
    good = True
    if record.keys() == fields.keys():  # the usual case, compared in C: each field, no other
        for key, (check, reason) in fields.items():
            problem = check(record[key])
            if problem is not None:
                batch.fail(f"{path}.{key}", problem, reason)
                good = False
        return good
    for key in record:
        if key not in fields:
            batch.fail(
                f"{path}.{key}", f"unknown field (expected {', '.join(fields)})", "invalid_type"
            )
            good = False
    for key, (check, reason) in fields.items():
        if key not in record:
            batch.fail(f"{path}.{key}", "is required", "missing_field")
            good = False
            continue
        problem = check(record[key])
        if problem is not None:
            batch.fail(f"{path}.{key}", problem, reason)
            good = False
    return good


__all__ = ["MAX_NAME_LENGTH", "Batch", "parse_batch"]
