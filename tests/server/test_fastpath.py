"""The native media path (voxgate._fastpath) against the Python one it replaces.

Both paths run the same node state on real loopback sockets, with no event loop: the
Python path is :meth:`MediaEndpoint.datagram_received` fed what the server socket read, the
native one ``Relay.pump`` reading that socket itself (handing back what it does not relay).
Given the same keys and nonce counters, every receiver must get the same datagram, byte
for byte, whatever the sender's and the receivers' modes.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from voxgate.protocol import crypto, discovery
from voxgate.protocol.crypto import transport_cipher
from voxgate.protocol.dave import is_dave_frame
from voxgate.protocol.errors import DecryptionError, PacketError
from voxgate.protocol.opcodes import EncryptionMode
from voxgate.protocol.rtp import RtpHeader
from voxgate.server import fastpath
from voxgate.server.auth import TokenAuthority
from voxgate.server.config import ServerConfig
from voxgate.server.guard import RateLimit, ReplayWindow, replay_window
from voxgate.server.media import MediaEndpoint
from voxgate.server.router import Channel, Router
from voxgate.server.session import VoiceSession
from voxgate.server.stats import NodeStats

pytestmark = pytest.mark.skipif(fastpath.native is None, reason=fastpath.why_python)

MODES = list(EncryptionMode)
AES = EncryptionMode.AEAD_AES256_GCM_RTPSIZE
XCHACHA = EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE


def _implementations() -> list[tuple[str, str]]:
    """The extension's (AES-256-GCM, ChaCha20) pairs this machine runs: its fastest (AES-NI
    and PCLMULQDQ, AVX-512VL) where the CPU has them, and the portable ones every other
    machine runs (OpenSSL's AES-256-GCM, the generic ChaCha20)."""
    if fastpath.native is None:
        return [("openssl", "generic")]

    def best(choose: Callable[..., str], fastest: str, portable: str) -> str:
        chosen = choose()
        try:
            choose(fastest)
            return fastest
        except ValueError:
            return portable
        finally:
            choose(chosen)

    native = fastpath.native
    fastest = (best(native._aes_gcm, "x86", "openssl"), best(native._chacha20, "avx512", "generic"))
    return list(dict.fromkeys([fastest, ("openssl", "generic")]))


@pytest.fixture(params=_implementations(), ids="+".join)
def implementations(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """Ciphers set up during the test use this AES-256-GCM, and every XChaCha20 packet this
    ChaCha20."""
    native = fastpath.native
    chosen = native._aes_gcm(), native._chacha20()
    native._aes_gcm(request.param[0])
    native._chacha20(request.param[1])
    try:
        yield request.param
    finally:
        native._aes_gcm(chosen[0])
        native._chacha20(chosen[1])


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _wait(sock: socket.socket, timeout: float = 2.0) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


@dataclass
class Member:
    mode: EncryptionMode
    key: bytes
    nonce: int
    dave: int = 0


class Node:
    """A router with one channel, its media socket, and a socket per member."""

    def __init__(self, path: str, members: list[Member]) -> None:
        self.path = path
        self.stats = NodeStats()
        authority = TokenAuthority(b"k" * 32)
        self.router = Router(ServerConfig(media_path=path), authority, self.stats)
        self.endpoint = MediaEndpoint(self.router, self.stats)
        self.handed_back = 0
        received = self.endpoint.datagram_received

        def counted(data: bytes, addr: tuple[str, int]) -> None:
            self.handed_back += 1
            received(data, addr)

        self.receive = counted
        self.server = _udp()
        self.router.sendto = self.server.sendto
        channel = Channel(("g", "c"), self.router.forward)
        self.router.channels["g", "c"] = channel
        self.sockets: list[socket.socket] = []
        self.sessions: list[VoiceSession] = []
        for index, member in enumerate(members):
            _, grant = authority.mint("g", "c", f"u{index}")
            session = VoiceSession(grant, "token", index + 1, channel, packet_rate_cap=1e9)
            session.mode = member.mode
            session.cipher = transport_cipher(member.mode, member.key, nonce=member.nonce)
            session.replay = replay_window(member.mode)
            session.dave_protocol_version = member.dave
            if path == "native":
                fastpath.describe(session)
            sock = _udp()
            self.sockets.append(sock)
            session.address = sock.getsockname()
            self.router.by_ssrc[session.ssrc] = session
            self.router.by_address[session.address] = session
            channel.members.append(session)
            self.sessions.append(session)
        self.relay = None
        if path == "native":
            assert fastpath.native is not None
            self.relay = fastpath.native.Relay(
                self.server.fileno(), self.router, self.stats, Router.forward
            )

    def deliver(self, datagram: bytes, sender: int = 0) -> None:
        """``datagram`` from member ``sender``'s socket, through the node."""
        self.sockets[sender].sendto(datagram, self.server.getsockname())
        assert _wait(self.server)
        if self.relay is not None:
            for data, addr in self.relay.pump() or ():
                self.receive(data, addr)
        else:
            data, addr = self.server.recvfrom(65536)
            self.receive(data, addr)

    def received(self, index: int) -> list[bytes]:
        sock = self.sockets[index]
        out = []
        while _wait(sock, 0.05 if out else 0.3):
            out.append(sock.recv(65536))
        return out

    def close(self) -> None:
        for sock in [self.server, *self.sockets]:
            sock.close()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.close()


def _urandom_counter() -> object:
    """A deterministic os.urandom, so xsalsa20_poly1305_suffix's nonces repeat per path."""
    counter = itertools.count()

    def urandom(size: int) -> bytes:
        return next(counter).to_bytes(size, "big")

    return urandom


def _packet(
    mode: EncryptionMode,
    key: bytes,
    nonce: int,
    payload: bytes,
    csrcs: int,
    extension: bytes | None,
    sequence: int,
) -> bytes:
    header = RtpHeader(
        sequence=sequence, timestamp=sequence * 960, ssrc=1, csrcs=tuple(range(1, csrcs + 1))
    ).build()
    if extension is not None:
        words = len(extension) // 4
        header = bytes([header[0] | 0x10]) + header[1:] + b"\xbe\xde" + words.to_bytes(2, "big")
        header += extension
    return transport_cipher(mode, key, nonce=nonce).seal(header, payload)


PAIRS = list(itertools.product(MODES, MODES))


@pytest.mark.parametrize(
    ("sender_mode", "receiver_mode"), PAIRS, ids=[f"{s.value}->{r.value}" for s, r in PAIRS]
)
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    nonces=st.lists(st.integers(0, 2**32 - 1) | st.just(2**32 - 1), min_size=3, max_size=3),
    payload=st.binary(min_size=0, max_size=300),
    csrcs=st.integers(0, 2),
    extension=st.none() | st.binary(min_size=0, max_size=3).map(lambda b: b"\x10" * 4 * len(b)),
    third=st.sampled_from(MODES),
)
def test_both_paths_emit_identical_datagrams(
    monkeypatch: pytest.MonkeyPatch,
    implementations: tuple[str, str],
    sender_mode: EncryptionMode,
    receiver_mode: EncryptionMode,
    nonces: list[int],
    payload: bytes,
    csrcs: int,
    extension: bytes | None,
    third: EncryptionMode,
) -> None:
    keys = [os.urandom(32) for _ in range(3)]
    members = [
        Member(sender_mode, keys[0], nonces[0]),
        Member(receiver_mode, keys[1], nonces[1]),
        Member(third, keys[2], nonces[2]),
    ]
    datagram = _packet(sender_mode, keys[0], 7, payload, csrcs, extension, 100)
    outputs = {}
    for path in ("python", "native"):
        monkeypatch.setattr(crypto.os, "urandom", _urandom_counter())
        node = Node(path, members)
        try:
            node.deliver(datagram)
            outputs[path] = ([node.received(1), node.received(2)], node.stats.counters())
            nonces_after = [s.cipher.nonce for s in node.sessions]  # type: ignore[union-attr]
            outputs[path + "-nonces"] = nonces_after  # type: ignore[assignment]
            if node.relay is not None:
                node.relay.sync()
            node.router.sync_counters()  # what the Python path's routes hold back
            counted = [(s.packets_in, s.packets_out) for s in node.sessions]
            outputs[path + "-members"] = counted  # type: ignore[assignment]
            if path == "native" and {sender_mode, receiver_mode, third} <= fastpath.NATIVE_MODES:
                assert node.handed_back == 0, "an rtpsize AEAD call is relayed in C"
        finally:
            node.close()
    python, native = outputs["python"], outputs["native"]
    assert [len(got) for got in python[0]] == [1, 1]
    assert native[0] == python[0]
    assert native[1] == python[1]
    assert outputs["native-nonces"] == outputs["python-nonces"]
    assert outputs["native-members"] == outputs["python-members"]
    # And what came out is the packet, as each receiver opens it.
    for got, member in zip(native[0], members[1:], strict=True):
        _, opened = transport_cipher(member.mode, member.key).open(got[0])
        assert opened == payload


def _one_each(node: Node, count: int) -> list[list[bytes]]:
    """What each member but the sender got: ``count`` datagrams, and nothing more."""
    got = []
    for sock in node.sockets[1:]:
        datagrams = []
        while len(datagrams) < count and _wait(sock):
            datagrams.append(sock.recv(65536))
        got.append(datagrams)
    for sock in node.sockets[1:]:  # sendmmsg on loopback delivers before it returns
        with pytest.raises(BlockingIOError):
            sock.recv(65536)
    return got


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    # Up to 21 receivers, the two modes in any order: the C path seals two to sixteen
    # XChaCha20 receivers at once (key stream blocks sixteen a pass, tags eight), and one
    # alone by itself.
    members=st.lists(
        st.tuples(st.sampled_from(sorted(fastpath.NATIVE_MODES)), st.integers(0, 2**32 - 1)),
        min_size=2,
        max_size=22,
    ),
    # Past four ChaCha20 blocks (192 bytes of payload), the key stream goes on per receiver.
    payloads=st.lists(st.binary(max_size=400), min_size=1, max_size=3),
)
# Seventeen XChaCha20 receivers among AES ones, and every length of key stream.
@example(
    members=[(AES, 0), *[(XCHACHA, 2**32 - 3 + n) for n in range(10)], (AES, 1),
             *[(XCHACHA, n) for n in range(7)]],
    payloads=[bytes(40), bytes(range(130)), bytes(n % 251 for n in range(400))],
)
def test_a_channel_of_many_members_gets_from_both_paths_the_same_datagrams(
    implementations: tuple[str, str],
    members: list[tuple[EncryptionMode, int]],
    payloads: list[bytes],
) -> None:
    drawn = [Member(mode, os.urandom(32), nonce) for mode, nonce in members]
    sender = drawn[0]
    datagrams = [
        _packet(sender.mode, sender.key, 7 + n, payload, 0, None, 100 + n)
        for n, payload in enumerate(payloads)
    ]
    outputs = {}
    for path in ("python", "native"):
        node = Node(path, drawn)
        try:
            for datagram in datagrams:
                node.deliver(datagram)
            outputs[path] = _one_each(node, len(datagrams))
            outputs[path + "-nonces"] = [s.cipher.nonce for s in node.sessions]  # type: ignore[misc, union-attr]
            if path == "native":
                assert node.handed_back == 0
        finally:
            node.close()
    assert outputs["native"] == outputs["python"]
    assert outputs["native-nonces"] == outputs["python-nonces"]
    for got, member in zip(outputs["native"], drawn[1:], strict=True):
        opened = [transport_cipher(member.mode, member.key).open(d)[1] for d in got]
        assert opened == payloads


