"""The results page at `/`: its structure read with an HTML parser, and the page of a
running exporter rendered by a real browser (Debian's chromium, headless)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from exporter import ABMetrics
from exporter.outputs import page
from exporter.serve.keys import ENGINE
from exporter.serve.server import create_app
from exporter.serve.settings import Settings

from .helpers import Exporter, http, wait_for

HOSTILE = "<script>alert(\"x\")</script> 'q' \u05e9\u05dc\u05d5\u05dd"  # tags, quotes, Hebrew
VOID = {"meta", "br", "img", "input", "link", "hr", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.parts) + "".join(c.text() for c in self.children)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, tag: str, **attrs: str) -> list[Node]:
        """Elements with the tag whose attributes contain the given values (class: a
        word of the class attribute)."""

        def match(node: Node) -> bool:
            for key, value in attrs.items():
                key = key.rstrip("_").replace("_", "-")
                have = node.attrs.get(key)
                if have is None or (key == "class" and value not in have.split()):
                    return False
                if key != "class" and have != value:
                    return False
            return node.tag == tag

        return [n for n in self.walk() if match(n)]


class TreeBuilder(HTMLParser):
    """A document tree from html.parser (the parser checks that tags nest properly)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag == "script":
            self.scripts += 1
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, (tag, [n.tag for n in self.stack])
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].parts.append(data)


def parse(text: str) -> TreeBuilder:
    builder = TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder


def record(metrics: ABMetrics) -> None:
    """shop: the treatment succeeds more (90% vs 80%) and is slower (+10 ms), 50/50;
    skewed: a 3000/2000 split; and an experiment and branch with a hostile name."""
    for experiment, sizes in (("shop", (3000, 3000)), ("skewed", (3000, 2000))):
        for (branch, success, latency), size in zip(
            (("control", 8, 100.0), ("treatment", 9, 110.0)), sizes, strict=True
        ):
            for i in range(size):
                metrics.record_query(experiment, branch, latency + i % 7, i % 10 < success)
    for branch in ("control", HOSTILE):
        for i in range(50):
            metrics.record_query(HOSTILE, branch, 10.0 + i % 3, True)


def check_results(root: Node) -> None:
    """What a person must see at once, wherever the DOM came from."""
    sections = {s.attrs["data-experiment"]: s for s in root.find("section", class_="experiment")}
    assert set(sections) == {"shop", "skewed", HOSTILE}
    shop = sections["shop"]
    verdicts = {
        (row.attrs["data-branch"], row.attrs["data-metric"]): row.find("td", class_="verdict")[0]
        for row in shop.find("tr")
        if "data-metric" in row.attrs
    }
    success = verdicts["treatment", "success_ratio"]
    assert (success.attrs["data-verdict"], success.text().strip()) == ("1", "Better")
    assert "better" in success.attrs["class"].split()
    latency = verdicts["treatment", "latency_mean"]
    assert (latency.attrs["data-verdict"], latency.text().strip()) == ("-1", "Worse")
    row = next(r for r in shop.find("tr") if r.attrs.get("data-metric") == "success_ratio")
    cells = [c.text().strip() for c in row.find("td")]
    assert cells[2:5] == ["80.00%", "90.00%", "+12.5%"]  # control, treatment, lift
    assert row.find("svg", class_="bar") and row.find("rect")
    assert "Winner on success_ratio: treatment" in shop.find("span", class_="winner")[0].text()
    assert not shop.find("div", class_="srm-banner")
    skewed = sections["skewed"]
    banner = skewed.find("div", class_="srm-banner")
    assert banner and "Sample-ratio mismatch" in banner[0].text()
    assert {c.attrs["data-verdict"] for c in skewed.find("td", class_="verdict")} == {"0"}
    assert "No winner" in skewed.find("span", class_="winner")[0].text()
    hostile = sections[HOSTILE]
    assert hostile.find("h2")[0].text() == HOSTILE  # shown as text, not run as markup
    for link in (n for n in root.walk() if n.tag == "a"):
        assert "<" not in link.attrs["href"] and '"' not in link.attrs["href"]


def analysed() -> tuple[ABMetrics, str]:
    metrics = ABMetrics()
    record(metrics)
    text = page.render(metrics.all_summaries(), metrics.analyse(), "1.2.3", "http://h:1")
    return metrics, text


