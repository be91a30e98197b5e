"""The aiohttp application: ingest, read API, /metrics, health, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError

from ..core import idempotency
from ..core.experiment_config import ExperimentConfig
from ..core.idempotency import Answer, Once
from ..core.limits import LimitError
from ..core.results import to_json
from ..core.validation import ValidationError, name_problem
from ..ingest import otlp
from ..ingest.batch_decode import decode_batch
from ..ingest.otlp import Receiver
from ..ingest.prometheus import PrometheusSource
from ..ingest.records import parse_batch
from ..outputs import page
from ..outputs.comparisons import ComparisonEngine
from ..outputs.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    accepts_gzip,
    negotiate,
)
from ..outputs.series import Renderers
from ..state.abmetrics import ABMetrics, Written
from ..state.store import Durability, Store
from ..version import __version__
from . import background, guard
from .analyzer import Analyzer
from .keys import (
    ANALYZER,
    ENGINE,
    INFLIGHT,
    METRICS,
    READINESS,
    RENDERERS,
    SELF,
    SETTINGS,
    STORE,
    InFlight,
    Readiness,
)
from .openapi import document
from .refusals import Refusal, refusals, source_of
from .selfmetrics import SelfMetrics
from .settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Batches larger than this are applied on a worker thread so the loop stays responsive.
_INLINE_RECORDS = 2000
_OTLP_INLINE_BYTES = 1_000_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OTLP_TYPES = ("application/x-protobuf", "application/json")
JSON = "application/json"


def json_body(data: Any) -> bytes:
    return json.dumps(to_json(data), allow_nan=False).encode()


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json_body(data), status=status, content_type=JSON)


def _found(found: T | None, what: str) -> T:
    """A read's result, or a 404 refusal naming what was not found."""
    if found is None:
        raise Refusal(404, f"no such {what}")
    return found


def _name(request: web.Request, key: str) -> str:
    value = request.match_info[key]
    problem = name_problem(value, request.app[SETTINGS].max_name_length)
    if problem:
        raise Refusal(400, f"{key} {problem}")
    return value


# -- the write path: guard, read, once, apply, wait for the disk ----------------------


def _too_large(limit: int, source: str) -> Refusal:
    return Refusal(
        413,
        f"body larger than the limit of {limit} bytes (after decompression)",
        "body_too_large",
        source,
    )


