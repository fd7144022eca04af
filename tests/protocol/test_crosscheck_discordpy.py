"""voxgate's transport crypto against discord.py 2.7.1 and discord-ext-voice-recv's own code.

Sending: discord.py's ``VoiceClient._encrypt_<mode>`` functions (the real ones, called
unbound on a stand-in carrying only ``secret_key``, ``_incr_nonce`` and discord.py's own
``checked_add``) seal packets that :mod:`voxgate.protocol.crypto` must open to the same
header and Opus payload; for the counter modes the bytes must even be identical to what
voxgate seals. Receiving: packets voxgate seals must open with discord-ext-voice-recv's
``PacketDecryptor`` (what a discord.py bot receives audio with), extension included.

discord.py covers ``aead_xchacha20_poly1305_rtpsize``, ``xsalsa20_poly1305_lite``,
``xsalsa20_poly1305_suffix`` and ``xsalsa20_poly1305`` in both directions; it does not
speak ``aead_aes256_gcm_rtpsize`` (see test_crosscheck_discordjs.py for that one).
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from discord.ext.voice_recv import rtp as recv_rtp
from discord.ext.voice_recv.reader import PacketDecryptor
from discord.voice_client import VoiceClient

from voxgate.protocol import DecryptionError, EncryptionMode
from voxgate.protocol.crypto import transport_cipher
from voxgate.protocol.rtp import RtpHeader

DISCORD_PY_MODES = [
    "aead_xchacha20_poly1305_rtpsize",
    "xsalsa20_poly1305_lite",
    "xsalsa20_poly1305_suffix",
    "xsalsa20_poly1305",
]
#: modes whose nonce is deterministic, so discord.py's and voxgate's packets are identical
DETERMINISTIC_MODES = [m for m in DISCORD_PY_MODES if m != "xsalsa20_poly1305_suffix"]
SECRET_KEY = bytes(range(7, 39))
OPUS = bytes.fromhex("fc ff fe") + bytes(range(90))


class DiscordPySender:
    """The state discord.py's ``_encrypt_*`` read from ``self``, and its own counter helper."""

    checked_add = VoiceClient.checked_add

    def __init__(self, secret_key: bytes, incr_nonce: int = 0) -> None:
        self.secret_key = list(secret_key)  # discord.py keeps Session Description's ints
        self._incr_nonce = incr_nonce


def discord_py_header(sequence: int, timestamp: int, ssrc: int) -> bytes:
    # discord.py's VoiceClient._get_voice_packet, byte for byte
    header = bytearray(12)
    header[0] = 0x80
    header[1] = 0x78
    struct.pack_into(">H", header, 2, sequence)
    struct.pack_into(">I", header, 4, timestamp)
    struct.pack_into(">I", header, 8, ssrc)
    return bytes(header)


def discord_py_seal(mode: str, sender: DiscordPySender, header: bytes, opus: bytes) -> bytes:
    encrypt: Any = getattr(VoiceClient, f"_encrypt_{mode}")
    packet: bytes = encrypt(sender, header, opus)
    return bytes(packet)


def test_discord_py_modes_are_the_ones_covered_here() -> None:
    assert set(VoiceClient.supported_modes) == set(DISCORD_PY_MODES)
    assert set(PacketDecryptor.supported_modes) == set(DISCORD_PY_MODES)
    assert set(DISCORD_PY_MODES) < {str(m) for m in EncryptionMode}


@pytest.mark.parametrize("mode", DISCORD_PY_MODES)
def test_voxgate_opens_what_discord_py_seals(mode: str) -> None:
    sender = DiscordPySender(SECRET_KEY)
    cipher = transport_cipher(mode, SECRET_KEY)
    for n in range(3):
        header = discord_py_header(
            sequence=(65534 + n) & 0xFFFF, timestamp=960 * n, ssrc=0xABCD0001
        )
        packet = discord_py_seal(mode, sender, header, OPUS[: 10 + n])
        assert cipher.open(packet) == (header, OPUS[: 10 + n])


