"""Server settings: defaults, the TOML config file, environment variables, flags.

Precedence, lowest first: defaults, config file, environment
(`ABTEST_EXPORTER_<FLAG>`), command-line flags.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .aggregate import DEFAULT_BUCKETS, check_buckets
from .config import ExperimentConfig
from .validation import ValidationError, check_name

DEFAULT_PORT = 9470


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch_records: int = 100_000
    otlp_max_body_bytes: int = 64 * 1024 * 1024
    # a second listener for OTLP/HTTP (4318 is its well-known port); None: only `port`
    otlp_port: int | None = None
    # push the aggregate by OTLP/HTTP to this endpoint (…/v1/metrics); None: off
    otlp_push_endpoint: str | None = None
    otlp_push_interval: float = 60.0
    # how often comparisons are recomputed at most (seconds)
    stats_interval: float = 5.0
    experiments: dict[str, ExperimentConfig] = field(default_factory=dict)

    def with_values(self, **values: Any) -> Settings:
        return replace(self, **{k: v for k, v in values.items() if v is not None})


def parse_buckets(text: str) -> tuple[float, ...]:
    try:
        return check_buckets([float(part) for part in text.split(",") if part.strip()])
    except ValueError as error:
        raise ValueError(f"buckets: {error}") from None


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into Settings keyword values (checked)."""
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    values: dict[str, Any] = {}
    server = data.get("server", {})
    if not isinstance(server, dict):
        raise ValueError(f"{path}: [server] must be a table")
    known = {
        "host": str,
        "port": int,
        "max_body_bytes": int,
        "max_batch_records": int,
        "otlp_max_body_bytes": int,
        "otlp_port": int,
        "otlp_push_endpoint": str,
    }
    for key, value in server.items():
        if key == "buckets":
            values["buckets"] = check_buckets(value)
        elif key in ("stats_interval", "otlp_push_interval"):
            values[key] = float(value)
        elif key in known:
            if not isinstance(value, known[key]):
                raise ValueError(f"{path}: server.{key} must be a {known[key].__name__}")
            values[key] = value
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
