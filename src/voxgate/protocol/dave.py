"""The DAVE media frame: what an end-to-end encrypted Opus payload looks like on the wire.

DAVE.md §5 (WP:422-505, WP:604-621). After transport decryption, a DAVE sender's payload
is the encrypted frame followed by a trailer the relay can recognise without any key::

    ciphertext ‖ 8-byte truncated AES-128-GCM tag ‖ ULEB128 nonce
      ‖ ULEB128 (offset, size) unencrypted ranges ‖ u8 supplemental_size ‖ FA FA

The relay forwards such frames byte for byte; it only needs :func:`is_dave_frame`, for
the downgrade filter (no ``0xFAFA`` frames to members without DAVE, WP:623-631). That
check runs per packet on a downgrading channel, so it is a few comparisons and never
raises. :func:`parse_dave_frame` and :func:`build_dave_frame` are exact inverses, for
tests and tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from voxgate.protocol.errors import DaveFrameError

#: The last two bytes of every DAVE frame.
MAGIC: Final = b"\xfa\xfa"
#: Opus silence: never encrypted (WP:633-643), so never a DAVE frame.
OPUS_SILENCE: Final = b"\xf8\xff\xfe"
#: The truncated AES-GCM tag: the first 8 of the 16 bytes (DAVE.md §5).
TAG_SIZE: Final = 8
#: tag + a 1-byte nonce + the size byte + the magic: the smallest supplemental block.
MIN_SUPPLEMENTAL_SIZE: Final = TAG_SIZE + 1 + 1 + len(MAGIC)
_MAX_NONCE: Final = 2**32 - 1
_MAX_RANGE_VALUE: Final = 2**64 - 1


def _uleb128(data: bytes, position: int, end: int, limit: int) -> tuple[int, int]:
    """(value, next position) of a minimal ULEB128 at ``position`` before ``end``; (-1, -1)
    when it runs past ``end``, exceeds ``limit`` or is not minimal."""
    value = 0
    shift = 0
    while position < end:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if value > limit:
            return -1, -1
        if not byte & 0x80:
            if byte == 0 and shift:  # a trailing 0x00 group: not the minimal encoding
                return -1, -1
            return value, position
        shift += 7
    return -1, -1


def _encode_uleb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _trailer(payload: bytes) -> tuple[int, tuple[tuple[int, int], ...]] | None:
    """(nonce, unencrypted ranges) when ``payload`` is a well-formed DAVE frame, else None."""
    size = len(payload)
    if size < MIN_SUPPLEMENTAL_SIZE or payload[-1] != 0xFA or payload[-2] != 0xFA:
        return None
    supplemental = payload[-3]
    if supplemental < MIN_SUPPLEMENTAL_SIZE or supplemental > size:
        return None
    frame_size = size - supplemental
    end = size - 3
    nonce, position = _uleb128(payload, frame_size + TAG_SIZE, end, _MAX_NONCE)
    if position < 0:
        return None
    ranges: list[tuple[int, int]] = []
    covered = 0
    while position < end:
        offset, position = _uleb128(payload, position, end, _MAX_RANGE_VALUE)
        if position < 0:
            return None
        length, position = _uleb128(payload, position, end, _MAX_RANGE_VALUE)
        if position < 0 or offset < covered or offset + length > frame_size:
            return None
        covered = offset + length
        ranges.append((offset, length))
    return nonce, tuple(ranges)


def is_dave_frame(payload: bytes) -> bool:
    """Whether a (transport-decrypted) media payload is a DAVE frame (WP:604-621).

    At least 12 bytes ending ``FA FA``; the byte before is the supplemental size S with
    12 <= S <= len; after the 8-byte tag, a ULEB128 nonce (u32) and ascending,
    non-overlapping, in-bounds ULEB128 ranges fill the block exactly. Plain Opus and
    :data:`OPUS_SILENCE` fail it. Never raises.
    """
    return _trailer(payload) is not None


@dataclass(frozen=True)
class DaveFrame:
    """A parsed DAVE frame. ``ciphertext`` is the frame part (for Opus, all of it is
    ciphertext; with unencrypted ranges, those bytes sit in place, in the clear)."""

    ciphertext: bytes
    tag: bytes
    nonce: int
    unencrypted_ranges: tuple[tuple[int, int], ...]
    supplemental_size: int

    @classmethod
    def create(
        cls,
        ciphertext: bytes,
        tag: bytes,
        nonce: int,
        unencrypted_ranges: tuple[tuple[int, int], ...] = (),
    ) -> DaveFrame:
        """A frame with its supplemental size computed from the rest."""
        size = TAG_SIZE + len(_encode_uleb128(nonce)) + 1 + len(MAGIC)
        for offset, length in unencrypted_ranges:
            size += len(_encode_uleb128(offset)) + len(_encode_uleb128(length))
        return cls(ciphertext, tag, nonce, tuple(unencrypted_ranges), size)

    @property
    def generation(self) -> int:
        """The key ratchet generation: the nonce's top byte (DAVE.md §5)."""
        return self.nonce >> 24


def parse_dave_frame(payload: bytes) -> DaveFrame:
    """A DAVE frame's parts; raises :class:`DaveFrameError` if it is not one."""
    payload = bytes(payload)
    trailer = _trailer(payload)
    if trailer is None:
        raise DaveFrameError("not a DAVE frame")
    nonce, ranges = trailer
    supplemental = payload[-3]
    frame_size = len(payload) - supplemental
    return DaveFrame(
        payload[:frame_size],
        payload[frame_size : frame_size + TAG_SIZE],
        nonce,
        ranges,
        supplemental,
    )


def build_dave_frame(frame: DaveFrame) -> bytes:
    """The wire bytes of ``frame``; raises DaveFrameError if its fields are inconsistent."""
    if len(frame.tag) != TAG_SIZE or not 0 <= frame.nonce <= _MAX_NONCE:
        raise DaveFrameError("bad tag or nonce")
    parts = [frame.ciphertext, frame.tag, _encode_uleb128(frame.nonce)]
    covered = 0
    for offset, length in frame.unencrypted_ranges:
        if offset < covered or length < 0 or offset + length > len(frame.ciphertext):
            raise DaveFrameError("bad unencrypted ranges")
        covered = offset + length
        parts += [_encode_uleb128(offset), _encode_uleb128(length)]
    supplemental = sum(len(part) for part in parts[1:]) + 1 + len(MAGIC)
    if supplemental != frame.supplemental_size or supplemental > 255:
        raise DaveFrameError("bad supplemental size")
    return b"".join(parts) + bytes((supplemental,)) + MAGIC