def _busy(source: str) -> Refusal:
    return Refusal(
        503, "too many request bodies are being read at once; retry shortly", "busy", source,
        {"Retry-After": "1"},
    )  # fmt: skip


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The decompressed body, read as it streams in: refused past `limit` (or past the
    in-flight budget, or too slow) before more of it is held in memory."""
    source = source_of(request)
    if (request.content_length or 0) > limit + 1024:  # compressed and still too large
        raise _too_large(limit, source)
    weight = guard.DECODED_WEIGHT[source]
    content = request.content
    chunks: list[bytes] = []
    size = 0
    try:
        if content.is_eof():  # all of it came with the headers: nothing to wait for
            body = content.read_nowait()
            if len(body) > limit:
                raise _too_large(limit, source)
            # the bytes and what they become once decoded, charged until applied
            if not guard.hold(request, len(body) * weight):
                raise _busy(source)
            return body
        async with asyncio.timeout(request.app[SETTINGS].body_timeout):
            async for chunk in content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit, source)
                if not guard.hold(request, len(chunk)):
                    raise _busy(source)
                chunks.append(chunk)
    except TimeoutError:
        timeout = request.app[SETTINGS].body_timeout
        raise Refusal(
            408, f"the body was not received within {timeout:g} s", "timeout", source
        ) from None
    except RequestPayloadError:
        raise Refusal(
            400, "body could not be decoded (bad Content-Encoding data)", "invalid_encoding", source
        ) from None
    except (ConnectionResetError, asyncio.IncompleteReadError):
        raise Refusal(400, "the client went away mid-body", "disconnected", source) from None
    # what the body becomes once decoded is charged too, until it is applied
    if not guard.hold(request, size * (weight - 1)):
        raise _busy(source)
    return b"".join(chunks)


async def _read_json_body(request: web.Request, source: str) -> bytes:
    """The body of a request that must be JSON, or a 4xx naming what is wrong."""
    if request.content_type != JSON:
        raise Refusal(
            415, "Content-Type must be application/json", "unsupported_media_type", source
        )
    return await _read_body(request, request.app[SETTINGS].max_body_bytes)


def _decode_json(body: bytes, source: str) -> Any:
    """The decoded JSON document, or a 400 naming what is wrong."""
    try:
        return orjson.loads(body)  # 2-3x the standard library's speed
    except orjson.JSONDecodeError:
        pass  # what orjson refuses but JSON allows (NaN, huge ints) gets a per-field answer
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Refusal(400, f"body is not valid JSON: {exc}"[:500], "invalid_json", source) from None


async def _read_json(request: web.Request, source: str) -> tuple[Any, bytes]:
    """The decoded JSON body and its bytes, or a 4xx naming what is wrong."""
    body = await _read_json_body(request, source)
    return _decode_json(body, source), body


def _once(request: web.Request, body: bytes) -> Once | None:
    key = request.headers.get(idempotency.HEADER)
    if key is None:
        return None
    problem = idempotency.key_problem(key)
    if problem:
        raise Refusal(400, problem, "invalid_idempotency_key", source_of(request))
    return Once(key, idempotency.fingerprint(request.method, request.path, body))


def _answer(data: Any, status: int = 200) -> Answer:
    return Answer(status, json_body(data), JSON)


def _accepted(queries: int, events: int) -> Answer:
    """The ingest answer, the bytes json_body gives for it without walking a dict
    through to_json and the encoder on every request."""
    body = b'{"accepted": {"queries": %d, "events": %d}}' % (queries, events)
    return Answer(200, body, JSON)


def _send(answer: Answer, status: int | None = None) -> web.Response:
    return web.Response(
        status=status or answer.status, body=answer.body, content_type=answer.content_type
    )


async def _finish(
    request: web.Request, written: Written, answer: Answer, once: Once | None
) -> web.Response:
    """Answer a write once it is durable (in sync mode). A repeat of an idempotency key
    gets the first answer. When the disk is too slow: with a key, 503 (a retry with the
    same key is safe); without one, 202 (applied, not yet on disk: a resend would count
    twice)."""
    if written.repeat is not None:
        request.app[SELF].repeated(source_of(request))
        answer = written.repeat
    guard.release(request)  # the body is applied: what waits for the disk is small
    if await guard.durable(request, written.version):
        return _send(answer)
    if once is not None:
        raise Refusal(
            503,
            "applied in memory but not yet on disk; retry with the same Idempotency-Key",
            headers={"Retry-After": "5"},
        )
    if answer.content_type == JSON:
        body = {**json.loads(answer.body), "durable": False,
                "warning": "applied in memory, not yet on disk; do not resend it"}  # fmt: skip
        return json_response(body, 202)
    return _send(answer, 202)


async def post_otlp(request: web.Request) -> web.Response:
    """OTLP/HTTP metrics export, answered as the OTLP specification asks."""
    app = request.app
    self_metrics, content_type = app[SELF], request.content_type
    if content_type not in OTLP_TYPES:
        raise Refusal(
            415,
            "Content-Type must be application/x-protobuf or application/json",
            "unsupported_media_type",
            "otlp",
        )
    guard.admit_write(request)
    body = await _read_body(request, app[SETTINGS].otlp_max_body_bytes)
    once = _once(request, body)
    metrics, limits = app[METRICS], app[METRICS].receiver.limits

    def parse() -> otlp.Parsed:
        return otlp.parse_body(body, content_type, limits)

    def respond(received: otlp.Received) -> Answer:
        return Answer(200, otlp.encode(received.response(), content_type), content_type)

    try:
        parsed = await asyncio.to_thread(parse) if len(body) > _OTLP_INLINE_BYTES else parse()
    except otlp.DecodeError as exc:
        raise Refusal(400, str(exc), "malformed", "otlp") from None
    if len(body) > _OTLP_INLINE_BYTES:  # off the loop: the probes must not wait for it
        written, received = await asyncio.to_thread(metrics.record_otlp, parsed, once, respond)
    else:
        written, received = metrics.record_otlp(parsed, once, respond)
    answer = respond(received) if received else _EMPTY
    if received is not None:
        self_metrics.otlp(received)
    del parsed, received  # not held while waiting for the disk
    return await _finish(request, written, answer, once)


_EMPTY = Answer(200, b"", JSON)


async def post_records(request: web.Request) -> web.Response:
    app = request.app
    metrics, self_metrics, settings = app[METRICS], app[SELF], app[SETTINGS]
    guard.admit_write(request)
    body = await _read_json_body(request, "http")
    now, most, length = metrics.now(), settings.max_batch_records, settings.max_name_length
    batch = decode_batch(body, now, most, length)  # good records only, in one pass
    if batch is None:  # anything else the careful way, which names every problem
        batch = parse_batch(_decode_json(body, "http"), now, most, length, metrics.buckets)
    once = _once(request, body)
    if batch.error_count:
        for reason, count in batch.reasons.items():
            self_metrics.reject("http", reason, count)
        message = f"batch refused, nothing applied: {batch.error_count} problem(s)"
        # counted above by reason, so the refusal itself carries no reason
        raise Refusal(413 if batch.too_large else 400, message, errors=batch.errors)
    records = batch.records
    # a part counts as the records it stands for, in the answer and the self-metrics
    part_queries, part_events = batch.part_records
    queries, events = records.queries + part_queries, records.events + part_events
    answer = _accepted(queries, events)
    parts, size = None, records.queries + records.events
    if batch.has_parts:
        parts = (batch.parts, batch.event_parts)
        size += len(batch.parts.keys) + len(batch.event_parts.keys)
    try:
        if size > _INLINE_RECORDS:
            written = await asyncio.to_thread(metrics.record_batch, records, once, answer, parts)
        else:
            written = metrics.record_batch(records, once, answer, parts)
    except LimitError as exc:
        raise Refusal(
            422,
            f"batch refused, nothing applied: {exc.message}",
            exc.reason,
            "http",
            count=queries + events,
        ) from None
    if written.repeat is None:
        self_metrics.accept_records("http", queries, events)
    del body, batch, records  # not held while waiting for the disk
    return await _finish(request, written, answer, once)


async def put_config(request: web.Request) -> web.Response:
    experiment = _name(request, "experiment")
    guard.admit_write(request)
    data, body = await _read_json(request, "config")
    once = _once(request, body)
    try:
        config = ExperimentConfig.from_mapping(data)
        answer = _answer(config)
        written = request.app[METRICS].configure_once(experiment, config, once, answer)
    except LimitError as exc:
        raise Refusal(422, f"config refused, nothing changed: {exc.message}", exc.reason) from None
    except ValidationError as exc:
        raise Refusal(400, f"config refused, nothing changed: {exc.message}") from None
    return await _finish(request, written, answer, once)


async def delete_config(request: web.Request) -> web.Response:
    return await _remove(
        request,
        "removed",
        request.app[METRICS].remove_config_once,
        "no config was set for this experiment through the API",
    )


async def delete_experiment(request: web.Request) -> web.Response:
    return await _remove(
        request, "cleared", request.app[METRICS].clear_experiment_once, "no such experiment"
    )


async def _remove(
    request: web.Request,
    done: str,
    apply: Callable[[str, Once | None, Answer], Written | None],
    missing: str,
) -> web.Response:
    """A DELETE of one experiment's something: 404 when there was nothing to remove."""
    experiment = _name(request, "experiment")
    guard.admit_write(request)
    once = _once(request, b"")
    answer = _answer({done: experiment})
    written = apply(experiment, once, answer)
    if written is None:
        raise Refusal(404, missing)
    return await _finish(request, written, answer, once)


