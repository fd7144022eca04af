"""The five transport encryption modes of Discord voice behind one interface.

PROTOCOL.md §5. A :class:`TransportCipher` is made once per session from the mode and the
32-byte ``secret_key`` of Session Description. :meth:`~TransportCipher.seal` turns an RTP
header and an Opus payload into the datagram to send, :meth:`~TransportCipher.open` turns
a datagram back into header and payload. Both take the *whole* header, extension body
included; each mode decides what of it stays clear, what is authenticated and what is
encrypted:

================================  =========================================================
``aead_aes256_gcm_rtpsize``       header up to the 4-byte extension header is clear and is
``aead_xchacha20_poly1305_...``   the AAD; extension body + payload encrypted; 4-byte BE
                                  counter nonce appended
``xsalsa20_poly1305_lite``        12-byte header (+CSRCs) clear; secretbox; 4-byte counter
``xsalsa20_poly1305_suffix``      same; 24 random nonce bytes appended
``xsalsa20_poly1305``             same; the nonce is the 12-byte header itself
================================  =========================================================

The per-packet cost matters (the relay seals once per receiver), so each cipher binds
its primitive once and the seal/open paths are a few calls: AES-GCM through
cryptography's AESGCM (OpenSSL), the others straight through PyNaCl's libsodium
bindings, skipping its class wrappers.
"""

from __future__ import annotations

import abc
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_secretbox,
    crypto_secretbox_open,
)
from nacl.exceptions import CryptoError

try:
    # PyNaCl's own cffi module: the libsodium it ships, without the per-call wrapper.
    import nacl._sodium as _sodium  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - every PyNaCl release since 1.0 has it
    _sodium = None

from voxgate.protocol.errors import DecryptionError, PacketError
from voxgate.protocol.opcodes import EncryptionMode

KEY_SIZE: Final = 32
TAG_SIZE: Final = 16
_U32: Final = struct.Struct(">I")
# The seal loops' 4-byte nonce: one call of a module global, where
# ``counter.to_bytes(4, "big")`` is a method lookup and two arguments per receiver.
_pack_u32: Final = _U32.pack
_ZEROS_8: Final = bytes(8)
_ZEROS_20: Final = bytes(20)
_ZEROS_12: Final = bytes(12)
_ZEROS_16: Final = bytes(16)
_ZEROS_32: Final = bytes(32)

#: The clear header's size by a packet's first byte, where the ``_rtpsize`` AEAD modes'
#: inlined ``open_split`` takes the packet: RTP version 2 without an extension, whose clear
#: header is 12 bytes and the CSRCs. 0 for every other first byte, which the general path
#: takes. One tuple lookup a packet, where reading the bits took seven int operations.
_INLINED_CLEAR: Final = tuple(
    12 + 4 * (first & 0x0F) if first & 0xD0 == 0x80 else 0 for first in range(256)
)

Address = tuple[str, int]
#: A datagram socket's ``sendto``.
SendTo = Callable[[bytes, Address], None]


