"""Bad input on the gateway: the exact close code and a reason, and nobody else disturbed.

Every case runs on a node where two honest members stream to each other the whole time;
after each case their audio must have arrived complete and byte-exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest

from voxgate.protocol.messages import (
    Identify,
    Resume,
    SelectProtocol,
    SelectProtocolData,
)
from voxgate.protocol.opcodes import CloseCode, EncryptionMode
from voxgate.server.auth import TokenAuthority

from .conftest import Peer

OFFERED = (EncryptionMode.AEAD_AES256_GCM_RTPSIZE, EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE)
HEARTBEAT_MS = 1000.0


@dataclass
class HonestCall:
    """Two members streaming to each other, heartbeating, checked after every case."""

    alice: Peer
    bob: Peer
    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)

    async def run(self) -> None:
        async def receive() -> None:
            while True:
                [(_, payload)] = await self.bob.receive_audio(1, timeout=3600)
                self.received.append(payload)

        receiver = asyncio.create_task(receive())
        try:
            tick = 0
            while True:
                payload = os.urandom(40) + tick.to_bytes(4, "big")
                self.sent.append(payload)
                self.alice.send_audio(payload)
                if tick % 20 == 0:
                    await self.alice.heartbeat()
                    await self.bob.heartbeat()
                tick += 1
                await asyncio.sleep(0.01)
        finally:
            receiver.cancel()

    async def check(self) -> None:
        """Everything sent so far arrives, in order, byte for byte."""
        async with asyncio.timeout(5):
            while len(self.received) < len(self.sent) - 1:
                await asyncio.sleep(0.02)
        assert self.received == self.sent[: len(self.received)]
        assert len(self.received) >= len(self.sent) - 1
        assert self.alice.close_code is None and self.bob.close_code is None


@pytest.fixture
async def honest(start_node, peers, authority) -> AsyncIterator[tuple[object, HonestCall]]:
    node = await start_node(modes=OFFERED, heartbeat_interval_ms=HEARTBEAT_MS)
    call = HonestCall(peers(node), peers(node))
    await call.alice.join(authority, "g", "honest", "alice", OFFERED[0])
    await call.bob.join(authority, "g", "honest", "bob", OFFERED[1])
    streaming = asyncio.create_task(call.run())
    yield node, call
    streaming.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await streaming


Case = Callable[[Peer, TokenAuthority], Awaitable[None]]


async def _identify(peer: Peer, authority: TokenAuthority, guild: str = "g") -> None:
    token, grant = authority.mint(guild, "bad", "mallory")
    await peer.send(
        Identify(server_id=guild, user_id="mallory", session_id=grant.session_id, token=token)
    )


async def undecodable_json(peer: Peer, authority: TokenAuthority) -> None:
    await peer.send_raw('{"op": 0, "d": {')


async def wrong_typed_payload(peer: Peer, authority: TokenAuthority) -> None:
    await peer.send_raw(json.dumps({"op": 0, "d": {"server_id": 1, "user_id": [], "token": 5}}))


async def unknown_op(peer: Peer, authority: TokenAuthority) -> None:
    await peer.send_raw(json.dumps({"op": 99, "d": {}}))


async def select_before_identify(peer: Peer, authority: TokenAuthority) -> None:
    data = SelectProtocolData(address="127.0.0.1", port=1, mode=OFFERED[0])
    await peer.send(SelectProtocol(protocol="udp", data=data))


async def forged_token(peer: Peer, authority: TokenAuthority) -> None:
    token, grant = TokenAuthority(b"f" * 32).mint("g", "bad", "mallory")
    await peer.send(
        Identify(server_id="g", user_id="mallory", session_id=grant.session_id, token=token)
    )


async def expired_token(peer: Peer, authority: TokenAuthority) -> None:
    token, grant = authority.mint("g", "bad", "mallory", now=0)
    await peer.send(
        Identify(server_id="g", user_id="mallory", session_id=grant.session_id, token=token)
    )


async def wrong_guild_token(peer: Peer, authority: TokenAuthority) -> None:
    token, grant = authority.mint("other-guild", "bad", "mallory")
    await peer.send(
        Identify(server_id="g", user_id="mallory", session_id=grant.session_id, token=token)
    )


async def someone_elses_session_id(peer: Peer, authority: TokenAuthority) -> None:
    token, _ = authority.mint("g", "bad", "mallory")
    await peer.send(Identify(server_id="g", user_id="mallory", session_id="theirs", token=token))


async def second_identify(peer: Peer, authority: TokenAuthority) -> None:
    await _identify(peer, authority)
    await _identify(peer, authority)


async def resume_unknown_session(peer: Peer, authority: TokenAuthority) -> None:
    token, grant = authority.mint("g", "bad", "mallory")
    await peer.send(Resume(server_id="g", session_id=grant.session_id, token=token, seq_ack=0))


async def protocol_other_than_udp(peer: Peer, authority: TokenAuthority) -> None:
    await _identify(peer, authority)
    data = SelectProtocolData(address="127.0.0.1", port=1, mode=OFFERED[0])
    await peer.send(SelectProtocol(protocol="webrtc", data=data))


async def mode_not_offered(peer: Peer, authority: TokenAuthority) -> None:
    await _identify(peer, authority)
    data = SelectProtocolData(address="127.0.0.1", port=1, mode="xsalsa20_poly1305_lite")
    await peer.send(SelectProtocol(protocol="udp", data=data))


async def mode_unknown(peer: Peer, authority: TokenAuthority) -> None:
    await _identify(peer, authority)
    data = SelectProtocolData(address="127.0.0.1", port=1, mode="rot13")
    await peer.send(SelectProtocol(protocol="udp", data=data))


async def frame_over_64_kib(peer: Peer, authority: TokenAuthority) -> None:
    await peer.send_raw(json.dumps({"op": 3, "d": {"t": 1, "pad": "x" * 70_000}}))


async def binary_server_op(peer: Peer, authority: TokenAuthority) -> None:
    await _identify(peer, authority)
    await peer.send_raw(bytes([25]) + b"external sender")


async def heartbeats_stop(peer: Peer, authority: TokenAuthority) -> None:
    await _identify(peer, authority)


CASES: list[tuple[Case, int]] = [
    (undecodable_json, CloseCode.DECODE_ERROR),
    (wrong_typed_payload, CloseCode.DECODE_ERROR),
    (unknown_op, CloseCode.UNKNOWN_OPCODE),
    (select_before_identify, CloseCode.NOT_AUTHENTICATED),
    (forged_token, CloseCode.AUTHENTICATION_FAILED),
    (expired_token, CloseCode.AUTHENTICATION_FAILED),
    (wrong_guild_token, CloseCode.AUTHENTICATION_FAILED),
    (someone_elses_session_id, CloseCode.AUTHENTICATION_FAILED),
    (second_identify, CloseCode.ALREADY_AUTHENTICATED),
    (resume_unknown_session, CloseCode.SESSION_NO_LONGER_VALID),
    (protocol_other_than_udp, CloseCode.UNKNOWN_PROTOCOL),
    (mode_not_offered, CloseCode.UNKNOWN_ENCRYPTION_MODE),
    (mode_unknown, CloseCode.UNKNOWN_ENCRYPTION_MODE),
    (frame_over_64_kib, CloseCode.MESSAGE_TOO_BIG),
    (binary_server_op, CloseCode.UNKNOWN_OPCODE),
    (heartbeats_stop, CloseCode.SESSION_TIMEOUT),
]


@pytest.mark.parametrize(("case", "expected"), CASES, ids=[case.__name__ for case, _ in CASES])
async def test_bad_input_closes_that_connection_only(
    honest, peers, authority: TokenAuthority, case: Case, expected: int
) -> None:
    node, call = honest
    mallory = peers(node)
    await mallory.open()
    await case(mallory, authority)
    code, reason = await mallory.closed(timeout=HEARTBEAT_MS / 1000 * 4)
    assert code == expected
    assert reason.strip(), "every close carries a reason"
    await call.check()
    assert len(call.received) > 0


async def test_unsupported_gateway_version_is_refused_before_upgrade(start_node, peers) -> None:
    node = await start_node()
    peer = peers(node)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await peer.open("/?v=99")
    assert refused.value.status == 400


@pytest.mark.parametrize("path", ["/?v=8", "?v=8", "/?v=4", "/"])
async def test_gateway_urls_real_clients_use_are_accepted(start_node, peers, path: str) -> None:
    node = await start_node()
    hello = await peers(node).open(path if path.startswith("/") else "/" + path)
    assert hello.heartbeat_interval > 0


async def test_message_flood_is_closed_with_4021(honest, peers) -> None:
    node, call = honest
    mallory = peers(node)
    await mallory.open()
    for n in range(150):
        await mallory.send_raw(json.dumps({"op": 3, "d": {"t": n, "seq_ack": -1}}))
    code, reason = await mallory.closed()
    assert code == CloseCode.RATE_LIMITED and reason
    await call.check()


async def test_a_connection_that_never_sends_its_upgrade_is_closed(start_node, ca) -> None:
    node = await start_node(handshake_timeout_s=0.5)
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port, ssl=trust)
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # the server hung up
    writer.close()


async def test_the_upgrade_timeout_does_not_touch_open_sessions(
    start_node, peers, authority
) -> None:
    node = await start_node(handshake_timeout_s=0.3)
    alice, bob = peers(node), peers(node)
    await alice.join(authority, "g", "c", "alice", OFFERED[0])
    await bob.join(authority, "g", "c", "bob", OFFERED[0])
    await asyncio.sleep(1.0)
    await alice.heartbeat()
    alice.send_audio(b"still here")
    assert await bob.receive_audio(1) == [(alice.ready.ssrc, b"still here")]
    assert alice.close_code is None


class _EveryReceiveBringsAHeartbeat:
    """A WebSocket whose client heartbeats faster than any timeout elapses."""

    closed = False

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        self.timeouts.append(timeout)
        if len(self.timeouts) > 20:
            return aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None)
        frame = json.dumps({"op": 3, "d": {"t": len(self.timeouts), "seq_ack": -1}})
        return aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, frame, None)


async def test_a_timer_already_due_fires_though_frames_keep_coming(authority) -> None:
    # aiohttp takes receive(timeout=0) for "no timeout": a timer found due must run at
    # once, or a busy client's deferred Session Description never goes out.
    from voxgate.server.config import ServerConfig
    from voxgate.server.gateway import _read
    from voxgate.server.router import Router
    from voxgate.server.session import GatewayConnection
    from voxgate.server.stats import NodeStats

    loop = asyncio.get_running_loop()
    router = Router(ServerConfig(port=8443), authority, NodeStats())
    connection = GatewayConnection(router, loop.time() - 3600)  # identify deadline passed
    ws = _EveryReceiveBringsAHeartbeat()
    await _read(ws, connection, loop)  # type: ignore[arg-type]
    assert connection.close_request is not None
    assert connection.close_request[0] == CloseCode.NOT_AUTHENTICATED
    assert ws.timeouts == []
