"""One refusal path for the HTTP layer: handlers raise `Refusal`, one middleware answers.

Domain errors that reach it unwrapped are mapped here too: `LimitError` is a 422 and
`ValidationError` a 400, both counted by their reason. Handlers that can say more
(which batch, nothing applied) wrap them in a `Refusal` themselves.

A refusal is counted in `abtest_exporter_rejected_records_total{source,reason}` (in
records when the handler knows how many) and answered as JSON `{"error": ...}`, or
on the OTLP path as a `google.rpc.Status` in the request's own encoding, as the
OTLP specification asks. Anything unexpected becomes one log line and a 500, never
a traceback in the operator's log (the traceback goes to the debug level).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from google.protobuf import json_format
from google.rpc.code_pb2 import Code
from google.rpc.status_pb2 import Status

from ..core.idempotency import KeyReused
from ..core.limits import LimitError
from ..core.validation import ValidationError
from .keys import SELF

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OTLP_PROTOBUF = "application/x-protobuf"


class Refusal(Exception):
    """A request turned away, with nothing of it applied."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str | None = None,
        source: str | None = None,
        headers: Mapping[str, str] | None = None,
        count: int = 1,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason  # the self-metric label; None: not counted
        self.source = source
        self.headers = dict(headers or {})
        self.count = count
        self.errors = errors


def source_of(request: web.Request) -> str:
    """The way in a request came by, as the self-metrics name it."""
    return "otlp" if request.path == "/v1/metrics" else "http"


def _body(request: web.Request, refusal: Refusal) -> web.Response:
    if request.path == "/v1/metrics":
        code = Code.INVALID_ARGUMENT if refusal.status < 500 else Code.UNAVAILABLE
        status = Status(code=code, message=refusal.message)
        if request.content_type == _OTLP_PROTOBUF:
            return web.Response(
                status=refusal.status,
                body=status.SerializeToString(),
                content_type=_OTLP_PROTOBUF,
                headers=refusal.headers,
            )
        return web.Response(
            status=refusal.status,
            text=json_format.MessageToJson(status, indent=None),
            content_type="application/json",
            headers=refusal.headers,
        )
    body: dict[str, object] = {"error": refusal.message}
    if refusal.errors is not None:
        body["errors"] = refusal.errors
    return web.Response(
        status=refusal.status,
        text=json.dumps(body),
        content_type="application/json",
        headers=refusal.headers,
    )


def _refuse(request: web.Request, refusal: Refusal) -> web.Response:
    if refusal.reason is not None:
        source = refusal.source or source_of(request)
        request.app[SELF].reject(source, refusal.reason, refusal.count)
    return _body(request, refusal)


@web.middleware
async def refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refusal as refusal:
        return _refuse(request, refusal)
    except KeyReused as exc:
        return _refuse(request, Refusal(422, str(exc), "idempotency_key_reused"))
    except LimitError as exc:  # a domain error no handler put in context: 422, counted
        return _refuse(request, Refusal(422, exc.message, exc.reason))
    except ValidationError as exc:  # likewise: 400
        return _refuse(request, Refusal(400, exc.message, exc.reason))
    except web.HTTPException:
        raise
    except Exception as exc:
        log.error(
            "internal error answering %s %s: %s: %s", request.method, request.path,
            type(exc).__name__, exc,
        )  # fmt: skip
        log.debug("traceback", exc_info=True)
        return _body(request, Refusal(500, "internal error; see the exporter's log"))
