"""deploy/abtest-exporter.service: hardened, and its command is the real CLI."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from exporter.cli import build_parser, settings_from

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "abtest-exporter.service"


def directives(text: str) -> dict[str, list[str]]:
    """`Section.Key` to its values in order (systemd allows a key more than once)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key}", []).append(value)
    return found


def test_the_unit_is_hardened() -> None:
    unit = directives(UNIT.read_text())
    expected = {
        "Service.DynamicUser": "yes",
        "Service.StateDirectory": "abtest-exporter",
        "Service.ProtectSystem": "strict",
        "Service.NoNewPrivileges": "yes",
        "Service.ProtectHome": "yes",
        "Service.PrivateTmp": "yes",
        "Service.CapabilityBoundingSet": "",
        "Service.KillSignal": "SIGTERM",
        "Install.WantedBy": "multi-user.target",
    }
    for key, value in expected.items():
        assert unit[key] == [value], key
    assert "Service.User" not in unit  # DynamicUser makes the user


def test_exec_start_is_the_real_cli_on_the_state_directory() -> None:
    unit = directives(UNIT.read_text())
    (exec_start,) = unit["Service.ExecStart"]
    program, *args = shlex.split(exec_start)
    assert program == "/opt/abtest-exporter/bin/abtest-exporter"
    # systemd sets STATE_DIRECTORY to /var/lib/<StateDirectory>
    args = [a.replace("${STATE_DIRECTORY}", "/var/lib/abtest-exporter") for a in args]
    settings = settings_from(build_parser().parse_args(args), environ={})
    assert settings.data_dir == "/var/lib/abtest-exporter"
    assert settings.durability == "sync"


def _exposure(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "scripts/test installs systemd for systemd-analyze"
    # --threshold=20: fail above an exposure of 2.0 (of 10); "OK" ends at 3.9
    return subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_systemd_analyze_rates_the_unit_low_exposure(tmp_path: Path) -> None:
    copy = tmp_path / UNIT.name  # the unit's name must end in .service
    shutil.copy(UNIT, copy)
    result = _exposure(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Overall exposure level for abtest-exporter.service: 1." in result.stdout


def _level(result: subprocess.CompletedProcess[str]) -> float:
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_systemd_analyze_refuses_a_bare_unit(tmp_path: Path) -> None:
    bare = tmp_path / "abtest-exporter.service"
    bare.write_text("[Service]\nExecStart=/opt/abtest-exporter/bin/abtest-exporter serve\n")
    result = _exposure(bare)
    assert result.returncode != 0
    assert _level(result) > 9


@pytest.mark.parametrize(
    "drop", ["DynamicUser", "PrivateDevices", "CapabilityBoundingSet", "RestrictAddressFamilies"]
)
def test_each_hardening_line_counts(tmp_path: Path, drop: str) -> None:
    full = tmp_path / "full" / UNIT.name
    weaker = tmp_path / "weaker" / UNIT.name
    for path in (full, weaker):
        path.parent.mkdir()
    shutil.copy(UNIT, full)
    lines = UNIT.read_text().splitlines()
    kept = [line for line in lines if not line.startswith(drop + "=")]
    assert len(kept) == len(lines) - 1
    weaker.write_text("\n".join(kept) + "\n")
    assert _level(_exposure(weaker)) > _level(_exposure(full))