@pytest.mark.parametrize("mode", sorted(fastpath.NATIVE_MODES))
def test_native_cipher_opens_and_seals_as_the_python_one(
    mode: EncryptionMode, implementations: tuple[str, str]
) -> None:
    key = os.urandom(32)
    python, native = (
        transport_cipher(mode, key, nonce=2**32 - 2),
        fastpath._CIPHERS[mode](key, nonce=2**32 - 2),
    )
    assert isinstance(native, type(python))
    header = RtpHeader(sequence=1, timestamp=2, ssrc=3).build()
    for _ in range(3):  # across the counter's wrap
        clear, plaintext = python.split(header, b"opus")
        sealed = python.seal_split(clear, plaintext)
        assert native.seal_split(clear, plaintext) == sealed
        assert native.open_split(sealed) == python.open_split(sealed)
        assert native.open(sealed) == python.open(sealed)
    assert native.nonce == python.nonce == 1
    tampered = bytearray(sealed)
    tampered[-6] ^= 1
    for cipher in (python, native):
        with pytest.raises(DecryptionError):
            cipher.open_split(bytes(tampered))
        with pytest.raises(DecryptionError):
            cipher.open_split(header)
        with pytest.raises(PacketError):
            cipher.open_split(b"\x8f" + bytes(20))
        with pytest.raises(PacketError):
            cipher.open_split(b"")