def _clear_size(packet: bytes, *, rtpsize: bool) -> int:
    """Bytes of ``packet`` left in clear: 12 + 4*CC (+ 4 for the extension header in rtpsize)."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise PacketError("not an RTP packet")
    size = 12 + 4 * (packet[0] & 0x0F)
    if rtpsize and packet[0] & 0x10:
        size += 4
    if len(packet) < size:
        raise PacketError("RTP packet shorter than its header")
    return size


def _check_extension(header: bytes, clear: int, plaintext: bytes, *, rtpsize: bool) -> int:
    """Bytes of ``plaintext`` that belong to the header extension (0 without X).

    Raises :class:`PacketError` when the extension claims more than the plaintext holds.
    """
    if not header[0] & 0x10:
        return 0
    if rtpsize:
        body = 4 * int.from_bytes(header[clear - 2 : clear], "big")
    else:
        # Legacy modes encrypt the whole extension, its 4-byte header included.
        if len(plaintext) < 4:
            raise PacketError("extension header missing from the plaintext")
        body = 4 + 4 * int.from_bytes(plaintext[2:4], "big")
    if len(plaintext) < body:
        raise PacketError("extension body longer than the plaintext")
    return body


def reframe(clear: bytes, plaintext: bytes, *, to_rtpsize: bool) -> tuple[bytes, bytes]:
    """A packet split for one framing (:meth:`TransportCipher.split`), split for the other.

    The ``_rtpsize`` modes keep the extension's 4-byte header in clear and the legacy modes
    encrypt it; nothing else differs, so only a packet with an extension changes.
    """
    if not clear[0] & 0x10:
        return clear, plaintext
    if to_rtpsize:
        return clear + plaintext[:4], plaintext[4:]
    return clear[:-4], clear[-4:] + plaintext


class TransportCipher(abc.ABC):
    """Seals and opens RTP packets for one session in one mode.

    Sealing advances the session's own nonce counter (where the mode has one), which
    wraps at 2^32 as Discord's clients do. Opening reads the nonce from the packet.
    """

    mode: EncryptionMode
    #: bytes a sealed packet has beyond header + payload
    overhead: int
    #: Whether the mode leaves the extension header in clear (the ``_rtpsize`` modes);
    #: ciphers with the same value split a packet the same way (see :meth:`split`).
    rtpsize: bool = False

    def __init__(self, secret_key: bytes, *, nonce: int = 0) -> None:
        if len(secret_key) != KEY_SIZE:
            raise ValueError(f"secret_key must be {KEY_SIZE} bytes, not {len(secret_key)}")
        self.secret_key = bytes(secret_key)
        self.nonce = nonce & 0xFFFF_FFFF

    def _next_nonce(self) -> bytes:
        nonce = _U32.pack(self.nonce)
        self.nonce = (self.nonce + 1) & 0xFFFF_FFFF
        return nonce

    def seal(self, header: bytes, payload: bytes) -> bytes:
        """The datagram for ``header`` (the whole RTP header) and ``payload`` (Opus)."""
        clear = _clear_size(header, rtpsize=self.rtpsize)
        return self._seal(bytes(header[:clear]), bytes(header[clear:]) + payload)

    def split(self, header: bytes, payload: bytes) -> tuple[bytes, bytes]:
        """``(clear, plaintext)``: what this mode leaves in clear and what it encrypts.

        A relay sealing one packet for many receivers splits it once per framing and
        calls :meth:`seal_split` for each, instead of :meth:`seal`'s split per receiver.
        Raises :class:`PacketError` for a malformed header.
        """
        clear = _clear_size(header, rtpsize=self.rtpsize)
        return bytes(header[:clear]), bytes(header[clear:]) + payload

    def seal_split(self, clear: bytes, plaintext: bytes) -> bytes:
        """:meth:`seal` of a packet already :meth:`split` by a cipher of the same framing."""
        return self._seal(clear, plaintext)

    @staticmethod
    def seal_each(
        receivers: Sequence[tuple[Any, Address]], clear: bytes, plaintext: bytes, sendto: SendTo
    ) -> None:
        """:meth:`seal_split` for each ``(cipher, address)`` of ``receivers``, every cipher
        of the class this is read from, each datagram handed to ``sendto``.

        A relay calls it once per packet for each mode among a channel's receivers.
        AES-GCM's seals inline, without a Python call per receiver, which cost as much as
        its cipher did; XChaCha20's own seal is a Python call anyway.
        """
        for cipher, address in receivers:
            sendto(cipher.seal_split(clear, plaintext), address)

    def open(self, packet: bytes) -> tuple[bytes, bytes]:
        """Split a datagram into ``(header, payload)``; ``header`` includes the extension body.

        Raises :class:`DecryptionError` when the packet does not authenticate and
        :class:`PacketError` when it is not a well-formed packet of this mode.
        """
        clear = _clear_size(packet, rtpsize=self.rtpsize)
        header = bytes(packet[:clear])
        plaintext = self._open(header, memoryview(packet)[clear:])
        body = _check_extension(header, clear, plaintext, rtpsize=self.rtpsize)
        return header + plaintext[:body], plaintext[body:]

    def open_split(self, packet: bytes) -> tuple[bytes, bytes]:
        """:meth:`open`, answered as :meth:`split` would split the opened packet:
        ``(clear, plaintext)`` in this mode's framing.

        A relay hands these straight to :meth:`seal_split` of every receiver of the same
        framing (and :func:`reframe` makes them once for the other), instead of joining the
        header and payload and splitting them again. Raises as :meth:`open` does.
        """
        clear = _clear_size(packet, rtpsize=self.rtpsize)
        header = bytes(packet[:clear])
        plaintext = self._open(header, memoryview(packet)[clear:])
        if header[0] & 0x10:
            _check_extension(header, clear, plaintext, rtpsize=self.rtpsize)
        return header, plaintext

    @abc.abstractmethod
    def _seal(self, clear: bytes, plaintext: bytes) -> bytes: ...

    @abc.abstractmethod
    def _open(self, clear: bytes, sealed: memoryview) -> bytes: ...


class Aes256GcmRtpsize(TransportCipher):
    mode = EncryptionMode.AEAD_AES256_GCM_RTPSIZE
    overhead = TAG_SIZE + 4
    rtpsize = True

    def __init__(self, secret_key: bytes, *, nonce: int = 0) -> None:
        super().__init__(secret_key, nonce=nonce)
        self._aead = AESGCM(self.secret_key)

    def _seal(self, clear: bytes, plaintext: bytes) -> bytes:
        nonce = self._next_nonce()
        return clear + self._aead.encrypt(nonce + _ZEROS_8, plaintext, clear) + nonce

    def seal_split(self, clear: bytes, plaintext: bytes) -> bytes:
        # The nonce step inlined, as in seal_each.
        counter = self.nonce
        self.nonce = counter + 1 if counter < 0xFFFF_FFFF else 0
        nonce = _pack_u32(counter)
        return clear + self._aead.encrypt(nonce + _ZEROS_8, plaintext, clear) + nonce

    @staticmethod
    def seal_each(
        receivers: Sequence[tuple[Any, Address]], clear: bytes, plaintext: bytes, sendto: SendTo
    ) -> None:
        # seal_split's body once per receiver: the relay's innermost loop. The counter
        # wraps at 2**32 by a comparison: ``& 0xFFFF_FFFF`` takes CPython's generic bitwise
        # path (the constant is two 30-bit digits) and makes a second int, per receiver.
        for cipher, address in receivers:
            counter = cipher.nonce
            cipher.nonce = counter + 1 if counter < 0xFFFF_FFFF else 0
            nonce = _pack_u32(counter)
            sendto(
                clear + cipher._aead.encrypt(nonce + _ZEROS_8, plaintext, clear) + nonce,
                address,
            )

    def _open(self, clear: bytes, sealed: memoryview) -> bytes:
        if len(sealed) < TAG_SIZE + 4:
            raise DecryptionError("packet shorter than tag and nonce")
        try:
            return self._aead.decrypt(bytes(sealed[-4:]) + _ZEROS_8, sealed[:-4], clear)
        except InvalidTag:
            raise DecryptionError("AES-GCM authentication failed") from None

    def open_split(self, packet: bytes) -> tuple[bytes, bytes]:
        # The relay's per-incoming call, inlined like seal_split: every call level and
        # copy saved here is paid once per packet the node receives.
        clear = _INLINED_CLEAR[packet[0]] if packet else 0
        if not clear or len(packet) < clear + TAG_SIZE + 4:
            return super().open_split(packet)  # the general path, with its errors
        # A datagram is bytes, and so is its slice: bytes() of it would return it as it is,
        # for the price of a call.
        header = packet[:clear]
        try:
            return header, self._aead.decrypt(packet[-4:] + _ZEROS_8, packet[clear:-4], header)
        except InvalidTag:
            raise DecryptionError("AES-GCM authentication failed") from None


class XChaCha20Poly1305Rtpsize(TransportCipher):
    mode = EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE
    overhead = TAG_SIZE + 4
    rtpsize = True

    def __init__(self, secret_key: bytes, *, nonce: int = 0) -> None:
        super().__init__(secret_key, nonce=nonce)
        self._buffer = _SodiumBuffer(_sodium) if _sodium is not None else None

    def _seal(self, clear: bytes, plaintext: bytes) -> bytes:
        nonce = self._next_nonce()
        if self._buffer is not None:
            return (
                clear
                + self._buffer.xchacha_seal(plaintext, clear, nonce + _ZEROS_20, self.secret_key)
                + nonce
            )
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, clear, nonce + _ZEROS_20, self.secret_key
        )
        return clear + sealed + nonce

    def seal_split(self, clear: bytes, plaintext: bytes) -> bytes:
        # Inlined as Aes256GcmRtpsize.seal_split is.
        buffer = self._buffer
        if buffer is None:
            return self._seal(clear, plaintext)
        counter = self.nonce
        self.nonce = counter + 1 if counter < 0xFFFF_FFFF else 0
        nonce = _pack_u32(counter)
        sealed = buffer.xchacha_seal(plaintext, clear, nonce + _ZEROS_20, self.secret_key)
        return clear + sealed + nonce

    def open_split(self, packet: bytes) -> tuple[bytes, bytes]:
        # The relay's per-incoming call, inlined as Aes256GcmRtpsize.open_split is.
        clear = _INLINED_CLEAR[packet[0]] if packet else 0
        buffer = self._buffer
        if not clear or len(packet) < clear + TAG_SIZE + 4 or buffer is None:
            return super().open_split(packet)  # the general path, with its errors
        # Slices of the datagram, bytes as it is (see Aes256GcmRtpsize.open_split).
        header = packet[:clear]
        opened = buffer.xchacha_open(
            packet[clear:-4], header, packet[-4:] + _ZEROS_20, self.secret_key
        )
        if opened is None:
            raise DecryptionError("XChaCha20-Poly1305 authentication failed")
        return header, opened

    def _open(self, clear: bytes, sealed: memoryview) -> bytes:
        if len(sealed) < TAG_SIZE + 4:
            raise DecryptionError("packet shorter than tag and nonce")
        nonce = bytes(sealed[-4:]) + _ZEROS_20
        if self._buffer is not None:
            opened = self._buffer.xchacha_open(bytes(sealed[:-4]), clear, nonce, self.secret_key)
            if opened is None:
                raise DecryptionError("XChaCha20-Poly1305 authentication failed")
            return opened
        try:
            return crypto_aead_xchacha20poly1305_ietf_decrypt(
                bytes(sealed[:-4]), clear, nonce, self.secret_key
            )
        except CryptoError:
            raise DecryptionError("XChaCha20-Poly1305 authentication failed") from None


class _SodiumBuffer:
    """Calls libsodium's XChaCha20-Poly1305 and secretbox directly, into a reused buffer.

    PyNaCl's public binding validates and allocates on every call, which costs about 2 us
    a packet on top of the 1 us the cipher takes (``bench/forward.py``); a relay seals once
    per receiver, so this is the difference that matters. Same libsodium, same bytes: the
    cross-check tests hold both routes to discord.py's and discord.js's layouts.
    """

    __slots__ = ("_ffi", "_lib", "_out", "_out_len", "_size")

    def __init__(self, sodium: Any) -> None:
        self._ffi = sodium.ffi
        self._lib = sodium.lib
        self._size = 2048
        self._out = self._ffi.new("unsigned char[]", self._size)
        self._out_len = self._ffi.new("unsigned long long *")

    def _room(self, size: int) -> None:
        if size > self._size:
            self._size = size
            self._out = self._ffi.new("unsigned char[]", size)

    def xchacha_seal(self, plaintext: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes:
        self._room(len(plaintext) + TAG_SIZE)
        self._lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
            self._out,
            self._out_len,
            plaintext,
            len(plaintext),
            aad,
            len(aad),
            self._ffi.NULL,
            nonce,
            key,
        )
        return bytes(self._ffi.buffer(self._out, self._out_len[0]))

    def xchacha_open(self, sealed: bytes, aad: bytes, nonce: bytes, key: bytes) -> bytes | None:
        self._room(len(sealed))
        status = self._lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
            self._out,
            self._out_len,
            self._ffi.NULL,
            sealed,
            len(sealed),
            aad,
            len(aad),
            nonce,
            key,
        )
        if status != 0:
            return None
        return bytes(self._ffi.buffer(self._out, self._out_len[0]))

    def secretbox(self, plaintext: bytes, nonce: bytes, key: bytes) -> bytes:
        """MAC + ciphertext, as PyNaCl's ``crypto_secretbox`` returns them.

        The NaCl API PyNaCl's module exposes works on zero-padded buffers: 32 zero bytes
        before the message in, 16 before the MAC out.
        """
        padded = _ZEROS_32 + plaintext
        self._room(len(padded))
        self._lib.crypto_secretbox(self._out, padded, len(padded), nonce, key)
        return bytes(self._ffi.buffer(self._out, len(padded)))[16:]

    def secretbox_open(self, sealed: bytes, nonce: bytes, key: bytes) -> bytes | None:
        padded = _ZEROS_16 + sealed
        self._room(len(padded))
        if self._lib.crypto_secretbox_open(self._out, padded, len(padded), nonce, key):
            return None
        return bytes(self._ffi.buffer(self._out, len(padded)))[32:]


class _SecretBox(TransportCipher):
    def __init__(self, secret_key: bytes, *, nonce: int = 0) -> None:
        super().__init__(secret_key, nonce=nonce)
        self._buffer = _SodiumBuffer(_sodium) if _sodium is not None else None

    def _box(self, plaintext: bytes, nonce: bytes) -> bytes:
        if self._buffer is not None:
            return self._buffer.secretbox(plaintext, nonce, self.secret_key)
        return crypto_secretbox(plaintext, nonce, self.secret_key)

    def _unbox(self, sealed: bytes, nonce: bytes) -> bytes:
        if len(sealed) < TAG_SIZE:
            raise DecryptionError("packet shorter than the secretbox MAC")
        if self._buffer is not None:
            opened = self._buffer.secretbox_open(sealed, nonce, self.secret_key)
            if opened is None:
                raise DecryptionError("XSalsa20-Poly1305 authentication failed")
            return opened
        try:
            return crypto_secretbox_open(sealed, nonce, self.secret_key)
        except CryptoError:
            raise DecryptionError("XSalsa20-Poly1305 authentication failed") from None


class XSalsa20Poly1305Lite(_SecretBox):
    mode = EncryptionMode.XSALSA20_POLY1305_LITE
    overhead = TAG_SIZE + 4

    def _seal(self, clear: bytes, plaintext: bytes) -> bytes:
        nonce = self._next_nonce()
        return clear + self._box(plaintext, nonce + _ZEROS_20) + nonce

    def _open(self, clear: bytes, sealed: memoryview) -> bytes:
        if len(sealed) < 4:
            raise DecryptionError("packet shorter than its nonce")
        return self._unbox(bytes(sealed[:-4]), bytes(sealed[-4:]) + _ZEROS_20)


class XSalsa20Poly1305Suffix(_SecretBox):
    mode = EncryptionMode.XSALSA20_POLY1305_SUFFIX
    overhead = TAG_SIZE + 24

    def _seal(self, clear: bytes, plaintext: bytes) -> bytes:
        nonce = os.urandom(24)
        return clear + self._box(plaintext, nonce) + nonce

    def _open(self, clear: bytes, sealed: memoryview) -> bytes:
        if len(sealed) < 24:
            raise DecryptionError("packet shorter than its nonce")
        return self._unbox(bytes(sealed[:-24]), bytes(sealed[-24:]))


class XSalsa20Poly1305(_SecretBox):
    mode = EncryptionMode.XSALSA20_POLY1305
    overhead = TAG_SIZE

    def _seal(self, clear: bytes, plaintext: bytes) -> bytes:
        return clear + self._box(plaintext, clear[:12] + _ZEROS_12)

    def _open(self, clear: bytes, sealed: memoryview) -> bytes:
        return self._unbox(bytes(sealed), clear[:12] + _ZEROS_12)


CIPHERS: Final[dict[EncryptionMode, type[TransportCipher]]] = {
    cls.mode: cls
    for cls in (
        Aes256GcmRtpsize,
        XChaCha20Poly1305Rtpsize,
        XSalsa20Poly1305Lite,
        XSalsa20Poly1305Suffix,
        XSalsa20Poly1305,
    )
}


def transport_cipher(mode: str, secret_key: bytes, *, nonce: int = 0) -> TransportCipher:
    """The cipher for ``mode`` (a name from Ready's ``modes``) and a 32-byte ``secret_key``.

    Raises :class:`ValueError` for a mode voxgate does not know or a key of the wrong size.
    """
    try:
        cls = CIPHERS[EncryptionMode(mode)]
    except ValueError:
        raise ValueError(f"unknown encryption mode {mode!r}") from None
    return cls(secret_key, nonce=nonce)
