from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from exporter import ABMetrics
from exporter.serve.server import create_app
from exporter.serve.settings import Settings

from .helpers import Exporter

Client = TestClient[web.Request, web.Application]


class FakeClock:
    """A clock the tests move by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> ABMetrics:
    return ABMetrics(clock=clock)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, metrics: ABMetrics) -> Client:
    settings = Settings(max_body_bytes=1_000_000, max_batch_records=1000, allow_clear_all=True)
    app = create_app(metrics, settings)
    return await aiohttp_client(app)


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[Exporter]:
    process = Exporter()
    yield process
    process.stop()
