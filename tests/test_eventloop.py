"""The server's event loop: uvloop when importable, asyncio's own (logged) when not."""

from __future__ import annotations

import asyncio
import importlib
import logging
import types

import pytest

from exporter.serve import eventloop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_is_used_when_installed() -> None:
    importlib.import_module("uvloop")  # the test extra installs it: a failure, not a skip
    factory, name = eventloop.loop_factory()
    assert name == "uvloop" and factory is not None
    assert eventloop.run(_loop_module()).startswith("uvloop")


def test_falls_back_to_asyncio_with_a_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = importlib.import_module

    def no_uvloop(name: str, package: str | None = None) -> types.ModuleType:
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_uvloop)
    with caplog.at_level(logging.INFO, logger="exporter.serve.eventloop"):
        assert eventloop.loop_factory() == (None, "asyncio")
        assert eventloop.run(_loop_module()).startswith("asyncio")
    assert any("uvloop is not installed" in r.getMessage() for r in caplog.records)


def test_asyncio_when_uvloop_is_not_wanted(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="exporter.serve.eventloop"):
        assert eventloop.loop_factory(use_uvloop=False) == (None, "asyncio")
        assert eventloop.run(_loop_module(), use_uvloop=False).startswith("asyncio")
    assert not caplog.records  # not wanted is no fallback: nothing to say
