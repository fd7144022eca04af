"""The 74-byte IP discovery request and response (PROTOCOL.md §4).

A client sends a request carrying its ssrc from the socket it will use for media; the
server answers with the address and port it saw the request come from, so the client
learns its public address for Select Protocol.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

import msgspec

from voxgate.protocol.errors import PacketError

REQUEST: Final = 1
RESPONSE: Final = 2
SIZE: Final = 74
_LENGTH: Final = 70
_LAYOUT: Final = struct.Struct(">HHI64sH")


class Discovery(msgspec.Struct, frozen=True, kw_only=True):
    """One discovery packet; a request usually has an empty address and port 0."""

    type: int
    ssrc: int
    address: str = ""
    port: int = 0


def build_request(ssrc: int) -> bytes:
    return _LAYOUT.pack(REQUEST, _LENGTH, ssrc, b"", 0)


def build_response(ssrc: int, address: str, port: int) -> bytes:
    """The response a server sends; ``address`` must be IPv4 (discord.js reads only those)."""
    encoded = address.encode("ascii")
    if len(encoded) > 63:
        raise PacketError("address does not fit the 64-byte field with its NUL")
    return _LAYOUT.pack(RESPONSE, _LENGTH, ssrc, encoded, port)


def parse(packet: bytes) -> Discovery:
    """Parse a request or a response. Raises :class:`PacketError` on anything else."""
    if len(packet) != SIZE:
        raise PacketError(f"discovery packet is {len(packet)} bytes, not {SIZE}")
    kind, length, ssrc, raw_address, port = _LAYOUT.unpack(packet)
    if kind not in (REQUEST, RESPONSE) or length != _LENGTH:
        raise PacketError("not a discovery packet")
    address = raw_address.split(b"\x00", 1)[0]
    try:
        text = address.decode("ascii")
        if text:
            ipaddress.ip_address(text)
    except ValueError:
        raise PacketError("discovery address is not an IP address") from None
    return Discovery(type=kind, ssrc=ssrc, address=text, port=port)
