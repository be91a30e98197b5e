"""A small load generator for the exporter's HTTP ingest (loopback only)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field

from .common import run_threads


def batch_body(size: int, seed: int = 0) -> bytes:
    queries = [
        {
            "experiment": f"bench-{(seed + i) % 20}",
            "branch": ("control", "treatment")[i % 2],
            "latency_ms": float((i * 37 + seed) % 500),
            "success": i % 10 != 0,
        }
        for i in range(size)
    ]
    return json.dumps({"queries": queries}).encode()


@dataclass
class LoadResult:
    requests: int = 0
    records: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def post_once(
    connection: http.client.HTTPConnection, path: str, body: bytes
) -> tuple[bool, http.client.HTTPConnection]:
    """POST `body` on a keep-alive connection: (answered 200, the connection to use next:
    a new one to the same server when this one failed)."""
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status == 200, connection
    except OSError:
        connection.close()
        return False, http.client.HTTPConnection(connection.host, connection.port, timeout=30)


def drive(
    port: int,
    seconds: float,
    workers: int,
    body: bytes,
    records_per_body: int,
    pause: float = 0.0,
) -> LoadResult:
    """`workers` keep-alive connections posting `body` to 127.0.0.1:`port` for `seconds`."""
    result = LoadResult()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def work() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            ok, connection = post_once(connection, "/api/v1/records", body)
            elapsed = time.perf_counter() - started
            with lock:
                result.requests += 1
                result.latencies.append(elapsed)
                if ok:
                    result.records += records_per_body
                else:
                    result.errors += 1
            if pause:
                time.sleep(pause)
        connection.close()

    result.seconds = run_threads([work] * workers)
    return result
