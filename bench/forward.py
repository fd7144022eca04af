"""The relay's per-packet cost in-process: one sender, nine receivers, on both media paths.

    .venv/bin/python bench/forward.py [--packets N] [mode ...]

For each mode (default: all five) and each path, one sender's sealed RTP packets go through
the node's media code, and the time per incoming and per forwarded packet is printed, with
how many packets Python handled:

- ``python-no-kernel``: :meth:`MediaEndpoint.datagram_received` called with each packet and
  ``sendto`` a no-op: voxgate's own Python and crypto, without the kernel;
- ``python``: the packets sent to a loopback socket, read with ``recvfrom`` and relayed by
  ``datagram_received`` with a real ``sendto`` per receiver, to sockets nobody drains;
- ``native``: the same socket read by ``voxgate._fastpath``'s ``Relay.pump`` (recvmmsg,
  open, seal per receiver, one sendmmsg); the xsalsa20 modes are handed back to Python.

The last two include the kernel's receive and send work and compare with each other.

The profile-guided changes to the hot path were measured with it.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import time

from voxgate.protocol.crypto import transport_cipher
from voxgate.protocol.opcodes import EncryptionMode
from voxgate.protocol.rtp import RtpHeader
from voxgate.server import fastpath
from voxgate.server.auth import TokenAuthority
from voxgate.server.config import ServerConfig
from voxgate.server.guard import replay_window
from voxgate.server.media import MediaEndpoint
from voxgate.server.router import Channel, Router
from voxgate.server.session import VoiceSession
from voxgate.server.stats import NodeStats

MEMBERS = 10


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def measure(mode: EncryptionMode, path: str, count: int) -> tuple[float, float, int]:
    """(µs per incoming packet, µs per forwarded packet, packets Python handled)."""
    stats = NodeStats()
    authority = TokenAuthority(b"k" * 32)
    config = ServerConfig(media_path="native" if path == "native" else "python")
    router = Router(config, authority, stats)
    channel = router.channels["g", "c"] = Channel(("g", "c"), router.forward)
    key = os.urandom(32)
    sockets = []
    for index in range(MEMBERS):
        _, grant = authority.mint("g", "c", f"u{index}")
        session = VoiceSession(grant, "token", index + 1, channel, packet_rate_cap=1e12)
        session.mode = mode
        session.cipher = transport_cipher(mode, key)
        session.replay = replay_window(mode)
        if path == "native":
            fastpath.describe(session)
        sock = _udp()
        sockets.append(sock)
        session.address = sock.getsockname()
        router.sessions[grant.session_id] = session
        router.by_ssrc[session.ssrc] = session
        channel.members.append(session)
    endpoint = MediaEndpoint(router, stats)
    sender = transport_cipher(mode, key)
    packets = [
        sender.seal(
            RtpHeader(sequence=n & 0xFFFF, timestamp=n * 960, ssrc=1).build(), os.urandom(120)
        )
        for n in range(count)
    ]
    handled = 0
    try:
        if path == "python-no-kernel":
            router.sendto = lambda packet, address: None
            address = sockets[0].getsockname()
            started = time.perf_counter()
            for packet in packets:
                endpoint.datagram_received(packet, address)
            took = time.perf_counter() - started
            handled = count
        else:
            assert path == "python" or fastpath.native is not None
            server = _udp()
            sockets.append(server)
            router.sendto = server.sendto
            relay = None
            if path == "native":
                assert fastpath.native is not None
                relay = fastpath.native.Relay(
                    server.fileno(), router, stats, Router.forward
                )
            target = server.getsockname()
            took = 0.0
            # In bursts the socket buffer holds, so none is lost before the relay reads it.
            for start in range(0, count, 256):
                for packet in packets[start : start + 256]:
                    sockets[0].sendto(packet, target)
                select.select([server], [], [], 1)
                began = time.perf_counter()
                if relay is None:
                    while True:
                        try:
                            data, addr = server.recvfrom(2048)
                        except BlockingIOError:
                            break
                        handled += 1
                        endpoint.datagram_received(data, addr)
                else:
                    while True:
                        for data, addr in relay.pump() or ():
                            handled += 1
                            endpoint.datagram_received(data, addr)
                        if not select.select([server], [], [], 0)[0]:
                            break
                took += time.perf_counter() - began
    finally:
        for sock in sockets:
            sock.close()
    return took / count * 1e6, took / max(stats.packets_out, 1) * 1e6, handled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("modes", nargs="*")
    args = parser.parse_args()
    modes = [EncryptionMode(name) for name in args.modes] or list(EncryptionMode)
    paths = ["python-no-kernel", "python"] + (["native"] if fastpath.native is not None else [])
    if fastpath.native is None:
        print(f"native path not available: {fastpath.why_python}")
    print(f"{'mode':34} {'path':16} {'us/packet in':>13} {'us/forwarded':>13} {'in Python':>10}")
    for mode in modes:
        for path in paths:
            per_in, per_out, handled = measure(mode, path, args.packets)
            print(f"{mode.value:34} {path:16} {per_in:13.2f} {per_out:13.2f} {handled:10d}")


if __name__ == "__main__":
    main()
