"""The relay's per-packet cost in-process: one sender, nine receivers, no sockets.

    .venv/bin/python bench/forward.py [mode ...]

Feeds sealed RTP packets to the node's media endpoint exactly as the UDP socket would and
counts the time per incoming and per forwarded packet (``sendto`` is a no-op here, so this
is voxgate's own Python and crypto, without the kernel). The profile-guided changes to the
hot path were measured with it.
"""

from __future__ import annotations

import os
import sys
import time

from voxgate.protocol.crypto import transport_cipher
from voxgate.protocol.opcodes import EncryptionMode
from voxgate.protocol.rtp import RtpHeader
from voxgate.server.auth import TokenAuthority
from voxgate.server.config import ServerConfig
from voxgate.server.guard import replay_window
from voxgate.server.media import MediaEndpoint
from voxgate.server.router import Router
from voxgate.server.session import VoiceSession
from voxgate.server.stats import NodeStats

MEMBERS = 10
PACKETS = 20_000


def measure(mode: EncryptionMode) -> tuple[float, float]:
    stats = NodeStats()
    authority = TokenAuthority(b"k" * 32)
    router = Router(ServerConfig(), authority, stats)
    channel = router.open_channel(("g", "c"))
    key = os.urandom(32)
    for index in range(MEMBERS):
        _, grant = authority.mint("g", "c", f"u{index}")
        session = VoiceSession(grant, "token", index + 1, channel, packet_rate_cap=1e12)
        session.mode = mode
        session.cipher = transport_cipher(mode, key)
        session.replay = replay_window(mode)
        session.address = ("127.0.0.1", 10_000 + index)
        router.sessions[grant.session_id] = session
        router.by_ssrc[session.ssrc] = session
        channel.members.append(session)
    router.sendto = lambda packet, address: None
    endpoint = MediaEndpoint(router, stats)
    sender = transport_cipher(mode, key)
    packets = [
        sender.seal(
            RtpHeader(sequence=n & 0xFFFF, timestamp=n * 960, ssrc=1).build(), os.urandom(120)
        )
        for n in range(PACKETS)
    ]
    address = ("127.0.0.1", 10_000)
    started = time.perf_counter()
    for packet in packets:
        endpoint.datagram_received(packet, address)
    took = time.perf_counter() - started
    return took / PACKETS * 1e6, took / stats.packets_out * 1e6


def main() -> None:
    modes = [EncryptionMode(name) for name in sys.argv[1:]] or list(EncryptionMode)
    print(f"{'mode':34} {'us/packet in':>13} {'us/forwarded':>13}")
    for mode in modes:
        per_in, per_out = measure(mode)
        print(f"{mode.value:34} {per_in:13.2f} {per_out:13.2f}")


if __name__ == "__main__":
    main()
