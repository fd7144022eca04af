"""A TCP proxy a test can cut, to lose a client's WebSocket the way a network does.

The client connects to the proxy (the join event's endpoint points at it); TLS passes
through untouched. :meth:`CuttableProxy.cut` first holds every open connection silent for a
while (what the server sends meanwhile is lost to the client, as on a dead link), then
resets them; new connections pass again, so the client can come back and Resume.
:meth:`CuttableProxy.block` cuts the same way and refuses new connections until
:meth:`CuttableProxy.unblock`: a partition that lasts (a node cut off from Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


class CuttableProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self.blocked = False
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._held: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for link in list(self._links):
            _abort(link)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def cut(self, hold_s: float = 1.0) -> None:
        """Silence every open connection for ``hold_s``, then reset them."""
        cut = set(self._links)
        self._held |= cut
        await asyncio.sleep(hold_s)
        for link in cut:
            _abort(link)

    async def block(self, hold_s: float = 0.5) -> None:
        """Cut every open connection, and reset new ones until :meth:`unblock`."""
        self.blocked = True
        await self.cut(hold_s)

    def unblock(self) -> None:
        self.blocked = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            _abort((writer,))
            return
        self.accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.close()
            return
        link = (writer, upstream_writer)
        self._links.add(link)
        await asyncio.gather(
            self._pipe(reader, upstream_writer, link),
            self._pipe(upstream_reader, writer, link),
            return_exceptions=True,
        )
        self._links.discard(link)
        self._held.discard(link)
        _abort(link)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        while data := await reader.read(65536):
            if link in self._held:
                continue  # a dead link: bytes go nowhere
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()


def _abort(link: tuple[asyncio.StreamWriter, ...]) -> None:
    for writer in link:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER 0: close sends a reset, as a router that lost the flow would.
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
        writer.transport.abort()
