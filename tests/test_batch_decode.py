"""The one-pass decode of a JSON batch takes exactly what the careful path takes, and
leaves everything else to it (which then names every problem)."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient

from exporter import ABMetrics
from exporter.ingest.batch_decode import decode_batch
from exporter.ingest.records import parse_batch
from exporter.serve import server
from exporter.serve.server import create_app
from exporter.serve.settings import Settings

GOOD_NAMES = st.sampled_from(["e", "control", "é", "x" * 128, "a b"])
BAD_NAME_LIST = ["", "x" * 129, "a\nb", "\u2028", "\x7f", 7, None, ["e"]]
GOOD_LATENCIES = st.one_of(
    st.floats(min_value=0.0, max_value=1e12),
    st.integers(min_value=0, max_value=10**12),
    st.sampled_from([-0.0, 0, 1e12, 10**12]),
)
GOOD_VALUES = st.one_of(
    st.floats(min_value=-1e15, max_value=1e15),
    st.integers(min_value=-(10**15), max_value=10**15),
    st.sampled_from([1e15, -1e15, 10**15, -(10**15), -0.0]),
)
BAD_NUMBER_LIST = [
    float("nan"), float("inf"), float("-inf"), 10**400, -(10**400), -1e-300, -1, -1e16, 2**63,
    True, False, "12", None, [1],
    # the next floats past each bound, and ints past them
    math.nextafter(1e12, math.inf), math.nextafter(1e15, math.inf),
    math.nextafter(-1e15, -math.inf), 10**12 + 1, 10**15 + 1, -(10**15) - 1,
]  # fmt: skip
SPOILERS = ["drop", "extra", "not an object"]
QUERY = st.fixed_dictionaries(
    {"experiment": GOOD_NAMES, "branch": GOOD_NAMES, "latency_ms": GOOD_LATENCIES,
     "success": st.booleans()}
)  # fmt: skip
EVENT = st.fixed_dictionaries(
    {"experiment": GOOD_NAMES, "branch": GOOD_NAMES, "event": GOOD_NAMES, "value": GOOD_VALUES}
)
FIELDS = {"queries": ("experiment", "branch", "latency_ms", "success"),
          "events": ("experiment", "branch", "event", "value")}  # fmt: skip
MUTATIONS = st.tuples(
    st.sampled_from(["queries", "events"]),
    st.integers(min_value=0, max_value=3),  # which field
    st.one_of(
        st.sampled_from([*BAD_NAME_LIST, *BAD_NUMBER_LIST, *SPOILERS]),
        st.floats(min_value=1e15 + 1, allow_infinity=False),
    ),
    st.integers(min_value=0),  # which record
)


def mutated(document: dict[str, list[Any]], mutation: Any) -> dict[str, list[Any]]:
    """`document` with at most one record spoilt: one field bad, missing or one too many,
    or the record not an object."""
    if mutation is None:
        return document
    kind, field, bad, at = mutation
    records = document[kind]
    if not records:
        return document
    at %= len(records)
    name = FIELDS[kind][field]
    spoilt: Any
    if bad == "drop":
        spoilt = {k: v for k, v in records[at].items() if k != name}
    elif bad == "extra":
        spoilt = {**records[at], "extra": 1}
    elif bad == "not an object":
        spoilt = list(records[at].values())
    else:
        spoilt = {**records[at], name: bad}
    return {**document, kind: [*records[:at], spoilt, *records[at + 1 :]]}


def careful(body: bytes) -> Any:
    """What the server decodes when the one-pass decode declines (server._decode_json)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def columns(batch: Any) -> list[list[Any]]:
    """The batch's records with every float as its bits, so -0.0 and 0.0 differ and an
    int where a float belongs does not pass as equal."""
    r = batch.records
    numbers = [r.latency_ms, r.when, r.event_values]
    bits = [[(type(x).__name__, struct.pack("<d", x)) for x in column] for column in numbers]
    return [r.query_keys, [(type(x), x) for x in r.success], r.event_keys, *bits]


def agree(body: bytes, good: bool | None = None) -> None:
    fast = decode_batch(body, 5.0, 10_000, 128)
    try:
        document = careful(body)
    except ValueError:
        assert fast is None
        return
    slow = parse_batch(document, 5.0, 10_000, 128)
    if fast is not None:
        assert slow.error_count == 0, slow.errors
        assert columns(fast) == columns(slow)
    elif good:
        pytest.fail("a good batch of records only was left to the careful path")


@settings(max_examples=500, deadline=None)
@given(st.lists(QUERY, max_size=12), st.lists(EVENT, max_size=12), st.none() | MUTATIONS)
def test_what_one_pass_takes_the_careful_path_takes_alike(
    queries: Any, events: Any, mutation: Any
) -> None:
    document = mutated({"queries": queries, "events": events}, mutation)
    agree(json.dumps(document).encode(), good=mutation is None)


def test_every_spoilt_field_anywhere_is_left_to_the_careful_path() -> None:
    """Each bad value, missing field and extra field, in each field of either kind of
    record, first, in the middle or last: never taken in one pass when the careful path
    refuses it."""
    query = {"experiment": "e", "branch": "b", "latency_ms": 5.0, "success": True}
    event = {"experiment": "e", "branch": "b", "event": "v", "value": -5.0}
    refused = 0
    for kind, good in (("queries", query), ("events", event)):
        for field in range(4):
            for bad in [*BAD_NAME_LIST, *BAD_NUMBER_LIST, *SPOILERS]:
                for at in range(3):
                    document = mutated({kind: [good] * 3}, (kind, field, bad, at))
                    body = json.dumps(document).encode()
                    agree(body)
                    refused += decode_batch(body, 5.0, 10_000, 128) is None
    assert refused > 500


