"""Issue 9: every resource bounded (series, configs, bodies, memory, connections, time),
and every refusal said in one clear line."""

from __future__ import annotations

import gzip
import json
import socket
import time
from pathlib import Path
from typing import Any

from exporter import ABMetrics
from exporter.serve.server import create_app
from exporter.serve.settings import Settings

from .conftest import Client
from .helpers import Exporter, http, wait_for
from .otlp_messages import field

Q = {"experiment": "e", "branch": "control", "latency_ms": 12.5, "success": True}


async def test_series_are_bounded_in_all_not_per_factor(aiohttp_client: Any) -> None:
    """Issue 9, item 6: limits per experiment x branch x event allowed 100 M series;
    20 small requests made 200k."""
    metrics = ABMetrics()
    client: Client = await aiohttp_client(create_app(metrics, Settings(max_series=50)))
    statuses = []
    for request in range(20):
        events = [
            {"experiment": f"x{request}", "branch": "b", "event": f"ev{i}", "value": 1.0}
            for i in range(10)
        ]
        statuses.append((await client.post("/api/v1/records", json={"events": events})).status)
    assert statuses.count(200) == 4 and statuses.count(422) == 16  # 11 series each
    assert metrics.stats().total_branches_tracked == 4
    text = await (await client.get("/metrics")).text()
    assert 'abtest_exporter_series{kind="event"} 40' in text
    assert 'reason="limit_series"} 160' in text  # counted in records


async def test_configs_are_bounded_deletable_and_guarded(aiohttp_client: Any) -> None:
    """Issue 9, item 6: PUT config had no limit, configs survived clear-all and could not
    be deleted, and PUT bypassed the memory guard."""
    settings = Settings(max_experiments=3, max_branches=4, allow_clear_all=True)
    metrics = ABMetrics()
    client: Client = await aiohttp_client(create_app(metrics, settings))
    for name in ("a", "b", "c"):
        assert (await client.put(f"/api/v1/experiments/{name}/config", json={})).status == 200
    over = await client.put("/api/v1/experiments/d/config", json={})
    assert over.status == 422 and "delete one first" in (await over.json())["error"]
    wide = {"allocation": {f"b{i}": 1 for i in range(5)}}
    assert (await client.put("/api/v1/experiments/a/config", json=wide)).status == 422
    assert (await client.delete("/api/v1/experiments/a/config")).status == 200
    assert (await client.delete("/api/v1/experiments/a/config")).status == 404
    assert (await client.put("/api/v1/experiments/d/config", json={"alpha": 0.01})).status == 200
    assert (await client.delete("/api/v1/experiments")).status == 200
    assert metrics.get_config("d").alpha == 0.05  # clear-all took the API configs too
    guarded: Client = await aiohttp_client(create_app(ABMetrics(), Settings(max_memory_bytes=1)))
    refused = await guarded.put("/api/v1/experiments/a/config", json={})
    assert refused.status == 503 and refused.headers["Retry-After"] == "5"


