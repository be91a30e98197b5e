"""The public API is what it says: the README's examples pass mypy --strict, and the
client stays light (an app that only sends records loads no numpy, scipy or server)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_examples_pass_mypy_strict(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 3
    files = []
    for number, block in enumerate(blocks):
        path = tmp_path / f"readme_example_{number}.py"
        path.write_text(block)
        files.append(str(path))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            *files,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_the_client_loads_no_numpy_scipy_or_aiohttp_server() -> None:
    heavy = ("numpy", "scipy", "aiohttp.web", "opentelemetry.sdk")
    script = (
        "import json, sys, exporter.client\n"
        f"heavy = {heavy!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules"
        " if any(m == h or m.startswith(h + '.') for h in heavy))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []


def test_record_methods_have_named_parameters() -> None:
    import inspect

    from exporter import ABMetrics

    assert list(inspect.signature(ABMetrics.record_query).parameters) == [
        "self",
        "experiment",
        "branch",
        "latency_ms",
        "success",
    ]
    assert list(inspect.signature(ABMetrics.record_event).parameters) == [
        "self",
        "experiment",
        "branch",
        "event",
        "value",
    ]
    metrics = ABMetrics()
    metrics.record_query("checkout", "treatment", latency_ms=12.5, success=True)
    metrics.record_event("checkout", "treatment", event="revenue", value=42.0)
    branch = metrics.get_branch_metrics("checkout", "treatment")
    assert branch is not None and branch.query_count == 1


def test_both_clients_share_one_options_object() -> None:
    from exporter.client import AsyncClient, Client, ClientOptions

    options = ClientOptions(batch_size=7, token="t")
    client = Client("http://127.0.0.1:9", options, flush_interval=0.01)
    try:
        assert client.options == ClientOptions(batch_size=7, token="t", flush_interval=0.01)
    finally:
        client.close()
    assert AsyncClient("http://127.0.0.1:9", options).options == options
    try:
        AsyncClient("http://127.0.0.1:9", on_full="block")
    except ValueError:
        pass
    else:
        raise AssertionError("an async client must not block the event loop")
