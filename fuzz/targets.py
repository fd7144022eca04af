"""What the fuzzers feed: every parser of untrusted bytes, and the server's two entry points.

Each target takes the fuzzer's bytes and may raise only what its module documents (the
protocol core's :class:`ProtocolError` family); anything else is a crash. The server's
gateway connection and media endpoint may raise nothing at all: bad input there must end
in a close code or a drop counter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from voxgate.protocol import discovery
from voxgate.protocol.crypto import transport_cipher
from voxgate.protocol.errors import ProtocolError
from voxgate.protocol.messages import decode_client_frame, decode_server_frame
from voxgate.protocol.opcodes import EncryptionMode
from voxgate.protocol.rtp import classify, header_size, parse_header, parse_rtcp_header

KEY = bytes(range(32))


def _expecting_protocol_errors(parse: Callable[[bytes], object]) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        with contextlib.suppress(ProtocolError):
            parse(data)

    return target


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def _cipher_target(mode: EncryptionMode) -> Callable[[bytes], None]:
    cipher = transport_cipher(mode, KEY)

    def open_packet(data: bytes) -> object:
        return cipher.open(data)

    return _expecting_protocol_errors(open_packet)


def _gateway_target() -> Callable[[bytes], None]:
    from voxgate.server.auth import TokenAuthority
    from voxgate.server.config import ServerConfig
    from voxgate.server.router import Router
    from voxgate.server.session import GatewayConnection
    from voxgate.server.stats import NodeStats

    router = Router(ServerConfig(), TokenAuthority(KEY), NodeStats())

    def target(data: bytes) -> None:
        # A fresh connection per input: two frames, text then binary, at growing times.
        connection = GatewayConnection(router, now=0.0)
        middle = len(data) // 2
        connection.receive(_text(data[:middle]), 0.5)
        connection.receive(data[middle:], 1.0)
        connection.on_timer(100.0)

    return target


def _media_target() -> Callable[[bytes], None]:
    from voxgate.server.auth import TokenAuthority
    from voxgate.server.config import ServerConfig
    from voxgate.server.media import MediaEndpoint
    from voxgate.server.router import Channel, Router
    from voxgate.server.session import VoiceSession
    from voxgate.server.stats import NodeStats

    stats = NodeStats()
    authority = TokenAuthority(KEY)
    router = Router(ServerConfig(), authority, stats)
    channel = router.channels[("g", "c")] = Channel(("g", "c"))
    for ssrc, user, mode in (
        (1, "a", EncryptionMode.AEAD_AES256_GCM_RTPSIZE),
        (2, "b", EncryptionMode.XSALSA20_POLY1305),
    ):
        _, grant = authority.mint("g", "c", user)
        session = VoiceSession(grant, "t", ssrc, channel, packet_rate_cap=1e9)
        session.cipher = transport_cipher(mode, KEY)
        session.mode = mode
        session.address = ("127.0.0.1", 1000 + ssrc)
        router.sessions[grant.session_id] = session
        router.by_ssrc[ssrc] = session
        channel.members.append(session)
    sent: list[bytes] = []
    router.sendto = lambda packet, address: sent.append(packet)
    endpoint = MediaEndpoint(router, stats)

    class _Transport(asyncio.DatagramTransport):
        def sendto(self, data: bytes, addr: object = None) -> None:
            sent.append(bytes(data))

    endpoint.transport = _Transport()

    def target(data: bytes) -> None:
        endpoint.datagram_received(data, ("127.0.0.1", 9999))
        # Never more bytes out for a discovery answer than came in (no amplification),
        # and a packet that did not authenticate is never relayed.
        sent.clear()

    return target


TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    "gateway_text_client": lambda: _expecting_protocol_errors(
        lambda d: decode_client_frame(_text(d))
    ),
    "gateway_binary_client": lambda: _expecting_protocol_errors(
        lambda d: decode_client_frame(d, binary=True)
    ),
    "gateway_text_server": lambda: _expecting_protocol_errors(
        lambda d: decode_server_frame(_text(d))
    ),
    "gateway_binary_server": lambda: _expecting_protocol_errors(
        lambda d: decode_server_frame(d, binary=True)
    ),
    "rtp_header": lambda: _expecting_protocol_errors(
        lambda d: (parse_header(d), header_size(d, with_extension_body=True))
    ),
    "rtcp_header": lambda: _expecting_protocol_errors(parse_rtcp_header),
    "ip_discovery": lambda: _expecting_protocol_errors(discovery.parse),
    "classify": lambda: classify,  # type: ignore[dict-item]
    **{
        f"open_{mode.value}": (lambda mode=mode: _cipher_target(mode))  # type: ignore[misc]
        for mode in EncryptionMode
    },
    "server_gateway_connection": _gateway_target,
    "server_media_endpoint": _media_target,
}
