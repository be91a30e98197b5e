"""The behaviours of the seed module's own tests (seed_ab_metrics.rs), in process."""

from __future__ import annotations

from exporter import ABMetrics


def test_branch_metrics_new(metrics: ABMetrics) -> None:
    metrics.record_event("e", "test", "noop", 0.0)  # creates the branch, no queries
    branch = metrics.get_branch_metrics("e", "test")
    assert branch is not None
    assert branch.branch == "test"
    assert branch.query_count == 0
    # empty branches give 0, never a division error
    assert (branch.avg_latency_ms, branch.success_rate, branch.error_rate) == (0.0, 0.0, 0.0)
    assert (branch.min_latency_ms, branch.max_latency_ms) == (0.0, 0.0)


def test_branch_metrics_record(metrics: ABMetrics) -> None:
    metrics.record_query("e", "test", 10.0, True)
    metrics.record_query("e", "test", 20.0, True)
    metrics.record_query("e", "test", 30.0, False)
    branch = metrics.get_branch_metrics("e", "test")
    assert branch is not None
    assert branch.query_count == 3
    assert branch.success_count == 2
    assert branch.failure_count == 1
    assert branch.min_latency_ms == 10.0
    assert branch.max_latency_ms == 30.0
    assert branch.avg_latency_ms == 20.0
    assert abs(branch.success_rate - 0.666) < 0.01
    assert abs(branch.error_rate - 0.333) < 0.01


def test_branch_metrics_events(metrics: ABMetrics) -> None:
    metrics.record_event("e", "test", "conversion", 1.0)
    metrics.record_event("e", "test", "conversion", 1.0)
    metrics.record_event("e", "test", "revenue", 100.0)
    metrics.record_event("e", "test", "revenue", 200.0)
    branch = metrics.get_branch_metrics("e", "test")
    assert branch is not None
    assert branch.event_average("conversion") == 1.0
    assert branch.event_average("revenue") == 150.0
    assert branch.event_average("nonexistent") == 0.0
    assert branch.events["revenue"].count == 2
    assert branch.events["revenue"].total == 300.0


def test_experiment_metrics(metrics: ABMetrics) -> None:
    metrics.record_query("test_exp", "control", 10.0, True)
    metrics.record_query("test_exp", "control", 15.0, True)
    metrics.record_query("test_exp", "treatment", 8.0, True)
    metrics.record_query("test_exp", "treatment", 12.0, False)
    experiment = metrics.get_experiment_metrics("test_exp")
    assert experiment is not None
    assert experiment.total_queries == 4
    assert len(experiment.branches) == 2
    control = experiment.get_branch("control")
    assert control is not None and control.query_count == 2 and control.success_rate == 1.0
    treatment = experiment.get_branch("treatment")
    assert treatment is not None and treatment.query_count == 2 and treatment.success_rate == 0.5


def test_branch_comparison(metrics: ABMetrics) -> None:
    metrics.record_query("test_exp", "control", 100.0, True)
    metrics.record_query("test_exp", "control", 100.0, False)
    metrics.record_query("test_exp", "treatment", 80.0, True)
    metrics.record_query("test_exp", "treatment", 80.0, True)
    comparison = metrics.compare_branches("test_exp", "control", "treatment")
    assert comparison is not None
    assert comparison.success_rate_a == 0.5
    assert comparison.success_rate_b == 1.0
    assert comparison.success_rate_diff == 0.5
    assert comparison.avg_latency_a == 100.0
    assert comparison.avg_latency_b == 80.0
    assert comparison.latency_diff == -20.0
    assert metrics.compare_branches("test_exp", "control", "missing") is None
    assert metrics.compare_branches("missing", "control", "treatment") is None


def test_experiment_summary(metrics: ABMetrics) -> None:
    metrics.record_query("test_exp", "control", 10.0, True)
    metrics.record_query("test_exp", "treatment", 8.0, True)
    metrics.record_query("test_exp", "treatment", 8.0, True)
    summary = metrics.get_summary("test_exp")
    assert summary is not None
    assert summary.experiment == "test_exp"
    assert summary.branch_count == 2
    assert summary.total_queries == 3
    # both succeed every time: the tie goes to the branch with more queries
    assert summary.best_branch == "treatment"
    assert summary.best_success_rate == 1.0
    assert abs(summary.avg_latency_ms - 26.0 / 3) < 1e-12


def test_ab_metrics_manager(metrics: ABMetrics) -> None:
    metrics.record_query("exp1", "control", 10.0, True)
    metrics.record_query("exp1", "treatment", 8.0, True)
    metrics.record_event("exp1", "control", "conversion", 1.0)
    experiment = metrics.get_experiment_metrics("exp1")
    assert experiment is not None and experiment.total_queries == 2
    branch = metrics.get_branch_metrics("exp1", "control")
    assert branch is not None and branch.query_count == 1
    stats = metrics.stats()
    assert stats.experiments_tracked == 1
    assert stats.total_branches_tracked == 2
    assert stats.total_queries_recorded == 2
    assert stats.total_events_recorded == 1
    assert [s.experiment for s in metrics.all_summaries()] == ["exp1"]


def test_clear_metrics(metrics: ABMetrics) -> None:
    metrics.record_query("exp1", "control", 10.0, True)
    metrics.record_query("exp2", "control", 10.0, True)
    assert metrics.clear_experiment("exp1") is True
    assert metrics.get_experiment_metrics("exp1") is None
    assert metrics.get_experiment_metrics("exp2") is not None
    assert metrics.clear_experiment("exp1") is False
    metrics.clear_all()
    assert metrics.get_experiment_metrics("exp2") is None
    assert metrics.stats().experiments_tracked == 0