async def delete_all(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].allow_clear_all:
        raise Refusal(
            403, "clearing everything is disabled on this exporter (--allow-clear-all true)"
        )
    guard.admit_write(request)
    once = _once(request, b"")
    answer = _answer({"cleared": "all"})
    written = request.app[METRICS].clear_all_once(once, answer)
    return await _finish(request, written, answer, once)


async def analyzer_refuses(request: web.Request) -> web.Response:
    """Records go to the ingest replicas; this process only reads their sums."""
    raise Refusal(
        404,
        "this process is the analyzer (--role analyzer): send records to the ingest "
        "replicas (--role ingest)",
    )


async def analyzer_delete(request: web.Request) -> web.Response:
    """A clear on the analyzer is forwarded to every ingest replica Prometheus scrapes;
    the analyzer's own view follows at its next round."""
    app = request.app
    if request.match_info.get("experiment") is None:
        if not app[SETTINGS].allow_clear_all:
            raise Refusal(
                403, "clearing everything is disabled on this exporter (--allow-clear-all true)"
            )
        path = "/api/v1/experiments"
    else:
        experiment = _name(request, "experiment")
        path = "/api/v1/experiments/" + urllib.parse.quote(experiment, safe="")
    replicas = await app[ANALYZER].forward_delete(path)
    failed = {url: result for url, result in replicas.items()
              if not (isinstance(result, int) and (result < 300 or result == 404))}  # fmt: skip
    if failed or not replicas:
        message = "no ingest replica found" if not replicas else "some replicas did not clear"
        raise Refusal(502, f"{message}: {failed}"[:500])
    return json_response({"forwarded": path, "replicas": replicas})


