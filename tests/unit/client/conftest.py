"""Fixtures for the client tests: a scripted fake server behind httpx.MockTransport."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_server import FakeServer


@pytest.fixture(autouse=True)
def isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No NEBLINA_* variables, and a working directory with no .neblina/local.env."""
    for key in ("NEBLINA_URL", "NEBLINA_TOKEN", "NEBLINA_DATASET"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def server() -> Iterator[FakeServer]:
    yield FakeServer()
