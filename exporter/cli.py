"""`abtest-exporter serve | demo | status`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from .settings import DEFAULT_PORT, Settings, load_file, parse_buckets
from .version import __version__

log = logging.getLogger("abtest_exporter")

ENV_PREFIX = "ABTEST_EXPORTER_"


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))


def _serve_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=f"{help_text} Every flag can also be set as {ENV_PREFIX}<FLAG> "
        f"(for example {ENV_PREFIX}PORT=9470).",
    )
    parser.add_argument("--host", default=_env("host"), help="listen address (default 0.0.0.0)")
    parser.add_argument(
        "--port", type=int, default=_env("port"), help=f"listen port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--buckets",
        type=parse_buckets,
        default=_env("buckets"),
        help="latency histogram bounds in seconds, comma-separated",
    )
    parser.add_argument("--config", default=_env("config"), help="TOML config file")
    parser.add_argument(
        "--stats-interval",
        type=float,
        default=_env("stats_interval"),
        help="recompute comparisons at most this often, in seconds (default 5)",
    )
    parser.add_argument(
        "--otlp-port",
        type=int,
        default=_env("otlp_port"),
        help="also listen here for OTLP/HTTP (4318 is its usual port); default: off",
    )
    parser.add_argument(
        "--otlp-push-endpoint",
        default=_env("otlp_push_endpoint"),
        help="push the aggregate by OTLP/HTTP to this URL (e.g. http://collector:4318/v1/metrics)",
    )
    parser.add_argument(
        "--otlp-push-interval",
        type=float,
        default=_env("otlp_push_interval"),
        help="seconds between pushes (default 60)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        default=(_env("demo") or "").lower() in ("1", "true", "yes"),
        help="feed a simulated experiment so there is live data at once",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abtest-exporter", description="A/B-testing metrics exporter for Prometheus."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub, "serve", "Run the exporter.")
    _serve_parser(sub, "demo", "Run the exporter with a simulated experiment.")
    status = sub.add_parser(
        "status", help="Print experiments and comparisons of a running exporter."
    )
    status.add_argument(
        "--url",
        default=_env("url") or f"http://127.0.0.1:{DEFAULT_PORT}",
        help="the exporter's base URL",
    )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if args.config:
        settings = settings.with_values(**load_file(args.config))
    port = int(args.port) if args.port is not None else None
    buckets = parse_buckets(args.buckets) if isinstance(args.buckets, str) else args.buckets
    interval = float(args.stats_interval) if args.stats_interval is not None else None
    otlp_port = int(args.otlp_port) if args.otlp_port is not None else None
    push_interval = float(args.otlp_push_interval) if args.otlp_push_interval is not None else None
    return settings.with_values(
        host=args.host,
        port=port,
        buckets=buckets,
        stats_interval=interval,
        otlp_port=otlp_port,
        otlp_push_endpoint=args.otlp_push_endpoint,
        otlp_push_interval=push_interval,
    )


def serve(args: argparse.Namespace) -> int:
    from .demo import demo_context
    from .server import create_app

    try:
        settings = settings_from(args)
    except (OSError, ValueError) as exc:
        print(f"abtest-exporter: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings=settings)
    if args.demo or args.command == "demo":
        app.cleanup_ctx.append(demo_context())
    asyncio.run(run(app, settings))
    return 0


async def run(app: web.Application, settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (in-flight requests finish)."""
    runner = web.AppRunner(app)
    await runner.setup()
    ports = [settings.port] + ([settings.otlp_port] if settings.otlp_port else [])
    for port in ports:
        await web.TCPSite(runner, settings.host, port).start()
        log.info("listening on %s:%s", settings.host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


def fetch(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def status(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    try:
        experiments = fetch(f"{base}/api/v1/experiments")["experiments"]
    except OSError as exc:
        print(f"abtest-exporter: cannot reach {base}: {exc}", file=sys.stderr)
        return 1
    if not experiments:
        print("no experiments yet")
    for summary in experiments:
        name = summary["experiment"]
        quoted = urllib.parse.quote(name, safe="")
        detail = fetch(f"{base}/api/v1/experiments/{quoted}")
        analysis = fetch(f"{base}/api/v1/experiments/{quoted}/analysis")
        control = summary["control"]
        srm = analysis["srm"]
        srm_text = (
            ""
            if srm is None
            else (f", SRM p={srm['p_value']:.2g}{' MISMATCH' if srm['detected'] else ''}")
        )
        print(
            f"\n{name}  (control: {control}, best: {summary['best_branch']}, "
            f"{summary['total_queries']} queries{srm_text})"
        )
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
            ("vs control", "metric", "difference", "always-valid CI", "p (adj.)", "")
        ]
        for branch, comparisons in analysis["comparisons"].items():
            for m in comparisons:
                rows.append(describe(branch, m))
        if len(rows) > 1:
            print()
            print_table(rows)
    return 0


def _p95(percentiles: dict[str, float] | None) -> str:
    return f"{percentiles['p95'] * 1000:.1f} ms" if percentiles else "-"


def describe(branch: str, m: dict[str, Any]) -> tuple[str, ...]:
    scale, unit = (1000.0, " ms") if m["metric"] == "latency_mean" else (1.0, "")
    metric = m["metric"] + (f":{m['event']}" if m["event"] else "")

    def number(value: float | None) -> str:
        return "?" if value is None else f"{value * scale:+.4g}{unit}"

    interval = f"[{number(m['ci_lower'])}, {number(m['ci_upper'])}]"
    verdict = "SIGNIFICANT" if m["significant"] else ""
    return (
        branch,
        metric,
        number(m["difference"]),
        interval,
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return status(args)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
