"""The command line: serve, demo, status, config file, environment, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import build_parser, settings_from

from .helpers import Exporter, wait_for


def test_sigterm_shuts_down_gracefully(exporter: Exporter) -> None:
    assert exporter.stop(signal.SIGTERM) == 0


def test_config_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "exporter.toml"
    config.write_text(
        """
[server]
buckets = [0.01, 0.1, 1.0]

[experiments.checkout]
control = "baseline"
allocation = { baseline = 90, treatment = 10 }
alpha = 0.01
"""
    )
    process = Exporter(env={"ABTEST_EXPORTER_CONFIG": str(config)})
    try:
        assert process.get("/api/v1/experiments/checkout/config")["control"] == "baseline"
        process.post(
            {
                "queries": [
                    {
                        "experiment": "checkout",
                        "branch": "baseline",
                        "latency_ms": 50,
                        "success": True,
                    }
                ]
            }
        )
        branch = process.get("/api/v1/experiments/checkout/branches/baseline")
        assert [b[0] for b in branch["latency_buckets"]] == [0.01, 0.1, 1.0, "+Inf"]
        assert process.get("/api/v1/experiments/checkout")["control"] == "baseline"
    finally:
        process.stop()


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABTEST_EXPORTER_PORT", "1234")
    monkeypatch.setenv("ABTEST_EXPORTER_BUCKETS", "0.5,1")
    args = build_parser().parse_args(["serve"])
    settings = settings_from(args)
    assert (settings.port, settings.buckets) == (1234, (0.5, 1.0))
    args = build_parser().parse_args(["serve", "--port", "4321"])
    assert settings_from(args).port == 4321


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[experiments.e]\nalpha = 3\n", "experiments.e.alpha"),
        ("[server]\nbuckets = [1, 0.5]\n", "strictly increasing"),
        ("[server]\nprot = 1\n", "unknown key server.prot"),
        ("[nonsense]\n", "unknown table"),
    ],
)
def test_bad_config_stops_the_start_with_a_clear_message(
    tmp_path: Path, content: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_demo_feeds_data_and_status_prints_a_table() -> None:
    process = Exporter(["--demo"])
    try:
        wait_for(
            lambda: process.get("/api/v1/stats")["total_queries_recorded"] > 200, 20, "demo data"
        )
        result = subprocess.run(
            [sys.executable, "-m", "exporter.cli", "status", "--url", process.url],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    finally:
        process.stop()
    out = result.stdout
    assert "checkout-button" in out and "search-ranking" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("branch"))
    assert lines[header + 1].startswith("control")  # control first, then treatments
    assert lines[header + 2].startswith("treatment") and lines[header + 2].endswith(" ms")
    comparisons = next(i for i, line in enumerate(lines) if line.startswith("vs control"))
    assert "lift CI (always valid)" in lines[comparisons] and "verdict" in lines[comparisons]
    assert any(" success_ratio " in line for line in lines[comparisons:])
    assert "SRM p=" in out and "winner on success_ratio" in out
    assert "SIGNIFICANT" not in out  # verdicts say which way: BETTER / WORSE / inconclusive


def status_of(url: str, *flags: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABTEST_EXPORTER_")}
    if token is not None:
        env["ABTEST_EXPORTER_METRICS_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", "status", "--url", url, *flags],
        capture_output=True, text=True, timeout=30, check=False, env=env,
    )  # fmt: skip


def known_queries() -> list[dict[str, object]]:
    """shop: treatment succeeds more (90% vs 80%) and is slower (+10 ms), 50/50;
    skewed: the same effects on a 3000/2000 split (a sample-ratio mismatch)."""
    queries: list[dict[str, object]] = []
    for experiment, sizes in (("shop", (3000, 3000)), ("skewed", (3000, 2000))):
        for (branch, success, latency), size in zip(
            (("control", 8, 100.0), ("treatment", 9, 110.0)), sizes, strict=True
        ):
            queries += [{"experiment": experiment, "branch": branch, "success": i % 10 < success,
                         "latency_ms": latency + i % 7} for i in range(size)]  # fmt: skip
    return queries


def test_status_says_better_worse_and_flags_srm_with_the_read_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    process = Exporter(["--stats-interval", "0.2"],
                       env={"ABTEST_EXPORTER_METRICS_TOKEN_FILE": str(token_file)})  # fmt: skip
    try:
        assert process.post({"queries": known_queries(), "events": [
            {"experiment": "shop", "branch": b, "event": "flat", "value": 1.0}
            for b in ("control", "treatment") for _ in range(3)]})[0] == 200  # fmt: skip
        refused = status_of(process.url)
        shown = status_of(process.url, token="s3cret")
        everything = status_of(process.url, "--all", token="s3cret")
    finally:
        process.stop()
    assert refused.returncode == 1 and "401" in refused.stderr
    assert shown.returncode == 0, shown.stderr
    shop, skewed = shown.stdout.split("\nskewed")
    rows = {tuple(line.split()[:2]): line for line in shop.splitlines()
            if line.startswith(("treatment ", "control "))}  # fmt: skip
    success = rows["treatment", "success_ratio"]
    assert "80.00%" in success and "90.00%" in success and "+10.00 pp" in success
    assert "+12.50%" in success and success.endswith("BETTER")
    assert rows["treatment", "latency_mean"].endswith("WORSE")
    assert "winner on success_ratio: treatment" in shop
    assert "SAMPLE-RATIO MISMATCH" in skewed
    verdicts = [
        line
        for line in skewed.splitlines()
        if line.startswith("treatment") and ("success_ratio" in line or "mean" in line)
    ]
    assert len(verdicts) >= 2 and all(v.endswith("inconclusive (SRM: untrusted)") for v in verdicts)
    assert "winner on success_ratio: none yet" in skewed
    # event_mean:flat has no spread: hidden unless --all
    assert "event_mean:flat" not in shown.stdout and "--all shows them" in shop
    assert "event_mean:flat" in everything.stdout


def test_status_reports_an_unreachable_exporter() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "status", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1 and "cannot reach" in result.stderr


def test_second_listener_for_otlp() -> None:
    import json

    from .helpers import free_port, http
    from .test_otlp import point, request

    otlp_port = free_port()
    process = Exporter(["--otlp-port", str(otlp_port)])
    try:
        status, raw = http(f"http://127.0.0.1:{otlp_port}/v1/metrics", request([point()]))
        assert (status, json.loads(raw)) == (200, {})
        assert process.get("/api/v1/stats")["total_queries_recorded"] == 3
    finally:
        process.stop()
