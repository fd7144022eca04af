"""One voice server node: the wss gateway, the UDP media socket and the router between them.

``voxgate serve`` runs one; tests start one on port 0 in their own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import socket
from collections.abc import Callable

from aiohttp import web

from voxgate.protocol.opcodes import CloseCode
from voxgate.server import fastpath
from voxgate.server.auth import TokenAuthority
from voxgate.server.config import ServerConfig
from voxgate.server.dave import DaveCounters, DaveGroup
from voxgate.server.gateway import gateway_handler
from voxgate.server.media import MediaEndpoint
from voxgate.server.router import Router
from voxgate.server.session import GatewayConnection
from voxgate.server.stats import NodeStats

log = logging.getLogger(__name__)

#: How often detached sessions are checked against the resume grace.
EXPIRY_PERIOD_S = 1.0
#: Socket buffers sized for bursts of a few thousand datagrams between event-loop turns.
UDP_BUFFER_BYTES = 4 * 1024 * 1024


#: How long the survivors of full collections stay frozen (see :func:`freeze_survivors`)
#: before one full collection looks at everything again.
THAW_EVERY_S = 300.0


def freeze_startup_objects() -> None:
    """Take everything alive at start (modules, classes, functions: some 50,000 objects)
    out of the cyclic collector's sight, and from then on the survivors of each full
    collection too (:func:`freeze_survivors`).

    A full collection walks every tracked object while the event loop stands still, and on
    a node carrying a thousand members each such pause is a burst of late packets. Frozen,
    the startup objects (which live as long as the process anyway) stop adding to it; the
    pause then scales with the sessions alone.
    """
    gc.collect()
    gc.freeze()
    freeze_survivors(asyncio.get_running_loop())


def freeze_survivors(
    loop: asyncio.AbstractEventLoop, thaw_every_s: float = THAW_EVERY_S
) -> Callable[[str, dict[str, int]], None]:
    """After each full collection, freeze what survived it.

    Measured on a node of 2,000 members (some 100 tracked objects each), a full collection
    stopped the media plane for 0.13 s, and while members join, one comes every few seconds
    (the heap grows by the quarter that triggers it). What survived one full collection
    (the sessions, their connections) mostly lives on; frozen, the next full collection
    walks only what came since, and its pause follows the joins, not the node's size. A
    cycle that dies among frozen objects waits for the thaw: every ``thaw_every_s`` they
    are unfrozen and the next full collection walks everything once. Returns the
    callback installed in :data:`gc.callbacks`.
    """
    thawed_at = loop.time()

    def freeze() -> None:
        nonlocal thawed_at
        if loop.time() - thawed_at >= thaw_every_s:
            gc.unfreeze()
            thawed_at = loop.time()
        else:
            gc.freeze()

    def collected(phase: str, info: dict[str, int]) -> None:
        # Not from inside the collection: the loop does it next, on its own thread.
        if phase == "stop" and info["generation"] == 2:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(freeze)

    gc.callbacks.append(collected)
    return collected


class VoiceNode:
    """A running node; :meth:`start` binds, :meth:`close` ends every session and unbinds."""

    def __init__(self, config: ServerConfig, authority: TokenAuthority) -> None:
        self.config = config
        self.stats = NodeStats()
        self.router = Router(config, authority, self.stats)
        self._connections: set[GatewayConnection] = set()
        self._runner: web.AppRunner | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._expiry: asyncio.Task[None] | None = None
        self.port = config.port
        self.udp_port = config.effective_udp_port

    async def start(self) -> None:
        udp = socket.socket(
            socket.AF_INET6 if ":" in self.config.host else socket.AF_INET, socket.SOCK_DGRAM
        )
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                udp.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_BYTES)
            udp.bind((self.config.host, self.config.effective_udp_port))
        except OSError:
            udp.close()
            raise
        # asyncio's datagram transport, or voxgate._fastpath reading the socket in C.
        transport, _ = await fastpath.open_media(
            lambda: MediaEndpoint(self.router, self.stats),
            udp,
            self.config.media_path,
            self.config.media_tick_ms / 1000,
        )
        self._transport = transport
        self.udp_port = udp.getsockname()[1]

        app = web.Application()
        app.router.add_get("/", gateway_handler(self.router, self._connections))
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1,
            # aiohttp arms this idle timer when a connection opens: a socket that never
            # sends its upgrade request is closed instead of held for the default hour.
            keepalive_timeout=self.config.handshake_timeout_s,
        )
        await runner.setup()
        site = web.TCPSite(
            runner, self.config.host, self.config.port, ssl_context=self.config.ssl_context
        )
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            transport.close()
            raise
        self._runner = runner
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        # Ready must carry the ports actually bound, also when asked for port 0.
        self.config = dataclasses.replace(self.config, port=self.port, udp_port=self.udp_port)
        self.router.config = self.config
        self._expiry = asyncio.create_task(self._expire_sessions())
        log.info(
            "voice node listening: gateway %s:%d, media udp %s:%d, modes %s",
            self.config.host,
            self.port,
            self.config.host,
            self.udp_port,
            ",".join(self.config.modes),
        )

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        for connection in list(self._connections):
            connection.close(CloseCode.GOING_AWAY, "server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def session_count(self) -> int:
        return len(self.router.sessions)

    def channel_count(self) -> int:
        return len(self.router.channels)

    def media_silent_count(self) -> int:
        return self.router.media_silent_count()

    @property
    def dave_counters(self) -> DaveCounters:
        """The DAVE counters of every channel this node has had."""
        return self.router.dave_counters

    def dave_groups(self) -> list[tuple[tuple[str, str], DaveGroup]]:
        """Each channel's DAVE group machine, by (guild id, channel id)."""
        return self.router.dave_groups()

    @property
    def endpoint(self) -> str:
        """``host:port`` of the gateway, as VOICE_SERVER_UPDATE carries it."""
        return self.config.endpoint

    async def _expire_sessions(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(EXPIRY_PERIOD_S)
            self.router.expire(loop.time())
