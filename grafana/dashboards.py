"""The three dashboards, built with grafana-foundation-sdk; writes grafana/dashboards/*.json.

    .venv/bin/python grafana/dashboards.py

The JSON is committed; tests/test_grafana.py fails when it differs from a fresh build.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).parent / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
EXP = 'experiment="$experiment"'
SEL = 'experiment="$experiment",branch=~"$branch"'
CMP = 'experiment="$experiment",branch=~"$branch",metric="$metric"'


def query(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> Dataquery:
    q = Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant().format(PromQueryFormat.TABLE)
    return q


def series(title: str, description: str, unit: str, *targets: Dataquery) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).datasource(DS)
    for target in targets:
        panel = panel.with_target(target)
    return panel.height(8).span(12)


def tabular(title: str, description: str, unit: str, expr: str, span: int = 12) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DS)
        .with_target(query(expr, instant=True))
        .height(8)
        .span(span)
    )


def single(title: str, description: str, unit: str, expr: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DS)
        .with_target(query(expr, instant=True))
        .height(4)
        .span(6)
    )


def datasource_variable() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def query_variable(name: str, label: str, expr: str, multi: bool = False) -> db.QueryVariable:
    variable = (
        db.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(expr)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        variable = variable.multi(True).include_all(True)
    return variable


def overview() -> db.Dashboard:
    return (
        db.Dashboard("A/B experiments: overview")
        .uid("abtest-overview")
        .tags(["abtest"])
        .description("Every experiment, its control, sample sizes, SRM and significant results.")
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(datasource_variable())
        .with_panel(single("Experiments", "Experiments the exporters hold.", "short",
                           "count(abtest_experiment_info)"))
        .with_panel(single(
            "Sample-ratio mismatches",
            "Experiments whose traffic split is off (chi-square p < 0.001): fix these first, "
            "their comparisons cannot be trusted.",
            "short", "count(abtest_srm_detected == 1) or vector(0)"))
        .with_panel(single(
            "Significant comparisons",
            "Treatment-metric pairs whose always-valid, multiplicity-adjusted p-value is below "
            "alpha with enough samples in both arms.",
            "short", "count(abtest_comparison_significant == 1) or vector(0)"))
        .with_panel(single("Queries per second", "All recorded queries, all experiments.",
                           "reqps", "sum(rate(abtest_queries_total[$__rate_interval]))"))
        .with_row(db.Row("Experiments"))
        .with_panel(tabular(
            "Experiments and their control",
            "Each experiment and the branch the others are compared with.",
            "short", "max by (experiment, control) (abtest_experiment_info)"))
        .with_panel(tabular(
            "Since the last write",
            "How long ago each experiment last received data: a running experiment stays "
            "near zero; one idle for long has stopped or ended (and may expire).",
            "s",
            "time() - max by (experiment) (abtest_experiment_last_activity_timestamp_seconds)"))
        .with_panel(tabular(
            "Sample sizes",
            "Queries recorded per branch, added up over exporter replicas.",
            "short", "sum by (experiment, branch) (abtest_queries_total)"))
        .with_panel(tabular(
            "Sample-ratio mismatch p-value",
            "Chi-square test of the branches' query counts against the configured split. "
            "Below 0.001 the assignment is broken.",
            "none", "max by (experiment) (abtest_srm_p_value)", span=8))
        .with_panel(tabular(
            "Best branch",
            "The branch with the highest success ratio (ties: more queries, then name).",
            "short", "max by (experiment, branch) (abtest_experiment_best_branch)", span=8))
        .with_panel(tabular(
            "Significant comparisons",
            "Every treatment, metric and event whose result is significant (1).",
            "short",
            "max by (experiment, branch, metric, event) (abtest_comparison_significant == 1)",
            span=8))
    )  # fmt: skip


def detail() -> db.Dashboard:
    return (
        db.Dashboard("A/B experiment: detail")
        .uid("abtest-experiment")
        .tags(["abtest"])
        .description("One experiment: traffic, success, latency, events and the comparisons.")
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(datasource_variable())
        .with_variable(query_variable(
            "experiment", "Experiment", "label_values(abtest_experiment_info, experiment)"))
        .with_variable(query_variable(
            "branch", "Branch",
            'label_values(abtest_queries_total{experiment="$experiment"}, branch)', multi=True))
        .with_variable(query_variable(
            "metric", "Metric",
            'label_values(abtest_comparison_difference{experiment="$experiment"}, metric)'))
        .with_row(db.Row("Traffic"))
        .with_panel(series(
            "Queries per second by branch", "How much traffic each branch gets.", "reqps",
            query(f"sum by (branch) (rate(abtest_queries_total{{{SEL}}}[$__rate_interval]))",
                  "{{branch}}")))
        .with_panel(series(
            "Traffic split", "Each branch's share of the experiment's queries so far; compare "
            "with the configured allocation (the SRM check does it for you).", "percentunit",
            query(f"sum by (branch) (abtest_queries_total{{{EXP}}}) / ignoring (branch) "
                  f"group_left sum(abtest_queries_total{{{EXP}}})", "{{branch}}")))
        .with_row(db.Row("Success and latency"))
        .with_panel(series(
            "Success ratio", "Share of queries that succeeded, per branch, since the start.",
            "percentunit",
            query(f"max by (branch) (abtest_branch_success_ratio{{{SEL}}})", "{{branch}}")))
        .with_panel(series(
            "Latency p50 / p95 / p99", "Percentiles over the dashboard's rate window, from the "
            "histogram buckets (accurate to a bucket's width).", "s",
            *(query(f"histogram_quantile({q}, sum by (branch, le) (rate("
                    f"abtest_query_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                    f"p{int(q * 100)} {{{{branch}}}}", ref)
              for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C")))))
        .with_panel(heatmap.Panel()
            .title("Latency heatmap").datasource(DS).unit("s").height(8).span(12)
            .description("How many queries fell in each latency bucket over time.")
            .with_target(query(
                f"sum by (le) (increase(abtest_query_duration_seconds_bucket{{{SEL}}}"
                f"[$__rate_interval]))", "{{le}}").format(PromQueryFormat.HEATMAP)))
        .with_panel(series(
            "Mean latency", "Mean query latency per branch since the start.", "s",
            query(f"max by (branch) (abtest_branch_latency_mean_seconds{{{SEL}}})", "{{branch}}")))
        .with_row(db.Row("Events"))
        .with_panel(series(
            "Events per query", "Custom events per recorded query, by branch and event "
            "(a conversion rate when each query converts at most once).", "percentunit",
            query(f"sum by (branch, event) (abtest_event_value_count{{{SEL}}}) / on (branch) "
                  f"group_left sum by (branch) (abtest_queries_total{{{SEL}}})",
                  "{{branch}} {{event}}")))
        .with_panel(series(
            "Event mean value", "Mean value of each custom event (revenue per purchase, ...).",
            "none", query(f"max by (branch, event) (abtest_event_mean{{{SEL}}})",
                          "{{branch}} {{event}}")))
        .with_row(db.Row("Comparison with the control"))
        .with_panel(series(
            "Difference with its confidence sequence ($metric)",
            "Treatment minus control, with the always-valid interval around it: when the band "
            "leaves 0, the difference is real, however often you look.", "none",
            query(f"max by (branch, event) (abtest_comparison_difference{{{CMP}}})",
                  "{{branch}} {{event}} difference", "A"),
            query(f"max by (branch, event) (abtest_comparison_ci_lower{{{CMP}}})",
                  "{{branch}} {{event}} lower", "B"),
            query(f"max by (branch, event) (abtest_comparison_ci_upper{{{CMP}}})",
                  "{{branch}} {{event}} upper", "C")))
        .with_panel(series(
            "Always-valid p-value ($metric)",
            "Adjusted for every comparison of the experiment; below alpha (0.05 by default) "
            "with enough samples the result is significant. Safe to watch continuously.",
            "none",
            query(f"max by (branch, event) (abtest_comparison_adjusted_p_value{{{CMP}}})",
                  "{{branch}} {{event}} adjusted", "A"),
            query(f"max by (branch, event) (abtest_comparison_p_value{{{CMP}}})",
                  "{{branch}} {{event}} raw", "B")))
        .with_panel(series(
            "Probability the treatment is better ($metric)",
            "Bayesian chance that the treatment beats the control (for latency: is faster).",
            "percentunit",
            query(f"max by (branch, event) (abtest_comparison_probability_better{{{CMP}}})",
                  "{{branch}} {{event}}")))
        .with_panel(tabular(
            "Significant", "1 where the result is significant: the signal to act on.",
            "short",
            f"max by (branch, metric, event) (abtest_comparison_significant{{{EXP}}})"))
    )  # fmt: skip


def exporter_health() -> db.Dashboard:
    job = 'job=~"$job"'
    return (
        db.Dashboard("A/B exporter: health")
        .uid("abtest-exporter")
        .tags(["abtest"])
        .description("Is the exporter taking data in, turning some away, keeping up?")
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(datasource_variable())
        .with_variable(query_variable(
            "job", "Job", "label_values(abtest_exporter_build_info, job)", multi=True))
        .with_panel(series(
            "Records accepted per second", "Records applied, by source (http, otlp) and kind.",
            "reqps",
            query(f"sum by (source, kind) (rate(abtest_exporter_accepted_records_total{{{job}}}"
                  f"[$__rate_interval]))", "{{source}} {{kind}}")))
        .with_panel(series(
            "Records rejected per second", "Records refused, by reason: invalid input, "
            "limits, unauthorized, full write queue. A refused request applies nothing.",
            "reqps",
            query(f"sum by (source, reason) (rate(abtest_exporter_rejected_records_total{{{job}}}"
                  f"[$__rate_interval]))", "{{source}} {{reason}}")))
        .with_panel(series(
            "Series held", "Branch and event series in memory, per exporter.", "short",
            query(f"sum by (instance, kind) (abtest_exporter_series{{{job}}})",
                  "{{instance}} {{kind}}")))
        .with_panel(series(
            "Since the last write to disk", "Seconds since the data file was last written; "
            "it should stay near the flush interval.", "s",
            query("time() - max by (instance) "
                  f"(abtest_exporter_persist_last_success_timestamp_seconds{{{job}}})",
                  "{{instance}}")))
        .with_panel(series(
            "Scrape and render duration", "How long Prometheus's scrape and the exporter's "
            "rendering take.", "s",
            query(f"max by (instance) (scrape_duration_seconds{{{job}}})",
                  "scrape {{instance}}", "A"),
            query(f"max by (instance) (abtest_exporter_render_duration_seconds{{{job}}})",
                  "render {{instance}}", "B")))
        .with_panel(series(
            "Requests waiting for the disk", "Writes waiting for their group commit; when it "
            "reaches max_pending_writes, writes get 429.", "short",
            query(f"sum by (instance) (abtest_exporter_persist_waiting_requests{{{job}}})",
                  "{{instance}}")))
    )  # fmt: skip


DASHBOARDS = {
    "abtest-overview.json": overview,
    "abtest-experiment.json": detail,
    "abtest-exporter.json": exporter_health,
}


def build() -> dict[str, str]:
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {name: encoder.encode(make().build()) + "\n" for name, make in DASHBOARDS.items()}


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in build().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
