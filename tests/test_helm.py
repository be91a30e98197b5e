"""The Helm chart, rendered by the real Helm engine (helm-python-sdk binds Helm's Go SDK).

Every values set (the defaults and each `ci/*-values.yaml`) is linted strictly, checked
against values.schema.json, rendered, and every built-in Kubernetes object is checked by
`kubernetes-validate --strict` against a current Kubernetes version. The parsed objects
are then read for what matters: hardening, probes, labels and selectors, and that each
optional part points at the objects it needs.
"""

from __future__ import annotations

import base64
import filecmp
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml

from exporter.cli import build_parser, check_role, settings_from
from exporter.serve.settings import from_environment, load_file

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "abtest-exporter"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBERNETES_VERSION = "1.37.0"
RELEASE = "abtest"
NAMESPACE = "monitoring"
FULLNAME = "abtest-abtest-exporter"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator, not built in
SCALED_VALUES = CHART / "ci" / "scaled-values.yaml"
PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"  # as in scaled-values.yaml
SELECTOR = {
    "app.kubernetes.io/name": "abtest-exporter",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/component": "exporter",
}

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def load_values(path: Path | None) -> Obj:
    if path is None:
        return {}
    values: Obj = yaml.safe_load(path.read_text())
    return values


def render_all(chart: helm_python.Chart, values: Obj | None = None) -> tuple[list[Obj], str]:
    """The rendered objects (tests/ hooks included) and NOTES.txt."""
    rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[Obj] = []
    notes = ""
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects, notes