def test_page_structure_with_an_html_parser() -> None:
    _, text = analysed()
    document = parse(text)
    assert document.scripts == 0  # no JavaScript at all
    assert "<script>" not in text and "&lt;script&gt;alert(&quot;x&quot;)" in text
    check_results(document.root)
    links = {a.attrs["href"] for a in document.root.find("a")}
    assert {"/metrics", "/api/v1/experiments", "/openapi.json"} <= links
    assert "/api/v1/experiments/shop/analysis" in links
    assert "grafana/README.md" in text  # where the dashboards are documented
    progress = document.root.find("progress")
    assert sorted(p.attrs["value"] for p in progress) == ["0.5000", "1.0000", "1.0000"]


def test_progress_below_the_minimum_sample() -> None:
    metrics = ABMetrics()
    metrics.configure("small", {"min_sample_size": 400})
    for i in range(100):
        metrics.record_query("small", "control", 10.0, i % 2 == 0)
        metrics.record_query("small", "b", 11.0, i % 3 == 0)
    document = parse(page.render(metrics.all_summaries(), metrics.analyse(), "v", "http://h"))
    progress = document.root.find("span", class_="progress")[0]
    assert progress.find("progress")[0].attrs["value"] == "0.2500"
    assert "25% of the minimum sample (400 per branch)" in progress.text()


def test_an_empty_server_shows_how_to_send_the_first_record() -> None:
    document = parse(page.render([], {}, "v", "http://127.0.0.1:9470"))
    curl = document.root.find("pre", id="curl")[0].text()
    assert curl.startswith("curl -s http://127.0.0.1:9470/api/v1/records")
    assert '"experiment": "checkout"' in curl
    otlp = document.root.find("pre", id="otlp")[0].text()
    assert 'endpoint="http://127.0.0.1:9470/v1/metrics"' in otlp
    assert "abtest.query.duration" in otlp and "abtest.outcome" in otlp


async def test_the_page_honours_the_read_token(aiohttp_client: AiohttpClient) -> None:
    metrics = ABMetrics()
    record(metrics)
    app = create_app(metrics, Settings(metrics_token="s3cret"))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    refused = await client.get("/")
    assert refused.status == 401 and "shop" not in await refused.text()
    app[ENGINE].refresh()
    answer = await client.get("/", headers={"Authorization": "Bearer s3cret"})
    assert answer.status == 200 and answer.content_type == "text/html"
    check_results(parse(await answer.text()).root)


def chromium(*args: str) -> str:
    binary = shutil.which("chromium")
    assert binary, "chromium is missing: scripts/test installs Debian's chromium package"
    with tempfile.TemporaryDirectory(prefix="abtest-chromium-") as profile:
        result = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Exporter]:
    process = Exporter(["--stats-interval", "0.2"], data_dir=str(tmp_path / "data"))
    batch: list[dict[str, object]] = []  # the records of record(), sent over HTTP
    for experiment, sizes in (("shop", (3000, 3000)), ("skewed", (3000, 2000))):
        for (branch, success, latency), size in zip(
            (("control", 8, 100.0), ("treatment", 9, 110.0)), sizes, strict=True
        ):
            batch += [{"experiment": experiment, "branch": branch, "latency_ms": latency + i % 7,
                       "success": i % 10 < success} for i in range(size)]  # fmt: skip
    batch += [{"experiment": HOSTILE, "branch": b, "latency_ms": 10.0 + i % 3, "success": True}
              for b in ("control", HOSTILE) for i in range(50)]  # fmt: skip
    assert process.post({"queries": batch})[0] == 200
    wait_for(lambda: "Winner on" in process_page(process), 20, "the comparisons")
    yield process
    process.stop()


def process_page(process: Exporter) -> str:
    status, raw = http(process.url + "/")
    assert status == 200
    return raw.decode()


def test_the_page_in_a_real_browser(running: Exporter, tmp_path: Path) -> None:
    dom = chromium("--dump-dom", running.url + "/")
    document = parse(dom)
    check_results(document.root)
    title = document.root.find("title")[0].text()
    assert title == "A/B results: abtest-exporter"
    shot = tmp_path / "results-page.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,900", running.url + "/")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"screenshot of the results page: {shot}")


def test_the_empty_pages_curl_command_sends_the_first_record(exporter: Exporter) -> None:
    """Copy the command from an empty exporter's page, run it: the experiment appears."""
    before = parse(process_page(exporter)).root
    command = before.find("pre", id="curl")[0].text()
    assert command.startswith(f"curl -s {exporter.url}/api/v1/records")
    shell = shutil.which("bash")
    assert shell and shutil.which("curl"), "bash and curl run the page's command"
    result = subprocess.run([shell, "-c", command], capture_output=True, text=True, timeout=30,
                            check=False)  # fmt: skip
    assert result.returncode == 0 and '"accepted"' in result.stdout, result
    after = parse(process_page(exporter)).root
    assert [s.attrs["data-experiment"] for s in after.find("section")] == ["checkout"]
