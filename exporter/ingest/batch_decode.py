"""The usual JSON batch, decoded and checked in one C pass.

A batch of good queries and events, and nothing else, is decoded by msgspec straight
into typed records: each field's type and range is checked as it is read, and no dict
per record is built only to be taken apart again (orjson plus the column checks cost
about twice as much). Anything else (a part, a wrong field, a refused number, a body
that is not UTF-8 JSON) gets `None`, and the caller decodes it again the careful way
(`records.parse_batch`), which names every problem: the answers are the same either
way, only the time differs. Names are checked by the same `good_names`, once per
distinct name.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from ..core.validation import MAX_ABS_EVENT_VALUE, MAX_LATENCY_MS, good_names
from .records import Batch

_Latency = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_LATENCY_MS)]
_Value = Annotated[float, msgspec.Meta(ge=-MAX_ABS_EVENT_VALUE, le=MAX_ABS_EVENT_VALUE)]


class _Query(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    experiment: str
    branch: str
    latency_ms: _Latency
    success: bool


class _Event(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    experiment: str
    branch: str
    event: str
    value: _Value


class _Document(msgspec.Struct, forbid_unknown_fields=True):
    queries: list[_Query] = []
    events: list[_Event] = []
    # present at all (even null): the careful path takes the whole body
    parts: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    event_parts: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_DECODER: Final = msgspec.json.Decoder(_Document)
_PARTS_FIRST: Final = b'{"parts"'  # exporter.client.parts_body's first bytes


def decode_batch(body: bytes, now: float, max_records: int, max_name_length: int) -> Batch | None:
    """The checked batch when `body` is good records only; None for anything else."""
    # A body with parts is declined once read to its end (a quarter of the careful
    # parse), unless it starts with them, as the pre-aggregating client's does: a search
    # of the whole body for the key cost every 1000-record batch 70 us, more than that.
    if body.startswith(_PARTS_FIRST):
        return None
    try:
        document = _DECODER.decode(body)
    # ValidationError is a DecodeError; RecursionError: a value nested past the stack's
    # depth (in parts, which msgspec reads through as raw JSON)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    queries, events = document.queries, document.events
    if (
        document.parts is not msgspec.UNSET
        or document.event_parts is not msgspec.UNSET
        or len(queries) + len(events) > max_records
    ):
        return None
    keys = [(q.experiment, q.branch) for q in queries]
    event_keys = [(e.experiment, e.branch, e.event) for e in events]
    distinct = {name for key in {*keys, *event_keys} for name in key}
    if not good_names(distinct, max_name_length):
        return None
    batch = Batch()
    records = batch.records
    records.query_keys.extend(keys)
    records.latency_ms.extend([q.latency_ms for q in queries])
    records.success.extend([q.success for q in queries])
    records.when.extend([now] * len(queries))
    records.event_keys.extend(event_keys)
    records.event_values.extend([e.value for e in events])
    return batch


__all__ = ["decode_batch"]
