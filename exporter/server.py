"""The aiohttp application: ingest, read API, /metrics, health, OpenAPI."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import json_format
from google.rpc.status_pb2 import Status

from . import background, guard, otlp, page
from .config import ExperimentConfig
from .engine import ComparisonEngine
from .exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    negotiate,
    render,
)
from .ingest import parse_batch
from .keys import ENGINE, METRICS, READINESS, RECEIVER, SELF, SETTINGS, STORE, Readiness
from .limits import LimitError
from .manager import ABMetrics
from .openapi import document
from .results import to_json
from .selfmetrics import SelfMetrics
from .settings import Settings
from .store import Durability, Store
from .validation import ValidationError, name_problem
from .version import __version__

log = logging.getLogger(__name__)

# Batches larger than this are applied on a worker thread so the loop stays responsive.
_INLINE_RECORDS = 2000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(to_json(data), allow_nan=False),
        status=status,
        content_type="application/json",
    )


def error(status: int, message: str, errors: list[dict[str, str]] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if errors is not None:
        body["errors"] = errors
    return json_response(body, status)


def _name(request: web.Request, key: str) -> str:
    value = request.match_info[key]
    problem = name_problem(value)
    if problem:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{key} {problem}"}), content_type="application/json"
        )
    return value


def _refuse(error: type[web.HTTPException], message: str, **kwargs: Any) -> web.HTTPException:
    return error(text=json.dumps({"error": message}), content_type="application/json", **kwargs)


async def _read_body(request: web.Request, source: str, limit: int) -> bytes:
    """The (decompressed) body, or a 4xx naming what is wrong, counted as rejected."""
    self_metrics = request.app[SELF]
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        body = None
    except RequestPayloadError:
        self_metrics.reject(source, "invalid_encoding")
        raise _refuse(
            web.HTTPBadRequest, "body could not be decoded (bad Content-Encoding data)"
        ) from None
    if body is None or len(body) > limit:
        self_metrics.reject(source, "body_too_large")
        raise _refuse(
            web.HTTPRequestEntityTooLarge,
            f"body larger than the limit of {limit} bytes (after decompression)",
            max_size=limit,
            actual_size=len(body) if body is not None else limit + 1,
        )
    return body


async def _read_json(request: web.Request, source: str) -> Any:
    """The decoded JSON body, or a 4xx naming what is wrong (counted as rejected)."""
    if request.content_type != "application/json":
        request.app[SELF].reject(source, "unsupported_media_type")
        raise _refuse(web.HTTPUnsupportedMediaType, "Content-Type must be application/json")
    body = await _read_body(request, source, request.app[SETTINGS].max_body_bytes)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        request.app[SELF].reject(source, "invalid_json")
        raise _refuse(web.HTTPBadRequest, f"body is not valid JSON: {exc}"[:500]) from None


OTLP_TYPES = ("application/x-protobuf", "application/json")


async def post_otlp(request: web.Request) -> web.Response:
    """OTLP/HTTP metrics export, answered as the OTLP specification asks."""
    app = request.app
    self_metrics = app[SELF]
    content_type = request.content_type
    if content_type not in OTLP_TYPES:
        self_metrics.reject("otlp", "unsupported_media_type")
        return web.Response(
            status=415, text="Content-Type must be application/x-protobuf or application/json"
        )
    body = await _read_body(request, "otlp", app[SETTINGS].otlp_max_body_bytes)
    refusal = guard.admit_write(request)
    if refusal is not None:
        return refusal
    try:
        decoded = otlp.decode(body, content_type)
    except otlp.DecodeError as exc:
        self_metrics.reject("otlp", "malformed")
        status = Status(code=3, message=str(exc))  # 3: INVALID_ARGUMENT
        payload = (
            status.SerializeToString()
            if content_type == "application/x-protobuf"
            else json_format.MessageToJson(status, indent=None).encode()
        )
        return web.Response(status=400, body=payload, content_type=content_type)
    applied: list[int] = []

    def apply(received: otlp.Received) -> None:
        version, refused = app[METRICS].record_parts(received.branches, received.events)
        for reason, count in refused.items():
            received.reject(reason, f"{reason.replace('_', ' ')}: points refused", count)
        applied.append(version)

    receive = app[RECEIVER].receive
    big = len(body) > 1_000_000
    received = await asyncio.to_thread(receive, decoded, apply) if big else receive(decoded, apply)
    version = applied[0]
    self_metrics.accept("otlp", "query", received.queries)
    self_metrics.accept("otlp", "event", received.event_count)
    for reason, count in received.reasons.items():
        self_metrics.reject("otlp", reason, count)
    self_metrics.duplicates("otlp", received.duplicates)
    waited = await guard.durable(request, version)
    if waited is not None:
        return waited
    return web.Response(
        body=otlp.encode(received.response(), content_type), content_type=content_type
    )


async def post_records(request: web.Request) -> web.Response:
    app = request.app
    metrics, self_metrics, settings = app[METRICS], app[SELF], app[SETTINGS]
    body = await _read_json(request, "http")
    batch = parse_batch(body, metrics.now(), settings.max_batch_records, settings.max_name_length)
    if batch.error_count:
        for reason, count in batch.reasons.items():
            self_metrics.reject("http", reason, count)
        message = f"batch refused, nothing applied: {batch.error_count} problem(s)"
        return error(413 if batch.too_large else 400, message, batch.errors)
    refusal = guard.admit_write(request)
    if refusal is not None:
        return refusal
    records = batch.records
    size = records.queries + records.events
    try:
        if size > _INLINE_RECORDS:
            version = await asyncio.to_thread(metrics.record_batch, records)
        else:
            version = metrics.record_batch(records)
    except LimitError as exc:
        self_metrics.reject("http", exc.reason, size)
        return error(422, f"batch refused, nothing applied: {exc.message}")
    self_metrics.accept("http", "query", records.queries)
    self_metrics.accept("http", "event", records.events)
    waited = await guard.durable(request, version)
    if waited is not None:
        return waited
    return json_response({"accepted": {"queries": records.queries, "events": records.events}})


async def list_experiments(request: web.Request) -> web.Response:
    summaries = await asyncio.to_thread(request.app[METRICS].all_summaries)
    return json_response({"experiments": summaries})


async def get_experiment(request: web.Request) -> web.Response:
    found = request.app[METRICS].get_experiment_metrics(_name(request, "experiment"))
    return json_response(found) if found else error(404, "no such experiment")


async def get_branch(request: web.Request) -> web.Response:
    experiment, branch = _name(request, "experiment"), _name(request, "branch")
    found = request.app[METRICS].get_branch_metrics(experiment, branch)
    return json_response(found) if found else error(404, "no such experiment or branch")


async def get_summary(request: web.Request) -> web.Response:
    found = request.app[METRICS].get_summary(_name(request, "experiment"))
    return json_response(found) if found else error(404, "no such experiment")


async def compare(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    experiment = _name(request, "experiment")
    found = metrics.get_experiment_metrics(experiment)
    if found is None:
        return error(404, "no such experiment")
    branch_b = request.query.get("b")
    branch_a = request.query.get("a", found.control)
    if branch_b is None:
        return error(400, "query parameter b (the branch to compare) is required")
    for key, value in (("a", branch_a), ("b", branch_b)):
        problem = name_problem(value)
        if problem:
            return error(400, f"query parameter {key} {problem}")
    result = metrics.compare_branches(experiment, branch_a, branch_b)
    return json_response(result) if result else error(404, "no such branch")


async def get_analysis(request: web.Request) -> web.Response:
    experiment = _name(request, "experiment")
    found = request.app[METRICS].analyse(experiment).get(experiment)
    return json_response(found) if found else error(404, "no such experiment")


async def get_config(request: web.Request) -> web.Response:
    return json_response(request.app[METRICS].get_config(_name(request, "experiment")))


async def put_config(request: web.Request) -> web.Response:
    experiment = _name(request, "experiment")
    body = await _read_json(request, "config")
    try:
        config = ExperimentConfig.from_mapping(body)
    except ValidationError as exc:
        return error(400, f"config refused, nothing changed: {exc.message}")
    request.app[METRICS].configure(experiment, config)
    waited = await guard.durable(request, request.app[METRICS].version)
    return waited or json_response(config)


async def delete_experiment(request: web.Request) -> web.Response:
    experiment = _name(request, "experiment")
    if not request.app[METRICS].clear_experiment(experiment):
        return error(404, "no such experiment")
    waited = await guard.durable(request, request.app[METRICS].version)
    return waited or json_response({"cleared": experiment})


async def delete_all(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].allow_clear_all:
        return error(403, "clearing everything is disabled on this exporter (allow_clear_all)")
    request.app[METRICS].clear_all()
    waited = await guard.durable(request, request.app[METRICS].version)
    return waited or json_response({"cleared": "all"})


async def get_stats(request: web.Request) -> web.Response:
    return json_response(request.app[METRICS].stats())


def render_metrics(app: web.Application, openmetrics: bool, compress: bool) -> bytes:
    """Snapshot, render and (maybe) compress: runs on a worker thread."""
    started = time.perf_counter()
    metrics, self_metrics, engine = app[METRICS], app[SELF], app[ENGINE]
    snapshot = metrics.snapshot()
    latest = engine.latest
    extra = self_metrics.families(
        snapshot.stats.total_branches_tracked,
        len(snapshot.view.event_keys) - snapshot.view.event_keys.count(None),
        snapshot.stats.experiments_tracked,
    )
    store = app.get(STORE)
    families = extra + engine.families() + (store.families() if store is not None else [])
    payload = render(snapshot, families, openmetrics, latest.text).encode()
    if compress:
        payload = gzip.compress(payload, compresslevel=1)
    self_metrics.scraped(time.perf_counter() - started)
    return payload


async def get_metrics(request: web.Request) -> web.Response:
    openmetrics = negotiate(request.headers.get("Accept", ""))
    compress = "gzip" in request.headers.get("Accept-Encoding", "")
    payload = await asyncio.to_thread(render_metrics, request.app, openmetrics, compress)
    response = web.Response(body=payload)
    response.headers["Content-Type"] = (
        OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
    )
    if compress:
        response.headers["Content-Encoding"] = "gzip"
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
    text = page.render(summaries, analyses, __version__, origin)
    return web.Response(text=text, content_type="text/html")


def create_app(
    metrics: ABMetrics | None = None,
    settings: Settings | None = None,
    self_metrics: SelfMetrics | None = None,
) -> web.Application:
    settings = settings or Settings()
    app = web.Application(
        client_max_size=max(settings.max_body_bytes, settings.otlp_max_body_bytes),
        middlewares=[guard.authenticate],
    )
    app[SETTINGS] = settings
    if metrics is None:
        metrics = ABMetrics(settings.buckets, configs=settings.experiments)
    metrics.limits = settings.limits  # the server's settings govern what it accepts
    app[METRICS] = metrics
    app[SELF] = self_metrics or SelfMetrics()
    app[ENGINE] = ComparisonEngine(app[METRICS])
    app[RECEIVER] = otlp.Receiver(app[METRICS].buckets, max_name_length=settings.max_name_length)
    app[READINESS] = Readiness()
    if settings.persistent:
        assert settings.data_dir is not None
        durability: Durability = "interval" if settings.durability == "interval" else "sync"
        app[STORE] = Store(
            settings.data_dir,
            app[METRICS],
            durability,
            settings.flush_interval,
            receiver=app[RECEIVER],
        )
    app.cleanup_ctx.append(background.persistence)
    app.cleanup_ctx.append(background.comparisons)
    if settings.expire_after:
        app.cleanup_ctx.append(background.expiry)
    if settings.otlp_push_endpoint:
        app.cleanup_ctx.append(background.otlp_push)
    _routes(app)
    return app


def _routes(app: web.Application) -> None:
    experiment = "/api/v1/experiments/{experiment}"
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/openapi.json", get_openapi)
    app.router.add_post("/api/v1/records", post_records)
    app.router.add_get("/api/v1/experiments", list_experiments)
    app.router.add_delete("/api/v1/experiments", delete_all)
    app.router.add_get(experiment, get_experiment)
    app.router.add_delete(experiment, delete_experiment)
    app.router.add_get(experiment + "/branches/{branch}", get_branch)
    app.router.add_get(experiment + "/summary", get_summary)
    app.router.add_get(experiment + "/compare", compare)
    app.router.add_get(experiment + "/analysis", get_analysis)
    app.router.add_get(experiment + "/config", get_config)
    app.router.add_put(experiment + "/config", put_config)
    app.router.add_get("/api/v1/stats", get_stats)
    app.router.add_post("/v1/metrics", post_otlp)
