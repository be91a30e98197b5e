"""Soak: steady ingest with a scrape every second, then exact totals and flat memory.

    .venv/bin/python -m benchmarks.soak --seconds 300 --rate 20000

Prints the rate held, the duration, p99 ingest and scrape latency, and the
exporter's RSS at the start (after warm-up) and at the end.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from tests.helpers import Exporter
from tests.helpers import http as request
from tests.test_exposition import samples

from .load import LoadResult, batch_body, drive


@dataclass
class SoakResult:
    seconds: float
    ingest: LoadResult
    scrape_p99: float
    scrapes: int
    rss_start: int
    rss_end: int
    exact: bool


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def soak(seconds: float, rate: float, batch: int = 500, warmup: float = 3.0) -> SoakResult:
    exporter = Exporter(["--stats-interval", "1"], data_dir=tempfile.mkdtemp(prefix="abtest-soak-"))
    body = batch_body(batch)
    per_request = batch / rate  # seconds between requests, one worker
    try:
        drive(exporter.port, warmup, 1, body, batch, pause=per_request)  # warm up: caches, pages
        start_rss = rss(exporter.process.pid)
        before = total(exporter)
        scrape_times: list[float] = []
        stop = threading.Event()

        def scraper() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=30)
            while not stop.wait(1.0):
                started = time.perf_counter()
                connection.request("GET", "/metrics")
                connection.getresponse().read()
                scrape_times.append(time.perf_counter() - started)

        thread = threading.Thread(target=scraper)
        thread.start()
        result = drive(exporter.port, seconds, 1, body, batch, pause=per_request)
        stop.set()
        thread.join()
        end_rss = rss(exporter.process.pid)
        exact = total(exporter) - before == result.records
        scrape_times.sort()
        p99 = scrape_times[min(len(scrape_times) - 1, int(0.99 * len(scrape_times)))]
        return SoakResult(seconds, result, p99, len(scrape_times), start_rss, end_rss, exact)
    finally:
        exporter.stop()


def total(exporter: Exporter) -> float:
    found = samples(request(exporter.url + "/metrics")[1].decode())
    return sum(v for (name, _), v in found.items() if name == "abtest_queries_total")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--rate", type=float, default=20_000.0, help="records per second")
    args = parser.parse_args()
    r = soak(args.seconds, args.rate)
    growth = (r.rss_end - r.rss_start) / r.rss_start
    flat = growth < 0.10
    print(
        f"soak {r.seconds:.0f} s at {r.ingest.rate:,.0f} records/s ({r.ingest.requests} requests, "
        f"{r.ingest.errors} errors), {r.scrapes} scrapes\n"
        f"p99 ingest {r.ingest.percentile(0.99) * 1000:.1f} ms, "
        f"p99 scrape {r.scrape_p99 * 1000:.1f} ms\n"
        f"RSS {r.rss_start / 2**20:.1f} MiB -> {r.rss_end / 2**20:.1f} MiB ({growth:+.1%}) "
        f"{'flat' if flat else 'GROWING'}; totals {'exact' if r.exact else 'WRONG'}"
    )
    return 0 if flat and r.exact and not r.ingest.errors else 1


if __name__ == "__main__":
    sys.exit(main())
