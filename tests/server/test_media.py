"""The media plane under hostile datagrams: dropped, counted, never forwarded, never amplified."""

from __future__ import annotations

import asyncio
import socket

import pytest

from voxgate.protocol import discovery
from voxgate.protocol.messages import (
    Identify,
    Ready,
    SelectProtocol,
    SelectProtocolData,
    SessionDescription,
)
from voxgate.protocol.opcodes import EncryptionMode
from voxgate.protocol.rtp import RtpHeader, build_keepalive
from voxgate.server.auth import TokenAuthority

AES = EncryptionMode.AEAD_AES256_GCM_RTPSIZE.value


@pytest.fixture
async def call(start_node, peers, authority: TokenAuthority):
    node = await start_node()
    alice, bob = peers(node), peers(node)
    await alice.join(authority, "g", "c", "alice", AES)
    await bob.join(authority, "g", "c", "bob", AES)
    return node, alice, bob


def _stranger(node) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(("127.0.0.1", node.udp_port))
    sock.setblocking(False)
    return sock


async def _recv(sock: socket.socket) -> bytes:
    """The next datagram; TimeoutError when none comes in half a second."""
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 1024), 0.5)


async def _settle(node, count: int) -> None:
    async with asyncio.timeout(5):
        while node.stats.packets_in < count:
            await asyncio.sleep(0.01)


async def test_replayed_packet_is_dropped(call) -> None:
    node, alice, bob = call
    header = RtpHeader(sequence=1, timestamp=960, ssrc=alice.ready.ssrc).build()
    packet = alice.cipher.seal(header, b"once")
    alice.udp.sendto(packet)
    alice.udp.sendto(packet)
    alice.send_audio(b"next")
    assert await bob.receive_audio(2) == [(alice.ready.ssrc, b"once"), (alice.ready.ssrc, b"next")]
    assert node.stats.dropped["replayed"] == 1


async def test_flood_beyond_the_rate_cap_is_dropped(start_node, peers, authority) -> None:
    node = await start_node(packet_rate_cap=20.0)
    alice, bob = peers(node), peers(node)
    await alice.join(authority, "g", "c", "alice", AES)
    await bob.join(authority, "g", "c", "bob", AES)
    before = node.stats.packets_in
    for n in range(100):
        alice.send_audio(n.to_bytes(2, "big"))
    await _settle(node, before + 100)
    assert node.stats.dropped["rate_limited"] >= 70
    assert node.stats.packets_out <= 30


async def test_packet_for_an_unknown_ssrc_is_dropped(call) -> None:
    node, _, _ = call
    stranger = _stranger(node)
    stranger.send(RtpHeader(sequence=1, timestamp=1, ssrc=12345).build() + bytes(40))
    await _settle(node, node.stats.packets_in + 1)
    assert node.stats.dropped["unknown_ssrc"] == 1
    stranger.close()


async def test_spoofed_packet_from_another_address_neither_forwards_nor_moves_the_member(
    call,
) -> None:
    node, alice, bob = call
    stranger = _stranger(node)
    forged = RtpHeader(sequence=9, timestamp=9, ssrc=alice.ready.ssrc).build() + bytes(60)
    stranger.send(forged)
    # A discovery request for alice's ssrc from the stranger is answered to the stranger,
    # no bigger than asked, and does not move alice's address.
    request = discovery.build_request(alice.ready.ssrc)
    stranger.send(request)
    answer = await _recv(stranger)
    assert len(answer) == len(request)
    bob.send_audio(b"to alice")
    assert await alice.receive_audio(1) == [(bob.ready.ssrc, b"to alice")]
    assert node.stats.dropped["decrypt_failed"] == 1
    with pytest.raises(TimeoutError):
        await _recv(stranger)
    stranger.close()


async def test_discovery_for_an_unidentified_ssrc_gets_no_answer(call) -> None:
    node, _, _ = call
    stranger = _stranger(node)
    stranger.send(discovery.build_request(424242))
    with pytest.raises(TimeoutError):
        await _recv(stranger)
    assert node.stats.dropped["discovery_refused"] == 1
    stranger.close()


async def _identified(start_node, peers, authority: TokenAuthority):
    """A node and a peer that got Ready and opened its UDP socket, and selected nothing."""
    node = await start_node()
    peer = peers(node)
    token, grant = authority.mint("g", "c", "carol")
    await peer.open()
    await peer.send(
        Identify(server_id="g", user_id="carol", session_id=grant.session_id, token=token)
    )
    peer.ready = await peer.expect(Ready)
    peer.udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: peer.datagrams, remote_addr=("127.0.0.1", peer.ready.port)
    )
    return node, peer