@pytest.mark.parametrize("mode", sorted(fastpath.NATIVE_MODES))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.integers(0, 2**32 - 1),
    # Up to five ChaCha20 blocks and past: the C XChaCha20 makes its key stream four
    # blocks at a time, and Poly1305 pads every part to 16 bytes; the C AES-GCM, eight
    # AES blocks at a time, and GHASH takes four at a time.
    payload=st.binary(max_size=700),
    csrcs=st.integers(0, 15),
    extension=st.booleans(),
)
def test_native_cipher_seals_and_opens_every_length_as_the_python_one(
    mode: EncryptionMode,
    implementations: tuple[str, str],
    key: bytes,
    nonce: int,
    payload: bytes,
    csrcs: int,
    extension: bool,
) -> None:
    python = transport_cipher(mode, key, nonce=nonce)
    native = fastpath._CIPHERS[mode](key, nonce=nonce)
    header = RtpHeader(sequence=1, timestamp=2, ssrc=3, csrcs=tuple(range(csrcs))).build()
    if extension:
        header = bytes([header[0] | 0x10]) + header[1:] + b"\xbe\xde\x00\x00"
    clear, plaintext = python.split(header, payload)
    sealed = python.seal_split(clear, plaintext)
    assert native.seal_split(clear, plaintext) == sealed
    assert native.open_split(sealed) == python.open_split(sealed) == (clear, plaintext)
    for position in (0, len(clear), len(sealed) - 5):  # header, ciphertext or tag, counter
        tampered = bytearray(sealed)
        tampered[position] ^= 0x40
        with pytest.raises((DecryptionError, PacketError)):
            native.open_split(bytes(tampered))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 3000), max_size=60))
