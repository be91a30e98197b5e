"""The commands that README.md's "Running in production" and helm/README.md give work."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import helm_python
import pytest

from tests.helpers import Exporter

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "abtest-exporter"
READMES = [ROOT / "README.md", ROOT / "helm" / "README.md"]


def shell_commands(text: str) -> list[str]:
    """Commands of the ```sh blocks, continuation lines joined."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                commands.append(command.strip())
    return commands


def production_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Running in production\n")
    return text[start : text.index("\n## ", start + 1)]


def test_the_section_comes_right_before_configuration() -> None:
    headings = re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), flags=re.M)
    assert headings[headings.index("Running in production") + 1] == "Configuration"
    section = production_section()
    for needed in (
        "Dockerfile",
        "helm install",
        "deploy/abtest-exporter.service",
        "One writer per data directory",
        ".backup",
        "Upgrading",
    ):
        assert needed in section, needed


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_helm_install_lines_render(readme: Path) -> None:
    installs = [c for c in shell_commands(readme.read_text()) if c.startswith("helm install")]
    assert installs
    with helm_python.Chart.load(CHART) as chart:
        for install in installs:
            words = shlex.split(install)
            assert words[:4] == ["helm", "install", "abtest", "./helm/abtest-exporter"]
            sets = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
            values = helm_python.parse_set_string(",".join(sets)) if sets else {}
            chart.validate_schema(values)
            rendered = chart.render(values, name="abtest", namespace="monitoring")
            made = "".join(rendered.values())
            assert "kind: Deployment" in made
            for part, kind in (
                ("serviceMonitor", "ServiceMonitor"),
                ("prometheusRule", "PrometheusRule"),
                ("grafanaDashboards", "ConfigMap"),
            ):
                assert (f"kind: {kind}\n" in made) == (f"{part}.enabled=true" in install)
            assert 'image: "REGISTRY/abtest-exporter:0.1.0"' in made


def test_the_backup_command_copies_a_running_exporter(tmp_path: Path) -> None:
    (snippet,) = re.findall(r'python -c \\\n\s*"(import sqlite3;[^"]+)"', production_section())
    live, restored = tmp_path / "live", tmp_path / "restored"
    live.mkdir()
    restored.mkdir()
    exporter = Exporter(data_dir=str(live))
    try:
        records = {
            "queries": [
                {"experiment": "checkout", "branch": b, "latency_ms": 5.0, "success": True}
                for b in ("control", "treatment") * 3
            ]
        }
        assert exporter.post(records)[0] == 200
        command = snippet.replace("/data/abtest.sqlite3", str(live / "abtest.sqlite3"))
        command = command.replace("/data/backup.sqlite3", str(restored / "abtest.sqlite3"))
        assert command != snippet
        subprocess.run([sys.executable, "-c", command], check=True, timeout=30)
        assert exporter.post(records)[0] == 200  # still running, and taking writes
    finally:
        assert exporter.stop() == 0
    copy = Exporter(data_dir=str(restored))
    try:
        branch = copy.get("/api/v1/experiments/checkout/branches/treatment")
        assert branch["query_count"] == 3  # what was acknowledged before the backup
    finally:
        assert copy.stop() == 0
