"""The shipped dashboards, rules and canary templates, proven on a real Prometheus: every
PromQL expression of every panel, variable, rule and template parses and returns what the
simulated experiments say it should."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from .helpers import Exporter, Prometheus, free_port, http, wait_for

ROOT = Path(__file__).parent.parent
GRAFANA = ROOT / "grafana"
RULES = GRAFANA / "rules" / "abtest-rules.yaml"
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$experiment": "checkout",
    "$branch": ".*",
    "$metric": "success_ratio",
    "$job": "abtest",
}


def load_builder() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_dashboards", GRAFANA / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))
    }


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def substitute(expr: str) -> str:
    for name, value in sorted(SUBSTITUTIONS.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def variable_query(query: str) -> str:
    """Grafana's label_values(metric, label) as the PromQL that answers it."""
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    assert match, query
    return f"group by ({match.group(2)}) ({match.group(1)})"


def test_committed_dashboards_match_a_fresh_build() -> None:
    fresh = load_builder().build()
    committed = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert fresh == committed, "run: .venv/bin/python grafana/dashboards.py"


def test_dashboard_structure() -> None:
    found = dashboards()
    assert set(found) == {"abtest-overview.json", "abtest-experiment.json", "abtest-exporter.json"}
    for name, dashboard in found.items():
        assert dashboard["schemaVersion"] >= 39, name  # a current Grafana schema
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == "${datasource}"
        for panel in panels(dashboard):
            where = f"{name}: {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["targets"], where
            assert panel["fieldConfig"]["defaults"].get("unit"), where
            assert len(panel.get("description", "")) > 20, where
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", where
                assert target["expr"], where
                used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
                assert used <= set(variables), (where, used)
        text = json.dumps(dashboard)
        assert "$__interval]" not in text  # rates use $__rate_interval
    assert "experiment" in {
        v["name"] for v in found["abtest-experiment.json"]["templating"]["list"]
    }


def grid_problems(dashboard: dict[str, Any]) -> list[str]:
    """Panels outside the 24 columns, or overlapping another panel."""
    problems: list[str] = []
    boxes: list[tuple[str, dict[str, int]]] = []
    for panel in dashboard["panels"]:
        g, title = panel["gridPos"], panel["title"]
        if g["x"] < 0 or g["w"] <= 0 or g["x"] + g["w"] > 24 or g["h"] <= 0 or g["y"] < 0:
            problems.append(f"{title}: outside the grid {g}")
        for other, o in boxes:
            if not (g["x"] + g["w"] <= o["x"] or o["x"] + o["w"] <= g["x"]
                    or g["y"] + g["h"] <= o["y"] or o["y"] + o["h"] <= g["y"]):  # fmt: skip
                problems.append(f"{title} overlaps {other}")
        boxes.append((title, g))
    return problems


def test_titles_are_unique_and_every_panel_is_inside_the_grid() -> None:
    titles = [p["title"] for d in dashboards().values() for p in panels(d)]
    assert len(titles) == len(set(titles)), titles
    for name, dashboard in dashboards().items():
        assert grid_problems(dashboard) == [], name
    # the check itself: the seed's "Best branch" (x=20, w=8) and an overlap are caught
    seed = {"panels": [{"title": "Best branch", "gridPos": {"x": 20, "w": 8, "y": 13, "h": 8}},
                       {"title": "B", "gridPos": {"x": 16, "w": 8, "y": 14, "h": 8}}]}  # fmt: skip
    assert grid_problems(seed) == [
        "Best branch: outside the grid {'x': 20, 'w': 8, 'y': 13, 'h': 8}",
        "B overlaps Best branch",
    ]


def by_title() -> dict[str, dict[str, Any]]:
    return {p["title"]: p for d in dashboards().values() for p in panels(d)}