async def list_experiments(request: web.Request) -> web.Response:
    summaries = await asyncio.to_thread(request.app[METRICS].all_summaries)
    return json_response({"experiments": summaries})


async def get_experiment(request: web.Request) -> web.Response:
    found = request.app[METRICS].get_experiment_metrics(_name(request, "experiment"))
    return json_response(_found(found, "experiment"))


async def get_branch(request: web.Request) -> web.Response:
    experiment, branch = _name(request, "experiment"), _name(request, "branch")
    found = request.app[METRICS].get_branch_metrics(experiment, branch)
    return json_response(_found(found, "experiment or branch"))


async def get_summary(request: web.Request) -> web.Response:
    found = request.app[METRICS].get_summary(_name(request, "experiment"))
    return json_response(_found(found, "experiment"))


async def compare(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    experiment = _name(request, "experiment")
    found = _found(metrics.get_experiment_metrics(experiment), "experiment")
    branch_b = request.query.get("b")
    branch_a = request.query.get("a", found.control)
    if branch_b is None:
        raise Refusal(400, "query parameter b (the branch to compare) is required")
    for key, value in (("a", branch_a), ("b", branch_b)):
        problem = name_problem(value)
        if problem:
            raise Refusal(400, f"query parameter {key} {problem}")
    result = metrics.compare_branches(experiment, branch_a, branch_b)
    return json_response(_found(result, "branch"))


async def get_analysis(request: web.Request) -> web.Response:
    experiment = _name(request, "experiment")
    found = request.app[METRICS].analyse(experiment).get(experiment)
    return json_response(_found(found, "experiment"))


async def get_config(request: web.Request) -> web.Response:
    return json_response(request.app[METRICS].get_config(_name(request, "experiment")))


async def get_stats(request: web.Request) -> web.Response:
    return json_response(request.app[METRICS].stats())


async def get_buckets(request: web.Request) -> web.Response:
    """The latency bucket bounds a pre-aggregating client must bucket by (seconds, `le`;
    +Inf is implied and last)."""
    return json_response({"latency_bounds_seconds": list(request.app[METRICS].buckets)})


def render_metrics(app: web.Application, openmetrics: bool, compress: bool) -> list[bytes]:
    """Snapshot, render and (maybe) compress: runs on a worker thread. The body comes in
    chunks: a plain one passes 100 MB at a thousand experiments."""
    started = time.perf_counter()
    metrics, self_metrics, engine = app[METRICS], app[SELF], app[ENGINE]
    renderer = app[RENDERERS].get(openmetrics, app[SETTINGS].role)  # renders what changed
    with renderer.lock:  # snapshots render in the order they are taken
        snapshot = metrics.snapshot()
        latest = engine.latest
        extra = self_metrics.families(
            snapshot.stats.total_branches_tracked,
            len(snapshot.view.event_keys) - snapshot.view.event_keys.count(None),
            snapshot.stats.experiments_tracked,
            metrics.stream_figures(),
        )
        store, analyzer = app.get(STORE), app.get(ANALYZER)
        families = extra + engine.families() + (store.families() if store is not None else [])
        if analyzer is not None:
            families += analyzer.families()
        process = self_metrics.process.render(openmetrics)
        payload = (
            [renderer.render_gzip(snapshot, families, latest.parts, process)]
            if compress
            else renderer.render_chunks(snapshot, families, latest.parts, process, latest.encoded)
        )
    self_metrics.scraped(time.perf_counter() - started)
    return payload


async def get_metrics(request: web.Request) -> web.StreamResponse:
    if request.app[SETTINGS].role == "ingest" and not request.app[READINESS].ready:
        # a replica still restoring would show the analyzer a partial sum: fail the scrape
        return web.Response(status=503, text="restoring\n")
    openmetrics = negotiate(request.headers.get("Accept", ""))
    compress = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    payload = await asyncio.to_thread(render_metrics, request.app, openmetrics, compress)
    headers = {"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE}
    if compress:
        headers["Content-Encoding"] = "gzip"
    if len(payload) == 1:
        return web.Response(body=payload[0], headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_length = sum(map(len, payload))
    await response.prepare(request)
    if request.method != "HEAD":  # a HEAD answer has the length, never the body
        for chunk in payload:
            await response.write(chunk)
    await response.write_eof()
    return response


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    if not request.app[READINESS].ready:
        return web.Response(status=503, text="restoring\n")
    return web.Response(text="OK\n")


async def landing(request: web.Request) -> web.Response:
    """The results page (exporter/page.py), from the latest comparisons."""
    summaries = await asyncio.to_thread(request.app[METRICS].all_summaries)
    analyses = request.app[ENGINE].latest.analyses
    origin = f"{request.scheme}://{request.host}"
    # in a thread: the analyses' objects are made on first use, a few ms per experiment
    text = await asyncio.to_thread(page.render, summaries, analyses, __version__, origin)
    return web.Response(text=text, content_type="text/html")


def create_app(
    metrics: ABMetrics | None = None,
    settings: Settings | None = None,
    self_metrics: SelfMetrics | None = None,
) -> web.Application:
    settings = settings or Settings()
    app = web.Application(
        # bodies are read as they stream in, under the per-route limits (see _read_body)
        client_max_size=max(settings.max_body_bytes, settings.otlp_max_body_bytes),
        middlewares=_middlewares(settings),
    )
    app[SETTINGS] = settings
    if metrics is None:
        metrics = ABMetrics(
            settings.buckets,
            configs=settings.experiments,
            receiver=Receiver(settings.buckets, settings.otlp_limits),
        )
    metrics.limits = settings.limits  # the server's settings govern what it accepts
    app[METRICS] = metrics
    app[SELF] = self_metrics or SelfMetrics()
    app[SELF].role = settings.role
    if settings.role == "ingest":
        metrics.receiver.warn_started_before = time.time_ns()
    app[ENGINE] = ComparisonEngine(app[METRICS])
    app[RENDERERS] = Renderers()
    if settings.role == "analyzer":
        if not settings.prometheus_url:
            raise ValueError("--role analyzer needs --prometheus-url")
        source = PrometheusSource(
            settings.prometheus_url, settings.prometheus_selector, settings.buckets
        )
        app[ANALYZER] = Analyzer(source, app[METRICS], app[ENGINE], settings.token)
    app[READINESS] = Readiness()
    app[INFLIGHT] = InFlight(settings.max_inflight_bytes)
    if settings.persistent:
        assert settings.data_dir is not None
        durability: Durability = "interval" if settings.durability == "interval" else "sync"
        store = app[STORE] = Store(
            settings.data_dir, app[METRICS], durability, settings.flush_interval
        )
        inflight = app[INFLIGHT]
        store.busy = lambda: inflight.held > 0  # a write is between its body and its wait
    app.cleanup_ctx.append(background.persistence)
    if settings.role != "ingest":  # a replica publishes no derived figures
        app.cleanup_ctx.append(background.comparisons)
    if settings.role == "analyzer":
        app.cleanup_ctx.append(background.analyzer)
    elif settings.expire_after:  # the analyzer's view follows the replicas' expiry
        app.cleanup_ctx.append(background.expiry)
    if settings.otlp_push_endpoint:
        app.cleanup_ctx.append(background.otlp_push)
    _routes(app)
    return app


def _middlewares(settings: Settings) -> list[Middleware]:
    """Each middleware is a coroutine layer around every request: the OTLP port's
    filter is left out when there is no OTLP port, and the token check when no token is
    set (the settings are frozen: neither can appear later)."""
    chain: list[Middleware] = [refusals, guard.release_bodies]
    if settings.token or settings.metrics_token:
        chain.insert(0, guard.authenticate)
    if settings.otlp_port:
        chain.insert(0, guard.otlp_port_only)
    return chain


def _routes(app: web.Application) -> None:
    # names may hold any character but "/" (braces and all): match them as such
    experiment = "/api/v1/experiments/{experiment:[^/]+}"
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/openapi.json", get_openapi)
    analyzer = app[SETTINGS].role == "analyzer"
    app.router.add_post("/api/v1/records", analyzer_refuses if analyzer else post_records)
    app.router.add_get("/api/v1/experiments", list_experiments)
    app.router.add_delete("/api/v1/experiments", analyzer_delete if analyzer else delete_all)
    app.router.add_get(experiment, get_experiment)
    app.router.add_delete(experiment, analyzer_delete if analyzer else delete_experiment)
    app.router.add_get(experiment + "/branches/{branch:[^/]+}", get_branch)
    app.router.add_get(experiment + "/summary", get_summary)
    app.router.add_get(experiment + "/compare", compare)
    app.router.add_get(experiment + "/analysis", get_analysis)
    app.router.add_get(experiment + "/config", get_config)
    app.router.add_put(experiment + "/config", put_config)
    app.router.add_delete(experiment + "/config", delete_config)
    app.router.add_get("/api/v1/stats", get_stats)
    app.router.add_get("/api/v1/buckets", get_buckets)
    app.router.add_post("/v1/metrics", analyzer_refuses if analyzer else post_otlp)
