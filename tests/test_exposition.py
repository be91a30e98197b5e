"""/metrics content: values, formats, escaping, promtool cleanliness."""

from __future__ import annotations

import gzip
import math
import shutil
import subprocess

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter import ABMetrics
from exporter.outputs.exposition import negotiate, render, render_analysis

from .conftest import Client, FakeClock


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in parse_text(text)
        for s in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def feed(metrics: ABMetrics) -> None:
    for i in range(3):
        metrics.record_query("checkout", "control", 10.0 + i, i != 2)
        metrics.record_query("checkout", "treatment", 200.0, True)
    metrics.record_query("search", "control", 2000.0, False)
    metrics.record_event("checkout", "control", "revenue", 10.0)
    metrics.record_event("checkout", "control", "revenue", 30.0)
    metrics.record_event("checkout", "treatment", "conversion", 1.0)
    metrics.record_event("search", "only-events", "click", 1.0)


def test_values_match_the_aggregate(metrics: ABMetrics, clock: FakeClock) -> None:
    feed(metrics)
    clock.now += 60
    found = samples(render(metrics.snapshot()))
    c = {"experiment": "checkout", "branch": "control"}
    assert found[key("abtest_queries_total", **c)] == 3
    assert found[key("abtest_query_failures_total", **c)] == 1
    assert found[key("abtest_query_duration_seconds_count", **c)] == 3
    assert found[key("abtest_query_duration_seconds_sum", **c)] == pytest.approx(0.033)
    assert found[key("abtest_query_duration_seconds_bucket", le="0.01", **c)] == 1
    assert found[key("abtest_query_duration_seconds_bucket", le="0.025", **c)] == 3
    assert found[key("abtest_query_duration_seconds_bucket", le="+Inf", **c)] == 3
    assert found[key("abtest_branch_success_ratio", **c)] == pytest.approx(2 / 3)
    assert found[key("abtest_branch_latency_mean_seconds", **c)] == pytest.approx(0.011)
    assert found[key("abtest_branch_latency_min_seconds", **c)] == 0.01
    assert found[key("abtest_branch_latency_max_seconds", **c)] == 0.012
    assert found[key("abtest_branch_first_query_timestamp_seconds", **c)] == 1_700_000_000.0
    assert found[key("abtest_event_value_count", event="revenue", **c)] == 2
    assert found[key("abtest_event_value_sum", event="revenue", **c)] == 40.0
    assert found[key("abtest_event_mean", event="revenue", **c)] == 20.0
    assert found[key("abtest_experiment_info", experiment="checkout", control="control")] == 1
    assert (
        found[key("abtest_experiment_best_branch", experiment="checkout", branch="treatment")] == 1
    )
    assert found[key("abtest_experiment_duration_seconds", experiment="checkout")] == 60.0
    # a branch with events only has counters but no gauges that need queries
    e = {"experiment": "search", "branch": "only-events"}
    assert found[key("abtest_queries_total", **e)] == 0
    assert key("abtest_branch_success_ratio", **e) not in found
    assert key("abtest_branch_latency_mean_seconds", **e) not in found


def test_never_nan_or_inf_outside_the_inf_bucket(metrics: ABMetrics) -> None:
    feed(metrics)
    metrics.record_event("e", "b", "zero", 0.0)
    for name, labels in samples(render(metrics.snapshot())):
        value = samples(render(metrics.snapshot()))[name, labels]
        assert math.isfinite(value), (name, labels)
    text = render(metrics.snapshot())
    assert "NaN" not in text
    assert text.count("+Inf") == text.count('le="+Inf"')


def test_openmetrics_parses_and_ends_with_eof(metrics: ABMetrics) -> None:
    feed(metrics)
    text = render(metrics.snapshot(), openmetrics=True)
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_om(text)}
    assert families["abtest_queries"].type == "counter"
    assert families["abtest_query_duration_seconds"].type == "histogram"
    # a summary's _sum may not be negative in OpenMetrics, event values may: two families
    assert families["abtest_event_value_count"].type == "unknown"
    assert families["abtest_event_value_sum"].type == "unknown"
    queries = {tuple(sorted(s.labels.items())): s.value for s in families["abtest_queries"].samples}
    assert queries[(("branch", "control"), ("experiment", "checkout"))] == 3