def test_verdicts_srm_and_units_read_at_a_glance() -> None:
    found = by_title()
    verdict_words = {
        "1": ("Better", "green"),
        "-1": ("Worse", "red"),
        "0": ("Inconclusive", "#8e8e93"),
    }
    for title in ("Decided comparisons", "Verdicts"):
        defaults = found[title]["fieldConfig"]["defaults"]
        options = defaults["mappings"][0]["options"]
        assert {k: (v["text"], v["color"]) for k, v in options.items()} == verdict_words
        assert defaults["custom"]["cellOptions"]["type"] == "color-background"
    for title in ("Sample-ratio mismatches", "Sample-ratio mismatch"):
        steps = found[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps == [{"color": "green", "value": None}, {"color": "red", "value": 1}], title
        assert found[title]["options"]["colorMode"] == "background"
    # instant tables never show the Time column; label-only ones hide Value too
    for title, panel in found.items():
        if panel["type"] == "table":
            organize = next(t for t in panel["transformations"] if t["id"] == "organize")
            assert organize["options"]["excludeByName"]["Time"] is True, title
            value = organize["options"]["excludeByName"].get("Value") or (
                "Value" in organize["options"]["renameByName"]
            )
            assert value, title
    # the detail dashboard shows trust, lift, progress and power
    detail = {p["title"] for p in panels(dashboards()["abtest-experiment.json"])}
    assert {"Sample-ratio mismatch", "Progress", "Winner on the primary metric", "Verdicts",
            "Lift with its confidence sequence ($metric)", "Minimum detectable effect ($metric)",
            "Time to detect the observed difference"} <= detail  # fmt: skip
    p_value = found["Always-valid p-value ($metric)"]["fieldConfig"]["defaults"]
    assert p_value["custom"]["scaleDistribution"] == {"type": "log", "log": 10}
    assert p_value["custom"]["thresholdsStyle"]["mode"] == "dashed"
    assert p_value["thresholds"]["steps"][1] == {"color": "red", "value": 0.05}
    for title in ("Difference with its confidence sequence ($metric)",
                  "Minimum detectable effect ($metric)"):  # fmt: skip
        overrides = found[title]["fieldConfig"]["overrides"]
        units = {o["matcher"]["options"]: o["properties"][0]["value"] for o in overrides}
        assert units[".*latency_mean.*"] == "s", title
    assert found["Lift with its confidence sequence ($metric)"]["fieldConfig"]["defaults"][
        "unit"] == "percentunit"  # fmt: skip


def test_overview_links_to_the_detail_with_the_experiment() -> None:
    found = dashboards()
    for dashboard in found.values():
        if dashboard["uid"] != "abtest-exporter":
            assert dashboard["links"][0]["type"] == "dashboards"
            assert dashboard["links"][0]["includeVars"] and dashboard["links"][0]["keepTime"]
    overview = panels(found["abtest-overview.json"])
    linked = [p for p in overview if p["type"] == "table"]
    assert len(linked) >= 6
    for panel in linked:
        url = panel["fieldConfig"]["defaults"]["links"][0]["url"]
        assert url.startswith("/d/abtest-experiment?var-experiment=${__data.fields.experiment}")
        assert panel["targets"][0]["expr"].startswith("max by (experiment") or (
            "by (experiment" in panel["targets"][0]["expr"]
        )


def test_every_alert_has_a_runbook_section_that_exists() -> None:
    readme = (GRAFANA / "README.md").read_text()
    runbook = readme.split("\n## Runbook\n", 1)[1]
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line[4:].strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("### ")
    }
    alerts = [rule for rule in rules() if "alert" in rule]
    assert len(alerts) >= 9
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert (ROOT / path).resolve() == (GRAFANA / "README.md").resolve(), url
        assert anchor == rule["alert"].lower() and anchor in anchors, (rule["alert"], url)


def test_provisioning_and_canary_files_are_well_formed() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/abtest.yaml").read_text())
    assert provider["providers"][0]["options"]["path"].endswith("/dashboards")
    source = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"
    flagger = list(
        yaml.safe_load_all((GRAFANA / "canary/flagger-metric-template.yaml").read_text())
    )
    assert flagger[0]["kind"] == "MetricTemplate" and "{{ target }}" in flagger[0]["spec"]["query"]
    argo = list(yaml.safe_load_all((GRAFANA / "canary/argo-analysis-template.yaml").read_text()))
    assert argo[0]["kind"] == "AnalysisTemplate"
    assert argo[0]["spec"]["metrics"][0]["successCondition"] == "result[0] == 0"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: scripts/test installs Debian's prometheus package"
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False,
                          cwd=RULES.parent)  # fmt: skip


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "abtest-rules.test.yaml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


