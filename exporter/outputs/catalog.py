"""Every metric family this exporter publishes about experiments, declared once.

The exposition (`/metrics`), the OTLP push-out and the README's table all take their
names, types, help texts and units from here; tests/test_catalog.py fails when the
README's table drifts. The exporter's own `abtest_exporter_*` families are declared
where they are counted (serve/selfmetrics.py, state/store.py, outputs/comparisons.py),
and the process metrics come from prometheus_client.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Declared:
    """One family: its Prometheus name and type, its help, and its OTLP name and unit
    (empty `otel`: not pushed by OTLP). Values are in base units (seconds, ratios)."""

    name: str
    kind: str  # counter | gauge | histogram | summary | unknown
    help: str
    otel: str = ""
    unit: str = ""


COMPARISON_GAUGES: tuple[tuple[str, str], ...] = (
    (
        "difference",
        "Treatment minus control in the metric's unit (seconds for latency_mean, 0..1 for ratios).",
    ),
    (
        "relative_difference",
        "Difference relative to the control's value (0.05 is 5% above); left out when the "
        "control's value is 0.",
    ),
    (
        "ci_lower",
        "Lower end of the always-valid confidence sequence for the difference: "
        "safe to watch continuously.",
    ),
    ("ci_upper", "Upper end of the always-valid confidence sequence for the difference."),
    (
        "p_value",
        "Always-valid (sequential) p-value: stays honest however often it is looked at.",
    ),
    (
        "fixed_horizon_p_value",
        "Classic p-value (Welch t, two-proportion z, Mann-Whitney for latency_distribution): "
        "valid only for one look at a sample size fixed in advance.",
    ),
    ("fixed_horizon_ci_lower", "Lower end of the classic (one-look) confidence interval."),
    ("fixed_horizon_ci_upper", "Upper end of the classic (one-look) confidence interval."),
    (
        "adjusted_p_value",
        "Sequential p-value adjusted across the experiment's treatments and metrics "
        "(Holm or Benjamini-Hochberg).",
    ),
    (
        "significant",
        "1 when the adjusted p-value is below alpha and both arms have the minimum sample "
        "size, else 0: the gauge to alert on.",
    ),
    (
        "probability_better",
        "Probability that the treatment is better (for latency: lower), Bayesian with a "
        "flat prior; for latency_distribution the chance a treatment query is faster.",
    ),
    (
        "verdict",
        "+1 treatment better, -1 worse (by the metric's direction: lower latency is better), "
        "0 inconclusive: significant (adjusted p below alpha, both arms at min_sample_size) "
        "and no sample-ratio mismatch, else 0.",
    ),
    (
        "relative_ci_lower",
        "Lower end of the always-valid confidence sequence for relative_difference (delta "
        "method); unadjusted, like ci_lower: it goes with p_value.",
    ),
    ("relative_ci_upper", "Upper end of the confidence sequence for relative_difference."),
    (
        "mde",
        "Minimum detectable effect at the current sample, in the metric's unit: the true "
        "difference the always-valid test detects with 80% power at alpha.",
    ),
    (
        "eta_seconds",
        "Estimated time until the minimum detectable effect reaches the observed difference, "
        "at the current rate (0: already there); left out when it cannot be reached.",
    ),
)


PROGRESS_HELP = (
    "Smallest branch's queries as a share of min_sample_size, at most 1: below 1 no "
    "verdict is given yet."
)
WINNER_HELP = (
    "The treatment whose verdict is better (+1) on the experiment's primary_metric "
    "(default success_ratio); absent when none is. Always 1. Unlike best_branch, "
    "significance-aware."
)
SRM_HELP = (
    "Sample-ratio mismatch: chi-square p-value of branch query counts against the "
    "configured allocation (default equal). Below 0.001 the split is broken."
)


def _comparison(field: str, help_text: str) -> Declared:
    return Declared(f"abtest_comparison_{field}", "gauge", help_text, f"abtest.comparison.{field}")


QUERIES = Declared(
    "abtest_queries_total", "counter", "Queries recorded per branch.", "abtest.queries", "{query}"
)
FAILURES = Declared(
    "abtest_query_failures_total",
    "counter",
    "Failed queries per branch.",
    "abtest.query.failures",
    "{query}",
)
DURATION = Declared(
    "abtest_query_duration_seconds",
    "histogram",
    "Query latency per branch.",
    "abtest.query.duration",
    "s",
)
DURATION_SQUARES = Declared(
    "abtest_query_duration_seconds_squared_total",
    "counter",
    "Sum of squared query latencies per branch (s^2): adds up across replicas, so "
    "sum by (experiment, branch) gives the variance's raw moment. Loses digits when the "
    "spread is below about 0.1% of the mean; the analyzer merges the M2 gauges instead.",
)
DURATION_M2 = Declared(
    "abtest_query_duration_seconds_m2",
    "gauge",
    "This process's Welford M2 of query latency (sum of squared deviations from its own "
    "mean, s^2): per replica, never summed; the analyzer merges it with Chan's formula.",
)
SUCCESS_RATIO = Declared(
    "abtest_branch_success_ratio",
    "gauge",
    "Share of queries that succeeded (0..1).",
    "abtest.branch.success_ratio",
)
LATENCY_MEAN = Declared(
    "abtest_branch_latency_mean_seconds",
    "gauge",
    "Mean query latency.",
    "abtest.branch.latency.mean",
    "s",
)
LATENCY_MIN = Declared(
    "abtest_branch_latency_min_seconds",
    "gauge",
    "Fastest query latency.",
    "abtest.branch.latency.min",
    "s",
)
LATENCY_MAX = Declared(
    "abtest_branch_latency_max_seconds",
    "gauge",
    "Slowest query latency.",
    "abtest.branch.latency.max",
    "s",
)
FIRST_QUERY = Declared(
    "abtest_branch_first_query_timestamp_seconds",
    "gauge",
    "Unix time of the branch's first query.",
)
LAST_QUERY = Declared(
    "abtest_branch_last_query_timestamp_seconds",
    "gauge",
    "Unix time of the branch's latest query.",
)
EVENT_VALUE = Declared(
    "abtest_event_value",
    "summary",
    "Custom event values per branch and event.",
    "abtest.event.value",
)
# OpenMetrics forbids a negative summary _sum, and event values may be negative
# (refunds): there the summary's two series are families of their own.
EVENT_VALUE_COUNT = Declared(
    "abtest_event_value_count", "unknown", "Custom events per branch and event."
)
EVENT_VALUE_SUM = Declared("abtest_event_value_sum", "unknown", "Sum of custom event values.")
EVENT_SQUARES = Declared(
    "abtest_event_value_squared_total",
    "counter",
    "Sum of squared custom event values: adds up across replicas (see the latency one).",
)
EVENT_M2 = Declared(
    "abtest_event_value_m2",
    "gauge",
    "This process's Welford M2 of an event's values: per replica, never summed.",
)
EVENT_MEAN = Declared(
    "abtest_event_mean", "gauge", "Mean value of a custom event.", "abtest.event.mean"
)
EXPERIMENT_INFO = Declared(
    "abtest_experiment_info", "gauge", "Experiment and its control branch (always 1)."
)
EXPERIMENT_START = Declared(
    "abtest_experiment_start_timestamp_seconds",
    "gauge",
    "Unix time of the experiment's first query.",
)
EXPERIMENT_LAST_ACTIVITY = Declared(
    "abtest_experiment_last_activity_timestamp_seconds",
    "gauge",
    "Unix time of the experiment's latest write (queries, events, OTLP); idle "
    "experiments expire after --expire-after.",
)
EXPERIMENT_DURATION = Declared(
    "abtest_experiment_duration_seconds", "gauge", "Time since the experiment's first query."
)
BEST_BRANCH = Declared(
    "abtest_experiment_best_branch",
    "gauge",
    "Branch with the highest success ratio (ties: more queries, then name). Always 1.",
)
WINNER = Declared("abtest_experiment_winner", "gauge", WINNER_HELP, "abtest.experiment.winner")
PROGRESS = Declared(
    "abtest_experiment_progress_ratio", "gauge", PROGRESS_HELP, "abtest.experiment.progress_ratio"
)
PERCENTILE = Declared(
    "abtest_branch_latency_percentile_seconds",
    "gauge",
    "Latency percentile estimated from the histogram buckets, within the observed min and max.",
)
SRM_P_VALUE = Declared("abtest_srm_p_value", "gauge", SRM_HELP, "abtest.srm.p_value")
SRM_DETECTED = Declared(
    "abtest_srm_detected", "gauge", "1 when the sample-ratio mismatch test fails."
)
COMPARISONS = tuple(_comparison(field, help_text) for field, help_text in COMPARISON_GAUGES)

FAMILIES: tuple[Declared, ...] = (
    QUERIES,
    FAILURES,
    DURATION,
    DURATION_SQUARES,
    DURATION_M2,
    SUCCESS_RATIO,
    LATENCY_MEAN,
    LATENCY_MIN,
    LATENCY_MAX,
    FIRST_QUERY,
    LAST_QUERY,
    EVENT_VALUE,
    EVENT_VALUE_COUNT,
    EVENT_VALUE_SUM,
    EVENT_SQUARES,
    EVENT_M2,
    EVENT_MEAN,
    EXPERIMENT_INFO,
    EXPERIMENT_START,
    EXPERIMENT_LAST_ACTIVITY,
    EXPERIMENT_DURATION,
    BEST_BRANCH,
    WINNER,
    PROGRESS,
    PERCENTILE,
    SRM_P_VALUE,
    SRM_DETECTED,
    *COMPARISONS,
)
