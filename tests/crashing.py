"""Kill -9 a real exporter under concurrent ingest, again and again (for the crash test
and the longer benchmarks/crash.py)."""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass, field

from .helpers import Exporter, free_port, http
from .test_exposition import key, samples

KINDS = ("queries", "failures", "events")


@dataclass
class CrashResult:
    kills: int
    races: int = 0  # restarts where two exporters raced for the data directory
    acknowledged: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    # sent, but the answer never came (the kill hit mid-request): may or may not be applied
    uncertain: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    totals: dict[str, float] = field(default_factory=dict)


def start_racing(data_dir: str, ports: tuple[int, int]) -> Exporter:
    """Two exporters started at once on one data directory: exactly one may serve; the
    other must stop with the one line naming the winner."""
    racers = [Exporter(data_dir=data_dir, port=port, wait=False) for port in ports]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for racer in racers:
            try:
                ready = racer.process.poll() is None and http(racer.url + "/-/ready")[0] == 200
            except OSError:  # not listening yet
                ready = False
            if ready:
                loser = racers[1 - racers.index(racer)]
                assert loser.process.wait(30) == 2, loser.output()
                assert f"(pid {racer.process.pid})" in loser.output(), loser.output()
                return racer
        time.sleep(0.05)
    raise TimeoutError("neither racer became ready")


def crash_cycle(
    data_dir: str, kills: int, seed: int, writers: int = 4, race: bool = False
) -> CrashResult:
    """Kill -9 under load, `kills` times; with `race`, every restart is two exporters
    racing for the directory (as a rolling update on a shared volume does)."""
    rng = random.Random(seed)
    result = CrashResult(kills)
    lock = threading.Lock()
    exporter = Exporter(data_dir=data_dir)
    ports = (exporter.port, free_port())
    target = [exporter.port]

    def writer(seed: float, stop: threading.Event) -> None:
        local = random.Random(seed)
        while not stop.is_set():
            size = local.randint(1, 300)
            failures = local.randint(0, size)
            body = {
                "queries": [
                    {
                        "experiment": "crash",
                        "branch": f"b{local.randint(0, 2)}",
                        "latency_ms": local.random() * 100,
                        "success": i >= failures,
                    }
                    for i in range(size)
                ],
                "events": [{"experiment": "crash", "branch": "b0", "event": "x", "value": 1.0}],
            }
            try:
                status, _ = http(f"http://127.0.0.1:{target[0]}/api/v1/records", body)
            except OSError as exc:
                if "refused" not in str(exc):
                    tally(result.uncertain, size, failures)
                time.sleep(0.02)  # down: being restarted
                continue
            tally(result.acknowledged if status == 200 else result.uncertain, size, failures)

    def tally(into: dict[str, int], size: int, failures: int) -> None:
        with lock:
            into["queries"] += size
            into["failures"] += failures
            into["events"] += 1

    for _ in range(kills):
        stop = threading.Event()
        threads = [
            threading.Thread(target=writer, args=(rng.random(), stop)) for _ in range(writers)
        ]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.5, 1.5))
        exporter.process.send_signal(signal.SIGKILL)
        exporter.process.wait(10)
        stop.set()
        for thread in threads:
            thread.join()
        if race:
            exporter = start_racing(data_dir, ports)
            result.races += 1
        else:
            exporter = Exporter(data_dir=data_dir, port=ports[0])
        target[0] = exporter.port
    try:
        found = samples(http(exporter.url + "/metrics")[1].decode())
        result.totals = {
            "queries": sum(v for (n, _), v in found.items() if n == "abtest_queries_total"),
            "failures": sum(v for (n, _), v in found.items() if n == "abtest_query_failures_total"),
            "events": found.get(
                key("abtest_event_value_count", experiment="crash", branch="b0", event="x"), 0.0
            ),
        }
    finally:
        exporter.stop()
    return result
