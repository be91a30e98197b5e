"""The gzip cache: every answer one valid gzip member equal to the joined pieces, however
the pieces change between answers; unchanged runs are not deflated again."""

from __future__ import annotations

import random
import zlib
from typing import Any

import pytest

from exporter.outputs import gzipped
from exporter.outputs.gzipped import GzipCache, crc32_combine


def _one_member(payload: bytes) -> bytes:
    """Inflates `payload`, insisting it is exactly one complete gzip member."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = inflater.decompress(payload) + inflater.flush()
    assert inflater.eof and inflater.unused_data == b""
    return data


@pytest.mark.parametrize("seed", range(6))
def test_crc32_combine_matches_zlib(seed: int) -> None:
    rng = random.Random(seed)
    a = rng.randbytes(rng.randrange(0, 5000))
    b = rng.randbytes(rng.choice([0, 1, 7, 4096, rng.randrange(1, 200_000)]))
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def _piece(rng: random.Random) -> str:
    size = rng.choice([1, 10, 300, 5000, 40_000])
    text = "".join(rng.choice('abc{}="\n é€0123456789') for _ in range(min(size, 50)))
    return text * max(1, size // 50)


@pytest.mark.parametrize("seed", range(8))
def test_every_answer_inflates_to_the_joined_pieces(seed: int) -> None:
    rng = random.Random(seed)
    cache = GzipCache(run_bytes=rng.choice([1, 1000, 64 * 1024]))
    pieces = [_piece(rng) for _ in range(rng.randrange(1, 60))]
    for _ in range(25):
        payload = cache.compress(pieces)
        assert _one_member(payload) == "".join(pieces).encode()
        pieces = list(pieces)
        for _ in range(rng.randrange(0, 4)):  # change, insert, drop, empty, repeat a piece
            at = rng.randrange(len(pieces) + 1)
            action = rng.randrange(5)
            if action == 0 and at < len(pieces):
                pieces[at] = _piece(rng)
            elif action == 1:
                pieces.insert(at, _piece(rng))
            elif action == 2 and len(pieces) > 1 and at < len(pieces):
                del pieces[at]
            elif action == 3:
                pieces.insert(at, "")
            elif pieces:
                pieces.insert(at, pieces[rng.randrange(len(pieces))])  # the same object twice
    assert _one_member(cache.compress([])) == b""


def test_unchanged_runs_are_not_deflated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    pieces = [f"series_{i} {i}\n" * 500 for i in range(200)]  # ~3 MB in ~10 kB pieces
    cache = GzipCache(run_bytes=64 * 1024)
    deflated: list[int] = []
    real = GzipCache._deflate

    def counting(self: GzipCache, run: list[str]) -> gzipped._Run:
        deflated.append(sum(map(len, run)))
        return real(self, run)

    monkeypatch.setattr(GzipCache, "_deflate", counting)
    cache.compress(pieces)
    total = sum(deflated)
    assert total == sum(map(len, pieces))
    deflated.clear()
    changed = list(pieces)
    changed[100] = "series_100 101\n" * 500
    assert _one_member(cache.compress(changed)) == "".join(changed).encode()
    # only the run holding the changed piece: at most ~64 kB plus one piece, not 3 MB
    assert 0 < sum(deflated) <= 64 * 1024 + len(changed[100])
    deflated.clear()
    assert _one_member(cache.compress(changed)) == "".join(changed).encode()
    assert deflated == []


def test_a_renderers_gzip_answer_is_its_text_after_every_change() -> None:
    from exporter import ABMetrics
    from exporter.outputs.series import SeriesRenderer

    metrics, renderer = ABMetrics(), SeriesRenderer(openmetrics=True)
    rng = random.Random(3)
    for step in range(30):
        for _ in range(rng.randrange(1, 20)):
            e, b = f"exp-{rng.randrange(12)}", rng.choice(["control", "treatment"])
            metrics.record_query(e, b, rng.uniform(1, 900), rng.random() < 0.9)
            metrics.record_event(e, b, rng.choice(["conversion", "revenue"]), rng.uniform(0, 50))
        if step % 7 == 6:
            metrics.clear_experiment(f"exp-{rng.randrange(12)}")
        snapshot = metrics.snapshot()
        payload = renderer.render_gzip(snapshot)
        assert _one_member(payload) == SeriesRenderer(openmetrics=True).render(snapshot).encode()


async def test_a_large_plain_scrape_comes_in_chunks_equal_to_the_gzipped_one(
    client: Any, metrics: Any
) -> None:
    """Past a megabyte the plain body is written in chunks (the comparison block from its
    encoded pieces); it carries its length and reads the same as the gzipped answer."""
    from exporter.serve.keys import ENGINE

    rng = random.Random(5)
    for e in range(40):
        for b in ("control", "t1", "t2", "t3"):
            for _ in range(30):
                metrics.record_query(f"exp-{e}", b, rng.uniform(1, 500), rng.random() < 0.9)
            for v in range(10):
                metrics.record_event(f"exp-{e}", b, f"event-{v}", float(rng.randrange(3)))
    client.server.app[ENGINE].refresh()
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    body = await plain.read()
    assert plain.status == 200 and plain.headers["Content-Type"].startswith("text/plain")
    assert "Content-Encoding" not in plain.headers
    assert len(body) > 2 * (1 << 20) and int(plain.headers["Content-Length"]) == len(body)
    zipped = await client.get(
        "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert zipped.headers["Content-Encoding"] == "gzip"
    unzipped = _one_member(await zipped.read())

    def steady(text: bytes) -> list[bytes]:  # what does not move between two scrapes
        moving = (b"abtest_exporter_", b"process_", b"python_", b"abtest_experiment_duration")
        return [line for line in text.splitlines() if not line.startswith(moving)]

    assert steady(body) == steady(unzipped)
    # HEAD: the length, no body, and the connection stays in step for the next request
    head = await client.head("/metrics", headers={"Accept-Encoding": "identity"})
    assert head.status == 200 and int(head.headers["Content-Length"]) > 2 * (1 << 20)
    assert await head.read() == b""
    after = await client.get("/-/healthy")
    assert after.status == 200 and await after.text() == "OK\n"
    assert body.count(b"\nabtest_comparison_p_value{") == 40 * 3 * 12  # treatments x metrics


async def test_scrapers_that_stop_reading_hold_up_no_one(client: Any, metrics: Any) -> None:
    """A plain body of several megabytes to clients that never read it: the chunks wait on
    their sockets, and a scrape on another connection is answered in full meanwhile."""
    import asyncio

    from exporter.serve.keys import ENGINE

    for e in range(40):
        for b in ("control", "t1", "t2", "t3"):
            metrics.record_query(f"exp-{e}", b, 12.5, True)
            for v in range(10):
                metrics.record_event(f"exp-{e}", b, f"event-{v}", 1.0)
    client.server.app[ENGINE].refresh()
    stalled = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
        await writer.drain()
        stalled.append((reader, writer))
    await asyncio.sleep(0.3)  # their bodies are written as far as their sockets take
    answer = await asyncio.wait_for(
        client.get("/metrics", headers={"Accept-Encoding": "identity"}), timeout=10
    )
    body = await answer.read()
    assert int(answer.headers["Content-Length"]) == len(body) > 1 << 20
    for _, writer in stalled:
        writer.close()
