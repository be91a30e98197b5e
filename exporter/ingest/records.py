"""Checking a JSON batch of records: all of it is good, or nothing is applied.

Every problem is reported with its field path (`queries[3].latency_ms`), so a
client can fix a whole batch in one round.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ..core.aggregate import Records
from ..core.validation import (
    MAX_NAME_LENGTH,
    event_value_problem,
    latency_problem,
    name_problem,
    success_problem,
)

MAX_REPORTED_ERRORS: Final = 100

Check = Callable[[object], "str | None"]

Fields = dict[str, tuple[Check, str]]


def _fields(max_name_length: int) -> tuple[Fields, Fields]:
    def name(value: object) -> str | None:
        return name_problem(value, max_name_length)

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


@dataclass
class Batch:
    records: Records = field(default_factory=Records)
    errors: list[dict[str, str]] = field(default_factory=list)
    error_count: int = 0
    too_large: bool = False  # over the records-per-batch limit: answered with 413
    # rejected records by reason, for the self-metrics
    reasons: Counter[str] = field(default_factory=Counter)

    def fail(self, path: str, message: str, reason: str) -> None:
        self.error_count += 1
        self.reasons[reason] += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"field": path, "message": message})


def parse_batch(
    body: object, now: float, max_records: int, max_name_length: int = MAX_NAME_LENGTH
) -> Batch:
    """Validate a decoded `{"queries": [...], "events": [...]}` document."""
    batch = Batch()
    query_fields, event_fields = _fields(max_name_length)
    if not isinstance(body, Mapping):
        batch.fail("$", "the body must be a JSON object", "invalid_type")
        return batch
    for key in body:
        if key not in ("queries", "events"):
            batch.fail(str(key), "unknown field (expected queries and/or events)", "invalid_type")
    lists: dict[str, list[Any]] = {}
    for key in ("queries", "events"):
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
    for index, record in enumerate(lists.get("queries", [])):
        if _check_record(batch, f"queries[{index}]", record, query_fields):
            batch.records.add_query(
                (record["experiment"], record["branch"]),
                float(record["latency_ms"]),
                record["success"],
                now,
            )
    for index, record in enumerate(lists.get("events", [])):
        if _check_record(batch, f"events[{index}]", record, event_fields):
            batch.records.add_event(
                (record["experiment"], record["branch"], record["event"]), float(record["value"])
            )
    return batch


def _check_record(
    batch: Batch, path: str, record: object, fields: Mapping[str, tuple[Check, str]]
) -> bool:
    if not isinstance(record, Mapping):
        batch.fail(path, "must be an object", "invalid_type")
        return False
    good = True
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
