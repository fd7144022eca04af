"""The hostile-input catalogue: garbage, forgeries and floods against a running node.

One ``voxgate serve`` process; two honest members stream to each other through every case,
with heartbeats, and after each case the honest audio must have arrived complete and byte
for byte. Gateway cases assert the exact close code (and that a reason came with it); media
cases assert the exact drop counter the node exports on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from tests.server.conftest import MEDIA_PATHS, Peer
from tests.server.dave_call import DaveyPeer
from tests.server.dave_wire import DaveClient, established
from tests.support.server import RunningServer, start_server
from voxgate.protocol import discovery, mls
from voxgate.protocol.messages import (
    Heartbeat,
    Identify,
    Resume,
    SelectProtocol,
    SelectProtocolData,
    Speaking,
)
from voxgate.protocol.opcodes import CloseCode, EncryptionMode
from voxgate.protocol.rtp import RtpHeader, build_keepalive
from voxgate.server import datadir
from voxgate.server.auth import TokenAuthority

AES = EncryptionMode.AEAD_AES256_GCM_RTPSIZE.value
XCHACHA = EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE.value
HEARTBEAT_MS = 1000


class AdminMint:
    """``authority.mint`` for a node in another process: joins come from its admin API."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server

    def mint(self, guild: str, channel: str, user: str) -> tuple[str, SimpleNamespace]:
        events = self.server.join(guild, channel, user)
        grant = SimpleNamespace(session_id=events["voice_state"]["session_id"])
        return events["voice_server"]["token"], grant


@dataclass
class Node:
    server: RunningServer
    http: aiohttp.ClientSession
    trust: ssl.SSLContext
    mint: AdminMint
    local: TokenAuthority  # the node's own secret, to forge what the admin API will not mint
    peers: list[Peer] = field(default_factory=list)

    def peer(self) -> Peer:
        peer = Peer(SimpleNamespace(port=self.server.port), self.http, self.trust)  # type: ignore[arg-type]
        self.peers.append(peer)
        return peer

    def dropped(self, reason: str) -> float:
        return self.server.dropped(reason)


async def _stream(
    sent: list[bytes],
    send: Callable[[bytes], None],
    heartbeats: Callable[[], Awaitable[None]],
    *alongside: Coroutine[Any, Any, None],
) -> None:
    """Until cancelled: a numbered 64-byte payload every 10 ms through ``send`` (each kept in
    ``sent``), ``heartbeats`` every 25th, with ``alongside`` running; they end with it."""
    tasks = [asyncio.create_task(coroutine) for coroutine in alongside]
    try:
        tick = 0
        while True:
            payload = os.urandom(60) + tick.to_bytes(4, "big")
            sent.append(payload)
            send(payload)
            if tick % 25 == 0:
                await heartbeats()
            tick += 1
            await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()


@dataclass
class HonestCall:
    alice: Peer
    bob: Peer
    carol: Peer
    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)

    async def run(self) -> None:
        alice_ssrc = self.alice.ready.ssrc  # type: ignore[union-attr]

        async def receive() -> None:
            while True:
                for ssrc, payload in await self.bob.receive_audio(1, timeout=3600):
                    if ssrc == alice_ssrc:
                        self.received.append(payload)

        async def carol_drains() -> None:
            while True:
                await self.carol.datagrams.queue.get()

        async def heartbeats() -> None:
            for member in (self.alice, self.bob, self.carol):
                await member.heartbeat()

        await _stream(self.sent, self.alice.send_audio, heartbeats, receive(), carol_drains())

    async def check(self) -> None:
        async with asyncio.timeout(10):
            while len(self.received) < len(self.sent) - 2:
                await asyncio.sleep(0.02)
        assert self.received == self.sent[: len(self.received)]
        for member in (self.alice, self.bob, self.carol):
            assert member.close_code is None


