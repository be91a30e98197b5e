"""Schemathesis hooks for the schema-driven test: every generated write gets a fresh
Idempotency-Key, as a real client's distinct writes do (a key reused for a different
request is refused with 422 by design, and has its own test)."""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    # A part's fields must agree with each other (successes <= queries, buckets adding up),
    # which JSON Schema cannot say: schema-valid parts are mostly refused by design, so
    # positive cases leave them out; tests/test_parts.py covers them.
    meta = case.meta
    if (
        isinstance(case.body, dict)
        and meta is not None
        and meta.generation.mode == schemathesis.GenerationMode.POSITIVE
    ):
        case.body.pop("parts", None)
        case.body.pop("event_parts", None)
