"""Server settings: defaults, the TOML config file, environment variables, flags.

Precedence, lowest first: defaults, config file ([server] table), environment
(`ABTEST_EXPORTER_<FLAG>`), command-line flags. One table (`OPTIONS`) describes
every setting for all three, so they cannot drift apart. Secrets (tokens) are
read from files or the environment, never from flags: command lines are visible
to every user of the machine.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.aggregate import DEFAULT_BUCKETS, check_buckets
from ..core.experiment_config import ExperimentConfig
from ..core.limits import Limits
from ..core.tables import MAX_ROWS
from ..core.validation import MAX_NAME_LENGTH, ValidationError, check_name
from ..ingest.otlp import OtlpLimits

DEFAULT_PORT = 9470
ENV_PREFIX = "ABTEST_EXPORTER_"
DURABILITY = ("sync", "interval", "off")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
ROLES = ("single", "ingest", "analyzer")
DEFAULT_SELECTOR = 'job=~"abtest.*"'


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    stats_interval: float = 5.0
    # persistence: None keeps everything in memory only
    data_dir: str | None = None
    durability: str = "sync"
    flush_interval: float = 1.0
    durable_timeout: float = 30.0
    max_pending_writes: int = 10_000
    # input limits
    max_body_bytes: int = 8 * 1024 * 1024
    otlp_max_body_bytes: int = 4 * 1024 * 1024
    max_batch_records: int = 100_000
    max_experiments: int = 10_000
    max_branches: int = 100
    max_events: int = 100
    max_name_length: int = MAX_NAME_LENGTH
    max_memory_bytes: int | None = None
    max_series: int = 100_000
    max_inflight_bytes: int = 128 * 1024 * 1024
    expire_after: float | None = None
    # connections
    idle_timeout: float = 15.0
    body_timeout: float = 30.0
    max_connections: int = 1000
    # OTLP
    otlp_port: int | None = None
    otlp_push_endpoint: str | None = None
    otlp_push_interval: float = 60.0
    otlp_max_bounds: int = 100
    otlp_max_streams: int = 100_000
    otlp_stream_ttl: float = 3600.0
    # security
    token: str | None = field(default=None, repr=False)
    metrics_token: str | None = field(default=None, repr=False)
    tls_cert: str | None = None
    tls_key: str | None = None
    allow_clear_all: bool = False
    log_level: str = "info"
    log_format: str = "text"
    experiments: dict[str, ExperimentConfig] = field(default_factory=dict)
    # scale-out (README "Scaling out"): single, ingest or analyzer
    role: str = "single"
    prometheus_url: str | None = None
    prometheus_selector: str = DEFAULT_SELECTOR

    def with_values(self, **values: Any) -> Settings:
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    @property
    def limits(self) -> Limits:
        return Limits(
            self.max_experiments,
            self.max_branches,
            self.max_events,
            self.max_name_length,
            self.max_series,
        )

    @property
    def otlp_limits(self) -> OtlpLimits:
        return OtlpLimits(
            self.max_name_length,
            self.otlp_max_bounds,
            max_streams=self.otlp_max_streams,
            stream_ttl=self.otlp_stream_ttl,
        )

    @property
    def persistent(self) -> bool:
        return bool(self.data_dir) and self.durability != "off"


def parse_buckets(text: str) -> tuple[float, ...]:
    try:
        return check_buckets([float(part) for part in text.split(",") if part.strip()])
    except ValueError as error:
        raise ValueError(f"buckets: {error}") from None


def _positive(kind: Callable[[str], Any], most: float = float("inf")) -> Callable[[str], Any]:
    noun = "a whole number" if kind is int else "a number"
    bound = f"> 0 and <= {most}" if most < float("inf") else "> 0"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"must be {noun} {bound}, got {text!r}") from None
        if not 0 < value <= most or value == float("inf"):
            raise ValueError(f"must be {noun} {bound}, got {text!r}")
        return value

    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {text!r}")
        return text.lower()

    return parse


_durability = _choice(DURABILITY)


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {text}")


@dataclass(frozen=True, slots=True)
class Option:
    name: str  # the Settings field; the flag is --name-with-dashes
    parse: Callable[[str], Any]
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("host", str, "listen address (default 0.0.0.0)"),
    Option("port", _positive(int), f"listen port (default {DEFAULT_PORT})"),
    Option("buckets", parse_buckets, "latency histogram bounds in seconds, comma-separated"),
    Option("stats_interval", _positive(float), "recompute comparisons at most this often (s, 5)"),
    Option("data_dir", str, "directory of the data file (CLI default ./data)"),
    Option("durability", _durability, "sync (answer after the write is on disk), interval, off"),
    Option(
        "flush_interval", _positive(float), "with --durability interval: seconds between writes"
    ),
    Option("max_body_bytes", _positive(int), "JSON body limit after decompression (8 MiB)"),
    Option("otlp_max_body_bytes", _positive(int), "OTLP body limit after decompression (4 MiB)"),
    Option("max_batch_records", _positive(int), "records per batch (100000)"),
    Option("max_experiments", _positive(int), "experiments held (10000)"),
    Option("max_branches", _positive(int), "branches per experiment (100)"),
    Option("max_events", _positive(int), "event names per experiment (100)"),
    Option("max_name_length", _positive(int), f"characters in a name ({MAX_NAME_LENGTH})"),
    Option("max_memory_bytes", _positive(int), "refuse writes (503) above this RSS (off)"),
    Option(
        "max_series",
        _positive(int, MAX_ROWS),
        f"branch and event series held in all (100000; at most {MAX_ROWS})",
    ),
    Option(
        "max_inflight_bytes",
        _positive(int),
        "bodies held at once, at their decoded weight (128 MiB)",
    ),
    Option("idle_timeout", _positive(float), "close idle or header-dawdling connections (s, 15)"),
    Option("body_timeout", _positive(float), "time allowed to receive a request body (s, 30)"),
    Option("max_connections", _positive(int), "open connections at once; more get 503 (1000)"),
    Option("max_pending_writes", _positive(int), "requests waiting for the disk before 429"),
    Option("expire_after", _positive(float), "remove experiments idle this many seconds (off)"),
    Option("otlp_port", _positive(int), "a second listener for OTLP/HTTP (4318 is usual; off)"),
    Option("otlp_push_endpoint", str, "push the aggregate by OTLP/HTTP to this URL (off)"),
    Option("otlp_push_interval", _positive(float), "seconds between OTLP pushes (60)"),
    Option("otlp_max_bounds", _positive(int), "explicit_bounds per OTLP point (100)"),
    Option("otlp_max_streams", _positive(int), "OTLP stream states held (100000)"),
    Option("otlp_stream_ttl", _positive(float), "forget OTLP streams silent this long (s, 3600)"),
    Option("tls_cert", str, "TLS certificate file (PEM); with --tls-key serves HTTPS"),
    Option("tls_key", str, "TLS private key file (PEM)"),
    Option("allow_clear_all", _flag, "allow DELETE /api/v1/experiments (false)"),
    Option("log_level", _choice(LOG_LEVELS), "debug, info (default), warning or error"),
    Option("log_format", _choice(LOG_FORMATS), "text (default) or json, one object per line"),
    Option("role", _choice(ROLES), "single (default), ingest (a replica) or analyzer"),
    Option("prometheus_url", str, "with --role analyzer: the Prometheus to read the sums from"),
    Option(
        "prometheus_selector",
        str,
        f"with --role analyzer: label matchers of the ingest targets ({DEFAULT_SELECTOR})",
    ),
)


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper()


def from_environment(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Settings values from ABTEST_EXPORTER_* variables, parsed and checked."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        text = environ.get(env_name(option.name))
        if text is not None and text != "":
            values[option.name] = _parse(option, text, env_name(option.name))
    return values | read_tokens(environ)


def _parse(option: Option, text: str, where: str) -> Any:
    try:
        return option.parse(text)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def read_tokens(environ: dict[str, str]) -> dict[str, Any]:
    """Tokens from ABTEST_EXPORTER_TOKEN(_FILE) and ABTEST_EXPORTER_METRICS_TOKEN(_FILE)."""
    values: dict[str, Any] = {}
    for name in ("token", "metrics_token"):
        direct = environ.get(env_name(name))
        path = environ.get(env_name(name) + "_FILE")
        if direct:
            values[name] = direct
        elif path:
            values[name] = read_secret(path)
    return values


def read_secret(path: str) -> str:
    secret = Path(path).read_text().strip()
    if not secret:
        raise ValueError(f"{path}: the token file is empty")
    return secret


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into Settings keyword values (checked)."""
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    values: dict[str, Any] = {}
    server = data.get("server", {})
    if not isinstance(server, dict):
        raise ValueError(f"{path}: [server] must be a table")
    by_name = {option.name: option for option in OPTIONS}
    for key, value in server.items():
        if key == "buckets":
            values["buckets"] = check_buckets(value)
        elif key in ("token_file", "metrics_token_file"):
            values[key.removesuffix("_file")] = read_secret(str(value))
        elif key in by_name:
            if isinstance(value, dict | list):
                raise ValueError(f"{path}: server.{key} must be a single value")
            values[key] = _parse(
                by_name[key],
                str(value).lower() if isinstance(value, bool) else str(value),
                f"{path}: server.{key}",
            )
        else:
            raise ValueError(f"{path}: unknown key server.{key}")
    experiments = data.get("experiments", {})
    configs: dict[str, ExperimentConfig] = {}
    for name, table in experiments.items():
        try:
            check_name("experiment", name)
            configs[name] = ExperimentConfig.from_mapping(table, where=f"experiments.{name}.")
        except ValidationError as error:
            raise ValueError(f"{path}: {error.message}") from None
    values["experiments"] = configs
    unknown = set(data) - {"server", "experiments"}
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}")
    return values