@pytest.mark.parametrize(
    "body",
    [
        b'{"queries": [], "parts": []}',  # parts: the careful path's
        b'{"parts": null}',
        b'{"queries": [], "event_parts": null}',
        b'{"queries": null}',
        b'{"queries": [{"experiment": "e", "branch": "b", "latency_ms": NaN, "success": true}]}',
        b'{"queries": [{"experiment": "e\xff", "branch": "b", "latency_ms": 1, "success": true}]}',
        b'{"queries": [{"experiment": "\\ud800", "branch": "b", "latency_ms": 1,'
        b' "success": true}]}',
        b'\xef\xbb\xbf{"queries": []}',
        b'{"queries": []} x',
        b"[]",
        b'{"other": []}',
    ],
)
def test_anything_but_good_records_is_left_to_the_careful_path(body: bytes) -> None:
    assert decode_batch(body, 5.0, 10_000, 128) is None


def test_a_repeated_key_counts_as_its_last_value_both_ways() -> None:
    body = (b'{"queries": [{"experiment": "a", "experiment": "b", "branch": "c",'
            b' "latency_ms": 1, "latency_ms": 2.5, "success": false}]}')  # fmt: skip
    agree(body, good=True)
    batch = decode_batch(body, 5.0, 10_000, 128)
    assert batch is not None
    assert batch.records.query_keys == [("b", "c")] and batch.records.latency_ms == [2.5]


def test_too_many_records_are_left_to_the_careful_path_which_refuses_them() -> None:
    event = {"experiment": "e", "branch": "b", "event": "v", "value": 1}
    body = json.dumps({"events": [event] * 3})
    assert decode_batch(body.encode(), 5.0, 3, 128) is not None
    assert decode_batch(body.encode(), 5.0, 2, 128) is None
    assert parse_batch(json.loads(body), 5.0, 2).too_large


def test_names_are_held_to_the_configured_length() -> None:
    body = json.dumps({"queries": [{"experiment": "e" * 20, "branch": "b", "latency_ms": 1,
                                    "success": True}]}).encode()  # fmt: skip
    assert decode_batch(body, 5.0, 10, 20) is not None
    assert decode_batch(body, 5.0, 10, 19) is None


async def test_the_server_takes_good_batches_in_one_pass_and_names_problems_otherwise(
    aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the careful path out of reach, a good batch is still taken (so the server
    decodes it in one pass) and a bad one still gets its field-by-field answer."""
    metrics = ABMetrics()
    client = await aiohttp_client(create_app(metrics, Settings()))
    careful_calls: list[object] = []

    def counted(*args: Any) -> Any:
        careful_calls.append(args[0])
        return parse_batch(*args)

    monkeypatch.setattr(server, "parse_batch", counted)
    good = {
        "queries": [{"experiment": "e", "branch": "b", "latency_ms": 7, "success": True}],
        "events": [{"experiment": "e", "branch": "b", "event": "v", "value": -2.5}],
    }
    response = await client.post("/api/v1/records", json=good)
    assert response.status == 200, await response.text()
    assert await response.json() == {"accepted": {"queries": 1, "events": 1}}
    assert careful_calls == []
    branch = metrics.get_branch_metrics("e", "b")
    assert branch is not None and branch.query_count == 1 and branch.max_latency_ms == 7.0
    assert branch.events["v"].total == -2.5

    bad = {"queries": [dict(good["queries"][0], latency_ms=-1, success=1)]}
    response = await client.post("/api/v1/records", json=bad)
    assert response.status == 400
    fields = [e["field"] for e in (await response.json())["errors"]]
    assert fields == ["queries[0].latency_ms", "queries[0].success"]
    assert len(careful_calls) == 1
    assert metrics.stats().total_queries_recorded == 1  # nothing of it applied


@pytest.mark.parametrize("key", ["parts", "\\u0070arts", "event_parts", "queries"])
async def test_a_value_nested_past_any_stack_is_refused_as_bad_json(
    aiohttp_client: AiohttpClient, key: str
) -> None:
    """msgspec reads through parts as raw JSON: a 2000-deep value there raised a
    RecursionError, answered 500. It is the careful path's, and a 400, like any other."""
    body = ('{"' + key + '": ' + "[" * 2000 + "]" * 2000 + "}").encode()
    assert decode_batch(body, 5.0, 10_000, 128) is None
    client = await aiohttp_client(create_app(ABMetrics(), Settings()))
    response = await client.post(
        "/api/v1/records", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400, await response.text()
    assert "not valid JSON" in (await response.json())["error"]


def test_the_clients_parts_are_left_to_the_careful_path_before_any_decode() -> None:
    """The pre-aggregating client's body starts with its parts: declined at once, not
    after msgspec has read it through."""
    from exporter.client import parts_body
    from exporter.core.aggregate import DEFAULT_BUCKETS

    body = parts_body([("q", "e", "control", 5.0, True)], DEFAULT_BUCKETS)
    assert body.startswith(b'{"parts"')
    assert decode_batch(body, 5.0, 10_000, 128) is None
    assert parse_batch(json.loads(body), 5.0, 10_000).has_parts