@pytest.fixture(scope="module", params=MEDIA_PATHS)
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The node, once on each media path: voxgate._fastpath (C), then pure Python."""
    with pytest.MonkeyPatch.context() as env:
        if request.param == "python":
            env.setenv("VOXGATE_NO_EXTENSIONS", "1")
        server = start_server(
            tmp_path_factory.mktemp("catalogue"),
            "--modes",
            f"{AES},{XCHACHA}",
            "--heartbeat-interval",
            str(HEARTBEAT_MS),
        )
    runs = {
        name: value
        for name, value in server.metrics().items()
        if name.startswith("voxgate_media_path") and value == 1
    }
    assert list(runs) == [f'voxgate_media_path{{path="{request.param}"}}'], runs
    assert server.log_count(f"media path: {request.param} \\(") == 1, server.log()
    yield server
    server.stop()


@pytest.fixture
async def node(running: RunningServer) -> AsyncIterator[tuple[Node, HonestCall]]:
    trust = ssl.create_default_context(cafile=str(running.ca_path))
    async with aiohttp.ClientSession() as http:
        local = TokenAuthority(datadir.token_secret(Path(running.data_dir)))
        node = Node(running, http, trust, AdminMint(running), local)
        channel = os.urandom(4).hex()
        call = HonestCall(node.peer(), node.peer(), node.peer())
        await call.alice.join(node.mint, "g", channel, "alice", AES)
        await call.bob.join(node.mint, "g", channel, "bob", XCHACHA)
        await call.carol.join(node.mint, "g", channel, "carol", AES)
        streaming = asyncio.create_task(call.run())
        await asyncio.sleep(0.1)
        yield node, call
        streaming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await streaming
        for peer in node.peers:
            await peer.close()


# --- gateway cases: (name, what mallory does) -> exact close code -------------------------

GatewayCase = Callable[[Node, HonestCall, Peer], Awaitable[None]]


async def _identify(node: Node, peer: Peer, **change: str) -> None:
    token, grant = node.mint.mint("g", "mallory-channel", "mallory")
    fields = {
        "server_id": "g",
        "user_id": "mallory",
        "session_id": grant.session_id,
        "token": token,
    }
    await peer.send(Identify(**{**fields, **change}))


def raw(frame: str | bytes) -> GatewayCase:
    async def case(node: Node, call: HonestCall, peer: Peer) -> None:
        await peer.send_raw(frame)

    return case


def after_identify(frame: str | bytes) -> GatewayCase:
    async def case(node: Node, call: HonestCall, peer: Peer) -> None:
        await _identify(node, peer)
        await peer.send_raw(frame)

    return case


def select(protocol: str, mode: str, port: int = 5000) -> GatewayCase:
    async def case(node: Node, call: HonestCall, peer: Peer) -> None:
        await _identify(node, peer)
        data = {"address": "127.0.0.1", "port": port, "mode": mode}
        await peer.send_raw(json.dumps({"op": 1, "d": {"protocol": protocol, "data": data}}))

    return case


async def forged_token(node: Node, call: HonestCall, peer: Peer) -> None:
    token, grant = TokenAuthority(b"f" * 32).mint("g", "c", "mallory")
    await peer.send(
        Identify(server_id="g", user_id="mallory", session_id=grant.session_id, token=token)
    )


async def expired_token(node: Node, call: HonestCall, peer: Peer) -> None:
    token, grant = node.local.mint("g", "c", "mallory", now=1_000_000)
    await peer.send(
        Identify(server_id="g", user_id="mallory", session_id=grant.session_id, token=token)
    )


async def truncated_token(node: Node, call: HonestCall, peer: Peer) -> None:
    token, grant = node.mint.mint("g", "c", "mallory")
    await peer.send(
        Identify(server_id="g", user_id="mallory", session_id=grant.session_id, token=token[:-10])
    )


async def wrong_guild(node: Node, call: HonestCall, peer: Peer) -> None:
    await _identify(node, peer, server_id="another-guild")


async def wrong_user(node: Node, call: HonestCall, peer: Peer) -> None:
    await _identify(node, peer, user_id="alice")


async def wrong_session(node: Node, call: HonestCall, peer: Peer) -> None:
    await _identify(node, peer, session_id="not-the-granted-one")


async def token_of_a_live_session(node: Node, call: HonestCall, peer: Peer) -> None:
    alice = call.alice
    await peer.send(
        Identify(server_id="g", user_id="alice", session_id=alice.session_id, token=alice.token)
    )


async def second_identify(node: Node, call: HonestCall, peer: Peer) -> None:
    await _identify(node, peer)
    await _identify(node, peer)


async def identify_then_resume(node: Node, call: HonestCall, peer: Peer) -> None:
    await _identify(node, peer)
    await peer.send(Resume(server_id="g", session_id="x", token="y", seq_ack=1))


async def resume_unknown_session(node: Node, call: HonestCall, peer: Peer) -> None:
    await peer.send(Resume(server_id="g", session_id="no-such-session", token="t", seq_ack=0))


async def resume_in_another_guild(node: Node, call: HonestCall, peer: Peer) -> None:
    alice = call.alice
    await peer.send(
        Resume(server_id="h", session_id=alice.session_id, token=alice.token, seq_ack=0)
    )


async def resume_with_a_stolen_session_id(node: Node, call: HonestCall, peer: Peer) -> None:
    token, _ = node.mint.mint("g", "c", "mallory")
    await peer.send(Resume(server_id="g", session_id=call.alice.session_id, token=token, seq_ack=0))


async def speaking_before_identify(node: Node, call: HonestCall, peer: Peer) -> None:
    await peer.send(Speaking(speaking=1, ssrc=1))


async def select_before_identify(node: Node, call: HonestCall, peer: Peer) -> None:
    await peer.send(
        SelectProtocol(protocol="udp", data=SelectProtocolData(address="1.2.3.4", port=1, mode=AES))
    )


async def heartbeats_stop(node: Node, call: HonestCall, peer: Peer) -> None:
    await _identify(node, peer)


async def message_flood(node: Node, call: HonestCall, peer: Peer) -> None:
    for n in range(200):
        await peer.send(Heartbeat(t=n, seq_ack=-1))


GATEWAY_CASES: list[tuple[str, GatewayCase, int]] = [
    ("truncated json", raw('{"op": 0, "d": {"server_id": '), CloseCode.DECODE_ERROR),
    ("not json", raw("hello voxgate"), CloseCode.DECODE_ERROR),
    ("json array", raw("[0, {}]"), CloseCode.DECODE_ERROR),
    ("json null", raw("null"), CloseCode.DECODE_ERROR),
    ("missing op", raw('{"d": {}}'), CloseCode.DECODE_ERROR),
    ("op is a string", raw('{"op": "0", "d": {}}'), CloseCode.DECODE_ERROR),
    (
        "identify with wrong types",
        raw('{"op": 0, "d": {"server_id": 1, "user_id": [], "session_id": {}, "token": 5}}'),
        CloseCode.DECODE_ERROR,
    ),
    (
        "identify without token",
        raw('{"op": 0, "d": {"server_id": "g", "user_id": "u", "session_id": "s"}}'),
        CloseCode.DECODE_ERROR,
    ),
    (
        "deeply nested json",
        raw('{"op": 3, "d": ' + "[" * 5000 + "]" * 5000 + "}"),
        CloseCode.DECODE_ERROR,
    ),
    ("heartbeat with a float nonce", raw('{"op": 3, "d": 1.5}'), CloseCode.DECODE_ERROR),
    ("empty binary frame", raw(b""), CloseCode.DECODE_ERROR),
    ("client op in binary framing", raw(b"\x00{}"), CloseCode.DECODE_ERROR),
    ("unknown op", raw('{"op": 99, "d": {}}'), CloseCode.UNKNOWN_OPCODE),
    ("negative op", raw('{"op": -1, "d": {}}'), CloseCode.UNKNOWN_OPCODE),
    ("server op from a client (ready)", raw('{"op": 2, "d": {}}'), CloseCode.UNKNOWN_OPCODE),
    ("server binary op from a client", after_identify(b"\x19sender"), CloseCode.UNKNOWN_OPCODE),
    ("select protocol before identify", select_before_identify, CloseCode.NOT_AUTHENTICATED),
    ("speaking before identify", speaking_before_identify, CloseCode.NOT_AUTHENTICATED),
    ("forged token", forged_token, CloseCode.AUTHENTICATION_FAILED),
    ("expired token", expired_token, CloseCode.AUTHENTICATION_FAILED),
    ("truncated token", truncated_token, CloseCode.AUTHENTICATION_FAILED),
    ("token for another guild", wrong_guild, CloseCode.AUTHENTICATION_FAILED),
    ("token for another user", wrong_user, CloseCode.AUTHENTICATION_FAILED),
    ("token for another session", wrong_session, CloseCode.AUTHENTICATION_FAILED),
    ("token of a live session", token_of_a_live_session, CloseCode.AUTHENTICATION_FAILED),
    ("second identify", second_identify, CloseCode.ALREADY_AUTHENTICATED),
    ("resume after identify", identify_then_resume, CloseCode.ALREADY_AUTHENTICATED),
    ("resume unknown session", resume_unknown_session, CloseCode.SESSION_NO_LONGER_VALID),
    ("resume in another guild", resume_in_another_guild, CloseCode.SESSION_NO_LONGER_VALID),
    (
        "resume someone else's session",
        resume_with_a_stolen_session_id,
        CloseCode.AUTHENTICATION_FAILED,
    ),
    ("protocol other than udp", select("webrtc", AES), CloseCode.UNKNOWN_PROTOCOL),
    (
        "mode not offered",
        select("udp", "xsalsa20_poly1305_lite"),
        CloseCode.UNKNOWN_ENCRYPTION_MODE,
    ),
    ("mode unknown", select("udp", "rot13"), CloseCode.UNKNOWN_ENCRYPTION_MODE),
    ("select protocol port out of range", select("udp", AES, port=70000), CloseCode.DECODE_ERROR),
    (
        "frame over 64 KiB",
        raw(json.dumps({"op": 3, "d": {"t": 1, "x": "y" * 70_000}})),
        CloseCode.MESSAGE_TOO_BIG,
    ),
    ("frame of 200 KiB", raw("x" * (200 << 10)), CloseCode.MESSAGE_TOO_BIG),
    ("message flood", message_flood, CloseCode.RATE_LIMITED),
    ("heartbeats stop", heartbeats_stop, CloseCode.SESSION_TIMEOUT),
]


@pytest.mark.parametrize(
    ("case", "expected"),
    [(case, expected) for _, case, expected in GATEWAY_CASES],
    ids=[name for name, _, _ in GATEWAY_CASES],
)
async def test_hostile_gateway_input(node, case: GatewayCase, expected: int) -> None:
    node, call = node
    mallory = node.peer()
    await mallory.open()
    await case(node, call, mallory)
    code, reason = await mallory.closed(timeout=HEARTBEAT_MS / 1000 * 5)
    assert code == expected, reason
    assert reason.strip(), "every close carries a reason"
    await call.check()


# --- media cases: datagrams -> the exact drop counter -------------------------------------

MediaCase = Callable[[Node, HonestCall, socket.socket], None]


def _stranger(node: Node) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(("127.0.0.1", node.server.udp_port))
    sock.setblocking(False)
    return sock


def _rtp(ssrc: int, body: bytes = bytes(40), sequence: int = 1) -> bytes:
    return RtpHeader(sequence=sequence, timestamp=sequence * 960, ssrc=ssrc).build() + body


def datagram(build: Callable[[HonestCall], bytes]) -> MediaCase:
    def case(node: Node, call: HonestCall, stranger: socket.socket) -> None:
        stranger.send(build(call))

    return case


def from_carol(build: Callable[[HonestCall], list[bytes]]) -> MediaCase:
    def case(node: Node, call: HonestCall, stranger: socket.socket) -> None:
        assert call.carol.udp is not None
        for packet in build(call):
            call.carol.udp.sendto(packet)

    return case


def _carol_packet(call: HonestCall, payload: bytes = b"carol") -> bytes:
    assert call.carol.cipher is not None and call.carol.ready is not None
    header = RtpHeader(sequence=7, timestamp=7 * 960, ssrc=call.carol.ready.ssrc).build()
    return call.carol.cipher.seal(header, payload)


def _tampered(call: HonestCall) -> bytes:
    packet = bytearray(_carol_packet(call))
    packet[-8] ^= 0x40
    return bytes(packet)


MEDIA_CASES: list[tuple[str, MediaCase, str, int]] = [
    ("rtp for an unknown ssrc", datagram(lambda c: _rtp(0xDEADBEEF)), "unknown_ssrc", 1),
    (
        "forged rtp with a member's ssrc",
        datagram(lambda c: _rtp(c.carol.ready.ssrc)),
        "decrypt_failed",
        1,
    ),
    (
        "forged rtp from another address, big",
        datagram(lambda c: _rtp(c.alice.ready.ssrc, bytes(1400))),
        "decrypt_failed",
        1,
    ),
    (
        "rtp truncated to its header",
        datagram(lambda c: _rtp(c.carol.ready.ssrc, b"")),
        "decrypt_failed",
        1,
    ),
    (
        "rtp claiming 15 csrcs it lacks",
        datagram(
            lambda c: (
                bytes([0x8F, 0x78]) + bytes(6) + c.carol.ready.ssrc.to_bytes(4, "big") + bytes(8)
            )
        ),
        "malformed",
        1,
    ),
    (
        "rtp with an extension header cut off",
        datagram(
            lambda c: (
                bytes([0x90, 0x78]) + bytes(6) + c.carol.ready.ssrc.to_bytes(4, "big") + b"\xbe"
            )
        ),
        "malformed",
        1,
    ),
    (
        "tampered rtp from the member's own socket",
        from_carol(lambda c: [_tampered(c)]),
        "decrypt_failed",
        1,
    ),
    ("replayed rtp", from_carol(lambda c: [p := _carol_packet(c), p, p]), "replayed", 2),
    (
        "rtp for a member not yet described",
        datagram(lambda c: _rtp(c.dave_ssrc)),
        "not_described",
        1,
    ),
    (
        "discovery for an unknown ssrc",
        datagram(lambda c: discovery.build_request(424242)),
        "discovery_refused",
        1,
    ),
    (
        "discovery response sent to the server",
        datagram(lambda c: discovery.build_response(c.carol.ready.ssrc, "1.2.3.4", 5)),
        "unknown_kind",
        1,
    ),
    ("empty datagram", datagram(lambda c: b""), "unknown_kind", 1),
    ("five bytes", datagram(lambda c: b"\x80\x78\x00\x01\x02"), "unknown_kind", 1),
    ("74 bytes of zeros", datagram(lambda c: bytes(74)), "unknown_kind", 1),
    ("version 0 packet", datagram(lambda c: bytes(100)), "unknown_kind", 1),
]


@pytest.mark.parametrize(
    ("case", "reason", "delta"),
    [(case, reason, delta) for _, case, reason, delta in MEDIA_CASES],
    ids=[name for name, _, _, _ in MEDIA_CASES],
)
async def test_hostile_datagram_is_dropped_and_counted(node, case, reason: str, delta: int) -> None:
    node, call = node
    dave = node.peer()
    token, grant = node.mint.mint("g", "dave-channel", "dave")
    await dave.open()
    await dave.send(
        Identify(server_id="g", user_id="dave", session_id=grant.session_id, token=token)
    )
    from voxgate.protocol.messages import Ready

    call.dave_ssrc = (await dave.expect(Ready)).ssrc  # type: ignore[attr-defined]
    before = node.dropped(reason)
    stranger = _stranger(node)
    try:
        case(node, call, stranger)
        async with asyncio.timeout(5):
            while node.dropped(reason) < before + delta:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert node.dropped(reason) == before + delta
    finally:
        stranger.close()
    await call.check()


async def test_discovery_from_a_stranger_is_answered_no_larger_and_moves_nobody(node) -> None:
    node, call = node
    stranger = _stranger(node)
    request = discovery.build_request(call.bob.ready.ssrc)
    stranger.send(request)
    answer = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(stranger, 2048), 5)
    assert len(answer) <= len(request)
    stranger.close()
    # bob still gets alice's audio at his own address.
    await asyncio.sleep(0.2)
    await call.check()


async def test_member_flood_is_capped_and_counted(node) -> None:
    node, call = node
    before = node.dropped("rate_limited")
    assert call.carol.cipher is not None and call.carol.ready is not None
    for sequence in range(600):
        header = RtpHeader(
            sequence=sequence, timestamp=sequence, ssrc=call.carol.ready.ssrc
        ).build()
        call.carol.udp.sendto(call.carol.cipher.seal(header, b"flood"))  # type: ignore[union-attr]
    await asyncio.sleep(0.5)
    # The bucket lets a second's worth (150) through, then about 150 a second.
    assert node.dropped("rate_limited") - before >= 300
    await call.check()


async def test_keepalives_are_counted_not_dropped(node) -> None:
    node, call = node
    before = node.server.metrics()["voxgate_keepalives_in_total"]
    call.carol.udp.sendto(build_keepalive(1))  # type: ignore[union-attr]
    async with asyncio.timeout(5):
        while node.server.metrics()["voxgate_keepalives_in_total"] < before + 1:
            await asyncio.sleep(0.02)
    await call.check()


async def test_frame_beyond_the_hard_limit_is_refused_unread(node) -> None:
    # Past 256 KiB aiohttp stops reading the frame and closes 1009 itself (without our
    # reason): nothing that large is ever buffered whole.
    node, call = node
    mallory = node.peer()
    await mallory.open()
    await mallory.send_raw("x" * (1 << 20))
    code, _ = await mallory.closed()
    assert code == CloseCode.MESSAGE_TOO_BIG
    await call.check()


def test_the_catalogue_has_at_least_forty_cases() -> None:
    assert len(GATEWAY_CASES) + len(MEDIA_CASES) + 4 >= 40


# --- DAVE cases: hostile MLS input against an end-to-end encrypted call ------------------
#
# alice, bob and mallory are davey members of one group; alice streams DAVE frames that bob
# opens. Then mallory (a member) or a fresh attacker (identified with DAVE, never a valid
# key package) sends one hostile op. Per DAVE.md and server/dave.py: a key package or an
# op 28 that is not one closes that connection with 4002 and the check's reason; a frame
# too big or an op no client sends closes as any frame would; a well-formed commit that
# fails §3.6, and op 23 / op 31 for a transition the server never announced, are ignored
# and counted. Either way alice and bob keep one group and the audio.


@dataclass
class DaveCall:
    alice: DaveClient
    bob: DaveClient
    mallory: DaveClient
    sent: list[bytes] = field(default_factory=list)
    heard: list[bytes] = field(default_factory=list)

    async def run(self) -> None:
        alice_ssrc = self.alice.peer.ready.ssrc  # type: ignore[union-attr]

        async def receive() -> None:
            while True:
                for ssrc, payload in await self.bob.peer.receive_audio(1, timeout=3600):
                    if ssrc == alice_ssrc:
                        opened = self.bob.member.decrypt(self.alice.user_id, payload)
                        if opened is not None:
                            self.heard.append(opened)

        async def drain() -> None:
            while True:
                await self.mallory.peer.datagrams.queue.get()

        def send(opus: bytes) -> None:
            assert self.alice.send_opus(opus).endswith(b"\xfa\xfa")

        async def heartbeats() -> None:
            for member in (self.alice, self.bob, self.mallory):
                with contextlib.suppress(ConnectionError, AssertionError):
                    await member.peer.heartbeat()

        await _stream(self.sent, send, heartbeats, receive(), drain())

    async def check(self) -> None:
        """bob heard alice to the end, in order, each frame intact; at most a frame or two
        lost where the group changed epoch (mallory closed); one group for both."""
        async with asyncio.timeout(10):
            while not self.heard or self.heard[-1] not in self.sent[-5:]:
                await asyncio.sleep(0.02)
        where = [self.sent.index(opus) for opus in self.heard]
        assert where == sorted(where)
        assert where[-1] - where[0] + 1 - len(where) <= 3, "frames lost mid-stream"
        assert self.alice.member.epoch_authenticator == self.bob.member.epoch_authenticator
        for member in (self.alice, self.bob):
            assert member.peer.close_code is None


@pytest.fixture
async def dave_call(running: RunningServer) -> AsyncIterator[tuple[Node, DaveCall]]:
    trust = ssl.create_default_context(cafile=str(running.ca_path))
    async with aiohttp.ClientSession() as http:
        local = TokenAuthority(datadir.token_secret(Path(running.data_dir)))
        node = Node(running, http, trust, AdminMint(running), local)
        channel = str(secrets.randbelow(10**17) + 10**17)
        base = secrets.randbelow(10**15) * 10 + 10**16
        members = [DaveClient(node.peer(), str(base + n), "g", channel) for n in range(1, 4)]
        for member in members:
            await member.join(node.mint)
        await established(*members)
        call = DaveCall(*members)
        streaming = asyncio.create_task(call.run())
        await asyncio.sleep(0.2)
        yield node, call
        streaming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await streaming
        for member in members:
            await member.stop()
        for peer in node.peers:
            await peer.close()


#: Sends one hostile op, from mallory or from the attacker; returns who sent it.
DaveCase = Callable[[DaveCall, DaveClient], Awaitable[DaveClient]]


def _forged_commit(
    call: DaveCall,
    *,
    epoch: int = 0,
    group: bytes | None = None,
    leaf: int | None = None,
    proposals: tuple[mls.ProposalOrRef, ...] | None = None,
) -> bytes:
    """A well-formed commit from mallory's leaf at the group's epoch (changed as asked),
    citing one proposal the server never sent; its tags are garbage, as the gateway
    cannot check them (DAVE.md §3.4)."""
    mallory = call.mallory.member
    refs = (mls.ProposalOrRef(mls.PROPOSAL_REFERENCE, os.urandom(32)),)
    message = mls.PublicMessage(
        group_id=group or mls.group_id_of(int(call.mallory.channel)),
        epoch=(mallory.epoch or 0) + epoch,
        sender_type=mls.SenderType.MEMBER,
        sender_index=mallory.leaf if leaf is None else leaf,  # type: ignore[arg-type]
        authenticated_data=b"",
        content_type=mls.ContentType.COMMIT,
        content=mls.CommitContent(refs if proposals is None else proposals, None),
        signature=os.urandom(71),
        confirmation_tag=os.urandom(32),
        membership_tag=os.urandom(32),
    )
    return mls.build_public_message(message)


def by_mallory(build: Callable[[DaveCall], bytes | str]) -> DaveCase:
    async def case(call: DaveCall, attacker: DaveClient) -> DaveClient:
        await call.mallory.peer.send_raw(build(call))
        return call.mallory

    return case


def by_attacker(build: Callable[[DaveCall, DaveClient], bytes | str]) -> DaveCase:
    async def case(call: DaveCall, attacker: DaveClient) -> DaveClient:
        await attacker.peer.send_raw(build(call, attacker))
        return attacker

    return case


def _own_key_package(attacker: DaveClient) -> bytearray:
    return bytearray(attacker.member.new_key_package())


def _wrong_suite(call: DaveCall, attacker: DaveClient) -> bytes:
    package = _own_key_package(attacker)
    package[2:4] = b"\x00\x01"
    return b"\x1a" + package


def _bad_signature(call: DaveCall, attacker: DaveClient) -> bytes:
    package = _own_key_package(attacker)
    package[-10] ^= 0x01
    return b"\x1a" + package


def _inline_remove() -> tuple[mls.ProposalOrRef, ...]:
    remove = mls.InlineProposal(mls.ProposalType.REMOVE, (0).to_bytes(4, "big"), removed_leaf=0)
    return (mls.ProposalOrRef(mls.PROPOSAL_INLINE, None, proposal=remove),)


DAVE_CASES: list[tuple[str, DaveCase, tuple[int, str] | str]] = [
    (
        "undecodable key package",
        by_attacker(lambda c, a: b"\x1a\x00\x01\x00\x02" + os.urandom(40)),
        (CloseCode.DECODE_ERROR, "invalid key package: "),
    ),
    (
        "key package for another user",
        by_attacker(lambda c, a: b"\x1a" + DaveyPeer(c.bob.user_id, 1).new_key_package()),
        (CloseCode.DECODE_ERROR, "invalid key package: identity mismatch"),
    ),
    (
        "key package of the wrong cipher suite",
        by_attacker(_wrong_suite),
        (CloseCode.DECODE_ERROR, "invalid key package: wrong cipher suite"),
    ),
    (
        "key package with a bad signature",
        by_attacker(_bad_signature),
        (CloseCode.DECODE_ERROR, "invalid key package: bad key package signature"),
    ),
    (
        "undecodable commit",
        by_mallory(lambda c: b"\x1c\x00\x01\x00\x01" + os.urandom(64)),
        (CloseCode.DECODE_ERROR, "invalid commit: "),
    ),
    (
        "binary frame over 64 KiB",
        by_attacker(lambda c, a: b"\x1c" + bytes(70_000)),
        (CloseCode.MESSAGE_TOO_BIG, "frame larger than 64 KiB"),
    ),
    (
        "binary op no client sends",
        by_attacker(lambda c, a: b"\x1e\x00\x01"),
        (CloseCode.UNKNOWN_OPCODE, "unknown opcode 30"),
    ),
    (
        "commit for the wrong epoch",
        by_mallory(lambda c: b"\x1c" + _forged_commit(c, epoch=7)),
        'voxgate_dave_commits_rejected_total{reason="epoch"}',
    ),
    (
        "commit with the wrong proposal set",
        by_mallory(lambda c: b"\x1c" + _forged_commit(c)),
        'voxgate_dave_commits_rejected_total{reason="proposal_set"}',
    ),
    (
        "commit with an inline proposal",
        by_mallory(lambda c: b"\x1c" + _forged_commit(c, proposals=_inline_remove())),
        'voxgate_dave_commits_rejected_total{reason="inline_proposal"}',
    ),
    (
        "commit for another group",
        by_mallory(lambda c: b"\x1c" + _forged_commit(c, group=bytes(8))),
        'voxgate_dave_commits_rejected_total{reason="group_id"}',
    ),
    (
        "commit from another member's leaf",
        by_mallory(lambda c: b"\x1c" + _forged_commit(c, leaf=(c.mallory.member.leaf or 0) ^ 1)),
        'voxgate_dave_commits_rejected_total{reason="sender"}',
    ),
    (
        "op 23 for an unknown transition",
        by_mallory(lambda c: json.dumps({"op": 23, "d": {"transition_id": 4242}})),
        'voxgate_dave_ignored_total{reason="unknown_transition"}',
    ),
    (
        "op 31 for an unknown transition",
        by_mallory(lambda c: json.dumps({"op": 31, "d": {"transition_id": 4243}})),
        'voxgate_dave_ignored_total{reason="unknown_transition"}',
    ),
]


@pytest.mark.parametrize(
    ("case", "expected"),
    [(case, expected) for _, case, expected in DAVE_CASES],
    ids=[name for name, _, _ in DAVE_CASES],
)
async def test_hostile_mls_input(dave_call, case: DaveCase, expected) -> None:
    node, call = dave_call
    attacker = DaveClient(
        node.peer(),
        str(int(call.mallory.user_id) + 7),
        "g",
        call.mallory.channel,
        key_package=False,
    )
    await attacker.join(node.mint)
    before = node.server.metrics().get(expected, 0.0) if isinstance(expected, str) else 0.0
    sender = await case(call, attacker)
    if isinstance(expected, tuple):
        code, reason_start = expected
        got, reason = await sender.peer.closed(timeout=5)
        assert got == code, reason
        assert reason.startswith(reason_start), reason
    else:
        async with asyncio.timeout(5):
            while node.server.metrics().get(expected, 0.0) < before + 1:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert node.server.metrics().get(expected, 0.0) == before + 1
        assert sender.peer.close_code is None, "ignored, not closed"
    await attacker.stop()
    await call.check()
