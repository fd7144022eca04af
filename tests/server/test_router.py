"""Router.forward on the Python media path: who gets a packet, what it costs in bytes, and
the members' counters it holds back in the senders' routes until they are due or synced.

No sockets: :meth:`MediaEndpoint.datagram_received` is fed sealed packets and the router's
``sendto`` collects what it would send, so each test sees every datagram and counter.
"""

from __future__ import annotations

import math
import os

import pytest

from voxgate.protocol.crypto import transport_cipher
from voxgate.protocol.opcodes import EncryptionMode
from voxgate.protocol.rtp import RtpHeader
from voxgate.server.auth import TokenAuthority
from voxgate.server.config import ServerConfig
from voxgate.server.guard import replay_window
from voxgate.server.media import MediaEndpoint
from voxgate.server.router import Channel, Router
from voxgate.server.session import VoiceSession
from voxgate.server.stats import NodeStats

AES = EncryptionMode.AEAD_AES256_GCM_RTPSIZE


class Call:
    """One channel of members, each with its own key, on a router whose sendto records."""

    def __init__(self, modes: list[EncryptionMode]) -> None:
        self.stats = NodeStats()
        authority = TokenAuthority(b"k" * 32)
        self.router = Router(ServerConfig(media_path="python"), authority, self.stats)
        self.endpoint = MediaEndpoint(self.router, self.stats)
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.router.sendto = lambda packet, address: self.sent.append((packet, address))
        channel = self.router.channels["g", "c"] = Channel(("g", "c"), self.router.forward)
        self.members: list[VoiceSession] = []
        self.keys: list[bytes] = []
        self.senders = []
        for index, mode in enumerate(modes):
            _, grant = authority.mint("g", "c", f"u{index}")
            session = VoiceSession(grant, "token", index + 1, channel, packet_rate_cap=1e9)
            key = os.urandom(32)
            session.mode = mode
            session.cipher = transport_cipher(mode, key)
            session.replay = replay_window(mode)
            session.address = ("127.0.0.1", 50000 + index)
            self.router.sessions[grant.session_id] = session
            self.router.by_ssrc[session.ssrc] = session
            self.router.by_address[session.address] = session
            channel.members.append(session)
            self.members.append(session)
            self.keys.append(key)
            self.senders.append(transport_cipher(mode, key))
        self.sequence = 0

    def packet(self, sender: int = 0, payload: bytes = b"opus", extension: bool = False) -> bytes:
        self.sequence += 1
        header = RtpHeader(
            sequence=self.sequence, timestamp=960 * self.sequence, ssrc=sender + 1
        ).build()
        if extension:
            header = bytes([header[0] | 0x10]) + header[1:] + b"\xbe\xde\x00\x01" + b"\x10\xff\0\0"
        return self.senders[sender].seal(header, payload)

    def deliver(self, datagram: bytes, sender: int = 0) -> None:
        self.endpoint.datagram_received(datagram, self.members[sender].address)  # type: ignore[arg-type]

    def counted(self) -> list[tuple[int, int]]:
        return [(member.packets_in, member.packets_out) for member in self.members]


def test_member_counters_wait_in_the_routes_until_synced() -> None:
    call = Call([AES, AES, AES])
    call.router.counters_due = math.inf  # not due: only a sync or a route change adds them
    for _ in range(5):
        call.deliver(call.packet(0))
    call.deliver(call.packet(1), sender=1)
    assert len(call.sent) == 12
    # The node's counters are exact at once; the members' wait in their senders' routes.
    assert (call.stats.packets_in, call.stats.packets_out) == (6, 12)
    assert call.counted() == [(0, 0), (0, 0), (0, 0)]
    call.router.sync_counters()
    assert call.counted() == [(5, 1), (1, 5), (0, 6)]
    call.router.sync_counters()  # nothing counted twice
    assert call.counted() == [(5, 1), (1, 5), (0, 6)]


def test_member_counters_are_added_when_due() -> None:
    call = Call([AES, AES])
    call.router.counters_due = math.inf
    call.deliver(call.packet())
    call.deliver(call.packet())
    assert call.counted() == [(0, 0), (0, 0)]
    call.router.counters_due = 0.0  # MEMBER_COUNTERS_S has passed: the next packet adds them
    call.deliver(call.packet())
    assert call.counted() == [(3, 0), (0, 3)]
    assert call.router.counters_due > 0.0


def test_a_route_change_adds_what_the_old_routes_counted() -> None:
    call = Call([AES, AES, AES])
    call.router.counters_due = math.inf
    call.deliver(call.packet())
    call.deliver(call.packet())
    gone = call.members[2]
    call.router.leave(gone, "left")
    assert gone.packets_out == 2 and call.members[0].packets_in == 2
    assert call.members[0].route is None  # made again, without the member who left
    call.deliver(call.packet())
    assert [address for _, address in call.sent[-1:]] == [call.members[1].address]
    call.router.sync_counters()
    assert call.counted()[:2] == [(3, 0), (0, 3)]
    assert gone.packets_out == 2


def test_dropped_packets_count_in_the_members_packets_in_at_once() -> None:
    call = Call([AES, AES])
    call.router.counters_due = math.inf
    packet = call.packet()
    call.deliver(packet)
    call.deliver(packet)  # replayed
    forged = bytearray(call.packet())
    forged[-6] ^= 1
    call.deliver(bytes(forged))
    sender = call.members[0]
    assert sender.packets_in == 2  # the two drops; the forwarded one waits in the route
    assert sender.dropped == {"replayed": 1, "decrypt_failed": 1}
    call.router.sync_counters()
    assert call.counted() == [(3, 0), (0, 1)]


@pytest.mark.parametrize("extension", [False, True])
def test_bytes_out_are_the_bytes_sent_in_every_mode(extension: bool) -> None:
    modes = list(EncryptionMode)
    call = Call(modes)
    for sender in range(len(modes)):
        call.deliver(call.packet(sender, os.urandom(60), extension), sender=sender)
    assert len(call.sent) == len(modes) * (len(modes) - 1)
    assert call.stats.packets_out == len(call.sent)
    assert call.stats.bytes_out == sum(len(packet) for packet, _ in call.sent)
    # And each receiver opens what it got with its own key.
    for packet, address in call.sent:
        receiver = next(m for m in call.members if m.address == address)
        _, payload = transport_cipher(receiver.mode, call.keys[call.members.index(receiver)]).open(
            packet
        )
        assert len(payload) == 60
