"""The Python floor under voxgate: relay.c's job in the least Python that can do it.

    python bench/ceiling/bare_relay.py PORT MEMBERS_FILE

Same members file, discovery answers and AES-256-GCM open / per-receiver seal as
``relay.c``, on uvloop, with none of a voice server's work: no sessions, no replay window,
no rate limit, no counters, no gateway. ``voxgate bench relay --bare`` drives it with the
same generator, so the distance from voxgate to it is the cost of being a server, and the
distance from it to the C relay is the cost of Python.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
import sys

import uvloop
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ZEROS_8 = bytes(8)
# The cheapest CPython idioms for the per-packet work, the ones voxgate's Python path uses
# (protocol/crypto.py, server/guard.py): a bound int.from_bytes, a struct's pack for the
# 4-byte nonce, and the nonce's wrap by a comparison rather than a mask.
_from_bytes = int.from_bytes
_pack_u32 = struct.Struct(">I").pack


class Member:
    __slots__ = ("address", "aead", "channel", "nonce")

    def __init__(self, key: bytes) -> None:
        self.aead = AESGCM(key)
        self.nonce = 0
        self.address: tuple[str, int] | None = None
        self.channel: list[Member] = []


class BareRelay(asyncio.DatagramProtocol):
    def __init__(self, members: dict[int, Member]) -> None:
        self.members = members
        self.sendto = None

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.sendto = transport.sendto

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) == 74 and data[0] == 0 and data[1] == 1:
            member = self.members.get(_from_bytes(data[4:8], "big"))
            if member is not None:
                member.address = addr
                host = addr[0].encode().ljust(64, b"\0")
                reply = b"\x00\x02\x00\x46" + data[4:8] + host + addr[1].to_bytes(2, "big")
                self.sendto(reply, addr)
            return
        sender = self.members.get(_from_bytes(data[8:12], "big"))
        if sender is None or len(data) < 32:
            return
        clear = data[:12]
        try:
            plaintext = sender.aead.decrypt(data[-4:] + ZEROS_8, data[12:-4], clear)
        except Exception:
            return
        sender.address = addr
        sendto = self.sendto
        for receiver in sender.channel:
            if receiver is sender or receiver.address is None:
                continue
            counter = receiver.nonce
            receiver.nonce = counter + 1 if counter < 0xFFFF_FFFF else 0
            nonce = _pack_u32(counter)
            sendto(
                clear + receiver.aead.encrypt(nonce + ZEROS_8, plaintext, clear) + nonce,
                receiver.address,
            )


async def main(port: int, members_file: str) -> None:
    members: dict[int, Member] = {}
    channels: dict[str, list[Member]] = {}
    with open(members_file) as lines:
        for line in lines:
            channel, ssrc, key = line.split()
            member = members[int(ssrc)] = Member(bytes.fromhex(key))
            member.channel = channels.setdefault(channel, [])
            member.channel.append(member)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
    sock.bind(("127.0.0.1", port))
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: BareRelay(members), sock=sock)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"ready {len(members)} members", flush=True)
    await stop.wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
