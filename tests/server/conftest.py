"""A voice node in the test's own event loop, and a bare protocol-core peer to talk to it.

The peer speaks the gateway and the media plane with nothing but ``voxgate.protocol``,
aiohttp's WebSocket client and a UDP socket, so server tests depend on no client library.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import Any, TypeVar

import aiohttp
import pytest
import trustme

from voxgate.protocol import discovery
from voxgate.protocol.crypto import TransportCipher, transport_cipher
from voxgate.protocol.messages import (
    Heartbeat,
    Hello,
    Identify,
    Message,
    Ready,
    Resume,
    SelectProtocol,
    SelectProtocolData,
    SessionDescription,
    decode_server_frame,
    encode,
)
from voxgate.protocol.rtp import RtpHeader
from voxgate.server import fastpath
from voxgate.server.auth import TokenAuthority
from voxgate.server.config import ServerConfig
from voxgate.server.node import VoiceNode

M = TypeVar("M", bound=Message)

SECRET = b"test-secret-test-secret-test-secret"


class Datagrams(asyncio.DatagramProtocol):
    """A peer's UDP socket: datagrams in a queue, but only the discovery answer it asked for.

    The server answers discovery again until Select Protocol comes; a repeat that crosses
    the peer's Select Protocol is counted here instead of landing among its audio.
    """

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.discovery_wanted = False
        self.discovery_repeats = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) == discovery.SIZE and data[0] == 0 and data[1] == discovery.RESPONSE:
            if not self.discovery_wanted:
                self.discovery_repeats += 1
                return
            self.discovery_wanted = False
        self.queue.put_nowait(data)


class Peer:
    """One member: a WebSocket, a UDP socket, and what the server told it."""

    def __init__(self, node: VoiceNode, http: aiohttp.ClientSession, ssl_context: ssl.SSLContext):
        self.node = node
        self.http = http
        self.ssl = ssl_context
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.messages: asyncio.Queue[tuple[Message, int | None]] = asyncio.Queue()
        self.seen: list[Message] = []
        self.last_seq = -1
        self.ready: Ready | None = None
        self.cipher: TransportCipher | None = None
        self.udp: asyncio.DatagramTransport | None = None
        self.datagrams = Datagrams()
        self.close_code: int | None = None
        self.close_reason = ""
        self._reader: asyncio.Task[None] | None = None
        self.sequence = 0
        self.timestamp = 0

    async def open(self, path: str = "/?v=8") -> Hello:
        self.ws = await self.http.ws_connect(
            f"wss://127.0.0.1:{self.node.port}{path}", ssl=self.ssl, autoclose=False
        )
        self._reader = asyncio.create_task(self._read())
        hello = await self.expect(Hello)
        return hello

    async def _read(self) -> None:
        assert self.ws is not None
        while True:
            frame = await self.ws.receive()
            if frame.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                message, seq = decode_server_frame(frame.data)
                if seq is not None:
                    self.last_seq = seq
                self.seen.append(message)
                self.messages.put_nowait((message, seq))
            elif frame.type is aiohttp.WSMsgType.CLOSE:
                self.close_code = frame.data
                self.close_reason = frame.extra or ""
                await self.ws.close()
                break
            elif frame.type is aiohttp.WSMsgType.CLOSING:
                break  # our own close() in progress; receiving again would send a 1000
            elif frame.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                self.close_code = self.close_code or self.ws.close_code
                break

    async def send(self, message: Message) -> None:
        assert self.ws is not None
        frame = encode(message)
        if isinstance(frame, str):
            await self.ws.send_str(frame)
        else:
            await self.ws.send_bytes(frame)

    async def send_raw(self, frame: str | bytes) -> None:
        assert self.ws is not None
        if isinstance(frame, str):
            await self.ws.send_str(frame)
        else:
            await self.ws.send_bytes(frame)

    async def expect(self, kind: type[M], timeout: float = 5) -> M:
        async with asyncio.timeout(timeout):
            while True:
                message, _ = await self.messages.get()
                if isinstance(message, kind):
                    return message

    async def closed(self, timeout: float = 5) -> tuple[int | None, str]:
        assert self._reader is not None
        async with asyncio.timeout(timeout):
            await self._reader
        return self.close_code, self.close_reason

    async def join(
        self, authority: TokenAuthority, guild: str, channel: str, user: str, mode: str
    ) -> SessionDescription:
        token, grant = authority.mint(guild, channel, user)
        self.token, self.session_id, self.guild = token, grant.session_id, guild
        await self.open()
        await self.send(
            Identify(server_id=guild, user_id=user, session_id=grant.session_id, token=token)
        )
        self.ready = await self.expect(Ready)
        await self.select_udp(mode)
        description = await self.expect(SessionDescription)
        self.cipher = transport_cipher(description.mode, bytes(description.secret_key))
        return description

    async def select_udp(self, mode: str) -> None:
        """After Ready: IP discovery on its UDP port, then Select Protocol with ``mode``."""
        assert self.ready is not None
        ready = self.ready
        loop = asyncio.get_running_loop()
        self.udp, _ = await loop.create_datagram_endpoint(
            lambda: self.datagrams, remote_addr=("127.0.0.1", ready.port)
        )
        answer = await self.discover()
        await self.send(
            SelectProtocol(
                protocol="udp",
                data=SelectProtocolData(address=answer.address, port=answer.port, mode=mode),
            )
        )

    async def discover(self) -> discovery.Discovery:
        """Send IP discovery for this peer's ssrc and wait for the answer."""
        assert self.ready is not None and self.udp is not None
        self.datagrams.discovery_wanted = True
        self.udp.sendto(discovery.build_request(self.ready.ssrc))
        return discovery.parse(await asyncio.wait_for(self.datagrams.queue.get(), 5))

    def send_audio(self, payload: bytes) -> None:
        assert self.ready is not None and self.cipher is not None and self.udp is not None
        header = RtpHeader(
            sequence=self.sequence, timestamp=self.timestamp, ssrc=self.ready.ssrc
        ).build()
        self.sequence += 1
        self.timestamp += 960
        self.udp.sendto(self.cipher.seal(header, payload))

    async def receive_audio(self, count: int, timeout: float = 5) -> list[tuple[int, bytes]]:
        """``count`` packets as (ssrc, opus payload), opened with this peer's key."""
        assert self.cipher is not None
        received = []
        async with asyncio.timeout(timeout):
            while len(received) < count:
                header, payload = self.cipher.open(await self.datagrams.queue.get())
                received.append((int.from_bytes(header[8:12], "big"), payload))
        return received

    async def cut(self) -> None:
        """Lose the WebSocket the way a network does: no close frame, the TCP just ends."""
        assert self.ws is not None and self._reader is not None
        self.ws._conn.transport.abort()  # type: ignore[union-attr]
        self._reader.cancel()
        with suppress(asyncio.CancelledError):
            await self._reader
        self.messages = asyncio.Queue()

    async def resume(self) -> None:
        """Open a new WebSocket and Resume the session with the last seq seen."""
        await self.open()
        await self.send(
            Resume(
                server_id=self.guild,
                session_id=self.session_id,
                token=self.token,
                seq_ack=self.last_seq,
            )
        )

    async def heartbeat(self) -> None:
        await self.send(Heartbeat(t=1, seq_ack=self.last_seq))

    async def close(self, code: int = 1000) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close(code=code)
        if self._reader is not None:
            self._reader.cancel()
            with suppress(asyncio.CancelledError):
                await self._reader
        if self.udp is not None:
            self.udp.close()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def authority() -> TokenAuthority:
    return TokenAuthority(SECRET)


NodeFactory = Callable[..., Any]


#: Every node a test starts runs each media path: voxgate._fastpath (C) and pure Python.
MEDIA_PATHS = [
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            fastpath.native is None, reason=f"no native media path: {fastpath.why_python}"
        ),
    ),
    "python",
]


@pytest.fixture(params=MEDIA_PATHS)
def media_path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def start_node(
    ca: trustme.CA, authority: TokenAuthority, media_path: str
) -> AsyncIterator[Callable[..., Any]]:
    nodes: list[VoiceNode] = []
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)

    async def start(**overrides: Any) -> VoiceNode:
        overrides.setdefault("media_path", media_path)
        config = ServerConfig(port=0, udp_port=0, ssl_context=server_context, **overrides)
        node = VoiceNode(config, authority)
        await node.start()
        assert node.router.media_path == media_path
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.close()


@pytest.fixture
async def peers(ca: trustme.CA) -> AsyncIterator[Callable[[VoiceNode], Peer]]:
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    made: list[Peer] = []
    async with aiohttp.ClientSession() as http:

        def make(node: VoiceNode) -> Peer:
            peer = Peer(node, http, client_context)
            made.append(peer)
            return peer

        yield make
        for peer in made:
            await peer.close()
