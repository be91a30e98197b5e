"""abtest-exporter: A/B-testing metrics for Prometheus and OpenTelemetry.

from exporter import ABMetrics
ab = ABMetrics()
ab.record_query("checkout", "treatment", latency_ms=12.5, success=True)
ab.record_event("checkout", "treatment", "revenue", 42.0)

The names below load on first use (PEP 562): an app that only sends records imports
`exporter.client`, and that must not pull numpy and scipy in through this package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .core.experiment_config import ExperimentConfig
    from .core.results import (
        BranchMetrics,
        EventMetrics,
        ExperimentMetrics,
        ExperimentSummary,
        MetricsStats,
    )
    from .core.validation import ValidationError
    from .state.abmetrics import ABMetrics, Snapshot
    from .stats.pairwise import BranchComparison

# public name -> the module that defines it
_HOMES = {
    "ABMetrics": ".state.abmetrics",
    "BranchComparison": ".stats.pairwise",
    "BranchMetrics": ".core.results",
    "EventMetrics": ".core.results",
    "ExperimentConfig": ".core.experiment_config",
    "ExperimentMetrics": ".core.results",
    "ExperimentSummary": ".core.results",
    "MetricsStats": ".core.results",
    "Snapshot": ".state.abmetrics",
    "ValidationError": ".core.validation",
}

__all__ = [
    "ABMetrics",
    "BranchComparison",
    "BranchMetrics",
    "EventMetrics",
    "ExperimentConfig",
    "ExperimentMetrics",
    "ExperimentSummary",
    "MetricsStats",
    "Snapshot",
    "ValidationError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
