"""The rendered pod runs: no cluster here, so the real exporter is started with exactly the
arguments and environment the chart renders, its volumes laid out from the rendered
ConfigMaps and Secrets in a temporary directory (only mount paths, host and ports are
mapped). The probes, the tokens, TLS, the config file, the OTLP port and the helm-test
script are then tried against it; in mode scaled, an ingest replica and the analyzer."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.helpers import free_port, self_signed, wait_for

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "abtest-exporter"
TLS_SECRET = "abtest-exporter-tls"

Obj = dict[str, Any]


@dataclass
class Pod:
    process: subprocess.Popen[bytes]
    url: str
    otlp_url: str | None
    context: ssl.SSLContext | None
    mounts: dict[str, Path]
    objects: list[Obj]
    log: Path
    box: Obj  # the rendered container

    def request(
        self, path: str, body: Any = None, token: str | None = None, base: str | None = None
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request((base or self.url) + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read()


def render(values: Obj) -> list[Obj]:
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="abtest", namespace="monitoring")
    return [
        doc
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def make_certificate(directory: Path) -> tuple[str, str]:
    cert, key = self_signed(directory / "tls.crt", directory / "tls.key")
    return cert.read_text(), key.read_text()


def lay_out_volumes(objects: list[Obj], workload: Obj, root: Path) -> dict[str, Path]:
    """Each mount of the rendered container as a local directory, filled like the kubelet
    would from the rendered ConfigMap or Secret (or a StatefulSet's claim template).
    Returns mountPath -> local directory."""
    spec = workload["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    for claim in workload["spec"].get("volumeClaimTemplates", []):
        volumes[claim["metadata"]["name"]] = {"persistentVolumeClaim": {}}
    (box,) = spec["containers"]
    mapped: dict[str, Path] = {}
    for mount in box["volumeMounts"]:
        local = root / mount["name"]
        local.mkdir(parents=True)
        volume = volumes[mount["name"]]
        files: dict[str, str] = {}
        if "configMap" in volume:
            data = one(objects, "ConfigMap", volume["configMap"]["name"])["data"]
            files = {i["path"]: data[i["key"]] for i in volume["configMap"]["items"]}
        elif "secret" in volume and volume["secret"]["secretName"] == TLS_SECRET:
            cert, key = make_certificate(local)  # cert-manager's part
            files = {"tls.crt": cert, "tls.key": key}
        elif "secret" in volume:
            data = one(objects, "Secret", volume["secret"]["secretName"])["data"]
            files = {
                i["path"]: base64.b64decode(data[i["key"]]).decode()
                for i in volume["secret"]["items"]
            }
        else:
            assert set(volume) & {"persistentVolumeClaim", "emptyDir"}, volume
        for name, text in files.items():
            (local / name).write_text(text)
        mapped[mount["mountPath"]] = local
    return mapped


def localise(text: str, mounts: dict[str, Path]) -> str:
    for mount_path in sorted(mounts, key=len, reverse=True):
        if text == mount_path or text.startswith(mount_path + "/"):
            return str(mounts[mount_path]) + text[len(mount_path) :]
    return text


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    pods: list[Pod] = []

    def run(values: Obj, kind: str = "Deployment", name: str | None = None) -> Pod:
        objects = render(values)
        workload = one(objects, kind, name)
        mounts = lay_out_volumes(objects, workload, tmp_path / f"volumes-{len(pods)}")
        (box,) = workload["spec"]["template"]["spec"]["containers"]
        port, otlp_port = free_port(), free_port()
        args = []
        for arg in box["args"]:
            flag, _, value = arg.partition("=")
            if flag == "--host":
                value = "127.0.0.1"  # the pod listens on 0.0.0.0; here only loopback
            elif flag == "--port":
                value = str(port)
            elif flag == "--otlp-port":
                value = str(otlp_port)
            args.append(f"{flag}={localise(value, mounts)}" if value else arg)
        environ = {item["name"]: localise(item["value"], mounts) for item in box.get("env", [])}
        log = tmp_path / f"exporter-{len(pods)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "exporter.cli", *args],
                env={**os.environ, **environ},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        tls = "--tls-cert" in " ".join(args)
        context = None
        if tls:
            context = ssl.create_default_context(
                cafile=str(mounts["/etc/abtest-exporter/tls"] / "tls.crt")
            )
        scheme = "https" if tls else "http"
        otlp = any(a.startswith("--otlp-port") for a in args)
        pod = Pod(
            process,
            f"{scheme}://127.0.0.1:{port}",
            f"{scheme}://127.0.0.1:{otlp_port}" if otlp else None,
            context,
            mounts,
            objects,
            log,
            box,
        )
        pods.append(pod)

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            return pod.request("/-/healthy")[0] == 200

        wait_for(up, 30, "the exporter to start")
        return pod

    yield run
    for pod in pods:
        pod.process.terminate()
        assert pod.process.wait(timeout=20) == 0, pod.log.read_text()


RECORDS = {
    "queries": [{"experiment": "checkout", "branch": "control", "latency_ms": 4.0, "success": True}]
}


def probes_pass(pod: Pod) -> None:
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = pod.box[probe]["httpGet"]
        assert pod.url.startswith(get["scheme"].lower() + "://")
        path = get["path"]

        def answers(path: str = path) -> bool:
            return pod.request(path)[0] == 200

        wait_for(answers, 30, probe)


def helm_test_passes(pod: Pod) -> subprocess.CompletedProcess[str]:
    test = one(pod.objects, "Pod")
    command = test["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "-c"]
    url = command[3].replace("abtest-abtest-exporter:9470", pod.url.split("://")[1])
    return subprocess.run(
        [sys.executable, "-c", command[2], url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_defaults_run_and_keep_data_on_the_volume(start: Any) -> None:
    pod = start({"otlp": {"enabled": True}})
    probes_pass(pod)
    assert pod.request("/api/v1/records", RECORDS)[0] == 200
    assert (pod.mounts["/data"] / "abtest.sqlite3").exists()  # on the volume, not elsewhere
    status, metrics = pod.request("/metrics")
    assert status == 200
    assert b'abtest_queries_total{experiment="checkout",branch="control"} 1' in metrics
    assert pod.otlp_url
    assert pod.request("/v1/metrics", {}, base=pod.otlp_url)[0] == 200  # OTLP's own port
    result = helm_test_passes(pod)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("200")


def test_secure_values_run_with_tokens_and_tls(start: Any) -> None:
    values = yaml.safe_load((CHART / "ci" / "secure-values.yaml").read_text())
    pod = start(values)
    probes_pass(pod)  # over https, and open without a token
    secret = one(pod.objects, "Secret")["data"]
    write, read = (base64.b64decode(secret[k]).decode() for k in ("write-token", "metrics-token"))
    assert pod.request("/api/v1/records", RECORDS)[0] == 401
    assert pod.request("/api/v1/records", RECORDS, token=read)[0] == 401
    assert pod.request("/api/v1/records", RECORDS, token=write)[0] == 200
    assert pod.request("/metrics")[0] == 401
    assert pod.request("/metrics", token=read)[0] == 200
    result = helm_test_passes(pod)
    assert result.returncode == 0, result.stderr


def test_the_config_file_reaches_the_exporter(start: Any) -> None:
    values = yaml.safe_load((CHART / "ci" / "ephemeral-values.yaml").read_text())
    pod = start(values)
    probes_pass(pod)
    status, body = pod.request("/api/v1/experiments/checkout/config")
    assert status == 200
    config = json.loads(body)
    assert (config["control"], config["alpha"], config["min_sample_size"]) == ("control", 0.05, 100)


def test_the_helm_test_fails_when_nothing_answers(start: Any) -> None:
    pod = start({})
    pod.process.terminate()
    assert pod.process.wait(timeout=20) == 0
    result = helm_test_passes(pod)
    assert result.returncode != 0


SCALED = yaml.safe_load((CHART / "ci" / "scaled-values.yaml").read_text())


def test_scaled_ingest_replica_runs_with_its_rendered_args(start: Any) -> None:
    pod = start(SCALED, "StatefulSet", "abtest-abtest-exporter-ingest")
    assert "--role=ingest" in pod.box["args"]
    probes_pass(pod)
    assert pod.request("/api/v1/records", RECORDS)[0] == 200
    assert (pod.mounts["/data"] / "abtest.sqlite3").exists()  # on its claim
    status, metrics = pod.request("/metrics")
    assert status == 200
    assert b'abtest_queries_total{experiment="checkout",branch="control"} 1' in metrics
    assert b'role="ingest"' in metrics  # what the analyzer selects replicas by
    assert pod.otlp_url
    assert pod.request("/v1/metrics", {}, base=pod.otlp_url)[0] == 200
    result = helm_test_passes(pod)  # helm test asks the main Service: the replicas
    assert result.returncode == 0, result.stderr


def test_scaled_analyzer_runs_with_its_rendered_args_and_no_prometheus(start: Any) -> None:
    """Nothing listens at the Prometheus URL: the analyzer still starts, is healthy and
    ready (it keeps no data file), and says its inputs are not complete."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    values = SCALED | {"scaled": SCALED["scaled"] | {"prometheusUrl": nowhere}}
    pod = start(values, "Deployment", "abtest-abtest-exporter-analyzer")
    args = pod.box["args"]
    assert args[args.index("--role=analyzer") + 1] == f"--prometheus-url={nowhere}"
    probes_pass(pod)
    assert [list(path.iterdir()) for path in pod.mounts.values()] == [[]]  # /tmp only, empty
    status, metrics = pod.request("/metrics")
    assert status == 200
    assert b"abtest_analyzer_inputs_complete 0" in metrics
    assert b'role="analyzer"' in metrics
    status, body = pod.request("/api/v1/records", RECORDS)
    assert status == 404 and b"analyzer" in body  # records go to the replicas
