"""Issue 9, items 11, 12, 14 and 15: what an operator and a new user run into, each told
in one line, none a traceback."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from exporter.client import Client

from .conftest import Client as TestClient
from .helpers import Exporter, free_port, http, wait_for


async def test_names_with_braces_can_be_read_configured_and_deleted(client: TestClient) -> None:
    """Item 11: accepted, then 404 on every path that names them."""
    name, branch = "exp{v2}", "arm}{"
    body = {"queries": [{"experiment": name, "branch": branch, "latency_ms": 1, "success": True}]}
    assert (await client.post("/api/v1/records", json=body)).status == 200
    path = "/api/v1/experiments/" + urllib.parse.quote(name, safe="")
    assert (await client.get(path)).status == 200
    found = await client.get(f"{path}/branches/{urllib.parse.quote(branch, safe='')}")
    assert found.status == 200 and (await found.json())["query_count"] == 1
    assert (await client.put(f"{path}/config", json={"control": branch})).status == 200
    assert (await client.get(f"{path}/summary")).status == 200
    assert (await client.delete(path)).status == 200


def test_a_non_utf8_authorization_header_is_a_401(tmp_path: Path) -> None:
    """Item 12: a 500 with a traceback."""
    exporter = Exporter(data_dir=str(tmp_path), env={"ABTEST_EXPORTER_TOKEN": "s3cret"})
    try:
        with socket.create_connection(("127.0.0.1", exporter.port)) as sock:
            sock.sendall(
                b"POST /api/v1/records HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"Content-Type: application/json\r\nAuthorization: Bearer \xff\xfe\xc3\r\n\r\n{}"
            )
            sock.settimeout(5)
            assert sock.recv(100).startswith(b"HTTP/1.1 401")
        assert "Traceback" not in exporter.output()
    finally:
        exporter.stop()


def test_the_otlp_port_serves_otlp_only(tmp_path: Path) -> None:
    """Item 14: --otlp-port served the whole API, DELETE included."""
    otlp = free_port()
    exporter = Exporter(["--otlp-port", str(otlp), "--allow-clear-all", "true"],
                        data_dir=str(tmp_path))  # fmt: skip
    base = f"http://127.0.0.1:{otlp}"
    try:
        assert http(base + "/api/v1/experiments")[0] == 404
        assert http(base + "/api/v1/experiments", method="DELETE")[0] == 404
        assert http(base + "/metrics")[0] == 404
        assert http(base + "/-/ready")[0] == 200
        status, _ = http(base + "/v1/metrics", {"resourceMetrics": []})
        assert status == 200
        assert http(exporter.url + "/api/v1/experiments")[0] == 200  # the main port: all
    finally:
        exporter.stop()


async def test_gzip_only_when_accepted_with_a_positive_q(client: TestClient) -> None:
    """Item 14: `Accept-Encoding: gzip;q=0` still got gzip."""
    for header, gzipped in (("gzip", True), ("gzip;q=0", False), ("br, gzip; q=0.5", True),
                            ("identity", False), ("*;q=0", False)):  # fmt: skip
        response = await client.get(
            "/metrics", headers={"Accept-Encoding": header}, auto_decompress=False
        )
        assert (response.headers.get("Content-Encoding") == "gzip") is gzipped, header


async def test_a_json_batch_sent_to_the_otlp_path_is_refused(client: TestClient) -> None:
    """Item 15: answered 200 {} and nothing applied."""
    body = {"queries": [{"experiment": "e", "branch": "b", "latency_ms": 1, "success": True}]}
    response = await client.post("/v1/metrics", json=body)
    assert response.status == 400
    assert "/api/v1/records" in (await response.json())["message"]


def test_clear_all_is_off_unless_switched_on(tmp_path: Path) -> None:
    """Item 15: on by default, and open when no token is configured."""
    exporter = Exporter(data_dir=str(tmp_path))
    try:
        status, raw = http(exporter.url + "/api/v1/experiments", method="DELETE")
        assert status == 403 and b"--allow-clear-all true" in raw
    finally:
        exporter.stop()


def test_logs_are_quiet_about_scrapes_loud_about_refusals_and_can_be_json(
    tmp_path: Path,
) -> None:
    """Item 15: every scrape access-logged; OTLP points refused for a missing unit logged
    nowhere (the SDK ignores partial_success); no JSON log format."""
    exporter = Exporter(["--log-format", "json"], data_dir=str(tmp_path))
    try:
        for _ in range(3):
            assert http(exporter.url + "/metrics")[0] == 200
        point = {
            "attributes": [
                {"key": "abtest.experiment", "value": {"stringValue": "e"}},
                {"key": "abtest.branch", "value": {"stringValue": "b"}},
                {"key": "abtest.outcome", "value": {"stringValue": "success"}},
            ],
            "timeUnixNano": "1700000010000000000",
            "count": "2",
            "bucketCounts": ["2"],
        }
        metric = {"name": "abtest.query.duration", "unit": "",
                  "histogram": {"dataPoints": [point], "aggregationTemporality": 1}}  # fmt: skip
        body = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]}
        status, raw = http(exporter.url + "/v1/metrics", body)
        assert status == 200 and json.loads(raw)["partialSuccess"]["rejectedDataPoints"] == "1"
    finally:
        exporter.stop()
    lines = [json.loads(line) for line in exporter.output().splitlines() if line.strip()]
    messages = [entry["message"] for entry in lines]
    assert not any("GET /metrics" in m for m in messages)
    refused = [m for m in messages if "OTLP records refused (wrong_unit 2)" in m]
    assert len(refused) == 1 and "unit must be s or ms" in refused[0]
    assert {"time", "level", "logger", "message"} <= set(lines[0])


def test_the_demo_keeps_its_data_out_of_serves_directory(tmp_path: Path) -> None:
    """Item 15: the demo wrote into the same ./data as serve."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "demo", "--host", "127.0.0.1", "--port",
         str(port)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )  # fmt: skip
    try:
        wait_for(lambda: http(f"http://127.0.0.1:{port}/-/ready")[0] == 200, 30, "the demo")
        wait_for(
            lambda: b"checkout-button" in http(f"http://127.0.0.1:{port}/metrics")[1], 10, "data"
        )
        assert not (tmp_path / "data").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


def test_the_client_gives_up_at_close_on_a_wrong_url_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Item 15: the client waited up to 300 s at close on a wrong URL without a word."""
    client = Client(f"http://127.0.0.1:{free_port()}", close_timeout=1.0, retry_cap=0.2,
                    flush_interval=3600)  # fmt: skip
    client.record_query("e", "b", 1.0, True)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="exporter.client"):
        client.close()
    assert time.monotonic() - started < 5
    assert client.stats.failed == 1
    text = caplog.text
    assert "cannot deliver 1 records" in text and "giving up on 1 records" in text


def runs(args: list[str]) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_log_level_and_format_are_checked() -> None:
    result = runs(["serve", "--log-format", "xml"])
    assert result.returncode == 2
    assert "--log-format: must be one of text, json, got 'xml'" in result.stderr
