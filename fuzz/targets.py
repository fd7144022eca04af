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

from voxgate.protocol import dave, discovery, mls
from voxgate.protocol.crypto import transport_cipher
from voxgate.protocol.errors import DaveFrameError, ProtocolError
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
    from voxgate.server.router import Router
    from voxgate.server.session import VoiceSession
    from voxgate.server.stats import NodeStats

    stats = NodeStats()
    authority = TokenAuthority(KEY)
    router = Router(ServerConfig(), authority, stats)
    channel = router.open_channel(("g", "c"))
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


def _mls_targets() -> dict[str, Callable[[bytes], None]]:
    """The DAVE MLS parsers, each followed by what the gateway does next with the value."""
    sender = mls.ExternalSender()
    group_id = mls.group_id_of(1)

    def key_package(data: bytes) -> None:
        kp = mls.parse_key_package(data)
        mls.key_package_ref(kp)
        mls.verify_key_package(kp, kp.user_id or 0)
        sender.propose_add(group_id, 0, kp)

    def proposals_append(data: bytes) -> None:
        for proposal in mls.parse_proposals_append(data):
            mls.verify_proposal(proposal.message, sender.public_key)

    def commit_welcome(data: bytes) -> None:
        _, welcome = mls.split_commit_welcome(data)
        if welcome is not None:
            for secret in welcome.secrets:
                mls.parse_welcome(mls.targeted_welcome(welcome, secret.new_member))

    parsers: dict[str, Callable[[bytes], object]] = {
        "mls_key_package": key_package,
        "mls_external_sender": mls.parse_external_sender,
        "mls_proposals_append": proposals_append,
        "mls_proposals_revoke": mls.parse_proposals_revoke,
        "mls_commit_welcome": commit_welcome,
        "mls_welcome": mls.parse_welcome,
        "mls_leaf_node": mls.parse_leaf_node,
    }
    return {name: _expecting_protocol_errors(parse) for name, parse in parsers.items()}


def _dave_frame(data: bytes) -> None:
    # The relay's check may raise nothing; it must agree with the parser.
    verdict = dave.is_dave_frame(data)
    try:
        frame = dave.parse_dave_frame(data)
    except DaveFrameError:
        assert not verdict
        return
    assert verdict and dave.build_dave_frame(frame) == data


def mls_seeds() -> dict[str, list[bytes]]:
    """Real inputs to start the MLS and DAVE frame fuzzers from (davey makes them)."""
    import davey

    sender = mls.ExternalSender()
    group_id = mls.group_id_of(7)
    a, b = davey.DaveSession(1, 1, 7), davey.DaveSession(1, 2, 7)
    for session in (a, b):
        session.set_external_sender(sender.package())
    kp = mls.parse_key_package(b.get_serialized_key_package())
    add = sender.propose_add(group_id, 0, kp)
    result = a.process_proposals(davey.ProposalsOperationType.append, mls.proposals_append([add]))
    op28 = bytes(result.commit) + bytes(result.welcome or b"")
    a.process_commit(result.commit)
    b.process_welcome(result.welcome)
    frame = bytes(a.encrypt_opus(bytes(range(40))))
    return {
        "mls_key_package": [kp.raw, b"\x00\x01\x00\x05" + kp.raw],
        "mls_external_sender": [sender.package()],
        "mls_proposals_append": [
            mls.proposals_append([add, sender.propose_remove(group_id, 1, 1)])
        ],
        "mls_proposals_revoke": [mls.proposals_revoke([add.ref])],
        "mls_commit_welcome": [op28, bytes(result.commit)],
        "mls_welcome": [bytes(result.welcome)],
        "mls_leaf_node": [kp.leaf_node.raw],
        "dave_frame": [frame, dave.OPUS_SILENCE],
    }


_MLS_NAMES = (
    "mls_key_package",
    "mls_external_sender",
    "mls_proposals_append",
    "mls_proposals_revoke",
    "mls_commit_welcome",
    "mls_welcome",
    "mls_leaf_node",
)

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
    **{name: (lambda name=name: _mls_targets()[name]) for name in _MLS_NAMES},  # type: ignore[misc]
    "dave_frame": lambda: _dave_frame,
    "server_gateway_connection": _gateway_target,
    "server_media_endpoint": _media_target,
}


def seeds(name: str) -> list[bytes]:
    """Starting inputs for ``name`` when its corpus is empty (none for most targets)."""
    if name.startswith("mls_") or name == "dave_frame":
        return mls_seeds().get(name, [])
    return []