async def _repeats_after(peer, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return peer.datagrams.discovery_repeats


async def test_discovery_is_answered_again_until_select_protocol(
    start_node, peers, authority
) -> None:
    # discord.py asks once; with voice receive its reader can drop an answer that comes
    # before its listener does. The same answer must come again while nothing is selected.
    node, peer = await _identified(start_node, peers, authority)
    first = await peer.discover()
    async with asyncio.timeout(5):
        while peer.datagrams.discovery_repeats < 2:
            await asyncio.sleep(0.02)
    assert node.stats.discovery_answered == 1
    assert node.stats.discovery_repeated >= 2
    # The repeat is the answer itself, so a client that missed the first can use it.
    peer.datagrams.discovery_wanted = True
    again = discovery.parse(await asyncio.wait_for(peer.datagrams.queue.get(), 5))
    assert again == first


async def test_discovery_is_not_repeated_after_select_protocol(
    start_node, peers, authority
) -> None:
    node, peer = await _identified(start_node, peers, authority)
    answer = await peer.discover()
    await peer.send(
        SelectProtocol(
            protocol="udp",
            data=SelectProtocolData(address=answer.address, port=answer.port, mode=AES),
        )
    )
    await peer.expect(SessionDescription)
    assert await _repeats_after(peer, 1.0) == 0
    assert node.stats.discovery_repeated == 0


async def test_discovery_is_not_repeated_for_a_session_that_left(
    start_node, peers, authority
) -> None:
    node, peer = await _identified(start_node, peers, authority)
    await peer.discover()
    await peer.ws.close()
    await peer.closed()
    assert await _repeats_after(peer, 1.0) == 0
    assert node.stats.discovery_repeated == 0


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "unknown_kind"),
        (b"\x00" * 5, "unknown_kind"),
        (b"\x00\x02" + bytes(72), "unknown_kind"),  # a discovery *response*, sent to a server
        (b"\x00\x01\x00\x46" + bytes(70), "discovery_refused"),
    ],
)
async def test_garbage_is_counted_by_reason(call, datagram: bytes, reason: str) -> None:
    node, alice, bob = call
    stranger = _stranger(node)
    before = node.stats.dropped[reason]
    stranger.send(datagram)
    await _settle(node, node.stats.packets_in + 1)
    assert node.stats.dropped[reason] == before + 1
    alice.send_audio(b"still fine")
    assert await bob.receive_audio(1) == [(alice.ready.ssrc, b"still fine")]
    stranger.close()


async def test_keepalive_and_rtcp_are_counted_and_not_forwarded(call) -> None:
    node, alice, bob = call
    alice.udp.sendto(build_keepalive(1))
    rtcp = bytes([0x80, 201, 0, 1]) + alice.ready.ssrc.to_bytes(4, "big") + bytes(24)
    alice.udp.sendto(rtcp)
    alice.send_audio(b"audio")
    assert await bob.receive_audio(1) == [(alice.ready.ssrc, b"audio")]
    assert (node.stats.keepalives_in, node.stats.rtcp_in) == (1, 1)
    assert node.stats.packets_out == 1



async def test_members_counters_are_exact_after_a_sync(call) -> None:
    """On either path the members' packets_in and packets_out may trail the node's by up to
    MEMBER_COUNTERS_S; Router.sync_counters() (what the console calls) makes them exact."""
    node, alice, bob = call
    for n in range(20):
        alice.send_audio(b"audio %d" % n)
    bob.send_audio(b"reply")
    assert len(await bob.receive_audio(20)) == 20
    assert len(await alice.receive_audio(1)) == 1
    header = RtpHeader(sequence=99, timestamp=0, ssrc=alice.ready.ssrc).build()
    forged = bytearray(alice.cipher.seal(header, b"forged"))
    forged[-6] ^= 1
    before = node.stats.packets_in
    alice.udp.sendto(bytes(forged))
    await _settle(node, before + 1)
    node.router.sync_counters()
    sessions = {s.user_id: s for s in node.router.sessions.values()}
    assert (sessions["alice"].packets_in, sessions["alice"].packets_out) == (21, 1)
    assert (sessions["bob"].packets_in, sessions["bob"].packets_out) == (1, 20)
    assert sessions["alice"].dropped == {"decrypt_failed": 1}
