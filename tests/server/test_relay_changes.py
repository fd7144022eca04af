"""The relay follows every change of a call at once, on both media paths.

The native path keeps each sender's receivers between packets (``_fastpath.c``'s routes)
until ``Router.routes_changed``: a join, a leave, a mute, a member seen at a new address.
Each test changes the call between two packets of one stream and checks the very next
packet goes where the Python path would send it, and nowhere else.
"""

from __future__ import annotations

import asyncio

from voxgate.server.auth import TokenAuthority

from .conftest import Datagrams, Peer

AES = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"


async def _nothing_for(peer: Peer, seconds: float = 0.3) -> bool:
    await asyncio.sleep(seconds)
    return peer.datagrams.queue.empty()


async def _rebind(peer: Peer) -> None:
    """The member's media from a new UDP port, as after a NAT rebinding: its next packet
    (authentic) moves it there."""
    assert peer.udp is not None and peer.ready is not None
    peer.udp.close()
    peer.datagrams = Datagrams()
    peer.udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: peer.datagrams, remote_addr=("127.0.0.1", peer.ready.port)
    )


async def _streaming(start_node, peers, authority: TokenAuthority, *modes: str) -> tuple:
    """A node and a call of one member per mode (alice, bob, carol...), alice's first packet
    heard by all the others: the native path holds its route."""
    node = await start_node()
    members = [peers(node) for _ in modes]
    for name, member, mode in zip(("alice", "bob", "carol"), members, modes, strict=False):
        await member.join(authority, "g", "c", name, mode)
    alice = members[0]
    alice.send_audio(b"one")
    for other in members[1:]:
        assert await other.receive_audio(1) == [(alice.ready.ssrc, b"one")]
    return node, *members


async def test_a_member_who_joins_mid_stream_gets_the_next_packet(
    start_node, peers, authority: TokenAuthority
) -> None:
    node, alice, bob = await _streaming(start_node, peers, authority, AES, XCHACHA)
    carol = peers(node)
    await carol.join(authority, "g", "c", "carol", AES)
    alice.send_audio(b"two")
    assert await bob.receive_audio(1) == [(alice.ready.ssrc, b"two")]
    assert await carol.receive_audio(1) == [(alice.ready.ssrc, b"two")]


async def test_a_member_who_left_gets_nothing_more(
    start_node, peers, authority: TokenAuthority
) -> None:
    node, alice, bob, carol = await _streaming(start_node, peers, authority, AES, AES, XCHACHA)
    bob_ssrc = bob.ready.ssrc
    assert bob.ws is not None
    await bob.ws.close()  # its UDP socket stays open: anything still sent to it arrives
    async with asyncio.timeout(5):
        while bob_ssrc in node.router.by_ssrc:
            await asyncio.sleep(0.01)
    alice.send_audio(b"two")
    assert await carol.receive_audio(1) == [(alice.ready.ssrc, b"two")]
    assert await _nothing_for(bob)
    # And what the one who left sends is no one's: its ssrc is unknown now.
    bob.send_audio(b"ghost")
    assert await _nothing_for(alice) and await _nothing_for(carol)


async def test_a_server_muted_member_is_not_relayed_until_unmuted(
    start_node, peers, authority: TokenAuthority
) -> None:
    node, alice, bob = await _streaming(start_node, peers, authority, AES, AES)
    session = node.router.by_ssrc[alice.ready.ssrc]
    node.router.mute(session, True)
    alice.send_audio(b"muted")
    assert await _nothing_for(bob)
    assert node.stats.dropped["server_muted"] == 1
    node.router.mute(session, False)
    alice.send_audio(b"two")
    assert await bob.receive_audio(1) == [(alice.ready.ssrc, b"two")]


async def test_a_sender_and_a_receiver_at_new_addresses_are_followed(
    start_node, peers, authority: TokenAuthority
) -> None:
    _, alice, bob = await _streaming(start_node, peers, authority, AES, XCHACHA)
    # The sender moves: its first authentic packet from the new port is relayed.
    await _rebind(alice)
    alice.send_audio(b"two")
    assert await bob.receive_audio(1) == [(alice.ready.ssrc, b"two")]
    # The receiver moves (one packet of its own from the new port): the next packet for it
    # goes there, and none to the port it left.
    old = bob.datagrams
    await _rebind(bob)
    bob.send_audio(b"from bob")
    assert await alice.receive_audio(1) == [(bob.ready.ssrc, b"from bob")]
    alice.send_audio(b"three")
    assert await bob.receive_audio(1) == [(alice.ready.ssrc, b"three")]
    assert old.queue.empty()