def render(chart: helm_python.Chart, values: Obj | None = None) -> list[Obj]:
    return render_all(chart, values)[0]


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def kinds(objects: list[Obj]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def container(objects: list[Obj]) -> Obj:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    result: Obj = pod["containers"][0]
    return result


def workloads(objects: list[Obj]) -> list[Obj]:
    """The Deployments and StatefulSets: single mode's one, or mode scaled's two."""
    found = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert found
    return found


def exporter_container(workload: Obj) -> Obj:
    (box,) = workload["spec"]["template"]["spec"]["containers"]
    result: Obj = box
    return result


def component(obj: Obj) -> str:
    labels = obj["spec"]["template"]["metadata"]["labels"] if "template" in obj["spec"] else {}
    return str(labels.get("app.kubernetes.io/component", ""))


def parse_container(box: Obj) -> Any:
    """The exporter's own parser reads one container's arguments and plain env values."""
    args = build_parser().parse_args(box["args"])
    assert args.command == "serve"
    args.config = None  # the mounted file is not here; test_config_file_from_values reads it
    variables = {item["name"]: item.get("value", "") for item in box.get("env", [])}
    plain_env = {k: v for k, v in variables.items() if not k.endswith("TOKEN_FILE")}
    return settings_from(args, environ=plain_env)


def volumes(objects: list[Obj]) -> dict[str, Obj]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    return {volume["name"]: volume for volume in pod["volumes"]}


def mounts(objects: list[Obj]) -> dict[str, Obj]:
    return {mount["name"]: mount for mount in container(objects)["volumeMounts"]}


def env(objects: list[Obj]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container(objects).get("env", [])}


def settings_of(objects: list[Obj]) -> Any:
    """The exporter's own parser reads the rendered arguments (and the plain env values)."""
    return parse_container(container(objects))


def values_ids(path: Path | None) -> str:
    return "defaults" if path is None else path.name


ALL_VALUES = [None, *CI_VALUES]


def test_ci_values_files_exist() -> None:
    names = {path.name for path in CI_VALUES}
    assert {
        "monitoring-values.yaml",
        "secure-values.yaml",
        "existing-values.yaml",
        "scaled-values.yaml",
    } <= names


# --- lint, schema, kubernetes-validate, for every values set -------------------------


@pytest.mark.parametrize("values_file", ALL_VALUES, ids=values_ids)
def test_lint_strict(values_file: Path | None) -> None:
    report = helm_python.lint(
        CHART, load_values(values_file), strict=True, kube_version=f"v{KUBERNETES_VERSION}"
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # severity 1 is "info" (only "icon is recommended": the project has no icon)
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_reports_bad_values() -> None:
    report = helm_python.lint(CHART, {"mode": "scaled"}, strict=True)
    assert report["errors"]
    assert any("/scaled/prometheusUrl" in error for error in report["errors"])


@pytest.mark.parametrize("values_file", ALL_VALUES, ids=values_ids)
def test_values_pass_the_schema(chart: helm_python.Chart, values_file: Path | None) -> None:
    values = load_values(values_file)
    chart.validate_schema(values)  # Helm's own validator
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(chart.merge_values(values))


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"mode": "scaled"}, "/scaled/prometheusUrl"),
        ({"mode": "scaled", "scaled": {"prometheusUrl": ""}}, "/scaled/prometheusUrl"),
        ({"scaled": {"prometheusUrl": "prometheus:9090"}}, "/scaled/prometheusUrl"),
        ({"scaled": {"ingestReplicas": 0}}, "/scaled/ingestReplicas"),
        ({"scaled": {"replicas": 3}}, "replicas"),
        (
            {"mode": "scaled", "scaled": {"prometheusUrl": PROMETHEUS_URL}}
            | {"persistence": {"existingClaim": "abtest-data"}},
            "/persistence/existingClaim",
        ),
        ({"mode": "sharded"}, "/mode"),
        ({"port": 0}, "/port"),
        ({"port": "9470"}, "/port"),
        ({"durability": "fast"}, "/durability"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"serviceMonitor": {"jobName": "exporter"}}, "/serviceMonitor/jobName"),
        ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
        ({"tls": {"enabled": True}}, "/tls"),
        ({"securityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation"),
        ({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
        ({"securityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"persistence": {"size": "lots"}}, "/persistence/size"),
        ({"persistence": {"accessModes": []}}, "/persistence/accessModes"),
        ({"dataDir": "data"}, "/dataDir"),
        ({"dataDir": "/tmp"}, "/dataDir"),
        ({"extraArgs": "--log-level debug"}, "/extraArgs"),
        ({"replicaCount": 2}, "replicaCount"),
        ({"service": {"type": "ExternalName"}}, "/service/type"),
        ({"ingress": {"hosts": [{"host": "a", "paths": [{"path": "x"}]}]}}, "/ingress/hosts"),
        ({"grafanaDashboards": {"labelValue": 1}}, "/grafanaDashboards/labelValue"),
    ],
)
def test_bad_values_are_refused(chart: helm_python.Chart, values: Obj, complaint: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert complaint in str(refused.value)
    with pytest.raises(helm_python.HelmValuesError):  # and install-time rendering refuses too
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_mode_scaled_without_a_prometheus_url_is_refused_by_the_template_too(
    tmp_path: Path,
) -> None:
    """`helm template --skip-schema-validation --set mode=scaled` says why as well."""
    copy = tmp_path / "abtest-exporter"
    shutil.copytree(CHART, copy)
    (copy / "values.schema.json").unlink()
    with helm_python.Chart.load(copy) as unchecked:
        assert unchecked.schema is None
        unchecked.render({"mode": "single"}, name=RELEASE)  # renders without the schema
        unchecked.render({"mode": "scaled", "scaled": {"prometheusUrl": PROMETHEUS_URL}})
        refusals = {}
        for values in (
            {"mode": "scaled"},
            {"mode": "sharded"},
            {"mode": "scaled", "scaled": {"prometheusUrl": PROMETHEUS_URL}}
            | {"persistence": {"existingClaim": "abtest-data"}},
        ):
            with pytest.raises(helm_python.HelmRenderError) as refused:
                unchecked.render(values, name=RELEASE)
            refusals[str(values)] = str(refused.value)
    messages = list(refusals.values())
    assert "mode scaled needs scaled.prometheusUrl" in messages[0]
    assert 'mode "sharded": mode must be single or scaled' in messages[1]
    assert "persistence.existingClaim is for mode single" in messages[2]


def _schema_paths(schema: Obj, root: Obj, prefix: str = "") -> set[str]:
    if "$ref" in schema:
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        paths.add(prefix + key)
        paths |= _schema_paths(sub, root, prefix + key + ".")
    return paths


def _value_paths(values: Obj, schema: Obj, root: Obj, prefix: str = "") -> set[str]:
    """Paths of values.yaml down to where the schema takes a whole (Kubernetes) object."""
    if "$ref" in schema:
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    paths = set()
    for key, value in values.items():
        paths.add(prefix + key)
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and sub.get("additionalProperties") is False:
            paths |= _value_paths(value, sub, root, prefix + key + ".")
    return paths


def test_schema_covers_every_value_and_every_value_is_commented() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert _value_paths(defaults, schema, schema) - _schema_paths(schema, schema) == set()
    assert schema["additionalProperties"] is False
    # every key of our own (not inside a Kubernetes object) has a comment line above it
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented = _value_paths(defaults, schema, schema)
    stack: list[str] = []
    uncommented = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_][\w]*):", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        stack = [*stack[:depth], match.group(2)]
        path = ".".join(stack)
        if path not in documented or path.split(".")[0].endswith("Probe"):
            continue
        previous = lines[number - 1].strip()
        is_section = isinstance(_get(defaults, stack), dict) and depth == 0
        if not previous.startswith("#") and not is_section:
            uncommented.append(path)
    assert uncommented == []


def _get(values: Obj, path: list[str]) -> Any:
    node: Any = values
    for key in path:
        node = node[key]
    return node


def _kubernetes_validate(objects: list[Obj], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    command = Path(sys.executable).parent / "kubernetes-validate"
    return subprocess.run(
        [str(command), "--strict", "-k", KUBERNETES_VERSION, str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("values_file", ALL_VALUES, ids=values_ids)
def test_kubernetes_validate_strict(
    chart: helm_python.Chart, values_file: Path | None, tmp_path: Path
) -> None:
    objects = render(chart, load_values(values_file))
    built_in = [o for o in objects if o["kind"] not in CRD_KINDS]
    for crd in (o for o in objects if o["kind"] in CRD_KINDS):
        assert crd["apiVersion"] == "monitoring.coreos.com/v1"
    result = _kubernetes_validate(built_in, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # one verdict per object: nothing skipped for want of a schema
    verdicts = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(verdicts) == len(built_in), result.stdout


def test_kubernetes_validate_catches_a_bad_object(chart: helm_python.Chart, tmp_path: Path) -> None:
    deployment = one(render(chart), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["dropAll"] = True
    result = _kubernetes_validate([deployment], tmp_path)
    assert result.returncode != 0
    assert "dropAll" in result.stdout + result.stderr


# --- what the default install is ----------------------------------------------------


def test_defaults_make_a_single_writer_deployment_on_a_volume(chart: helm_python.Chart) -> None:
    objects = render(chart)
    assert kinds(objects) == [
        "Deployment",
        "PersistentVolumeClaim",
        "Pod",
        "Service",
        "ServiceAccount",
    ]
    deployment = one(objects, "Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    claim = one(objects, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert (
        volumes(objects)["data"]["persistentVolumeClaim"]["claimName"]
        == (claim["metadata"]["name"])
    )
    assert mounts(objects)["data"]["mountPath"] == "/data"
    assert volumes(objects)["tmp"]["emptyDir"] == {"sizeLimit": "64Mi"}
    assert mounts(objects)["tmp"]["mountPath"] == "/tmp"
    settings = settings_of(objects)
    assert (settings.host, settings.port, settings.data_dir) == ("0.0.0.0", 9470, "/data")
    assert (settings.durability, settings.otlp_port, settings.tls_cert) == ("sync", None, None)
    assert "resources" not in container(objects)  # left to the user
    assert container(objects)["image"] == "abtest-exporter:0.1.0"  # the chart's appVersion


@pytest.mark.parametrize("values_file", ALL_VALUES, ids=values_ids)
def test_pods_are_hardened(chart: helm_python.Chart, values_file: Path | None) -> None:
    objects = render(chart, load_values(values_file))
    pods = [workload["spec"]["template"]["spec"] for workload in workloads(objects)]
    pods += [o["spec"] for o in objects if o["kind"] == "Pod"]
    for pod in pods:
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False  # see test_service_links_would_break_it
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == 65532  # the image's user (tests/test_dockerfile.py)
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        for box in pod["containers"]:
            hardened = box["securityContext"]
            assert hardened["readOnlyRootFilesystem"] is True
            assert hardened["allowPrivilegeEscalation"] is False
            assert hardened["privileged"] is False
            assert hardened["runAsNonRoot"] is True
            assert hardened["capabilities"] == {"drop": ["ALL"]}
            assert hardened["seccompProfile"] == {"type": "RuntimeDefault"}
    if any(o["kind"] == "ServiceAccount" for o in objects):
        assert one(objects, "ServiceAccount")["automountServiceAccountToken"] is False


@pytest.mark.parametrize("values_file", ALL_VALUES, ids=values_ids)
def test_probes(chart: helm_python.Chart, values_file: Path | None) -> None:
    values = load_values(values_file)
    objects = render(chart, values)
    scheme = "HTTPS" if values.get("tls", {}).get("enabled") else "HTTP"
    for workload in workloads(objects):  # single's Deployment; the replicas and the analyzer
        box = exporter_container(workload)
        ports = {port["name"]: port["containerPort"] for port in box["ports"]}
        assert ports["http"] == parse_container(box).port == 9470
        expected = {
            "startupProbe": "/-/healthy",
            "livenessProbe": "/-/healthy",
            "readinessProbe": "/-/ready",
        }
        for probe, path in expected.items():
            assert box[probe]["httpGet"] == {"path": path, "port": "http", "scheme": scheme}
        # a big data file may take minutes to restore before the port opens
        startup = box["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize("values_file", ALL_VALUES, ids=values_ids)
def test_labels_and_selectors(chart: helm_python.Chart, values_file: Path | None) -> None:
    values = load_values(values_file)
    objects = render(chart, values)
    selector = dict(SELECTOR)
    if values.get("nameOverride"):
        selector["app.kubernetes.io/name"] = values["nameOverride"]
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, obj["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "abtest-exporter-0.1.0"
        for key, value in values.get("commonLabels", {}).items():
            if obj["kind"] != "Pod":
                assert labels[key] == value
    if values.get("mode") == "scaled":
        _scaled_labels_and_selectors(objects, selector)
        return
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    service = one(objects, "Service")
    assert service["spec"]["selector"] == selector
    assert service["metadata"]["name"] == deployment["metadata"]["name"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {
        p["name"] for p in container(objects)["ports"]
    }
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] in ("NetworkPolicy",):
            assert spec["podSelector"]["matchLabels"] == selector
        if obj["kind"] in ("PodDisruptionBudget", "ServiceMonitor"):
            assert spec["selector"]["matchLabels"] == selector
        if obj["kind"] == "Pod":  # the helm-test pod must get no Service traffic
            assert not selector.items() <= obj["metadata"]["labels"].items()


def _scaled_labels_and_selectors(objects: list[Obj], base: dict[str, str]) -> None:
    """mode scaled: each workload selects its own component, each Service the right one."""
    selectors = {}
    for workload in workloads(objects):
        wanted = base | {"app.kubernetes.io/component": component(workload)}
        assert workload["spec"]["selector"]["matchLabels"] == wanted
        assert wanted.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        assert workload["metadata"]["labels"]["app.kubernetes.io/component"] == component(workload)
        selectors[component(workload)] = (wanted, exporter_container(workload))
    assert set(selectors) == {"ingest", "analyzer"}
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    for name, service in services.items():
        part = service["spec"]["selector"]["app.kubernetes.io/component"]
        wanted, box = selectors[part]
        assert service["spec"]["selector"] == wanted, name
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= {
            p["name"] for p in box["ports"]
        }
    for obj in objects:
        if obj["kind"] == "Pod":  # the helm-test pod must get no Service traffic
            for wanted, _ in selectors.values():
                assert not wanted.items() <= obj["metadata"]["labels"].items()


def test_service_links_would_break_it() -> None:
    """Why the pods set enableServiceLinks: false. Kubernetes would put a Service named
    abtest-exporter into the environment as ABTEST_EXPORTER_PORT=tcp://..., the variable
    the exporter reads as its port."""
    with pytest.raises(ValueError, match="ABTEST_EXPORTER_PORT"):
        from_environment({"ABTEST_EXPORTER_PORT": "tcp://10.96.0.12:9470"})


def test_notes_say_how_to_reach_it(chart: helm_python.Chart) -> None:
    _, notes = render_all(chart)
    assert f"http://{FULLNAME}.{NAMESPACE}.svc:9470" in notes
    assert f"port-forward service/{FULLNAME} 9470:9470" in notes
    assert f"helm test {RELEASE}" in notes
    _, notes = render_all(
        chart,
        {
            "persistence": {"enabled": False},
            "tls": {"enabled": True, "secretName": "t"},
            "ingress": {"enabled": True},
        },
    )
    assert f"https://{FULLNAME}.{NAMESPACE}.svc:9470" in notes
    assert "http://abtest-exporter.local/" in notes
    assert "WARNING: persistence is off" in notes


def test_helm_test_pod_asks_the_service_for_readiness(chart: helm_python.Chart) -> None:
    objects = render(chart)
    pod = one(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (box,) = pod["spec"]["containers"]
    assert box["image"] == container(objects)["image"]  # no other image to pull
    assert box["command"][:2] == ["python", "-c"]
    compile(box["command"][2], "test-connection", "exec")  # the script is valid Python
    service = one(objects, "Service")
    assert box["command"][3] == f"http://{service['metadata']['name']}:9470/-/ready"
    assert "Pod" not in kinds(render(chart, {"tests": {"enabled": False}}))


# --- the optional parts ------------------------------------------------------------


def test_optional_parts_are_off_by_default(chart: helm_python.Chart) -> None:
    off = {
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "Ingress",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Secret",
    }
    assert off.isdisjoint(kinds(render(chart)))
    assert "otlp-http" not in {p["name"] for p in container(render(chart))["ports"]}


def test_service_monitor_names_the_job_the_rules_select(chart: helm_python.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "monitoring-values.yaml"))
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    service = one(objects, "Service")
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["path"], endpoint["scheme"], endpoint["interval"]) == (
        "/metrics",
        "http",
        "15s",
    )
    job = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
    assert job == [{"action": "replace", "targetLabel": "job", "replacement": "abtest-exporter"}]
    rules = (ROOT / "grafana" / "rules" / "abtest-rules.yaml").read_text()
    selectors = set(re.findall(r'job=~"([^"]+)"', rules))
    assert selectors == {"abtest.*"}
    assert all(re.fullmatch(s, job[0]["replacement"]) for s in selectors)


def test_prometheus_rule_is_the_projects_rules_file(chart: helm_python.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "monitoring-values.yaml"))
    rule = one(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    source = yaml.safe_load((ROOT / "grafana" / "rules" / "abtest-rules.yaml").read_text())
    assert rule["spec"] == source
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert "AbtestExporterDown" in alerts


def test_a_configmap_per_dashboard_for_the_sidecar(chart: helm_python.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "monitoring-values.yaml"))
    maps = [o for o in objects if o["kind"] == "ConfigMap"]
    sources = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
    assert len(maps) == len(sources) == 3
    by_file = {name: o for o in maps for name in o["data"]}
    for source in sources:
        config_map = by_file[source.name]
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "A/B testing"}
        assert json.loads(config_map["data"][source.name]) == json.loads(source.read_text())
    custom = render(
        chart,
        {
            "grafanaDashboards": {
                "enabled": True,
                "label": "dashboards",
                "labelValue": "abtest",
                "namespace": "grafana",
            }
        },
    )
    for config_map in (o for o in custom if o["kind"] == "ConfigMap"):
        assert config_map["metadata"]["labels"]["dashboards"] == "abtest"
        assert "grafana_dashboard" not in config_map["metadata"]["labels"]
        assert config_map["metadata"]["namespace"] == "grafana"


def test_otlp_port(chart: helm_python.Chart) -> None:
    objects = render(chart, {"otlp": {"enabled": True}})
    assert settings_of(objects).otlp_port == 4318
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    assert ports == {"http": 9470, "otlp-http": 4318}
    service_ports = {
        p["name"]: (p["port"], p["targetPort"]) for p in one(objects, "Service")["spec"]["ports"]
    }
    assert service_ports == {"http": (9470, "http"), "otlp-http": (4318, "otlp-http")}
    policy = one(
        render(chart, {"otlp": {"enabled": True}, "networkPolicy": {"enabled": True}}),
        "NetworkPolicy",
    )
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == ["http", "otlp-http"]


def test_ingress_points_at_the_service(chart: helm_python.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "existing-values.yaml"))
    ingress = one(objects, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "abtest.example.org"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {
        "name": one(objects, "Service")["metadata"]["name"],
        "port": {"name": "http"},
    }
    assert ingress["spec"]["tls"] == [
        {"hosts": ["abtest.example.org"], "secretName": "abtest-ingress-tls"}
    ]


def test_network_policy(chart: helm_python.Chart) -> None:
    values = load_values(CHART / "ci" / "secure-values.yaml")
    policy = one(render(chart, values), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = policy["ingress"]
    assert rule["from"] == values["networkPolicy"]["ingressFrom"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert policy["egress"] == values["networkPolicy"]["egress"]
    open_policy = one(render(chart, {"networkPolicy": {"enabled": True}}), "NetworkPolicy")
    assert open_policy["spec"]["policyTypes"] == ["Ingress"]
    assert "from" not in open_policy["spec"]["ingress"][0]  # any peer, our ports only


def test_pod_disruption_budget(chart: helm_python.Chart) -> None:
    budget = one(render(chart, {"podDisruptionBudget": {"enabled": True}}), "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in budget["spec"]
    budget = one(
        render(chart, load_values(CHART / "ci" / "existing-values.yaml")), "PodDisruptionBudget"
    )
    assert budget["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in budget["spec"]


def test_generated_tokens_reach_the_exporter_and_the_scrape(chart: helm_python.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "secure-values.yaml"))
    secret = one(objects, "Secret", f"{FULLNAME}-tokens")
    tokens = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(tokens) == {"write-token", "metrics-token"}
    assert all(re.fullmatch(r"[A-Za-z0-9]{40}", t) for t in tokens.values())
    assert tokens["write-token"] != tokens["metrics-token"]
    variables = env(objects)
    mount = mounts(objects)["tokens"]
    assert mount["readOnly"] is True
    assert variables["ABTEST_EXPORTER_TOKEN_FILE"] == mount["mountPath"] + "/write-token"
    assert variables["ABTEST_EXPORTER_METRICS_TOKEN_FILE"] == mount["mountPath"] + "/metrics-token"
    volume = volumes(objects)["tokens"]["secret"]
    assert volume["secretName"] == secret["metadata"]["name"]
    assert {item["key"] for item in volume["items"]} == set(tokens)
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": secret["metadata"]["name"], "key": "metrics-token"},
    }
    given = render(chart, {"auth": {"enabled": True, "writeToken": "s3cret"}})
    secret = one(given, "Secret")
    assert secret["data"] == {"write-token": base64.b64encode(b"s3cret").decode()}
    assert "ABTEST_EXPORTER_METRICS_TOKEN_FILE" not in env(given)


def test_existing_secret_claim_and_config_map(chart: helm_python.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "existing-values.yaml"))
    assert {"Secret", "PersistentVolumeClaim", "ConfigMap", "ServiceAccount"}.isdisjoint(
        kinds(objects)
    )
    assert volumes(objects)["tokens"]["secret"]["secretName"] == "abtest-tokens"
    assert env(objects)["ABTEST_EXPORTER_TOKEN_FILE"].endswith("/token")
    assert volumes(objects)["data"]["persistentVolumeClaim"] == {"claimName": "abtest-data"}
    assert volumes(objects)["config"]["configMap"]["name"] == "abtest-config"
    deployment = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert deployment["serviceAccountName"] == "abtest"
    assert container(objects)["image"] == (
        "registry.example/abtest/abtest-exporter@sha256:" + "0123456789abcdef" * 4
    )
    settings = settings_of(objects)  # first-class values, extraArgs and env, all parsed
    assert (settings.durability, settings.flush_interval) == ("interval", 2.0)
    assert settings.expire_after == 604800.0
    assert settings.stats_interval == 10.0
    assert container(objects)["envFrom"] == [{"configMapRef": {"name": "abtest-extra-env"}}]
    assert mounts(objects)["extra-ca"]["mountPath"] == "/etc/ssl/extra"


def test_tls_from_a_secret(chart: helm_python.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "secure-values.yaml"))
    settings = settings_of(objects)
    mount = mounts(objects)["tls"]["mountPath"]
    assert (settings.tls_cert, settings.tls_key) == (f"{mount}/tls.crt", f"{mount}/tls.key")
    assert volumes(objects)["tls"]["secret"]["secretName"] == "abtest-exporter-tls"
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["serverName"] == "abtest-exporter"
    test_pod = one(objects, "Pod")
    assert test_pod["spec"]["containers"][0]["command"][3].startswith("https://")


def test_config_file_from_values(chart: helm_python.Chart, tmp_path: Path) -> None:
    values = load_values(CHART / "ci" / "ephemeral-values.yaml")
    objects = render(chart, values)
    config_map = one(objects, "ConfigMap", "abtest-config")
    text = config_map["data"]["config.toml"]
    assert tomllib.loads(text)["experiments"]["checkout"]["control"] == "control"
    (tmp_path / "config.toml").write_text(text)  # the exporter's own reader accepts it
    assert load_file(tmp_path / "config.toml")["experiments"]["checkout"].alpha == 0.05
    args = build_parser().parse_args(container(objects)["args"])
    mount = mounts(objects)["config"]
    assert args.config == mount["mountPath"] + "/config.toml"
    assert volumes(objects)["config"]["configMap"]["name"] == "abtest-config"
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    assert annotations["example.org/owner"] == "growth"


def test_without_persistence_the_data_is_an_empty_dir(chart: helm_python.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "ephemeral-values.yaml"))
    assert "PersistentVolumeClaim" not in kinds(objects)
    assert volumes(objects)["data"] == {"name": "data", "emptyDir": {}}
    assert one(objects, "Deployment")["metadata"]["name"] == "abtest"  # fullnameOverride


def test_generic_pass_through_of_new_flags(chart: helm_python.Chart) -> None:
    """Flags added to the exporter later need no chart change: extraArgs and env carry them."""
    objects = render(
        chart,
        {
            "extraArgs": ["--log-format", "json"],
            "env": [{"name": "ABTEST_EXPORTER_LOG_LEVEL", "value": "debug"}],
        },
    )
    assert container(objects)["args"][-2:] == ["--log-format", "json"]
    assert env(objects)["ABTEST_EXPORTER_LOG_LEVEL"] == "debug"


# --- mode scaled -------------------------------------------------------------------


def test_scaled_makes_ingest_replicas_and_one_analyzer(chart: helm_python.Chart) -> None:
    values = load_values(SCALED_VALUES)
    objects = render(chart, values)
    assert "PersistentVolumeClaim" not in kinds(objects)  # one claim per replica instead
    ingest = one(objects, "StatefulSet", f"{FULLNAME}-ingest")
    assert ingest["spec"]["replicas"] == 3
    assert ingest["spec"]["serviceName"] == f"{FULLNAME}-ingest"
    box = exporter_container(ingest)
    assert "--role=ingest" in box["args"]
    replica = parse_container(box)
    assert (replica.role, replica.data_dir, replica.durability) == ("ingest", "/data", "sync")
    assert (replica.otlp_port, replica.prometheus_url) == (4318, None)
    (claim,) = ingest["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert {m["name"]: m["mountPath"] for m in box["volumeMounts"]}["data"] == "/data"
    pod_volumes = {v["name"] for v in ingest["spec"]["template"]["spec"]["volumes"]}
    assert "data" not in pod_volumes  # the claim template provides it
    assert box["resources"] == values["resources"]

    analyzer = one(objects, "Deployment", f"{FULLNAME}-analyzer")
    assert analyzer["spec"]["replicas"] == 1
    assert analyzer["spec"]["strategy"] == {"type": "Recreate"}
    box = exporter_container(analyzer)
    args = box["args"]
    role = args.index("--role=analyzer")
    assert args[role + 1] == f"--prometheus-url={PROMETHEUS_URL}"
    settings = parse_container(box)
    assert (settings.role, settings.prometheus_url) == ("analyzer", PROMETHEUS_URL)
    assert settings.prometheus_selector == 'job="abtest-exporter",namespace="monitoring"'
    assert settings.durability == "off"  # keeps no data file, and is not given a directory
    assert not any(arg.startswith("--data-dir") for arg in args)
    assert check_role(settings).persistent is False  # what the exporter checks at start
    assert "data" not in {m["name"] for m in box["volumeMounts"]}
    assert [p["name"] for p in box["ports"]] == ["http"]  # takes no OTLP
    assert box["resources"] == values["scaled"]["analyzer"]["resources"]
    # the two share the pod template: same hardening, image, account
    ingest_pod, analyzer_pod = (w["spec"]["template"]["spec"] for w in (ingest, analyzer))
    for key in ("securityContext", "serviceAccountName", "automountServiceAccountToken"):
        assert ingest_pod[key] == analyzer_pod[key]
    assert exporter_container(ingest)["securityContext"] == box["securityContext"]
    assert exporter_container(ingest)["image"] == box["image"]


def test_scaled_services_pick_the_right_component(chart: helm_python.Chart) -> None:
    objects = render(chart, load_values(SCALED_VALUES))
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    picks = {
        name: s["spec"]["selector"]["app.kubernetes.io/component"] for name, s in services.items()
    }
    assert picks == {
        FULLNAME: "ingest",  # where apps send records and OTLP
        f"{FULLNAME}-ingest": "ingest",  # headless: one target per replica
        f"{FULLNAME}-analyzer": "analyzer",  # the read API and results page
    }
    assert services[f"{FULLNAME}-ingest"]["spec"]["clusterIP"] == "None"
    assert {p["name"] for p in services[FULLNAME]["spec"]["ports"]} == {"http", "otlp-http"}
    assert [p["name"] for p in services[f"{FULLNAME}-analyzer"]["spec"]["ports"]] == ["http"]
    test_pod = one(objects, "Pod")  # helm test asks the ingest Service
    assert test_pod["spec"]["containers"][0]["command"][3] == f"http://{FULLNAME}:9470/-/ready"


def test_scaled_service_monitor_scrapes_replicas_and_analyzer_by_pod(
    chart: helm_python.Chart,
) -> None:
    objects = render(chart, load_values(SCALED_VALUES))
    monitor = one(objects, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    scraped = {
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "Service" and wanted.items() <= o["metadata"]["labels"].items()
    }
    # the headless Service and the analyzer; not the main Service (a second scrape)
    assert scraped == {f"{FULLNAME}-ingest", f"{FULLNAME}-analyzer"}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["relabelings"] == [
        {"action": "replace", "targetLabel": "job", "replacement": "abtest-exporter"},
        {
            "action": "replace",
            "sourceLabels": ["__meta_kubernetes_pod_name"],
            "targetLabel": "instance",
        },
    ]
    single = one(render(chart, {"serviceMonitor": {"enabled": True}}), "ServiceMonitor")
    (endpoint,) = single["spec"]["endpoints"]
    assert [r["targetLabel"] for r in endpoint["relabelings"]] == ["job"]


def test_scaled_ingress_policy_and_budget_point_at_their_component(
    chart: helm_python.Chart,
) -> None:
    values = load_values(SCALED_VALUES) | {
        "ingress": {"enabled": True},
        "networkPolicy": {
            "enabled": True,
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}],
        },
    }
    objects = render(chart, values)
    ingress = one(objects, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULLNAME}-analyzer", "port": {"name": "http"}}
    budget = one(objects, "PodDisruptionBudget", f"{FULLNAME}-ingest")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "ingest"
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["ingest", "analyzer"]}
    ]
    (rule,) = policy["ingress"]
    analyzer_peer = {
        "podSelector": {
            "matchLabels": {
                **SELECTOR,
                "app.kubernetes.io/component": "analyzer",
            }
        }
    }
    assert rule["from"] == [*values["networkPolicy"]["ingressFrom"], analyzer_peer]
    assert [p["port"] for p in rule["ports"]] == ["http", "otlp-http"]


def test_scaled_without_persistence_and_with_everything_else(
    chart: helm_python.Chart, tmp_path: Path
) -> None:
    """Tokens, TLS, a config file and no volume: both workloads get them, and the
    objects still pass kubernetes-validate."""
    values: Obj = {
        "mode": "scaled",
        "scaled": {"prometheusUrl": "https://prometheus.example:9090", "ingestReplicas": 1},
        "persistence": {"enabled": False},
        "auth": {"enabled": True, "metrics": True},
        "tls": {"enabled": True, "secretName": "abtest-exporter-tls"},
        "config": {"toml": '[experiments.checkout]\ncontrol = "control"\n'},
    }
    chart.validate_schema(values)
    objects = render(chart, values)
    ingest = one(objects, "StatefulSet")
    assert "volumeClaimTemplates" not in ingest["spec"]
    pod_volumes = {v["name"]: v for v in ingest["spec"]["template"]["spec"]["volumes"]}
    assert pod_volumes["data"] == {"name": "data", "emptyDir": {}}
    for workload in workloads(objects):
        settings = parse_container(exporter_container(workload))
        assert settings.tls_cert == "/etc/abtest-exporter/tls/tls.crt"
        names = {m["name"] for m in exporter_container(workload)["volumeMounts"]}
        assert {"tokens", "tls", "config", "tmp"} <= names
        assert exporter_container(workload)["startupProbe"]["httpGet"]["scheme"] == "HTTPS"
    built_in = [o for o in objects if o["kind"] not in CRD_KINDS]
    result = _kubernetes_validate(built_in, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scaled_notes_say_where_to_send_and_where_to_read(chart: helm_python.Chart) -> None:
    _, notes = render_all(chart, load_values(SCALED_VALUES))
    send = notes.index("apps send records and OTLP to the ingest replicas")
    read = notes.index("Read results")
    assert notes.index(f"http://{FULLNAME}.{NAMESPACE}.svc:9470", send) < read
    assert f"http://{FULLNAME}-analyzer.{NAMESPACE}.svc:9470" in notes[read:]
    assert f"port-forward service/{FULLNAME}-analyzer 9470:9470" in notes
    assert PROMETHEUS_URL in notes
    assert f"{FULLNAME}-ingest.{NAMESPACE}" in notes  # for the Collector's loadbalancing
    assert "abtest_analyzer_inputs_complete" in notes


# --- the chart's copies of grafana/ ------------------------------------------------


def chart_file_drift(root: Path) -> list[str]:
    """Differences between grafana/ and the chart's files/ (empty when in step)."""
    files = root / "helm" / "abtest-exporter" / "files"
    pairs = {
        root / "grafana" / "rules" / "abtest-rules.yaml": files / "abtest-rules.yaml",
        **{
            source: files / "dashboards" / source.name
            for source in (root / "grafana" / "dashboards").glob("*.json")
        },
    }
    drift = [
        f"{copy.relative_to(root)} differs from {source.relative_to(root)}"
        for source, copy in sorted(pairs.items())
        if not copy.exists() or not filecmp.cmp(source, copy, shallow=False)
    ]
    drift += [
        f"{stale.relative_to(root)} has no source in grafana/dashboards/"
        for stale in sorted((files / "dashboards").glob("*.json"))
        if stale not in pairs.values()
    ]
    return drift


def test_chart_files_are_the_grafana_files() -> None:
    assert chart_file_drift(ROOT) == [], "run scripts/sync-chart-files"


def test_drift_is_detected_and_the_sync_script_mends_it(tmp_path: Path) -> None:
    for part in ("grafana/dashboards", "grafana/rules", "helm/abtest-exporter"):
        shutil.copytree(ROOT / part, tmp_path / part)
    assert chart_file_drift(tmp_path) == []
    source = tmp_path / "grafana" / "dashboards" / "abtest-overview.json"
    dashboard = json.loads(source.read_text())
    dashboard["title"] += " (changed)"
    source.write_text(json.dumps(dashboard, indent=2) + "\n")
    rules = tmp_path / "grafana" / "rules" / "abtest-rules.yaml"
    rules.write_text(rules.read_text().replace("for: 10m", "for: 15m", 1))
    stale = tmp_path / "helm" / "abtest-exporter" / "files" / "dashboards" / "abtest-old.json"
    stale.write_text("{}")
    assert sorted(chart_file_drift(tmp_path)) == [
        "helm/abtest-exporter/files/abtest-rules.yaml differs from grafana/rules/abtest-rules.yaml",
        "helm/abtest-exporter/files/dashboards/abtest-old.json has no source in "
        "grafana/dashboards/",
        "helm/abtest-exporter/files/dashboards/abtest-overview.json differs from "
        "grafana/dashboards/abtest-overview.json",
    ]
    subprocess.run([str(ROOT / "scripts" / "sync-chart-files"), str(tmp_path)], check=True)
    assert chart_file_drift(tmp_path) == []
    # and the chart made from the mended copy carries the change
    with helm_python.Chart.load(tmp_path / "helm" / "abtest-exporter") as mended:
        objects = render(mended, {"grafanaDashboards": {"enabled": True}})
    overview = one(objects, "ConfigMap", f"{FULLNAME}-dashboard-overview")
    assert json.loads(overview["data"]["abtest-overview.json"])["title"].endswith("(changed)")
