"""S1's fixtures for the sandbox core tests: a Sandbox in the test's own event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from voxgate.sandbox.app import Sandbox


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """A sandbox on free ports with two bots, dave off, a data dir of the test's own."""
    running = await Sandbox.start(tmp_path / "sandbox", heartbeat_interval_ms=5000)
    try:
        yield running
    finally:
        await running.stop()
