"""S1's fixtures for the sandbox core tests: a Sandbox in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
import yarl

from voxgate.sandbox.app import Sandbox


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """A sandbox on free ports with two bots, the default DAVE policy, its own data dir."""
    running = await Sandbox.start(tmp_path / "sandbox", heartbeat_interval_ms=5000)
    try:
        yield running
    finally:
        await running.stop()


class RawGateway:
    """A bare main-gateway client over aiohttp, for what a library would never send."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self.ws = ws
        self._session = session
        self._inflate: zlib._Decompress | None = None
        self.dispatches: list[dict[str, Any]] = []
        self.seq: int | None = None

    @classmethod
    async def connect(cls, url: str, **query: str) -> RawGateway:
        session = aiohttp.ClientSession()
        params = {"v": "10", "encoding": "json", **query}
        try:
            ws = await session.ws_connect(url, params=params, max_msg_size=0, autoping=True)
        except BaseException:
            await session.close()
            raise
        gateway = cls(ws, session)
        if query.get("compress") == "zlib-stream":
            gateway._inflate = zlib.decompressobj()
        return gateway

    async def send(self, payload: Any) -> None:
        await self.ws.send_str(payload if isinstance(payload, str) else json.dumps(payload))

    async def receive(self, timeout: float = 10) -> dict[str, Any]:
        """The next payload; raises ``Closed`` with the close code when the socket closes."""
        message = await self.ws.receive(timeout=timeout)
        if message.type is aiohttp.WSMsgType.TEXT:
            payload: dict[str, Any] = json.loads(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            data = message.data
            data = self._inflate.decompress(data) if self._inflate else zlib.decompress(data)
            payload = json.loads(data)
        else:
            raise Closed(self.ws.close_code, message.extra)
        if payload.get("op") == 0:
            self.seq = payload["s"]
            self.dispatches.append(payload)
        return payload

    async def dispatch(self, event: str, timeout: float = 10) -> dict[str, Any]:
        """The next dispatch named ``event``; other payloads are skipped."""
        async with asyncio.timeout(timeout):
            while True:
                payload = await self.receive(timeout)
                if payload.get("op") == 0 and payload["t"] == event:
                    return payload

    async def closed(self, timeout: float = 10) -> tuple[int | None, str]:
        """Read until the server closes; its close code and reason."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.receive(timeout)
                except Closed as closed:
                    return closed.code, closed.reason

    async def identify(self, token: str, intents: int = 129, **extra: Any) -> dict[str, Any]:
        hello = await self.receive()
        assert hello["op"] == 10
        await self.send(
            {
                "op": 2,
                "d": {
                    "token": token,
                    "intents": intents,
                    "properties": {"os": "linux", "browser": "test", "device": "test"},
                    **extra,
                },
            }
        )
        return (await self.dispatch("READY"))["d"]

    async def close(self, code: int = 1000) -> None:
        await self.ws.close(code=code)
        await self._session.close()

    async def abort(self) -> None:
        """Drop the TCP connection without a close frame, as a killed process does."""
        transport = self.ws._response.connection.transport  # type: ignore[union-attr]
        if transport is not None:
            transport.abort()
        await self._session.close()


class Closed(Exception):
    def __init__(self, code: int | None, reason: object) -> None:
        super().__init__(f"closed {code}: {reason}")
        self.code = code
        self.reason = str(reason or "")


RawGateways = Callable[..., Awaitable[RawGateway]]


@contextlib.asynccontextmanager
async def raw_gateway_opener(sandbox: Sandbox) -> AsyncIterator[RawGateways]:
    """A function that opens raw gateway connections to ``sandbox``; all closed on exit."""
    opened: list[RawGateway] = []

    async def open_(**query: str) -> RawGateway:
        gateway = await RawGateway.connect(sandbox.gateway_url, **query)
        opened.append(gateway)
        return gateway

    try:
        yield open_
    finally:
        for gateway in opened:
            with contextlib.suppress(Exception):
                await gateway.close()


@pytest.fixture
async def raw_gateways(sandbox: Sandbox) -> AsyncIterator[RawGateways]:
    """Open raw gateway connections to ``sandbox``; all closed after the test."""
    async with raw_gateway_opener(sandbox) as open_:
        yield open_


class DpyBot:
    """A real discord.py 2.7 ``Client`` logged into the sandbox in this event loop, with
    only the library's own override points set (``Route.BASE``, ``DEFAULT_GATEWAY``) and
    the sandbox's CA trusted through its connector."""

    def __init__(
        self,
        sandbox: Sandbox,
        index: int,
        intents: discord.Intents,
        client_class: type[discord.Client] = discord.Client,
    ) -> None:
        ssl_context = ssl.create_default_context(cafile=str(sandbox.ca))
        self.client = client_class(intents=intents, connector=aiohttp.TCPConnector(ssl=ssl_context))
        self.token = sandbox.info["bots"][index]["token"]
        self.events: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()
        for name in ("ready", "resumed", "connect", "disconnect", "message", "voice_state_update"):
            self._record(name)
        self._task: asyncio.Task[None] | None = None

    def _record(self, name: str) -> None:
        async def handler(*args: Any) -> None:
            self.events.append((name, args))
            self.changed.set()

        handler.__name__ = f"on_{name}"
        self.client.event(handler)

    def count(self, name: str) -> int:
        return sum(1 for event, _ in self.events if event == name)

    async def wait(self, predicate: Callable[[], Any], timeout: float = 20) -> Any:
        async with asyncio.timeout(timeout):
            while not (value := predicate()):
                self.changed.clear()
                # Woken by the events recorded, and polling for what discord.py only caches.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.1)
            return value

    async def start(self) -> DpyBot:
        self._task = asyncio.create_task(self.client.start(self.token))
        await self.wait(lambda: self.count("ready"))
        return self

    async def close(self) -> None:
        await self.client.close()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)


@pytest.fixture
async def dpy_bots(sandbox: Sandbox) -> AsyncIterator[Callable[..., Awaitable[DpyBot]]]:
    """Log real discord.py clients into ``sandbox``: ``await dpy_bots(index, intents)``."""
    route_base = discord.http.Route.BASE
    default_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = sandbox.api_url + "/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sandbox.gateway_url)
    started: list[DpyBot] = []

    async def start(
        index: int = 0,
        intents: discord.Intents | None = None,
        client_class: type[discord.Client] = discord.Client,
    ) -> DpyBot:
        bot = DpyBot(sandbox, index, intents or discord.Intents.default(), client_class)
        started.append(bot)
        return await bot.start()

    try:
        yield start
    finally:
        for bot in started:
            await bot.close()
        discord.http.Route.BASE = route_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = default_gateway
