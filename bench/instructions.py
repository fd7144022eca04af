"""Instructions per relayed packet, counted by callgrind: voxgate's Python path and bare_relay.py.

    .venv/bin/python bench/instructions.py [--packets N]

Each relay gets one sender's AES-256-GCM packets for a channel of ten, in-process, with
``sendto`` a no-op (``bench/forward.py``'s ``python-no-kernel``), under
``valgrind --tool=callgrind``. A run of N packets and one of 3N, in otherwise identical
processes, differ by 2N packets' work and nothing else, so their difference over 2N is
what one packet costs in instructions: the same figure on every run, whatever else the
machine is doing, where a time moves by a fifth from one second to the next. It counts
user space only: the kernel's sendto, which both relays pay alike, is not in it, and
neither are cache misses. Needs valgrind (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MEMBERS = 10
BENCH = Path(__file__).resolve().parent


def relay(which: str, total: int, relayed: int) -> None:
    """Seal ``total`` packets, relay the first ``relayed`` through ``which``."""
    from voxgate.protocol.crypto import transport_cipher
    from voxgate.protocol.opcodes import EncryptionMode
    from voxgate.protocol.rtp import RtpHeader

    mode = EncryptionMode.AEAD_AES256_GCM_RTPSIZE
    key = bytes(range(32))
    sender = transport_cipher(mode, key)
    packets = [
        sender.seal(RtpHeader(sequence=n & 0xFFFF, timestamp=n * 960, ssrc=1).build(), bytes(120))
        for n in range(total)
    ]
    addresses = [("127.0.0.1", 40_000 + index) for index in range(MEMBERS)]
    if which == "voxgate":
        from voxgate.server.auth import TokenAuthority
        from voxgate.server.config import ServerConfig
        from voxgate.server.guard import replay_window
        from voxgate.server.media import MediaEndpoint
        from voxgate.server.router import Channel, Router
        from voxgate.server.session import VoiceSession
        from voxgate.server.stats import NodeStats

        stats = NodeStats()
        authority = TokenAuthority(b"k" * 32)
        router = Router(ServerConfig(media_path="python"), authority, stats)
        channel = router.channels["g", "c"] = Channel(("g", "c"), router.forward)
        for index, address in enumerate(addresses):
            _, grant = authority.mint("g", "c", f"u{index}")
            session = VoiceSession(grant, "token", index + 1, channel, packet_rate_cap=1e12)
            session.mode = mode
            session.cipher = transport_cipher(mode, key)
            session.replay = replay_window(mode)
            session.address = address
            router.sessions[grant.session_id] = session
            router.by_ssrc[session.ssrc] = session
            channel.members.append(session)
        router.sendto = lambda packet, address: None
        receive = MediaEndpoint(router, stats).datagram_received
    else:
        sys.path.insert(0, str(BENCH / "ceiling"))
        from bare_relay import BareRelay, Member  # type: ignore[import-not-found]

        members = {}
        channel_members: list[Member] = []
        for index, address in enumerate(addresses):
            member = members[index + 1] = Member(key)
            member.channel = channel_members
            member.address = address
            channel_members.append(member)
        bare = BareRelay(members)
        bare.sendto = lambda packet, address: None
        receive = bare.datagram_received
    for packet in packets[:relayed]:
        receive(packet, addresses[0])


def count(which: str, total: int, relayed: int) -> int:
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/out",
             sys.executable, __file__, "--inner", which, str(total), str(relayed)],
            capture_output=True, text=True, check=True,
            # Hash randomization moves dict probes, and so the count, from run to run.
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    assert found, done.stderr[-2000:]
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=1000)
    parser.add_argument("--inner", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        which, total, relayed = args.inner
        relay(which, int(total), int(relayed))
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench/instructions.py needs valgrind (Debian: apt-get install valgrind)")
    n = args.packets
    per_packet = {}
    for which in ("voxgate", "bare"):
        per_packet[which] = (count(which, 3 * n, 3 * n) - count(which, 3 * n, n)) / (2 * n)
        print(f"{which:8} {per_packet[which]:10,.0f} instructions a packet in (9 receivers)")
    print(f"bare / voxgate: {per_packet['bare'] / per_packet['voxgate']:.3f}")


if __name__ == "__main__":
    main()
