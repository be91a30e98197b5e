"""The three dashboards, built with grafana-foundation-sdk; writes grafana/dashboards/*.json.

    .venv/bin/python grafana/dashboards.py

The JSON is committed; tests/test_grafana.py fails when it differs from a fresh build.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).parent / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
EXP = 'experiment="$experiment"'
SEL = 'experiment="$experiment",branch=~"$branch"'
CMP = 'experiment="$experiment",branch=~"$branch",metric="$metric"'


DETAIL_UID = "abtest-experiment"
OVERVIEW_UID = "abtest-overview"
GREEN, RED, GREY, ORANGE = "green", "red", "#8e8e93", "orange"
# verdict +1 / -1 / 0 as words in the colours of the results page
VERDICTS: list[dm.ValueMapping] = [
    dm.ValueMap(
        {
            "1": dm.ValueMappingResult(text="Better", color=GREEN, index=0),
            "-1": dm.ValueMappingResult(text="Worse", color=RED, index=1),
            "0": dm.ValueMappingResult(text="Inconclusive", color=GREY, index=2),
        }
    )
]
SRM_WORDS: list[dm.ValueMapping] = [
    dm.ValueMap(
        {
            "0": dm.ValueMappingResult(text="Split OK", color=GREEN, index=0),
            "1": dm.ValueMappingResult(text="MISMATCH: results untrusted", color=RED, index=1),
        }
    )
]


def steps(*pairs: tuple[float | None, str]) -> db.ThresholdsConfig:
    """Absolute thresholds: (None, base colour), then (value, colour from that value up)."""
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in pairs])
    )


SRM_RED = steps((None, GREEN), (1, RED))  # one mismatch is one too many
ALPHA_LINE = steps((None, GREEN), (0.05, RED))  # p-values: the default alpha


def hide_columns(*names: str, rename: dict[str, str] | None = None) -> dm.DataTransformerConfig:
    """Instant tables come with Time (and Value) columns nobody needs to read."""
    return dm.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": {name: True for name in names},
            "renameByName": rename or {},
        },
    )


def detail_link(title: str = "Open the experiment") -> db.DashboardLink:
    """A data link to the detail dashboard, carrying the row's experiment."""
    return (
        db.DashboardLink(title)
        .url(f"/d/{DETAIL_UID}?var-experiment=${{__data.fields.experiment}}"
             "&${datasource:queryparam}&${__url_time_range}")
    )  # fmt: skip


def dashboards_link(title: str) -> db.DashboardLink:
    """The other abtest dashboards, keeping the time range and the variables."""
    return (
        db.DashboardLink(title)
        .type(dm.DashboardLinkType.DASHBOARDS)
        .tags(["abtest"])
        .as_dropdown(False)
        .include_vars(True)
        .keep_time(True)
    )


def coloured_cells() -> common.TableColoredBackgroundCellOptions:
    mode = common.TableCellBackgroundDisplayMode.BASIC
    return common.TableColoredBackgroundCellOptions(mode=mode)


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


def info_table(title: str, description: str, expr: str, span: int) -> table.Panel:
    """A table of label sets (its value is always 1): only the labels are shown, and each
    row links to the experiment's detail dashboard."""
    return (
        tabular(title, description, "short", expr, span)
        .with_transformation(hide_columns("Time", "Value"))
        .data_links([detail_link()])
    )


def value_table(
    title: str, description: str, unit: str, expr: str, span: int, column: str, link: bool = True
) -> table.Panel:
    """A table whose value matters: Time hidden, Value named; rows of the overview link to
    the experiment's detail dashboard."""
    panel = tabular(title, description, unit, expr, span).with_transformation(
        hide_columns("Time", rename={"Value": column})
    )
    return panel.data_links([detail_link()]) if link else panel


def verdict_table(
    title: str, description: str, expr: str, span: int, link: bool = True
) -> table.Panel:
    return (
        value_table(title, description, "short", expr, span, "Verdict", link)
        .mappings(VERDICTS)
        .thresholds(steps((None, GREY)))
        .cell_options(coloured_cells())
    )