def test_native_replay_window_accepts_what_the_python_one_does(counters: list[int]) -> None:
    assert fastpath.native is not None
    python, native = ReplayWindow(), fastpath.native.ReplayWindow()
    for counter in counters:
        assert native.accept(counter) == python.accept(counter)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 0.05), max_size=60))
def test_native_rate_limit_allows_what_the_python_one_does(steps: list[float]) -> None:
    assert fastpath.native is not None
    python, native = RateLimit(50, 5, 0.0), fastpath.native.RateLimit(50, 5, 0.0)
    now = 0.0
    for step in steps:
        now += step
        assert native.allow(now) == python.allow(now)


def test_native_path_hands_back_what_it_does_not_relay(nodes: list[Node]) -> None:
    key = os.urandom(32)
    node = Node("native", [Member(AES, key, 0), Member(XCHACHA, os.urandom(32), 0)])
    nodes.append(node)
    good = _packet(AES, key, 1, b"audio", 0, None, 1)
    node.deliver(good)
    assert node.handed_back == 0
    node.relay.sync()  # type: ignore[attr-defined]
    assert node.stats.packets_out == 1 and node.sessions[1].packets_out == 1
    node.deliver(good)  # a replay: Python drops and counts it
    forged = bytearray(_packet(AES, key, 2, b"audio", 0, None, 2))
    forged[-5] ^= 1
    node.deliver(bytes(forged))
    node.deliver(discovery.build_request(424242))  # of nobody
    assert node.handed_back == 3
    assert node.stats.dropped["replayed"] == 1
    assert node.stats.dropped["decrypt_failed"] == 1
    assert node.stats.dropped["discovery_refused"] == 1
    assert node.stats.packets_in == 4
    assert len(node.received(1)) == 1


def test_native_path_adds_the_members_counters_to_their_sessions(nodes: list[Node]) -> None:
    """Each member's packets_in, packets_out and last_media_at reach its VoiceSession within
    MEMBER_COUNTERS_S (0.25 s) of the packet, or at once with Relay.sync()."""
    key = os.urandom(32)
    node = Node("native", [Member(AES, key, 0), Member(AES, os.urandom(32), 0)])
    nodes.append(node)
    assert node.relay is not None
    sender, receiver = node.sessions
    before = sender.last_media_at
    time.sleep(0.01)
    for n in range(5):
        node.deliver(_packet(AES, key, n, b"audio", 0, None, n))
    node.relay.sync()
    assert (sender.packets_in, receiver.packets_out) == (5, 5)
    assert (sender.packets_out, receiver.packets_in) == (0, 0)
    assert sender.last_media_at > before
    for n in range(5, 8):
        node.deliver(_packet(AES, key, n, b"audio", 0, None, n))
    time.sleep(0.3)
    assert node.relay.pump() is None  # nothing to read: the counters' time has come
    assert (sender.packets_in, receiver.packets_out) == (8, 8)
    assert node.stats.packets_in == 8 and node.handed_back == 0


def test_downgraded_call_keeps_dave_frames_from_members_without_dave(nodes: list[Node]) -> None:
    """A channel forwarding through forward_filtered (a DAVE downgrade) is relayed by
    Python, which withholds DAVE frames from the member that has no DAVE."""
    keys = [os.urandom(32) for _ in range(3)]
    node = Node(
        "native",
        [Member(AES, keys[0], 0, 1), Member(AES, keys[1], 0, 1), Member(AES, keys[2], 0, 0)],
    )
    nodes.append(node)
    channel = node.router.channels["g", "c"]
    channel.forward = node.router.forward_filtered
    channel.dave_receivers = node.sessions[:2]
    dave_frame = _a_dave_frame()
    assert is_dave_frame(dave_frame)
    node.deliver(_packet(AES, keys[0], 1, dave_frame, 0, None, 1))
    assert node.handed_back == 1
    assert len(node.received(1)) == 1
    assert node.received(2) == []
    assert node.stats.dave_frames_withheld == 1


def _a_dave_frame() -> bytes:
    """The smallest DAVE frame: 8-byte tag, ULEB128 nonce 0, no ranges, size, magic."""
    body = os.urandom(20)
    trailer = bytes(8) + b"\x00"
    return body + trailer + bytes([len(trailer) + 3]) + b"\xfa\xfa"
