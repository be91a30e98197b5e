"""abtest-exporter: A/B-testing metrics for Prometheus and OpenTelemetry.

from exporter import ABMetrics
ab = ABMetrics()
ab.record_query("checkout", "treatment", latency_ms=12.5, success=True)
ab.record_event("checkout", "treatment", "revenue", 42.0)
"""

from .comparison import BranchComparison
from .config import ExperimentConfig
from .manager import ABMetrics, Snapshot
from .results import (
    BranchMetrics,
    EventMetrics,
    ExperimentMetrics,
    ExperimentSummary,
    MetricsStats,
)
from .validation import ValidationError
from .version import __version__

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
