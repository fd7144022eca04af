"""RTP and RTCP headers as Discord voice uses them, and telling datagrams apart.

PROTOCOL.md §4-§5. One UDP socket carries four kinds of datagram: IP discovery (74 bytes,
type 1 or 2), discord.js's 8-byte keep-alive, RTCP (second byte 200-204) and RTP
(version 2). :func:`classify` tells them apart from the first bytes without parsing more.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

import msgspec

from voxgate.protocol.errors import PacketError

#: Payload type of Opus in Discord voice.
OPUS_PAYLOAD_TYPE: Final = 120
#: The one-byte header extension profile (RFC 8285) Discord uses.
EXTENSION_PROFILE: Final = 0xBEDE
#: 20 ms of 48 kHz audio: the RTP timestamp step of one Opus frame.
SAMPLES_PER_FRAME: Final = 960
#: An Opus frame of silence; five are sent after the last frame of audio (PROTOCOL.md §5).
SILENCE_FRAME: Final = b"\xf8\xff\xfe"

FIXED_HEADER_SIZE: Final = 12
_FIXED: Final = struct.Struct(">BBHII")
_EXTENSION: Final = struct.Struct(">HH")
DISCOVERY_SIZE: Final = 74
KEEPALIVE_SIZE: Final = 8


class DatagramKind(enum.Enum):
    RTP = "rtp"
    RTCP = "rtcp"
    DISCOVERY = "discovery"
    KEEPALIVE = "keepalive"
    UNKNOWN = "unknown"


def classify(datagram: bytes) -> DatagramKind:
    """Which kind of datagram this is, judged from its length and first two bytes."""
    size = len(datagram)
    if size == DISCOVERY_SIZE and datagram[0] == 0 and datagram[1] in (1, 2):
        return DatagramKind.DISCOVERY
    if size == KEEPALIVE_SIZE:
        return DatagramKind.KEEPALIVE
    if size < 8 or datagram[0] >> 6 != 2:
        return DatagramKind.UNKNOWN
    if 200 <= datagram[1] <= 204:
        return DatagramKind.RTCP
    if size >= FIXED_HEADER_SIZE:
        return DatagramKind.RTP
    return DatagramKind.UNKNOWN


def header_size(packet: bytes, *, with_extension_body: bool = False) -> int:
    """Length of the RTP header: fixed part, CSRCs and, when X is set, the 4-byte extension header.

    With ``with_extension_body`` the extension body counts too (only readable when it is
    not encrypted, i.e. never in the ``_rtpsize`` modes). Raises :class:`PacketError`.
    """
    if len(packet) < FIXED_HEADER_SIZE or packet[0] >> 6 != 2:
        raise PacketError("not an RTP packet")
    size = FIXED_HEADER_SIZE + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        size += 4
        if len(packet) < size:
            raise PacketError("RTP packet shorter than its extension header")
        if with_extension_body:
            size += 4 * _EXTENSION.unpack_from(packet, size - 4)[1]
    if len(packet) < size:
        raise PacketError("RTP packet shorter than its header")
    return size


class RtpHeader(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed RTP header (RFC 3550 §5.1) with Discord's 0xBEDE extension."""

    sequence: int
    timestamp: int
    ssrc: int
    payload_type: int = OPUS_PAYLOAD_TYPE
    marker: bool = False
    padding: bool = False
    csrcs: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""

    @property
    def size(self) -> int:
        ext = 0 if self.extension_profile is None else 4 + len(self.extension)
        return FIXED_HEADER_SIZE + 4 * len(self.csrcs) + ext

    def build(self) -> bytes:
        """The header's bytes; the extension body must be a whole number of 32-bit words."""
        if len(self.csrcs) > 15:
            raise PacketError("at most 15 CSRCs")
        if len(self.extension) % 4:
            raise PacketError("extension body is not a whole number of 32-bit words")
        first = 0x80 | (0x20 if self.padding else 0) | len(self.csrcs)
        if self.extension_profile is not None:
            first |= 0x10
        out = bytearray(
            _FIXED.pack(
                first,
                (0x80 if self.marker else 0) | (self.payload_type & 0x7F),
                self.sequence & 0xFFFF,
                self.timestamp & 0xFFFF_FFFF,
                self.ssrc & 0xFFFF_FFFF,
            )
        )
        for csrc in self.csrcs:
            out += csrc.to_bytes(4, "big")
        if self.extension_profile is not None:
            out += _EXTENSION.pack(self.extension_profile, len(self.extension) // 4)
            out += self.extension
        return bytes(out)


def parse_header(packet: bytes) -> RtpHeader:
    """Parse the header of a plaintext RTP packet (extension body included).

    Raises :class:`PacketError` when the bytes are not a complete RTP header.
    """
    size = header_size(packet, with_extension_body=True)
    first, second, sequence, timestamp, ssrc = _FIXED.unpack_from(packet)
    count = first & 0x0F
    csrcs = tuple(int.from_bytes(packet[12 + 4 * i : 16 + 4 * i], "big") for i in range(count))
    profile: int | None = None
    extension = b""
    if first & 0x10:
        at = FIXED_HEADER_SIZE + 4 * count
        profile = _EXTENSION.unpack_from(packet, at)[0]
        extension = bytes(packet[at + 4 : size])
    return RtpHeader(
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload_type=second & 0x7F,
        marker=bool(second & 0x80),
        padding=bool(first & 0x20),
        csrcs=csrcs,
        extension_profile=profile,
        extension=extension,
    )


def ssrc_of(packet: bytes) -> int:
    """The ssrc of an RTP packet (bytes 8-11), without parsing the rest."""
    if len(packet) < FIXED_HEADER_SIZE:
        raise PacketError("RTP packet shorter than 12 bytes")
    return int.from_bytes(packet[8:12], "big")


class RtcpHeader(msgspec.Struct, frozen=True, kw_only=True):
    """The first 8 bytes of an RTCP packet (RFC 3550 §6.4): the part left in clear."""

    count: int
    packet_type: int
    length: int
    ssrc: int


_RTCP: Final = struct.Struct(">BBHI")


def parse_rtcp_header(packet: bytes) -> RtcpHeader:
    """Parse the clear 8-byte RTCP header. Raises :class:`PacketError`."""
    if len(packet) < 8 or packet[0] >> 6 != 2 or not 200 <= packet[1] <= 204:
        raise PacketError("not an RTCP packet")
    first, packet_type, length, ssrc = _RTCP.unpack_from(packet)
    return RtcpHeader(count=first & 0x1F, packet_type=packet_type, length=length, ssrc=ssrc)


def build_keepalive(counter: int) -> bytes:
    """discord.js's 8-byte UDP keep-alive: a u32 LE counter and four zero bytes."""
    return (counter & 0xFFFF_FFFF).to_bytes(4, "little") + b"\x00\x00\x00\x00"
