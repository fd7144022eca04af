"""The aiohttp adapter of the voice gateway: moves frames between a WebSocket and a
:class:`~voxgate.server.session.GatewayConnection`, and nothing else.

One task per WebSocket reads frames (with a timeout at the connection's next timer) and
feeds them to the state machine; a second one writes whatever the machine (or another
session, through the router) put in its outbox, and performs the close it asks for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import WSCloseCode, WSMsgType, web

from voxgate.protocol.messages import MAX_FRAME_SIZE
from voxgate.protocol.opcodes import CloseCode
from voxgate.server.router import Router
from voxgate.server.session import GatewayConnection

log = logging.getLogger(__name__)

#: Gateway versions served (PROTOCOL.md §1): every client we know asks for 4 to 8.
SUPPORTED_VERSIONS = range(4, 9)
#: aiohttp refuses larger frames itself (close 1009 without a reason); between the two
#: limits we close with a reason.
_HARD_FRAME_LIMIT = 4 * MAX_FRAME_SIZE
#: Close codes a client sends when it leaves on purpose rather than losing the connection.
LEAVING_CLOSE_CODES = frozenset({WSCloseCode.OK, CloseCode.DISCONNECTED})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def gateway_handler(router: Router, connections: set[GatewayConnection]) -> Handler:
    """The aiohttp handler of ``GET /?v=8``; ``connections`` tracks the open ones."""

    async def handle(request: web.Request) -> web.StreamResponse:
        version = request.query.get("v")
        if version is not None and (
            not version.isdigit() or int(version) not in SUPPORTED_VERSIONS
        ):
            return web.Response(status=400, text=f"unsupported gateway version {version[:8]!r}\n")
        ws = web.WebSocketResponse(
            compress=True, max_msg_size=_HARD_FRAME_LIMIT, autoping=True, autoclose=True
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, text="voice gateway: WebSocket upgrade required\n")
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        connection = GatewayConnection(router, loop.time())
        connections.add(connection)
        wake = asyncio.Event()
        connection.on_output = wake.set
        wake.set()  # Hello is already in the outbox
        writer = asyncio.create_task(_write(ws, connection, wake))
        client_close_code: int | None = None
        try:
            client_close_code = await _read(ws, connection, loop)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            leaving = client_close_code in LEAVING_CLOSE_CODES
            connection.connection_lost(loop.time(), leaving=leaving)
            wake.set()
            connections.discard(connection)
            try:
                await asyncio.wait_for(writer, timeout=5)
            except (TimeoutError, asyncio.CancelledError, ConnectionError):
                writer.cancel()
        return ws

    return handle


async def _read(
    ws: web.WebSocketResponse, connection: GatewayConnection, loop: asyncio.AbstractEventLoop
) -> int | None:
    """Feed frames to ``connection`` until either side closes; the client's close code."""
    while not ws.closed and connection.close_request is None:
        now = loop.time()
        timeout = connection.next_timer() - now
        if timeout <= 0:
            # Already due (the loop ran late): aiohttp reads a timeout of 0 as "none", so
            # receive(timeout=0) would wait for the client's next frame and the timer
            # (a deferred Session Description, a heartbeat deadline) would never fire.
            connection.on_timer(now)
            continue
        try:
            message = await ws.receive(timeout=timeout)
        except TimeoutError:
            connection.on_timer(loop.time())
            continue
        if message.type is WSMsgType.TEXT or message.type is WSMsgType.BINARY:
            frame: str | bytes = message.data
            if len(frame) > MAX_FRAME_SIZE:
                connection.close(CloseCode.MESSAGE_TOO_BIG, "frame larger than 64 KiB")
                return None
            connection.receive(frame, loop.time())
        elif message.type is WSMsgType.CLOSE:
            # aiohttp answers the close itself and then reports its own code (1000) as
            # ws.close_code; whether the client left on purpose is in the frame it sent.
            return int(message.data)
        elif message.type in (WSMsgType.CLOSING, WSMsgType.CLOSED):
            return None
        elif message.type is WSMsgType.ERROR:
            log.debug("websocket error: %s", ws.exception())
            return None
    return None


async def _write(
    ws: web.WebSocketResponse, connection: GatewayConnection, wake: asyncio.Event
) -> None:
    while True:
        await wake.wait()
        wake.clear()
        for frame in connection.take_outbox():
            if ws.closed:
                return
            if isinstance(frame, str):
                await ws.send_str(frame)
            else:
                await ws.send_bytes(frame)
        if connection.close_request is not None:
            if not ws.closed:
                code, reason = connection.close_request
                await ws.close(code=code, message=reason.encode()[:120])
            return