class RoundRobin:
    """Every batch dealt out to the ingest replicas in slices, as clients behind a
    Kubernetes Service would send them."""

    def __init__(self, replicas: list[Exporter]) -> None:
        self.replicas = replicas
        self.queries = 0

    def post(self, body: Any) -> tuple[int, Any]:
        size = len(self.replicas)
        answers = [
            replica.post({kind: records[i::size] for kind, records in body.items()})
            for i, replica in enumerate(self.replicas)
        ]
        if all(status == 200 for status, _ in answers):
            self.queries += len(body.get("queries", []))
        return max(answers, key=lambda answer: answer[0])


def feed(exporter: Exporter | RoundRobin, rng: np.random.Generator) -> None:
    """One round: checkout (a real win, and a 60/40 split where 50/50 was meant: no
    verdict, no winner), canary-demo (a canary that fails more and is slower than its
    primary) and pricing (a clean win on success at 50/50, the same latency)."""
    queries: list[dict[str, Any]] = []
    for experiment, branch, count, success, median in (
        ("checkout", "control", 900, 0.85, 80.0),
        ("checkout", "treatment", 600, 0.93, 70.0),
        ("canary-demo", "primary", 700, 0.97, 50.0),
        ("canary-demo", "canary", 700, 0.85, 65.0),
        ("pricing", "control", 700, 0.85, 60.0),
        ("pricing", "treatment", 700, 0.95, 60.0),
    ):
        oks = (rng.random(count) < success).tolist()
        latency = rng.lognormal(np.log(median), 0.3, count).tolist()
        queries += [
            {"experiment": experiment, "branch": branch, "latency_ms": la, "success": ok}
            for la, ok in zip(latency, oks, strict=True)
        ]
    events = [
        {"experiment": "checkout", "branch": b, "event": "revenue", "value": float(v)}
        for b in ("control", "treatment")
        for v in rng.integers(5, 50, 60)
    ]
    assert exporter.post({"queries": queries, "events": events})[0] == 200
    # something for the rejected-records panels and alert to see
    assert exporter.post({"queries": [{"experiment": "", "branch": "b"}]})[0] == 400


@pytest.fixture(scope="module", params=["single", "scaled"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Exporter, Prometheus]]:
    """One exporter, or (issue 11) two --role ingest replicas and an analyzer: every
    dashboard, rule and canary query must read the same in both."""
    scaled = request.param == "scaled"
    processes: list[Exporter] = []
    if scaled:
        replicas = [
            Exporter(["--role", "ingest"], data_dir=str(tmp_path_factory.mktemp("data")))
            for _ in range(2)
        ]
        processes += replicas
        sink: Exporter | RoundRobin = RoundRobin(replicas)
    else:
        exporter = Exporter(
            ["--stats-interval", "0.2"], data_dir=str(tmp_path_factory.mktemp("data"))
        )
        processes.append(exporter)
        sink = exporter
    targets = [f"127.0.0.1:{p.port}" for p in processes]
    analyzer_port = free_port()
    if scaled:
        targets.append(f"127.0.0.1:{analyzer_port}")
    prometheus = Prometheus(tmp_path_factory.mktemp("prom"), targets, rules=[RULES])
    if scaled:
        exporter = Exporter(
            ["--role", "analyzer", "--prometheus-url", prometheus.url, "--stats-interval", "1"],
            port=analyzer_port,
        )
        processes.append(exporter)
    assert http(exporter.url + "/api/v1/experiments/canary-demo/config",
                {"control": "primary"}, method="PUT")[0] == 200  # fmt: skip
    # Prometheus applies discovered targets a few seconds after it starts: rates need
    # samples from before the data came, so feed only once it scrapes
    prometheus.wait_value('count(up{job="abtest"} == 1)', len(targets), timeout=30)
    rng = np.random.default_rng(6)
    for _ in range(4):
        feed(sink, rng)
        time.sleep(1.5)
    # wait for the comparisons and for rule evaluation to have caught up
    prometheus.wait_value(
        'abtest_comparison_significant{experiment="checkout",branch="treatment",'
        'metric="success_ratio"}',
        1,
        timeout=30,
    )
    wait_for(lambda: bool(prometheus.query("experiment_branch:abtest_queries:rate5m")), 20,
             "recording rules")  # fmt: skip
    if isinstance(sink, RoundRobin):  # the analyzer's figures from the whole feed
        prometheus.wait_value("sum(abtest_queries_total)", sink.queries, timeout=30)
        time.sleep(2.5)
    yield exporter, prometheus
    prometheus.stop()
    for process in processes:
        process.stop()


