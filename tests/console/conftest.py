"""What the console tests share: a live node, real clients, the system's Chromium.

The browser is the Debian ``chromium`` with its ``chromedriver`` (``make system`` installs
both), driven by Selenium with the driver's path given, so Selenium Manager never looks
for (or downloads) anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.server import RunningServer, start_server
from voxgate.client import VoiceConnection

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = ("chromedriver",)


@pytest.fixture
def console_node(tmp_path: Path) -> Iterator[RunningServer]:
    """A node of its own (its console's one-time login URL is used once per test)."""
    server = start_server(tmp_path / "node")
    yield server
    server.stop()


def node_file(server: RunningServer) -> dict[str, Any]:
    recorded: dict[str, Any] = json.loads((server.data_dir / "node.json").read_text())
    return recorded


def trust(server: RunningServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_path))


async def join_voxgate(
    server: RunningServer, guild: str, channel: str, user: str, **options: Any
) -> VoiceConnection:
    """A voxgate client in the channel (DAVE on, as by default)."""
    events = await asyncio.to_thread(server.join, guild, channel, user)
    return await VoiceConnection.connect(
        events["voice_state"], events["voice_server"], ssl=trust(server), **options
    )


async def voxgate_cli(*args: str) -> tuple[int, str, str]:
    """Run ``voxgate ARGS`` as a process (the loop stays free for in-process clients)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxgate", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def bearer(server: RunningServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_key}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: the jar keeps cookies of an IP address host (127.0.0.1).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def until(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    """Wait for ``check()`` to return something true (polled), and return it."""
    async with asyncio.timeout(timeout):
        while not (result := check()):
            await asyncio.sleep(0.05)
    return result


async def channel_members(server: RunningServer, http: aiohttp.ClientSession) -> dict[str, Any]:
    """``GET /v1/channels`` as {user id: member} over every channel."""
    async with http.get(f"{server.admin_url}/v1/channels", headers=bearer(server)) as response:
        assert response.status == 200
        listed = await response.json()
    return {m["user_id"]: m for channel in listed["channels"] for m in channel["members"]}


def _program(names: tuple[str, ...]) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"{' or '.join(names)} not found: `make system` installs Debian's chromium")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium, from the system's packages, driven by Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Belt and braces: Selenium Manager is skipped when the driver's path is given, and
    # told to stay offline should anything ask it.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = _program(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)  # fmt: skip
    driver = webdriver.Chrome(service=Service(executable_path=_program(CHROMEDRIVER)),
                              options=options)  # fmt: skip
    try:
        yield driver
    finally:
        driver.quit()


class Heard:
    """What a voxgate client in the call receives: packets per user and its events."""

    def __init__(self, connection: VoiceConnection) -> None:
        self.connection = connection
        self.packets: dict[str, int] = {}
        self.events: list[Any] = []
        connection.add_listener(self._packet)
        self._task = asyncio.create_task(self._collect())

    def _packet(self, ssrc: int, header: bytes, payload: bytes) -> None:
        user = self.connection.user_of(ssrc) or f"ssrc-{ssrc}"
        self.packets[user] = self.packets.get(user, 0) + 1

    async def _collect(self) -> None:
        async for event in self.connection.events():
            self.events.append(event)

    def of(self, kind: type, **fields: Any) -> list[Any]:
        return [
            e for e in self.events
            if isinstance(e, kind) and all(getattr(e, k) == v for k, v in fields.items())
        ]  # fmt: skip

    async def packets_grow(self, user: str, by: int = 10, timeout: float = 15) -> None:
        start = self.packets.get(user, 0)
        await until(lambda: self.packets.get(user, 0) >= start + by, timeout)

    def stop(self) -> None:
        self._task.cancel()
