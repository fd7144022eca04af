"""The C path's tick (``ServerConfig.media_tick_ms``): a busy node reads its socket once a
tick, an idle one at the first datagram.

The tick here is 300 ms, far beyond anything loopback or the test's own scheduling adds, so
that which of the two a datagram got shows; the node's default is 0.5 ms.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from voxgate.protocol.opcodes import EncryptionMode
from voxgate.server.auth import TokenAuthority
from voxgate.server.config import ServerConfig

AES = EncryptionMode.AEAD_AES256_GCM_RTPSIZE.value
TICK_S = 0.3


@pytest.fixture
async def ticking_call(start_node, peers, authority: TokenAuthority, media_path: str):
    if media_path != "native":
        pytest.skip("the tick is the C path's (uvloop's UDP transport cannot pause reading)")
    node = await start_node(media_tick_ms=TICK_S * 1000)
    alice, bob = peers(node), peers(node)
    await alice.join(authority, "g", "c", "alice", AES)
    await bob.join(authority, "g", "c", "bob", AES)
    return node, alice, bob


async def _relayed_after(alice, bob, payload: bytes) -> float:
    sent = time.monotonic()
    alice.send_audio(payload)
    assert await bob.receive_audio(1) == [(alice.ready.ssrc, payload)]
    return time.monotonic() - sent


async def test_an_idle_node_relays_at_once_and_a_busy_one_at_its_next_tick(ticking_call) -> None:
    node, alice, bob = ticking_call
    # Idle (the joins' discovery was read a tick ago and more): read at the datagram.
    await asyncio.sleep(3 * TICK_S)
    assert await _relayed_after(alice, bob, b"first") < TICK_S / 2
    # The pump that relayed it read something: the next read is a tick after it.
    assert await _relayed_after(alice, bob, b"second") > TICK_S / 2
    # That tick's pump read "second", the one after found nothing: idle again.
    await asyncio.sleep(3 * TICK_S)
    assert await _relayed_after(alice, bob, b"third") < TICK_S / 2
    assert node.stats.packets_out == 3


async def test_a_busy_node_relays_everything_that_came_during_a_tick(ticking_call) -> None:
    node, alice, bob = ticking_call
    await asyncio.sleep(3 * TICK_S)
    alice.send_audio(b"wakes it")
    await bob.receive_audio(1)
    for n in range(40):  # one tick's worth, read in one pump
        alice.send_audio(n.to_bytes(2, "big"))
    got = await bob.receive_audio(40)
    assert [payload for _, payload in got] == [n.to_bytes(2, "big") for n in range(40)]
    assert sum(node.stats.dropped.values()) == 0


def test_the_tick_is_at_most_a_second() -> None:
    assert ServerConfig(media_tick_ms=0).media_tick_ms == 0
    for wrong in (-1.0, 1000.5):
        with pytest.raises(ValueError, match="media tick"):
            ServerConfig(media_tick_ms=wrong)
