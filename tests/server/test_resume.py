"""Resume: the WebSocket goes, the session and its audio stay, missed messages come back."""

from __future__ import annotations

import asyncio

from voxgate.protocol.messages import ClientDisconnect, Resumed, Speaking
from voxgate.protocol.opcodes import CloseCode, EncryptionMode
from voxgate.server.auth import TokenAuthority

AES = EncryptionMode.AEAD_AES256_GCM_RTPSIZE.value
XCHACHA = EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE.value


async def test_resume_replays_messages_after_seq_ack_then_resumed(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node()
    alice, bob = peers(node), peers(node)
    await alice.join(authority, "g", "c", "alice", AES)
    await bob.join(authority, "g", "c", "bob", XCHACHA)
    await alice.expect(Speaking)  # bob's ssrc, announced on his description
    await alice.cut()
    seq_before = alice.last_seq
    # Sent while alice has no WebSocket: kept for her.
    await bob.send(Speaking(speaking=1, ssrc=bob.ready.ssrc, delay=0))
    # Her media flow never stops: the session outlives the WebSocket.
    alice.send_audio(b"during the gap")
    assert await bob.receive_audio(1) == [(alice.ready.ssrc, b"during the gap")]

    await alice.resume()
    replayed = await alice.expect(Speaking)
    assert (replayed.user_id, replayed.speaking) == ("bob", 1)
    await alice.expect(Resumed)
    assert alice.last_seq == seq_before + 1
    bob.send_audio(b"after resume")
    assert await alice.receive_audio(1) == [(bob.ready.ssrc, b"after resume")]
    assert node.session_count() == 2


async def test_resume_without_anything_missed_gets_only_resumed(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node()
    alice = peers(node)
    await alice.join(authority, "g", "c", "alice", AES)
    await alice.close(code=4000)  # not a leave: 4000 is not 1000
    alice.ws = None
    await alice.resume()
    await alice.expect(Resumed)
    assert node.session_count() == 1


async def test_leaving_with_1000_ends_the_session_and_tells_the_others(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node()
    alice, bob = peers(node), peers(node)
    await alice.join(authority, "g", "c", "alice", AES)
    await bob.join(authority, "g", "c", "bob", AES)
    await bob.close(code=1000)
    assert (await alice.expect(ClientDisconnect)).user_id == "bob"
    assert node.session_count() == 1
    await bob.resume()
    assert (await bob.closed())[0] == CloseCode.SESSION_NO_LONGER_VALID


async def test_session_not_resumed_within_grace_ends(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node(resume_grace_s=0.5)
    alice, bob = peers(node), peers(node)
    await alice.join(authority, "g", "c", "alice", AES)
    await bob.join(authority, "g", "c", "bob", AES)
    await bob.cut()
    assert (await alice.expect(ClientDisconnect, timeout=5)).user_id == "bob"
    await bob.resume()
    assert (await bob.closed())[0] == CloseCode.SESSION_NO_LONGER_VALID


async def test_resume_with_another_token_is_refused(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node()
    alice = peers(node)
    await alice.join(authority, "g", "c", "alice", AES)
    await alice.cut()
    alice.token, _ = authority.mint("g", "another-channel", "alice", alice.session_id)
    await alice.resume()
    assert (await alice.closed())[0] == CloseCode.AUTHENTICATION_FAILED
    await asyncio.sleep(0)
    assert node.session_count() == 1
