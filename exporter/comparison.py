"""Comparing a treatment branch with a control branch."""

from __future__ import annotations

from dataclasses import dataclass

from .config import ExperimentConfig
from .results import ExperimentMetrics


@dataclass(frozen=True, slots=True)
class BranchComparison:
    """B against A, as in the seed module: differences are `b - a`."""

    experiment: str
    branch_a: str
    branch_b: str
    sample_size_a: int
    sample_size_b: int
    success_rate_a: float
    success_rate_b: float
    success_rate_diff: float
    avg_latency_a: float
    avg_latency_b: float
    latency_diff: float
    is_significant: bool
    confidence: float


def compare(
    metrics: ExperimentMetrics, branch_a: str, branch_b: str, config: ExperimentConfig
) -> BranchComparison | None:
    a = metrics.branches.get(branch_a)
    b = metrics.branches.get(branch_b)
    if a is None or b is None:
        return None
    return BranchComparison(
        experiment=metrics.experiment,
        branch_a=branch_a,
        branch_b=branch_b,
        sample_size_a=a.query_count,
        sample_size_b=b.query_count,
        success_rate_a=a.success_rate,
        success_rate_b=b.success_rate,
        success_rate_diff=b.success_rate - a.success_rate,
        avg_latency_a=a.avg_latency_ms,
        avg_latency_b=b.avg_latency_ms,
        latency_diff=b.avg_latency_ms - a.avg_latency_ms,
        is_significant=False,
        confidence=0.0,
    )