def test_negative_event_sums_pass_a_strict_openmetrics_parser(metrics: ABMetrics) -> None:
    """Issue 9, item 10: a refund made the whole scrape unreadable to strict parsers."""
    metrics.record_event("shop", "control", "refund", -42.5)
    text = render(metrics.snapshot(), openmetrics=True)
    families = {f.name: f for f in parse_om(text)}
    (sample,) = families["abtest_event_value_sum"].samples
    assert sample.name == "abtest_event_value_sum" and sample.value == -42.5
    (count,) = families["abtest_event_value_count"].samples
    assert count.value == 1
    # the classic text format keeps the summary, with the same sample names
    assert "# TYPE abtest_event_value summary" in render(metrics.snapshot())


def test_label_values_are_escaped(metrics: ABMetrics) -> None:
    metrics.record_query('we"ird\\name', "b\u00e9ta \U0001f600", 1.0, True)
    text = render(metrics.snapshot())
    assert 'experiment="we\\"ird\\\\name"' in text
    found = samples(text)
    assert (
        found[key("abtest_queries_total", experiment='we"ird\\name', branch="b\u00e9ta \U0001f600")]
        == 1
    )


def test_clearing_removes_series(metrics: ABMetrics) -> None:
    feed(metrics)
    metrics.clear_experiment("checkout")
    text = render(metrics.snapshot())
    assert 'experiment="checkout"' not in text
    assert 'experiment="search"' in text
    metrics.clear_all()
    assert "abtest_queries_total" not in render(metrics.snapshot())


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        ("", False),
        ("text/plain;version=0.0.4", False),
        ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", True),
        ("application/openmetrics-text; q=0", False),
    ],
)
def test_negotiation(accept: str, openmetrics: bool) -> None:
    assert negotiate(accept) is openmetrics


def test_promtool_check_metrics_is_clean(metrics: ABMetrics) -> None:
    # promtool reads the text format (its linter does not know OpenMetrics'
    # counter naming); the OpenMetrics output is checked by the strict parser above.
    feed(metrics)
    for i in range(20):
        metrics.record_query(f"exp{i}", "control", i, True)
        metrics.record_query(f"exp{i}", "treatment", i * 2, i % 2 == 0)
        metrics.record_event(f"exp{i}", "treatment", "revenue", i * 1.5)
    text = render(metrics.snapshot())
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/test installs Debian's prometheus package"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr == ""


async def test_metrics_endpoint_negotiates_and_compresses(
    client: Client, metrics: ABMetrics
) -> None:
    feed(metrics)
    response = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    assert "abtest_exporter_build_info{" in text
    assert samples(text)[key("abtest_exporter_series", kind="branch")] == 4
    response = await client.get(
        "/metrics",
        headers={"Accept": "application/openmetrics-text;version=1.0.0", "Accept-Encoding": "gzip"},
        auto_decompress=False,
    )
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    body = gzip.decompress(await response.read()).decode()
    assert body.endswith("# EOF\n")


def tricky(metrics: ABMetrics) -> None:
    """Aggregates at the edges: n = 1, 0% and 100%, no spread, a control mean of 0."""
    metrics.record_query("edge", "control", 5.0, True)
    metrics.record_query("edge", "treatment", 5.0, False)
    for _ in range(3):
        metrics.record_query("flat", "control", 10.0, True)
        metrics.record_query("flat", "treatment", 10.0, True)
        metrics.record_event("flat", "control", "zero", 0.0)
        metrics.record_event("flat", "treatment", "zero", 1.0)
    metrics.record_query("lonely", "only", 1.0, True)
    metrics.record_event("events-only", "control", "x", 1.0)
    metrics.record_event("events-only", "b", "x", 2.0)