# panels of the detail dashboard that are rightly empty for checkout (its split is off,
# so it has no winner): they must show data for pricing instead
EMPTY_UNDER_SRM = {"Winner on the primary metric"}


def test_every_panel_and_variable_query_returns_data(stack: tuple[Exporter, Prometheus]) -> None:
    _, prometheus = stack
    checked = 0
    for name, dashboard in dashboards().items():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                result = prometheus.query(substitute(variable_query(variable["query"])))
                assert result, (name, variable["name"])
                checked += 1
        for panel in panels(dashboard):
            for target in panel["targets"]:
                result = prometheus.query(substitute(target["expr"]))
                if not result and panel["title"] in EMPTY_UNDER_SRM:
                    expr = substitute(target["expr"]).replace('"checkout"', '"pricing"')
                    result = prometheus.query(expr)
                assert result, (name, panel["title"], target["expr"])
                values = [float(r["value"][1]) for r in result]
                assert all(np.isfinite(values)), (panel["title"], values)
                checked += 1
    assert checked >= 50


def test_panels_show_the_simulated_truth(stack: tuple[Exporter, Prometheus]) -> None:
    _, prometheus = stack
    found = {p["title"]: p for d in dashboards().values() for p in panels(d)}

    def run(title: str, index: int = 0) -> list[dict[str, Any]]:
        return prometheus.query(substitute(found[title]["targets"][index]["expr"]))

    decided = {
        (r["metric"]["experiment"], r["metric"]["branch"], r["metric"]["metric"]):
            float(r["value"][1])
        for r in run("Decided comparisons")
    }  # fmt: skip
    assert decided[("pricing", "treatment", "success_ratio")] == 1
    assert decided[("canary-demo", "canary", "success_ratio")] == -1
    assert decided[("canary-demo", "canary", "latency_mean")] == -1  # slower is worse
    assert not [k for k in decided if k[0] == "checkout"]  # significant, but an SRM
    assert float(run("Sample-ratio mismatches")[0]["value"][1]) == 1  # checkout only
    assert float(run("Better (treatment x metric)")[0]["value"][1]) >= 1
    assert float(run("Worse (treatment x metric)")[0]["value"][1]) >= 2
    assert float(run("Winners")[0]["value"][1]) == 1  # pricing
    split = {r["metric"]["branch"]: float(r["value"][1]) for r in run("Traffic split")}
    assert split["control"] == pytest.approx(0.6) and split["treatment"] == pytest.approx(0.4)
    difference = {r["metric"]["branch"]: float(r["value"][1])
                  for r in run("Difference with its confidence sequence ($metric)")}  # fmt: skip
    lower = {r["metric"]["branch"]: float(r["value"][1])
             for r in run("Difference with its confidence sequence ($metric)", 1)}  # fmt: skip
    assert 0 < lower["treatment"] < difference["treatment"] < 0.14
    better = run("Probability the treatment is better ($metric)")
    assert float(better[0]["value"][1]) > 0.99
    winners = {(r["metric"]["experiment"], r["metric"]["branch"]) for r in run("Winner")}
    assert winners == {("pricing", "treatment")}
    progress = {r["metric"]["experiment"]: float(r["value"][1])
                for r in run("Progress towards the minimum sample")}  # fmt: skip
    assert progress == {"checkout": 1.0, "canary-demo": 1.0, "pricing": 1.0}
    # the detail dashboard (experiment checkout): the SRM stat says so, verdicts are 0
    assert float(run("Sample-ratio mismatch")[0]["value"][1]) == 1
    verdicts = {(r["metric"]["branch"], r["metric"]["metric"]): float(r["value"][1])
                for r in run("Verdicts")}  # fmt: skip
    assert verdicts[("treatment", "success_ratio")] == 0
    lift = {r["metric"]["branch"]: float(r["value"][1])
            for r in run("Lift with its confidence sequence ($metric)")}  # fmt: skip
    low = {r["metric"]["branch"]: float(r["value"][1])
           for r in run("Lift with its confidence sequence ($metric)", 1)}  # fmt: skip
    assert 0 < low["treatment"] < lift["treatment"] < 0.2  # 85% -> 93%: about +9%
    mde = run("Minimum detectable effect ($metric)")
    assert 0 < float(mde[0]["value"][1]) < 0.1


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


