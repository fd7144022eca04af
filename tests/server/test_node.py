"""A real node on loopback: handshake, relay between members in any mix of modes."""

from __future__ import annotations

import itertools
import os

import pytest

from voxgate.protocol.messages import ClientsConnect, Speaking
from voxgate.protocol.opcodes import EncryptionMode
from voxgate.server.auth import TokenAuthority

MODES = [mode.value for mode in EncryptionMode]


@pytest.mark.parametrize(("sender_mode", "receiver_mode"), list(itertools.product(MODES, MODES)))
async def test_audio_relayed_byte_exact_between_any_two_modes(
    start_node, peers, authority: TokenAuthority, sender_mode: str, receiver_mode: str
) -> None:
    node = await start_node()
    sender, receiver = peers(node), peers(node)
    await sender.join(authority, "g", "c", "alice", sender_mode)
    await receiver.join(authority, "g", "c", "bob", receiver_mode)
    # Each learnt the other's ssrc before any audio (the first-packet race).
    announced = await receiver.expect(Speaking)
    assert (announced.user_id, announced.ssrc) == ("alice", sender.ready.ssrc)
    frames = [os.urandom(20 + n) for n in range(50)]
    for frame in frames:
        sender.send_audio(frame)
    received = await receiver.receive_audio(len(frames))
    assert [payload for _, payload in received] == frames
    assert {ssrc for ssrc, _ in received} == {sender.ready.ssrc}
    assert node.stats.packets_out == len(frames)


async def test_members_are_told_who_is_present_and_who_joins(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node()
    first, second = peers(node), peers(node)
    await first.join(authority, "g", "c", "alice", MODES[0])
    await second.join(authority, "g", "c", "bob", MODES[1])
    assert [m.user_ids for m in second.seen if isinstance(m, ClientsConnect)] == [["alice"]]
    assert (await first.expect(ClientsConnect)).user_ids == ["bob"]


async def test_forged_packet_is_dropped_and_counted_not_forwarded(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node()
    sender, receiver = peers(node), peers(node)
    await sender.join(authority, "g", "c", "alice", MODES[0])
    await receiver.join(authority, "g", "c", "bob", MODES[0])
    packet = bytearray(
        sender.cipher.seal(
            bytes.fromhex("80780001000003c0") + sender.ready.ssrc.to_bytes(4, "big"), b"opus"
        )
    )
    packet[-6] ^= 1
    sender.udp.sendto(bytes(packet))
    sender.send_audio(b"honest")
    assert await receiver.receive_audio(1) == [(sender.ready.ssrc, b"honest")]
    assert node.stats.dropped["decrypt_failed"] == 1