def overview() -> db.Dashboard:
    return (
        db.Dashboard("A/B experiments: overview")
        .uid(OVERVIEW_UID)
        .tags(["abtest"])
        .description("Every experiment: is it trustworthy (SRM), how far along, which "
                     "treatments are better or worse, and the winners.")
        .refresh("30s")
        .time("now-6h", "now")
        .link(dashboards_link("A/B dashboards"))
        .with_variable(datasource_variable())
        .with_panel(single("Experiments", "Experiments the exporters hold.", "short",
                           "count(abtest_experiment_info)").span(4))
        .with_panel(single(
            "Sample-ratio mismatches",
            "Experiments whose traffic split is off (chi-square p < 0.001): fix these first, "
            "their comparisons cannot be trusted (their verdicts read inconclusive).",
            "short", "count(abtest_srm_detected == 1) or vector(0)")
            .span(4).thresholds(SRM_RED).color_mode(common.BigValueColorMode.BACKGROUND))
        .with_panel(single(
            "Better (treatment x metric)",
            "Comparisons whose verdict is better: significant after the multiple-comparison "
            "adjustment, in the metric's good direction, enough samples, no SRM.",
            "short", "count(abtest_comparison_verdict == 1) or vector(0)")
            .span(4).thresholds(steps((None, GREY), (1, GREEN))))
        .with_panel(single(
            "Worse (treatment x metric)",
            "Comparisons whose verdict is worse: significant, in the metric's bad direction "
            "(slower, fewer successes), enough samples, no SRM.",
            "short", "count(abtest_comparison_verdict == -1) or vector(0)")
            .span(4).thresholds(steps((None, GREEN), (1, RED)))
            .color_mode(common.BigValueColorMode.BACKGROUND))
        .with_panel(single(
            "Winners",
            "Experiments with a winner: a treatment whose verdict is better on the "
            "experiment's primary metric.", "short",
            "count(abtest_experiment_winner) or vector(0)").span(4))
        .with_panel(single("Queries per second", "All recorded queries, all experiments.",
                           "reqps", "sum(rate(abtest_queries_total[$__rate_interval]))")
                    .span(4))
        .with_row(db.Row("Experiments"))
        .with_panel(info_table(
            "Experiments and their control",
            "Each experiment and the branch the others are compared with. Click a row for "
            "the experiment's detail dashboard.",
            "max by (experiment, control) (abtest_experiment_info)", 12))
        .with_panel(value_table(
            "Progress towards the minimum sample",
            "The smallest branch's queries as a share of min_sample_size: below 100% no "
            "verdict is given yet.", "percentunit",
            "max by (experiment) (abtest_experiment_progress_ratio)", 12, "Progress")
            .min(0).max(1).thresholds(steps((None, ORANGE), (1, GREEN)))
            .cell_options(common.TableBarGaugeCellOptions(
                mode=common.BarGaugeDisplayMode.BASIC)))
        .with_panel(info_table(
            "Winner",
            "The treatment whose verdict is better on the experiment's primary metric "
            "(default success_ratio): significant, enough samples, no SRM. Experiments "
            "without one are not listed.",
            "max by (experiment, branch) (abtest_experiment_winner)", 8))
        .with_panel(value_table(
            "Sample-ratio mismatch p-value",
            "Chi-square test of the branches' query counts against the configured split. "
            "Below 0.001 (red) the assignment is broken.",
            "none", "max by (experiment) (abtest_srm_p_value)", 8, "SRM p-value")
            .thresholds(steps((None, RED), (0.001, GREEN))).cell_options(coloured_cells()))
        .with_panel(value_table(
            "Sample sizes",
            "Queries recorded per branch, added up over exporter replicas.",
            "short", "sum by (experiment, branch) (abtest_queries_total)", 8, "Queries"))
        .with_panel(verdict_table(
            "Decided comparisons",
            "Every treatment, metric and event whose verdict is better or worse (the rest "
            "are inconclusive). Click a row for the experiment's detail dashboard.",
            "max by (experiment, branch, metric, event) (abtest_comparison_verdict != 0)", 16))
        .with_panel(value_table(
            "Since the last write",
            "How long ago each experiment last received data: a running experiment stays "
            "near zero; one idle for long has stopped or ended (and may expire).",
            "s",
            "time() - max by (experiment) (abtest_experiment_last_activity_timestamp_seconds)",
            8, "Idle for"))
    )  # fmt: skip


def by_metric_units(panel: timeseries.Panel) -> timeseries.Panel:
    """Differences in each metric's unit: seconds for latency, percentage points for the
    success ratio, plain numbers for events (the series names carry the metric)."""
    return panel.override_by_regexp(
        ".*latency_mean.*", [dm.DynamicConfigValue("unit", "s")]
    ).override_by_regexp(".*success_ratio.*", [dm.DynamicConfigValue("unit", "percentunit")])