FIRING = {
    "AbtestSampleRatioMismatch": {("checkout",)},
    "AbtestGuardrailSuccessRatio": {("canary-demo", "canary")},
    "AbtestGuardrailLatency": {("canary-demo", "canary")},
    "AbtestWinnerFound": {("pricing", "treatment")},  # not checkout: its split is off
    "AbtestGuardrailRegression": {("canary-demo", "canary")},
    "AbtestExporterRejectingRecords": None,
}
QUIET = {"AbtestExperimentQuiet", "AbtestExporterDown", "AbtestExporterNotPersisting"}


def test_every_rule_expression_on_real_prometheus(stack: tuple[Exporter, Prometheus]) -> None:
    _, prometheus = stack
    seen = set()
    for rule in rules():
        result = prometheus.query(rule["expr"])
        name = rule.get("alert") or rule["record"]
        seen.add(name)
        if "record" in rule:
            assert result, name
        elif name in QUIET:
            assert result == [], (name, result)
        else:
            assert result, name
            expected = FIRING[name]
            if expected is not None:
                keys = {tuple(r["metric"].get(k) for k in ("experiment", "branch")
                              if k in r["metric"]) for r in result}  # fmt: skip
                assert keys == expected, (name, keys)
    assert seen >= set(FIRING) | QUIET
    winners = prometheus.query(
        next(r["expr"] for r in rules() if r.get("alert") == "AbtestWinnerFound")
    )
    assert {(r["metric"]["experiment"], r["metric"]["metric"]) for r in winners} == {
        ("pricing", "success_ratio")
    }
    regressions = prometheus.query(
        next(r["expr"] for r in rules() if r.get("alert") == "AbtestGuardrailRegression")
    )
    assert {r["metric"]["metric"] for r in regressions} == {"success_ratio", "latency_mean"}


def canary_queries() -> dict[str, str]:
    flagger = next(
        yaml.safe_load_all((GRAFANA / "canary/flagger-metric-template.yaml").read_text())
    )
    argo = next(yaml.safe_load_all((GRAFANA / "canary/argo-analysis-template.yaml").read_text()))
    return {
        "flagger": flagger["spec"]["query"].replace("{{ target }}", "{experiment}"),
        "argo": argo["spec"]["metrics"][0]["provider"]["prometheus"]["query"].replace(
            "{{args.experiment}}", "{experiment}"
        ),
    }


def test_canary_templates_fail_a_bad_canary_and_never_an_empty_result(
    stack: tuple[Exporter, Prometheus],
) -> None:
    _, prometheus = stack
    for name, template in canary_queries().items():
        bad = prometheus.query(template.replace("{experiment}", "canary-demo"))
        assert [float(r["value"][1]) for r in bad] == [1.0], name  # significantly worse
        unknown = prometheus.query(template.replace("{experiment}", "no-such-experiment"))
        assert [float(r["value"][1]) for r in unknown] == [0.0], name  # no data: no failure
