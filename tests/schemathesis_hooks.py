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