@pytest.mark.parametrize("mode", DETERMINISTIC_MODES)
def test_voxgate_seals_the_same_bytes_as_discord_py(mode: str) -> None:
    start = 2**32 - 2  # across the counter wrap: discord.py's checked_add resets to 0
    sender = DiscordPySender(SECRET_KEY, incr_nonce=start)
    cipher = transport_cipher(mode, SECRET_KEY, nonce=start)
    for n in range(4):
        header = discord_py_header(sequence=n, timestamp=960 * n, ssrc=5)
        assert cipher.seal(header, OPUS) == discord_py_seal(mode, sender, header, OPUS)
    if mode != "xsalsa20_poly1305":  # the one mode whose nonce is the header, not a counter
        assert sender._incr_nonce == cipher.nonce == 2


@pytest.mark.parametrize("mode", DISCORD_PY_MODES)
def test_discord_py_packet_under_another_key_does_not_open(mode: str) -> None:
    header = discord_py_header(1, 960, 9)
    packet = discord_py_seal(mode, DiscordPySender(bytes(32)), header, OPUS)
    with pytest.raises(DecryptionError):
        transport_cipher(mode, SECRET_KEY).open(packet)


#: a well-formed one-byte-header extension (RFC 8285): id 1 len 1, id 2 len 2, padding
BEDE_BODY = bytes([0x10, 0xAA, 0x21, 0xBB, 0xCC, 0x00, 0x00, 0x00])


def _recv_open(mode: str, packet: bytes) -> tuple[Any, bytes]:
    decryptor = PacketDecryptor(mode, SECRET_KEY)  # type: ignore[arg-type]
    rtp_packet = recv_rtp.decode_rtp(packet)
    return rtp_packet, bytes(decryptor.decrypt_rtp(rtp_packet))


@pytest.mark.parametrize("mode", DISCORD_PY_MODES)
@pytest.mark.parametrize("extension", [False, True])
def test_voice_recv_opens_what_voxgate_seals(mode: str, extension: bool) -> None:
    header = RtpHeader(
        sequence=300,
        timestamp=48000,
        ssrc=0x01020304,
        extension_profile=0xBEDE if extension else None,
        extension=BEDE_BODY if extension else b"",
    )
    cipher = transport_cipher(mode, SECRET_KEY, nonce=2**32 - 1)
    for n in range(2):
        packet = cipher.seal(header.build(), OPUS[n:])
        rtp_packet, payload = _recv_open(mode, packet)
        assert payload == OPUS[n:]
        assert (rtp_packet.sequence, rtp_packet.timestamp, rtp_packet.ssrc) == (
            300,
            48000,
            0x01020304,
        )
        if extension:
            assert rtp_packet.extension_data == {1: b"\xaa", 2: b"\xbb\xcc"}


@pytest.mark.parametrize(
    "mode", ["xsalsa20_poly1305_lite", "xsalsa20_poly1305_suffix", "xsalsa20_poly1305"]
)
def test_voice_recv_opens_voxgate_legacy_packets_with_csrcs(mode: str) -> None:
    # The legacy modes leave CSRCs in clear and outside the nonce, as voice-recv reads them.
    header = RtpHeader(sequence=1, timestamp=2, ssrc=3, csrcs=(11, 22))
    packet = transport_cipher(mode, SECRET_KEY).seal(header.build(), OPUS)
    rtp_packet, payload = _recv_open(mode, packet)
    assert payload == OPUS
    assert rtp_packet.csrcs == (11, 22)


@pytest.mark.parametrize("mode", DISCORD_PY_MODES)
def test_voice_recv_rejects_voxgate_packet_under_another_key(mode: str) -> None:
    from nacl.exceptions import CryptoError

    packet = transport_cipher(mode, os.urandom(32)).seal(
        RtpHeader(sequence=1, timestamp=2, ssrc=3).build(), OPUS
    )
    with pytest.raises(CryptoError):
        _recv_open(mode, packet)