def test_verdicts_winner_and_power_are_published() -> None:
    """A clear win on success (and a slower treatment) at 50/50: every new family, with
    the values of the analysis it came from."""
    metrics = ABMetrics()
    for i in range(4000):
        metrics.record_query("shop", "control", 100.0 + i % 10, i % 10 < 8)
        metrics.record_query("shop", "treatment", 110.0 + i % 10, i % 10 < 9)
    analysis = metrics.analyse()
    found = samples(render(metrics.snapshot(), analysis=render_analysis(analysis)))
    c = {"experiment": "shop", "control": "control", "branch": "treatment", "event": ""}
    assert found[key("abtest_comparison_verdict", metric="success_ratio", **c)] == 1
    assert found[key("abtest_comparison_verdict", metric="latency_mean", **c)] == -1
    assert found[key("abtest_experiment_winner", experiment="shop", branch="treatment")] == 1
    assert found[key("abtest_experiment_progress_ratio", experiment="shop")] == 1
    success = next(m for m in analysis["shop"].comparisons["treatment"]
                   if m.metric == "success_ratio")  # fmt: skip
    assert found[key("abtest_comparison_relative_ci_lower", metric="success_ratio", **c)] == (
        success.relative_ci_lower
    )
    assert success.relative_ci_lower is not None and success.relative_ci_upper is not None
    assert 0 < success.relative_ci_lower < 0.125 < success.relative_ci_upper
    assert found[key("abtest_comparison_mde", metric="success_ratio", **c)] == success.mde
    assert found[key("abtest_comparison_eta_seconds", metric="success_ratio", **c)] == 0
    result = subprocess.run(["promtool", "check", "metrics"], input=render_analysis(analysis),
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_analysis_block_is_finite_and_promtool_clean(metrics: ABMetrics) -> None:
    feed(metrics)
    tricky(metrics)
    text = render(metrics.snapshot(), analysis=render_analysis(metrics.analyse()))
    assert "NaN" not in text and "Inf " not in text
    found = samples(text)
    assert all(math.isfinite(v) for v in found.values())
    flat = {"experiment": "flat", "control": "control", "branch": "treatment"}
    # identical, spread-free data: a difference of 0 and no evidence, never a division by 0
    assert found[key("abtest_comparison_difference", metric="success_ratio", event="", **flat)] == 0
    assert found[key("abtest_comparison_p_value", metric="success_ratio", event="", **flat)] == 1
    assert (
        found[key("abtest_comparison_significant", metric="success_ratio", event="", **flat)] == 0
    )
    assert key("abtest_comparison_ci_lower", metric="success_ratio", event="", **flat) not in found
    # the control's event mean is 0: no relative difference
    zero = {"metric": "event_mean", "event": "zero", **flat}
    assert found[key("abtest_comparison_difference", **zero)] == 1.0
    assert key("abtest_comparison_relative_difference", **zero) not in found
    assert key("abtest_comparison_relative_ci_lower", **zero) not in found
    # the new families: verdict 0 and no MDE without spread; progress; no winner yet
    assert found[key("abtest_comparison_verdict", metric="success_ratio", event="", **flat)] == 0
    assert key("abtest_comparison_mde", metric="success_ratio", event="", **flat) not in found
    assert found[key("abtest_experiment_progress_ratio", experiment="flat")] == pytest.approx(0.03)
    assert not [name for name, _ in found if name == "abtest_experiment_winner"]
    families = {f.name: f for f in parse_text(text)}
    for name in ("abtest_comparison_verdict", "abtest_comparison_relative_ci_lower",
                 "abtest_comparison_relative_ci_upper", "abtest_comparison_mde",
                 "abtest_experiment_progress_ratio"):  # fmt: skip
        assert families[name].type == "gauge" and len(families[name].documentation) > 30, name
    promtool = shutil.which("promtool")
    assert promtool
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


PROCESS_FAMILIES = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
    "python_gc_collections_total",
    "python_info",
)


async def test_process_metrics_beside_ours_in_both_formats_and_promtool_clean(
    client: Client, metrics: ABMetrics
) -> None:
    """The figures generic exporter dashboards read, from prometheus_client's own
    collectors, in the text format (promtool clean) and in OpenMetrics (strict parser)."""
    feed(metrics)
    text = await (await client.get("/metrics")).text()
    names = {s.name for family in parse_text(text) for s in family.samples}
    assert set(PROCESS_FAMILIES) <= names, set(PROCESS_FAMILIES) - names
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/test installs Debian's prometheus package"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", (
        result.stdout + result.stderr
    )
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    body = await response.text()
    assert body.endswith("# EOF\n") and body.count("# EOF") == 1
    om_names = {s.name for family in parse_om(body) for s in family.samples}
    assert set(PROCESS_FAMILIES) <= om_names, set(PROCESS_FAMILIES) - om_names
