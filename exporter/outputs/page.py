"""The results page served at `/`: data in, HTML out.

Server-rendered, no JavaScript and no build step, so it works wherever the exporter
runs (a meta refresh keeps it current). Per experiment, what the results tables of
experimentation platforms show first: a sample-ratio warning above everything,
progress, the winner, then per treatment and metric the values, the relative lift with
its always-valid interval drawn as a bar around zero (coloured by the verdict, which
honours each metric's direction), the chance to be better and the verdict. Every name
is escaped: experiment, branch and event names come from whoever sends records.
"""

from __future__ import annotations

import html
import math
import urllib.parse
from collections.abc import Mapping, Sequence

from ..core.results import ExperimentSummary
from ..stats.analysis import ExperimentAnalysis, MetricComparison

MAX_EXPERIMENTS = 100
REFRESH_SECONDS = 30
VERDICTS = {1: ("Better", "better"), -1: ("Worse", "worse"), 0: ("Inconclusive", "neutral")}
LINKS = (
    ("/metrics", "Prometheus metrics"),
    ("/api/v1/experiments", "Experiments (JSON)"),
    ("/api/v1/stats", "Stats (JSON)"),
    ("/openapi.json", "OpenAPI document"),
    ("/-/healthy", "Health"),
    ("/-/ready", "Readiness"),
)
STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:96rem;padding:0 1rem;
color:#1d1d1f}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.2rem;margin:0}
nav a{margin-right:1rem}section.experiment{border:1px solid #d0d0d5;border-radius:8px;
padding:1rem;margin:1.2rem 0;overflow-x:auto}td:nth-child(-n+2){white-space:nowrap}
.head{display:flex;flex-wrap:wrap;gap:.4rem 1.5rem;align-items:baseline}
.srm-banner{background:#b3261e;color:#fff;padding:.6rem .8rem;border-radius:6px;margin:.6rem 0;
font-weight:600}
table{border-collapse:collapse;width:100%;margin-top:.6rem}th,td{padding:.3rem .5rem;
text-align:left;border-bottom:1px solid #ececf0;vertical-align:middle}
th{font-size:.8rem;text-transform:uppercase;color:#555}td.num{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap}td.interval{white-space:nowrap;
font-size:.85rem}
.verdict{font-weight:600}.better{color:#1b7f3b}.worse{color:#b3261e}.neutral{color:#666}
.untrusted{color:#b3261e;font-weight:400;font-size:.85rem}
progress{width:10rem;vertical-align:middle}.muted{color:#666;font-size:.9rem}
pre{background:#f5f5f7;padding:.8rem;border-radius:6px;overflow-x:auto}
"""


def render(
    summaries: Sequence[ExperimentSummary],
    analyses: Mapping[str, ExperimentAnalysis],
    version: str,
    origin: str,
) -> str:
    """The whole page. `analyses` may lag the summaries by one recomputation: an
    experiment without one yet says so instead of showing stale or empty figures."""
    shown = summaries[:MAX_EXPERIMENTS]
    if not summaries:
        body = _empty(origin)
    else:
        body = "".join(_experiment(s, analyses.get(s.experiment)) for s in shown)
        if len(summaries) > len(shown):
            body += (
                f'<p class="muted">{len(summaries) - len(shown)} more experiments: see '
                '<a href="/api/v1/experiments">the JSON</a>.</p>'
            )
    links = "".join(f'<a href="{_e(h)}">{_e(t)}</a>' for h, t in LINKS)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{REFRESH_SECONDS}'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>A/B results: abtest-exporter</title><style>{STYLE}</style></head><body>"
        f"<header><h1>A/B results <span class='muted'>abtest-exporter {_e(version)}</span></h1>"
        f"<nav>{links}</nav>"
        "<p class='muted'>Verdicts use always-valid p-values adjusted across each "
        "experiment's comparisons; the lift intervals are per comparison (unadjusted). "
        "Grafana dashboards and alerts: <code>grafana/README.md</code> in the source "
        "(import <code>grafana/dashboards/*.json</code>).</p></header>"
        f"<main><h2>Experiments ({len(summaries)})</h2>{body}</main></body></html>"
    )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _name(text: str) -> str:
    """A user-supplied name: escaped, and isolated so right-to-left text stays put."""
    return f"<bdi>{_e(text)}</bdi>"


def _path(experiment: str, tail: str = "") -> str:
    return _e(f"/api/v1/experiments/{urllib.parse.quote(experiment, safe='')}{tail}")


def _empty(origin: str) -> str:
    curl = (
        f"curl -s {origin}/api/v1/records -H 'Content-Type: application/json' -d '{{\n"
        '  "queries": [{"experiment": "checkout", "branch": "control", '
        '"latency_ms": 12.5, "success": true}]\n'
        "}'"
    )
    otlp = (
        "# pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http\n"
        "from opentelemetry.exporter.otlp.proto.http.metric_exporter import "
        "OTLPMetricExporter\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader\n\n"
        "provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(\n"
        f'    OTLPMetricExporter(endpoint="{origin}/v1/metrics"))])\n'
        'duration = provider.get_meter("app").create_histogram("abtest.query.duration", '
        'unit="ms")\n'
        'duration.record(12.5, {"abtest.experiment": "checkout", "abtest.branch": '
        '"control", "abtest.outcome": "success"})\n'
        "provider.shutdown()"
    )
    return (
        '<section class="empty"><p>No experiments yet. Send the first record with curl:</p>'
        f'<pre id="curl">{_e(curl)}</pre>'
        "<p>or from an app instrumented with OpenTelemetry (OTLP/HTTP):</p>"
        f'<pre id="otlp">{_e(otlp)}</pre></section>'
    )


def _experiment(summary: ExperimentSummary, analysis: ExperimentAnalysis | None) -> str:
    name = summary.experiment
    links = " · ".join(
        f'<a href="{_path(name, tail)}">{label}</a>'
        for tail, label in (("", "metrics"), ("/analysis", "analysis"), ("/config", "config"))
    )
    head = (
        f'<div class="head"><h2>{_name(name)}</h2>'
        f"<span>control <b>{_name(summary.control)}</b></span>"
        f"<span>{summary.total_queries:,} queries</span>"
        f'<span class="muted">JSON: {links}</span></div>'
    )
    if analysis is None:
        return (
            f'<section class="experiment" data-experiment="{_e(name)}">{head}'
            '<p class="muted">Comparisons are being computed.</p></section>'
        )
    srm = analysis.srm
    banner = ""
    if srm is not None and srm.detected:
        banner = (
            f'<div class="srm-banner" role="alert">Sample-ratio mismatch (p = {srm.p_value:.2g}): '
            "the branches do not get the traffic split they were configured for. No result "
            "of this experiment can be trusted until the assignment is fixed.</div>"
        )
    metric, event = analysis.config.primary()
    primary = _e(analysis.config.primary_metric)
    winner = (
        f'<span class="winner better">Winner on {primary}: {_name(analysis.winner)}</span>'
        if analysis.winner is not None
        else f'<span class="winner neutral">No winner on {primary} yet</span>'
    )
    minimum = analysis.config.min_sample_size
    progress = (
        f'<span class="progress"><progress value="{analysis.progress:.4f}" max="1"></progress> '
        f"{_pct(analysis.progress, 0)} of the minimum sample ({minimum:,} per branch)</span>"
    )
    rows, hidden = _rows(analysis, bool(srm is not None and srm.detected), (metric, event))
    table = (
        "<table><thead><tr><th>Treatment</th><th>Metric</th><th>Control</th>"
        "<th>Treatment</th><th>Lift</th><th>Lift interval (always valid)</th>"
        "<th>Chance better</th><th>Verdict</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if rows
        else '<p class="muted">No comparison yet: each branch needs queries.</p>'
    )
    note = (
        f'<p class="muted">{hidden} comparison(s) cannot be computed yet '
        "(no spread in the data).</p>"
        if hidden
        else ""
    )
    return (
        f'<section class="experiment" data-experiment="{_e(name)}">{banner}{head}'
        f'<div class="head">{winner}{progress}</div>{table}{note}</section>'
    )


def _rows(analysis: ExperimentAnalysis, srm: bool, primary: tuple[str, str]) -> tuple[str, int]:
    found = [
        (branch, m)
        for branch, comparisons in analysis.comparisons.items()
        for m in comparisons
        if m.relative_ci_lower is not None and m.relative_ci_upper is not None
    ]
    hidden = sum(len(c) for c in analysis.comparisons.values()) - len(found)
    # primary metric first within each treatment
    found.sort(key=lambda item: (item[0], (item[1].metric, item[1].event) != primary))
    # one axis per metric (and event): the same metric's bars compare across treatments,
    # and a noisy event does not flatten the success ratio's bar
    extents: dict[tuple[str, str], list[float]] = {}
    for _, m in found:
        extent = max(abs(m.relative_ci_lower or 0.0), abs(m.relative_ci_upper or 0.0))
        extents.setdefault((m.metric, m.event), []).append(extent)
    scales = {k: max(0.001, max(v) * 1.05) for k, v in extents.items()}
    rows = "".join(_row(branch, m, srm, scales[m.metric, m.event]) for branch, m in found)
    return rows, hidden


def _row(branch: str, m: MetricComparison, srm: bool, scale: float) -> str:
    label, css = VERDICTS[m.verdict]
    verdict = f'<td class="verdict {css}" data-verdict="{m.verdict}">{label}'
    if srm:
        verdict += ' <span class="untrusted">(SRM: untrusted)</span>'
    elif m.significant and m.verdict == 0:
        verdict += ' <span class="untrusted">(below the minimum sample)</span>'
    verdict += "</td>"
    metric = _e(m.metric) + (f":{_name(m.event)}" if m.event else "")
    assert m.relative_ci_lower is not None and m.relative_ci_upper is not None
    interval = f"{_lift(m.relative_ci_lower)} to {_lift(m.relative_ci_upper)}"
    chance = "-" if m.probability_better is None else _pct(m.probability_better, 1)
    return (
        f'<tr data-branch="{_e(branch)}" data-metric="{_e(m.metric)}" data-event="{_e(m.event)}">'
        f"<td>{_name(branch)}</td><td>{metric}</td>"
        f'<td class="num">{_value(m.metric, m.value_a)}</td>'
        f'<td class="num">{_value(m.metric, m.value_b)}</td>'
        f'<td class="num lift">{_lift(m.relative_difference)}</td>'
        f"<td class='interval'>{_bar(m, scale, css)} <span class='muted'>{interval}</span></td>"
        f'<td class="num">{chance}</td>{verdict}</tr>'
    )


def _bar(m: MetricComparison, scale: float, css: str) -> str:
    """The lift's interval as a bar on a symmetric axis around 0 (shared by the rows of
    one metric), with the estimate as a tick."""
    width, height, pad = 160.0, 18.0, 4.0

    def x(value: float) -> float:
        return pad + (width - 2 * pad) * (0.5 + max(-1.0, min(1.0, value / scale)) / 2)

    assert m.relative_ci_lower is not None and m.relative_ci_upper is not None
    lo, hi = x(m.relative_ci_lower), x(m.relative_ci_upper)
    colour = {"better": "#1b7f3b", "worse": "#b3261e", "neutral": "#8e8e93"}[css]
    tick = (
        ""
        if m.relative_difference is None
        else f'<line x1="{x(m.relative_difference):.1f}" x2="{x(m.relative_difference):.1f}" '
        f'y1="3" y2="15" stroke="#1d1d1f" stroke-width="2"/>'
    )
    return (
        f'<svg class="bar" width="{width:.0f}" height="{height:.0f}" role="img" '
        f'aria-label="lift interval {_e(_lift(m.relative_ci_lower))} to '
        f'{_e(_lift(m.relative_ci_upper))}">'
        f'<line x1="{width / 2:.1f}" x2="{width / 2:.1f}" y1="0" y2="18" stroke="#aaa"/>'
        f'<rect x="{min(lo, (lo + hi) / 2 - 3):.1f}" y="5" width="{max(hi - lo, 6.0):.1f}" '
        'height="8" rx="3" '
        f'fill="{colour}" fill-opacity="0.75"/>{tick}</svg>'
    )


def _pct(value: float, digits: int) -> str:
    return f"{100 * value:.{digits}f}%"


def _lift(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:+.1f}%"


def _value(metric: str, value: float) -> str:
    """Ratios in percent, latency in milliseconds, event figures as numbers."""
    if metric == "success_ratio":
        return _pct(value, 2)
    if metric == "latency_mean":
        return f"{1000 * value:.1f} ms"
    if metric == "event_rate":
        return f"{value:.4g} / query"
    return f"{value:.4g}"