async def test_bodies_are_refused_before_they_are_buffered(aiohttp_client: Any) -> None:
    """Issue 9, item 6: JSON bodies were buffered to 64 MiB before the 16 MiB check."""
    metrics = ABMetrics()
    client: Client = await aiohttp_client(create_app(metrics, Settings(max_body_bytes=100_000)))
    bomb = gzip.compress(b'{"queries": [' + b" " * 50_000_000 + b"]}")
    assert len(bomb) < 100_000
    started = time.monotonic()
    response = await client.post(
        "/api/v1/records",
        data=bomb,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status == 413 and "100000 bytes" in (await response.json())["error"]
    assert time.monotonic() - started < 5  # stopped early, not after inflating 50 MB
    big = await client.post(
        "/api/v1/records",
        data=b"x" * 300_000,
        headers={"Content-Type": "application/json"},
    )
    assert big.status == 413  # by its Content-Length, before reading
    assert metrics.stats().total_queries_recorded == 0


async def test_the_inflight_budget_turns_writes_away_politely(aiohttp_client: Any) -> None:
    import asyncio

    settings = Settings(max_inflight_bytes=1000, max_body_bytes=1_000_000)
    metrics = ABMetrics()
    client: Client = await aiohttp_client(create_app(metrics, settings))
    body = json.dumps({"queries": [Q] * 100}).encode()  # ~8 KB each

    async def slow_body() -> Any:
        async def chunks() -> Any:
            yield body[:4000]
            await asyncio.sleep(0.5)
            yield body[4000:]

        return await client.post(
            "/api/v1/records", data=chunks(), headers={"Content-Type": "application/json"}
        )

    first = asyncio.create_task(slow_body())
    await asyncio.sleep(0.2)
    second = await client.post(
        "/api/v1/records", data=body, headers={"Content-Type": "application/json"}
    )
    assert second.status == 503 and second.headers["Retry-After"] == "1"
    assert (await first).status == 200  # one body is always let through
    assert metrics.stats().total_queries_recorded == 100


def test_slow_and_idle_connections_are_closed_and_capped(tmp_path: Path) -> None:
    """Issue 9, item 7: 1,100 slow connections held every descriptor, /metrics failed,
    and the log took 111,638 tracebacks; idle keep-alive connections lived 3,630 s."""
    exporter = Exporter(["--idle-timeout", "1", "--max-connections", "20"], data_dir=str(tmp_path))
    sockets: list[socket.socket] = []
    try:
        for _ in range(40):  # slowloris: headers that never finish
            sock = socket.create_connection(("127.0.0.1", exporter.port))
            sock.sendall(b"POST /api/v1/records HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        refused = 0
        for sock in sockets[20:]:
            sock.settimeout(5)
            refused += b"503" in sock.recv(200)
        assert refused == 20  # past the cap: answered 503 and closed at once
        time.sleep(1.5)
        closed = 0
        for sock in sockets[:20]:
            sock.settimeout(5)
            try:
                closed += sock.recv(100) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == 20  # the idle timeout also bounds the time to send headers
        assert http(exporter.url + "/metrics")[0] == 200
        idle = socket.create_connection(("127.0.0.1", exporter.port))
        idle.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.settimeout(5)
        assert b"200 OK" in idle.recv(1000)
        time.sleep(1.5)
        assert idle.recv(100) == b""  # keep-alive ends after the idle timeout
        text = http(exporter.url + "/metrics")[1].decode()
        assert "abtest_exporter_refused_connections_total 20" in text
        assert "Traceback" not in exporter.output()
    finally:
        for sock in sockets:
            sock.close()
        exporter.stop()


def test_a_slow_body_times_out_with_408(tmp_path: Path) -> None:
    exporter = Exporter(["--body-timeout", "1"], data_dir=str(tmp_path))
    try:
        sock = socket.create_connection(("127.0.0.1", exporter.port))
        sock.sendall(
            b"POST /api/v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        sock.settimeout(10)
        assert b"408" in sock.recv(1000)
        sock.close()
        assert exporter.get("/api/v1/stats")["total_queries_recorded"] == 0
    finally:
        exporter.stop()


def test_a_client_leaving_mid_body_is_not_a_server_error(tmp_path: Path) -> None:
    """Issue 9, item 14: logged as a 500."""
    exporter = Exporter(data_dir=str(tmp_path))
    try:
        sock = socket.create_connection(("127.0.0.1", exporter.port))
        sock.sendall(
            b"POST /api/v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"queries": ['
        )
        sock.close()
        time.sleep(0.5)
        assert exporter.post({"queries": [Q]})[0] == 200
        assert " 500 " not in exporter.output() and "Traceback" not in exporter.output()
    finally:
        exporter.stop()


def test_memory_stays_bounded_under_the_worst_requests_within_the_limits(
    tmp_path: Path,
) -> None:
    """Issue 9, item 6: 16 concurrent 1 MiB gzip bombs peaked at 1,044 MiB with a 300 MiB
    memory limit. Now bodies stream under their limit and the in-flight budget, and
    the memory guard runs before a body is read."""
    import concurrent.futures
    import urllib.request

    exporter = Exporter(
        ["--max-memory-bytes", str(300 * 2**20), "--max-body-bytes", str(16 * 2**20)],
        data_dir=str(tmp_path),
    )
    bomb = gzip.compress(b'{"queries": [' + b" " * (200 * 2**20) + b"]}")
    queries = [{**Q, "experiment": f"e{i % 50}", "branch": f"b{i % 4}"} for i in range(50_000)]
    valid = json.dumps({"queries": queries}).encode()
    peak = 0

    def send(body: bytes, gzipped: bool) -> int:
        headers = {"Content-Type": "application/json"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        request = urllib.request.Request(
            exporter.url + "/api/v1/records", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            jobs = [pool.submit(send, bomb, True) for _ in range(16)]
            jobs += [pool.submit(send, valid, False) for _ in range(16)]
            while not all(job.done() for job in jobs):
                peak = max(peak, rss(exporter.process.pid))
                time.sleep(0.05)
            statuses = [job.result() for job in jobs]
        assert statuses[:16].count(413) + statuses[:16].count(503) == 16
        assert 200 in statuses[16:]
        print(f"peak RSS {peak / 2**20:.0f} MiB; answers {sorted(statuses)}")
        assert peak < 400 * 2**20, peak  # the limit, plus one request being parsed
        applied = exporter.get("/api/v1/stats")["total_queries_recorded"]
        assert applied == statuses[16:].count(200) * 50_000
    finally:
        exporter.stop()
    wait_for(lambda: exporter.process.poll() is not None, 10, "the exporter to stop")


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    with open(f"/proc/{pid}/status") as handle:
        line = next(ln for ln in handle if ln.startswith("VmRSS"))
        return int(line.split()[1]) * 1024


def empty_points_request(points: int) -> bytes:
    """An OTLP protobuf request of `points` empty histogram points: two bytes each on the
    wire, the most a body can inflate to once decoded."""
    histogram = b"\x0a\x00" * points + b"\x10\x01"  # data_points..., delta temporality
    metric = field(1, b"abtest.query.duration") + field(9, histogram)
    return field(1, field(2, field(2, metric)))  # resource, scope, metric


def test_memory_stays_bounded_under_the_worst_otlp_bodies(tmp_path: Path) -> None:
    """Review of issue 9: 15 MB of empty OTLP points took 890 MB (charged at 4x their
    size, and one body always fits). Now the body limit (4 MiB) and the charge at the
    worst measured weight keep several of them to one at a time."""
    import concurrent.futures
    import urllib.request

    exporter = Exporter(["--max-memory-bytes", str(300 * 2**20)], data_dir=str(tmp_path))
    body = empty_points_request(2_090_000)
    assert 3.98 * 2**20 < len(body) < 4 * 2**20
    peak = 0

    def send() -> int:
        request = urllib.request.Request(
            exporter.url + "/v1/metrics", data=body, method="POST",
            headers={"Content-Type": "application/x-protobuf"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(send) for _ in range(8)]
            while not all(job.done() for job in jobs):
                peak = max(peak, rss(exporter.process.pid))
                time.sleep(0.02)
            statuses = sorted(job.result() for job in jobs)
        print(f"peak RSS {peak / 2**20:.0f} MiB; answers {statuses}")
        assert 200 in statuses and set(statuses) <= {200, 503}
        assert peak < 400 * 2**20, peak
        assert exporter.healthy()
    finally:
        exporter.stop()
