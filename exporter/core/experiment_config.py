"""Per-experiment analysis settings, shared by the config file, HTTP and Python.

Parsing reports every bad key at once, in the same `field: message` form the
batch API uses, so a user fixes a config in one round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from .validation import ValidationError, name_problem

Correction = Literal["holm", "bh", "none"]
CORRECTIONS: Final = ("holm", "bh", "none")
CONFIG_KEYS: Final = (
    "control",
    "allocation",
    "alpha",
    "min_sample_size",
    "sequential_tuning",
    "correction",
    "primary_metric",
)
PRIMARY_METRICS: Final = ("success_ratio", "latency_mean")
EVENT_METRICS: Final = ("event_rate", "event_mean")


@dataclass(frozen=True, slots=True)
class ExperimentConfig:
    """How an experiment is analysed.

    `control`: the branch others are compared with (None: a branch named
    "control", else the first branch seen). `allocation`: expected traffic
    weights per branch for the sample-ratio check (None: equal).
    `sequential_tuning`: N*, the sample size where the always-valid interval is
    tightest. `correction`: multiple-comparison adjustment across treatments
    and metrics ("holm", "bh" for Benjamini-Hochberg, or "none").
    `primary_metric`: the metric that names the experiment's winner ("success_ratio",
    "latency_mean", "event_rate:<event>" or "event_mean:<event>").
    """

    control: str | None = None
    allocation: Mapping[str, float] | None = None
    alpha: float = 0.05
    min_sample_size: int = 100
    sequential_tuning: float = 5000.0
    correction: Correction = "holm"
    primary_metric: str = "success_ratio"

    def to_json(self) -> dict[str, Any]:
        return {
            "control": self.control,
            "allocation": dict(self.allocation) if self.allocation is not None else None,
            "alpha": self.alpha,
            "min_sample_size": self.min_sample_size,
            "sequential_tuning": self.sequential_tuning,
            "correction": self.correction,
            "primary_metric": self.primary_metric,
        }

    def primary(self) -> tuple[str, str]:
        """The primary metric as (metric label, event label)."""
        metric, _, event = self.primary_metric.partition(":")
        return metric, event

    @classmethod
    def from_mapping(cls, data: object, where: str = "") -> ExperimentConfig:
        """Parse and check a JSON/TOML object; raises ValidationError naming each bad key."""
        if not isinstance(data, Mapping):
            raise ValidationError("invalid_config", f"{where or 'config'}: must be an object")
        errors: list[str] = []

        def bad(key: str, message: str) -> None:
            errors.append(f"{where}{key}: {message}")

        unknown = sorted(str(k) for k in data if k not in CONFIG_KEYS)
        for key in unknown:
            bad(key, f"unknown key (known: {', '.join(CONFIG_KEYS)})")
        values: dict[str, Any] = {}

        def take(key: str, problem: str | None) -> None:
            if problem:
                bad(key, problem)
            else:
                values[key] = data[key]

        if data.get("control") is not None:
            take("control", name_problem(data["control"]))
        if data.get("allocation") is not None:
            values["allocation"] = _allocation(data["allocation"], lambda m: bad("allocation", m))
        if "alpha" in data:
            alpha = data["alpha"]
            if not _number(alpha) or not 0 < alpha < 1:
                bad("alpha", "must be a number between 0 and 1 (exclusive)")
            else:
                values["alpha"] = float(alpha)
        if "min_sample_size" in data:
            size = data["min_sample_size"]
            if isinstance(size, float) and size.is_integer():
                size = int(size)  # JSON has one number type: 100.0 is a whole number
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 10**12:
                bad("min_sample_size", "must be a whole number between 1 and 1e12")
            else:
                values["min_sample_size"] = size
        if "sequential_tuning" in data:
            tuning = data["sequential_tuning"]
            if not _number(tuning) or not 1 <= tuning <= 1e12:
                bad("sequential_tuning", "must be a number between 1 and 1e12")
            else:
                values["sequential_tuning"] = float(tuning)
        if "correction" in data:
            wrong = data["correction"] not in CORRECTIONS
            take("correction", f"must be one of {', '.join(CORRECTIONS)}" if wrong else None)
        if data.get("primary_metric") is not None:
            take("primary_metric", _primary_problem(data["primary_metric"]))
        if errors:
            raise ValidationError("invalid_config", "; ".join(errors))
        return cls(**values)


def _primary_problem(value: object) -> str | None:
    expected = "must be success_ratio, latency_mean, event_rate:<event> or event_mean:<event>"
    if not isinstance(value, str):
        return expected
    metric, colon, event = value.partition(":")
    if metric in PRIMARY_METRICS and not colon:
        return None
    if metric in EVENT_METRICS and colon:
        problem = name_problem(event)
        return f"event name {problem}" if problem else None
    return expected


def _number(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(float(value))
    )


def _allocation(value: object, bad: Any) -> Mapping[str, float] | None:
    if not isinstance(value, Mapping) or not value:
        bad("must be a non-empty object of branch name to weight")
        return None
    result: dict[str, float] = {}
    for branch, weight in value.items():
        problem = name_problem(branch)
        if problem:
            bad(f"branch name {problem}")
        elif not _number(weight) or not 0 < weight <= 1e12:
            bad(f"weight of {branch!r} must be a number > 0")
        else:
            result[branch] = float(weight)
    return MappingProxyType(result) if len(result) == len(value) else None