def detail() -> db.Dashboard:
    return (
        db.Dashboard("A/B experiment: detail")
        .uid(DETAIL_UID)
        .tags(["abtest"])
        .description("One experiment: can it be trusted (SRM, progress), the verdicts, "
                     "traffic, success, latency, events and the comparisons.")
        .refresh("30s")
        .time("now-6h", "now")
        .link(dashboards_link("A/B dashboards"))
        .with_variable(datasource_variable())
        .with_variable(query_variable(
            "experiment", "Experiment", "label_values(abtest_experiment_info, experiment)"))
        .with_variable(query_variable(
            "branch", "Branch",
            'label_values(abtest_queries_total{experiment="$experiment"}, branch)', multi=True))
        .with_variable(query_variable(
            "metric", "Metric",
            'label_values(abtest_comparison_difference{experiment="$experiment"}, metric)'))
        .with_row(db.Row("At a glance"))
        .with_panel(single(
            "Sample-ratio mismatch",
            "Whether the branches get the configured traffic split (chi-square p < 0.001 is "
            "a mismatch). With a mismatch no result of this experiment can be trusted.",
            "short", f"max(abtest_srm_detected{{{EXP}}})")
            .mappings(SRM_WORDS).thresholds(SRM_RED)
            .color_mode(common.BigValueColorMode.BACKGROUND))
        .with_panel(single(
            "Sample-ratio p-value",
            "The chi-square p-value of the split; red below 0.001.", "none",
            f"max(abtest_srm_p_value{{{EXP}}})")
            .thresholds(steps((None, RED), (0.001, GREEN))))
        .with_panel(single(
            "Progress",
            "The smallest branch's queries as a share of min_sample_size: verdicts are given "
            "from 100%.", "percentunit",
            f"max(abtest_experiment_progress_ratio{{{EXP}}})")
            .min(0).max(1).thresholds(steps((None, ORANGE), (1, GREEN))))
        .with_panel(stat.Panel()
            .title("Winner on the primary metric")
            .description("The treatment whose verdict is better on the primary metric "
                         "(significant, enough samples, no SRM). Not the highest success "
                         "ratio: that is no test.")
            .unit("short").datasource(DS).height(4).span(6)
            .with_target(query(f"max by (branch) (abtest_experiment_winner{{{EXP}}})",
                               "{{branch}}").instant())
            .text_mode(common.BigValueTextMode.NAME).no_value("No winner yet")
            .color_mode(common.BigValueColorMode.NONE))
        .with_panel(verdict_table(
            "Verdicts",
            "Per treatment, metric and event: better, worse (by the metric's direction: "
            "lower latency is better) or inconclusive (not significant after adjustment, "
            "too few samples, or an SRM).",
            f"max by (branch, metric, event) (abtest_comparison_verdict{{{EXP}}})", 24,
            link=False))
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
            "Lift with its confidence sequence ($metric)",
            "Treatment against control in percent of the control's value, with its "
            "always-valid interval (delta method): when the band leaves 0, the lift is real "
            "for this comparison alone (verdicts also adjust for the other comparisons).",
            "percentunit",
            query(f"max by (branch, event) (abtest_comparison_relative_difference{{{CMP}}})",
                  "{{branch}} {{event}} lift", "A"),
            query(f"max by (branch, event) (abtest_comparison_relative_ci_lower{{{CMP}}})",
                  "{{branch}} {{event}} lower", "B"),
            query(f"max by (branch, event) (abtest_comparison_relative_ci_upper{{{CMP}}})",
                  "{{branch}} {{event}} upper", "C")))
        .with_panel(by_metric_units(series(
            "Difference with its confidence sequence ($metric)",
            "Treatment minus control in the metric's unit (seconds for latency, percentage "
            "points for success), with the always-valid interval around it.", "none",
            query(f"max by (branch, metric, event) (abtest_comparison_difference{{{CMP}}})",
                  "{{branch}} {{metric}} {{event}} difference", "A"),
            query(f"max by (branch, metric, event) (abtest_comparison_ci_lower{{{CMP}}})",
                  "{{branch}} {{metric}} {{event}} lower", "B"),
            query(f"max by (branch, metric, event) (abtest_comparison_ci_upper{{{CMP}}})",
                  "{{branch}} {{metric}} {{event}} upper", "C"))))
        .with_panel(series(
            "Always-valid p-value ($metric)",
            "Log scale; the dashed line is alpha = 0.05 (the default: see the experiment's "
            "config). Adjusted for every comparison of the experiment: below alpha with "
            "enough samples the result is significant. Safe to watch continuously.",
            "none",
            query(f"max by (branch, event) (abtest_comparison_adjusted_p_value{{{CMP}}})",
                  "{{branch}} {{event}} adjusted", "A"),
            query(f"max by (branch, event) (abtest_comparison_p_value{{{CMP}}})",
                  "{{branch}} {{event}} raw", "B"))
            .scale_distribution(cb.ScaleDistributionConfig()
                                .type(common.ScaleDistribution.LOG).log(10))
            .thresholds(ALPHA_LINE)
            .thresholds_style(cb.GraphThresholdsStyleConfig()
                              .mode(common.GraphThresholdsStyleMode.DASHED)))
        .with_panel(series(
            "Probability the treatment is better ($metric)",
            "Bayesian chance that the treatment beats the control (for latency: is faster).",
            "percentunit",
            query(f"max by (branch, event) (abtest_comparison_probability_better{{{CMP}}})",
                  "{{branch}} {{event}}")).min(0).max(1))
        .with_panel(by_metric_units(series(
            "Minimum detectable effect ($metric)",
            "The smallest true difference the always-valid test would detect now with 80% "
            "power, beside the observed difference: once the observed one is larger, a "
            "real effect of that size would be significant.", "none",
            query(f"max by (branch, metric, event) (abtest_comparison_mde{{{CMP}}})",
                  "{{branch}} {{metric}} {{event}} MDE", "A"),
            query(f"abs(max by (branch, metric, event) (abtest_comparison_difference{{{CMP}}}))",
                  "{{branch}} {{metric}} {{event}} observed", "B"))))
        .with_panel(value_table(
            "Time to detect the observed difference",
            "At the current traffic, how long until the minimum detectable effect reaches "
            "the observed difference (0: already there; absent: never at this effect).",
            "s", f"max by (branch, metric, event) (abtest_comparison_eta_seconds{{{EXP}}})",
            12, "Time to detect", link=False))
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
