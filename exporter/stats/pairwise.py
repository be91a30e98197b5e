"""Comparing a treatment branch with a control branch (the seed's `compare`, finished)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.results import ExperimentMetrics
from .analysis import ExperimentAnalysis, LatencyDistribution, MetricComparison


@dataclass(frozen=True, slots=True)
class BranchComparison:
    """B against A, as in the seed module: differences are `b - a`.

    `is_significant` is true when any metric's adjusted always-valid p-value is below
    the experiment's alpha with both arms at the minimum sample size; `confidence`
    is then 1 - alpha, else 0. `metrics` holds every metric's full comparison.
    The seed's latency fields (`avg_latency_a`, ...) are milliseconds; the `_seconds`
    ones carry the same in seconds, the unit of `metrics` and of /metrics.
    """

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
    avg_latency_a_seconds: float
    avg_latency_b_seconds: float
    latency_diff_seconds: float
    is_significant: bool
    confidence: float
    metrics: tuple[MetricComparison, ...]
    latency_distribution: LatencyDistribution | None
    srm_p_value: float | None
    srm_detected: bool


def compare(
    metrics: ExperimentMetrics, analysis: ExperimentAnalysis, branch_a: str, branch_b: str
) -> BranchComparison | None:
    """`analysis` must have been made with `branch_a` as the control."""
    a = metrics.branches.get(branch_a)
    b = metrics.branches.get(branch_b)
    if a is None or b is None:
        return None
    found = analysis.comparisons.get(branch_b, ()) if branch_a != branch_b else ()
    significant = any(m.significant for m in found)
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
        avg_latency_a_seconds=a.avg_latency_ms / 1000,
        avg_latency_b_seconds=b.avg_latency_ms / 1000,
        latency_diff_seconds=(b.avg_latency_ms - a.avg_latency_ms) / 1000,
        is_significant=significant,
        confidence=1.0 - analysis.config.alpha if significant else 0.0,
        metrics=found,
        latency_distribution=analysis.latency.get(branch_b) if branch_a != branch_b else None,
        srm_p_value=analysis.srm.p_value if analysis.srm else None,
        srm_detected=bool(analysis.srm and analysis.srm.detected),
    )
