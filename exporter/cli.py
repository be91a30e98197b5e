"""`abtest-exporter serve | demo | status`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import ssl
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from .serve import eventloop
from .serve.keys import READINESS, SELF
from .serve.settings import (
    DEFAULT_PORT,
    ENV_PREFIX,
    OPTIONS,
    Settings,
    from_environment,
    load_file,
    read_tokens,
)
from .version import __version__

log = logging.getLogger("abtest_exporter")


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))


def _serve_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=f"{help_text} Every flag can also be set as {ENV_PREFIX}<FLAG> (for example "
        f"{ENV_PREFIX}PORT=9470) or in the config file's [server] table. Tokens come from "
        f"{ENV_PREFIX}TOKEN / {ENV_PREFIX}METRICS_TOKEN or the files named by "
        f"{ENV_PREFIX}TOKEN_FILE / {ENV_PREFIX}METRICS_TOKEN_FILE, never from a flag.",
    )
    parser.add_argument("--config", default=_env("config"), help="TOML config file")
    for option in OPTIONS:
        parser.add_argument(
            "--" + option.name.replace("_", "-"),
            type=_argument(option.parse),
            default=None,
            help=option.help,
        )
    parser.add_argument(
        "--demo",
        action="store_true",
        default=(_env("demo") or "").lower() in ("1", "true", "yes"),
        help="feed a simulated experiment so there is live data at once",
    )
    return parser


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse shows a ValueError as "invalid <function name> value": say what is wrong."""

    def checked(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return checked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abtest-exporter", description="A/B-testing metrics exporter for Prometheus."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub, "serve", "Run the exporter.")
    _serve_parser(sub, "demo", "Run the exporter with a simulated experiment.")
    status = sub.add_parser(
        "status",
        help="Print experiments and comparisons of a running exporter.",
        description="Verdicts per treatment and metric. The read token, if the exporter has "
        f"one, comes from {ENV_PREFIX}METRICS_TOKEN or the file named by "
        f"{ENV_PREFIX}METRICS_TOKEN_FILE, as for the server.",
    )
    status.add_argument(
        "--url",
        default=_env("url") or f"http://127.0.0.1:{DEFAULT_PORT}",
        help="the exporter's base URL",
    )
    status.add_argument(
        "--all",
        action="store_true",
        help="also show comparisons that cannot be computed yet (no spread in the data)",
    )
    return parser


def settings_from(
    args: argparse.Namespace, environ: dict[str, str] | None = None, demo: bool = False
) -> Settings:
    """Defaults < config file < environment < flags. The CLI keeps data in ./data; the
    demo keeps it in memory unless told where, so it never mixes with `serve`'s."""
    settings = Settings(data_dir=None if demo else "./data")
    if args.config:
        settings = settings.with_values(**load_file(args.config))
    settings = settings.with_values(**from_environment(environ))
    flags = {option.name: getattr(args, option.name) for option in OPTIONS}
    return settings.with_values(**flags)


def serve(args: argparse.Namespace) -> int:
    from .serve.demo import demo_context
    from .serve.server import create_app

    demo = args.demo or args.command == "demo"
    try:
        settings = settings_from(args, demo=demo)
        settings = check_role(settings)
        ssl_context = tls_context(settings)
    except (OSError, ValueError) as exc:
        print(f"abtest-exporter: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # The disk writer and the render worker are threads: hand the GIL over every 1 ms
    # (not 5) so a request waiting for its group commit is not left waiting for the GIL.
    sys.setswitchinterval(0.001)
    _raise_open_files_limit()
    if settings.allow_clear_all and not settings.token:
        log.warning("clearing everything (DELETE /api/v1/experiments) is allowed with no token")
    app = create_app(settings=settings)
    if demo:
        app.cleanup_ctx.append(demo_context())
    try:
        return eventloop.run(run(app, settings, ssl_context))
    except ListenError as exc:
        print(f"abtest-exporter: {exc}", file=sys.stderr)
        return 2


def check_role(settings: Settings) -> Settings:
    """An analyzer needs its Prometheus and keeps no data file (its figures are rebuilt
    from Prometheus every round); the other roles take no Prometheus URL."""
    if settings.role == "analyzer":
        if not settings.prometheus_url:
            raise ValueError("--role analyzer needs --prometheus-url")
        return settings.with_values(data_dir="", durability="off")
    if settings.prometheus_url:
        raise ValueError("--prometheus-url is for --role analyzer only")
    return settings


class ListenError(Exception):
    """A port cannot be listened on."""


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert and not settings.tls_key:
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def run(
    app: web.Application, settings: Settings, ssl_context: ssl.SSLContext | None = None
) -> int:
    """Listen at once, restore the data file behind a 503 /-/ready, then serve until
    SIGTERM or SIGINT and shut down gracefully (in-flight requests finish). Returns the
    exit status: 2 when the data file cannot be used."""
    runner = web.AppRunner(
        app, keepalive_timeout=settings.idle_timeout, access_log_class=QuietAccessLogger
    )
    await runner.setup()  # the restore starts here, in the background
    assert runner.server is not None
    cap_connections(runner.server, settings.max_connections, app[SELF].connection_refused)
    ports = [settings.port] + ([settings.otlp_port] if settings.otlp_port else [])
    scheme = "https" if ssl_context else "http"
    try:
        for port in ports:
            try:
                await web.TCPSite(runner, settings.host, port, ssl_context=ssl_context).start()
            except OSError as exc:
                raise ListenError(
                    f"cannot listen on {settings.host}:{port}: {exc.strerror or exc} "
                    "(another process has it? choose another --port)"
                ) from None
            log.info("listening on %s://%s:%s", scheme, settings.host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        readiness = app[READINESS]
        stopping = asyncio.ensure_future(stop.wait())
        settled = asyncio.ensure_future(readiness.settled.wait())
        await asyncio.wait({stopping, settled}, return_when=asyncio.FIRST_COMPLETED)
        settled.cancel()
        if readiness.failure is not None:  # already logged, in one line
            stopping.cancel()
            return 2
        await stopping
        log.info("shutting down")
        return 0
    finally:
        await runner.cleanup()


def cap_connections(server: web.Server, limit: int, refused: Callable[[], None]) -> None:
    """Close connections past `limit` at once with a 503, before they hold a descriptor
    the /metrics scrape and the probes need."""
    made = server.connection_made
    busy = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
        b"Connection: close\r\nContent-Length: 26\r\n\r\ntoo many open connections\n"
    )

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        made(handler, transport)
        if len(server.connections) > limit:
            refused()
            transport.write(busy)
            # closed once the handler's task has started, which expects its connection
            asyncio.get_running_loop().call_soon(transport.close)

    server.connection_made = connection_made  # type: ignore[method-assign]


def _raise_open_files_limit() -> None:
    """Use the hard limit on open files, as servers do: connections need descriptors."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class QuietAccessLogger(AccessLogger):
    """The access log without successful scrapes and probes (one per second each) and
    successful record writes (thousands a second; the self-metrics count them): a line
    per write cost a fifth of a single-record request."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if response.status < 400 and request.path in _QUIET_PATHS:
            return
        super().log(request, response, time)


_QUIET_PATHS = frozenset({"/metrics", "/-/healthy", "/-/ready", "/api/v1/records", "/v1/metrics"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, form: str) -> None:
    handler = logging.StreamHandler()
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def fetch(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def status(args: argparse.Namespace) -> int:
    """Experiments, then every treatment's comparison as a verdict a person can act on."""
    base = args.url.rstrip("/")
    try:
        token = read_tokens(dict(os.environ)).get("metrics_token")
        experiments = fetch(f"{base}/api/v1/experiments", token)["experiments"]
    except (OSError, ValueError) as exc:
        print(f"abtest-exporter: cannot reach {base}: {exc}", file=sys.stderr)
        return 1
    if not experiments:
        print("no experiments yet")
    for summary in experiments:
        name = summary["experiment"]
        quoted = urllib.parse.quote(name, safe="")
        detail = fetch(f"{base}/api/v1/experiments/{quoted}", token)
        analysis = fetch(f"{base}/api/v1/experiments/{quoted}/analysis", token)
        control = summary["control"]
        srm = analysis["srm"]
        mismatch = bool(srm and srm["detected"])
        srm_text = (
            "" if srm is None else f", SRM p={srm['p_value']:.2g}{' MISMATCH' if mismatch else ''}"
        )
        primary = analysis["config"]["primary_metric"]
        winner = analysis["winner"] or "none yet"
        print(
            f"\n{name}  (control: {control}, winner on {primary}: {winner}, "
            f"{summary['total_queries']} queries, progress {_pct(analysis['progress'])}{srm_text})"
        )
        if mismatch:
            print("  SAMPLE-RATIO MISMATCH: the split is broken, no result here can be trusted")
        order = sorted(detail["branches"].items(), key=lambda item: item[0] != control)
        print_table(
            [("branch", "queries", "success", "mean latency", "p95")]
            + [
                (
                    branch,
                    str(metrics["query_count"]),
                    _pct(metrics["success_rate"]),
                    f"{metrics['avg_latency_ms']:.1f} ms",
                    _p95(analysis["percentiles"].get(branch)),
                )
                for branch, metrics in order
            ]
        )
        rows: list[tuple[str, ...]] = [
            ("vs control", "metric", "control", "treatment", "difference", "lift",
             "lift CI (always valid)", "chance better", "p (adj.)", "verdict")
        ]  # fmt: skip
        hidden = 0
        for branch, comparisons in analysis["comparisons"].items():
            for m in comparisons:
                if not args.all and m["ci_lower"] is None:
                    hidden += 1  # no spread yet: nothing to say
                    continue
                rows.append(describe(branch, m, mismatch))
        if len(rows) > 1:
            print()
            print_table(rows)
        if hidden:
            print(f"({hidden} comparison(s) cannot be computed yet; --all shows them)")
    return 0


def _p95(percentiles: dict[str, float] | None) -> str:
    return f"{percentiles['p95'] * 1000:.1f} ms" if percentiles else "-"


def _value(metric: str, value: float | None, signed: bool = False, difference: bool = False) -> str:
    """A figure in the unit people read: percent (points for differences) for ratios, ms
    for latency."""
    if value is None:
        return "-"
    sign = "+" if signed else ""
    if metric == "success_ratio":
        return f"{100 * value:{sign}.2f}" + (" pp" if signed or difference else "%")
    if metric == "latency_mean":
        return f"{1000 * value:{sign}.2f} ms"
    return f"{value:{sign}.4g}"


def _lift(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.2f}%"


VERDICTS = {1: "BETTER", -1: "WORSE", 0: "inconclusive"}


def describe(branch: str, m: dict[str, Any], srm: bool = False) -> tuple[str, ...]:
    """One comparison as a row: values, difference and lift in their units, the lift's
    always-valid interval, and the verdict (flagged on every row when the split is off)."""
    metric = m["metric"]
    lo, hi = m["relative_ci_lower"], m["relative_ci_upper"]
    interval = "-" if lo is None or hi is None else f"[{_lift(lo)}, {_lift(hi)}]"
    chance = m["probability_better"]
    verdict = VERDICTS[m["verdict"]]
    if srm:
        verdict += " (SRM: untrusted)"
    elif m["verdict"] == 0 and m["significant"]:
        verdict += " (below min_sample_size)"
    elif m["verdict"] == 0 and m["mde"] is not None:
        verdict += f" (detectable now: {_value(metric, m['mde'], difference=True)})"
    return (
        branch,
        metric + (f":{m['event']}" if m["event"] else ""),
        _value(metric, m["value_a"]),
        _value(metric, m["value_b"]),
        _value(metric, m["difference"], signed=True),
        _lift(m["relative_difference"]),
        interval,
        "-" if chance is None else f"{100 * chance:.1f}%",
        f"{m['adjusted_p_value']:.3g}",
        verdict,
    )


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging("info", "text")
    args = build_parser().parse_args(argv)
    if args.command == "status":
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `status | head` ends quietly
        return status(args)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
