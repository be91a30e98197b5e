"""Running real processes for tests: the exporter and a Prometheus server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def http(
    url: str, body: Any = None, method: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Exporter:
    """`abtest-exporter serve` as a child process on a free loopback port."""

    def __init__(
        self,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        data_dir: str | None = None,
        port: int | None = None,
        wait: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="abtest-data-")
        command = [sys.executable, "-m", "exporter.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--data-dir", self.data_dir, *args]
        # the log goes to a file: an unread pipe fills up and blocks the server
        self.log = Path(tempfile.mkstemp(prefix="abtest-log-")[1])
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            wait_for(self.ready, 30, "the exporter to start")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"exporter exited: {self.output()}")
        return http(self.url + "/-/ready")[0] == 200

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"exporter exited: {self.output()}")
        return http(self.url + "/-/healthy")[0] == 200

    def post(self, body: Any) -> tuple[int, Any]:
        status, raw = http(self.url + "/api/v1/records", body)
        return status, json.loads(raw)

    def get(self, path: str) -> Any:
        status, raw = http(self.url + path)
        assert status == 200, raw
        return json.loads(raw)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=20)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def self_signed(cert: Path, key: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 (and its key), made with openssl."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class AppThread:
    """A real aiohttp app on a loopback port, in a thread with its own event loop."""

    def __init__(self, app: web.Application, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),))

    def start(self) -> AppThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    async def _main(self) -> None:
        runner = web.AppRunner(self.app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def stop(self) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        raise RuntimeError("the prometheus binary is missing: run scripts/test (it installs it)")
    return found


class Prometheus:
    """A real Prometheus server scraping the given targets every second."""

    def __init__(self, workdir: Path, targets: Sequence[str], rules: Sequence[Path] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(r) for r in rules],
                    "scrape_configs": [
                        {"job_name": "abtest", "static_configs": [{"targets": list(targets)}]}
                    ],
                }
            )
        )
        self.process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: http(self.url + "/-/ready")[0] == 200, 30, "Prometheus to be ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        status, raw = http(self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        body = json.loads(raw)
        assert status == 200 and body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def wait_value(self, expr: str, expected: float, timeout: float = 20) -> None:
        def check() -> bool:
            result = self.query(expr)
            return len(result) == 1 and float(result[0]["value"][1]) == expected

        wait_for(check, timeout, f"{expr} == {expected}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)
