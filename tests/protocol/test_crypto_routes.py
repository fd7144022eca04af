"""Both routes into libsodium (direct, and PyNaCl's public binding) make the same packets."""

from __future__ import annotations

import os

import pytest

from voxgate.protocol import crypto
from voxgate.protocol.crypto import transport_cipher
from voxgate.protocol.errors import DecryptionError
from voxgate.protocol.opcodes import EncryptionMode
from voxgate.protocol.rtp import RtpHeader

SODIUM_MODES = [
    mode for mode in EncryptionMode if mode is not EncryptionMode.AEAD_AES256_GCM_RTPSIZE
]
KEY = bytes(range(32))


@pytest.mark.parametrize("mode", SODIUM_MODES)
@pytest.mark.parametrize("size", [0, 120, 5000])  # 5000: beyond the reused buffer's first size
def test_direct_and_binding_routes_agree(monkeypatch, mode: EncryptionMode, size: int) -> None:
    header = RtpHeader(sequence=1, timestamp=960, ssrc=7).build()
    payload = os.urandom(size)
    direct, direct_again = transport_cipher(mode, KEY), transport_cipher(mode, KEY)
    monkeypatch.setattr(crypto, "_sodium", None)
    binding, binding_again = transport_cipher(mode, KEY), transport_cipher(mode, KEY)
    for sealer, opener in ((direct, binding), (binding, direct)):
        packet = sealer.seal(header, payload)
        assert opener.open(packet) == (header, payload)
        tampered = bytearray(packet)
        tampered[len(header)] ^= 1
        with pytest.raises(DecryptionError):
            opener.open(bytes(tampered))
    if mode is not EncryptionMode.XSALSA20_POLY1305_SUFFIX:  # its nonces are random
        assert direct_again.seal(header, payload) == binding_again.seal(header, payload)
