"""voxgate's transport crypto against @discordjs/voice 0.19.2's packet layout.

The Python half reproduces, with ``cryptography`` and PyNaCl directly (not voxgate), what
discord.js does (``dist/index.js``): ``Networking.createAudioPacket`` /
``encryptOpusPacket`` to send (12-byte header as AAD, counter incremented *before* use,
4-byte BE counter in a 12-byte (AES-GCM) or 24-byte (XChaCha20) zero-padded nonce, then
ciphertext + tag + counter) and ``VoiceReceiver.decrypt`` / ``parsePacket`` to receive
(AAD = 12 bytes, +4 when the X bit is set; nonce = last 4 bytes; tag = the 16 bytes
before; after decrypting, when bytes 12-13 are 0xBEDE, skip ``4 * length`` bytes of the
plaintext, the extension body). discord.js ignores CSRCs, and Discord sends none, so the
cases here have none.

A second half runs discord.js's own functions in node (``Networking.prototype.
createAudioPacket`` and ``VoiceReceiver.prototype.parsePacket``) for AES-GCM. Not for
XChaCha20: in this install (node 20, libsodium-wrappers 0.8.4) discord.js's backend loader
``import()``s libsodium-wrappers and gets a namespace without the functions it calls
("sodium.crypto_aead_xchacha20poly1305_ietf_encrypt is not a function"), so discord.js can
really only speak AES-GCM here, which is why a server must offer AES-GCM first.

discord.js covers ``aead_aes256_gcm_rtpsize`` and ``aead_xchacha20_poly1305_rtpsize`` in
both directions; it speaks no other mode (the three xsalsa20 modes are covered by
discord.py, see test_crosscheck_discordpy.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from voxgate.protocol import DecryptionError
from voxgate.protocol.crypto import transport_cipher
from voxgate.protocol.rtp import RtpHeader

DISCORD_JS_MODES = ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"]
MAX_NONCE_SIZE = 2**32 - 1  # discord.js's constant
AUTH_TAG_LENGTH = 16
UNPADDED_NONCE_LENGTH = 4
HEADER_EXTENSION_BYTE = b"\xbe\xde"
SECRET_KEY = bytes(range(200, 232))
OPUS = bytes.fromhex("78 9f 02") + bytes(range(60))
BEDE_BODY = bytes([0x10, 0xAA, 0x21, 0xBB, 0xCC, 0x00, 0x00, 0x00])
JS_DIR = Path(__file__).resolve().parents[1] / "interop" / "js"


class DiscordJsSender:
    """discord.js's ``connectionData`` fields ``encryptOpusPacket`` reads and advances."""

    def __init__(self, mode: str, secret_key: bytes, nonce: int = 0) -> None:
        self.encryption_mode = mode
        self.secret_key = secret_key
        self.nonce = nonce
        self.nonce_buffer = bytearray(12 if mode == "aead_aes256_gcm_rtpsize" else 24)

    def encrypt_opus_packet(self, opus: bytes, additional_data: bytes) -> bytes:
        self.nonce += 1
        if self.nonce > MAX_NONCE_SIZE:
            self.nonce = 0
        self.nonce_buffer[0:4] = self.nonce.to_bytes(4, "big")
        nonce = bytes(self.nonce_buffer)
        if self.encryption_mode == "aead_aes256_gcm_rtpsize":
            # createCipheriv("aes-256-gcm") + setAAD; update || final || getAuthTag
            encrypted = AESGCM(self.secret_key).encrypt(nonce, opus, additional_data)
        else:
            encrypted = crypto_aead_xchacha20poly1305_ietf_encrypt(
                opus, additional_data, nonce, self.secret_key
            )
        return encrypted + nonce[:4]

    def seal(self, header: bytes, opus: bytes) -> bytes:
        """``createAudioPacket`` for a given header (discord.js builds 12 bytes itself);
        with an extension, the layout Discord's servers send discord.js: the 4-byte
        extension header joins the AAD and the body is encrypted ahead of the Opus."""
        clear = 16 if header[0] & 0x10 else 12
        return header[:clear] + self.encrypt_opus_packet(header[clear:] + opus, header[:clear])


def discord_js_header(sequence: int, timestamp: int, ssrc: int) -> bytes:
    header = bytearray(12)
    header[0] = 128
    header[1] = 120  # RTP_OPUS_PAYLOAD_TYPE
    header[2:4] = sequence.to_bytes(2, "big")
    header[4:8] = timestamp.to_bytes(4, "big")
    header[8:12] = ssrc.to_bytes(4, "big")
    return bytes(header)


def discord_js_decrypt(buffer: bytes, mode: str, secret_key: bytes) -> bytes:
    """``VoiceReceiver.decrypt``."""
    nonce = bytearray(12 if mode == "aead_aes256_gcm_rtpsize" else 24)
    nonce[0:UNPADDED_NONCE_LENGTH] = buffer[len(buffer) - UNPADDED_NONCE_LENGTH :]
    header_size = 12
    if buffer[0] >> 4 & 1:
        header_size += 4
    header = buffer[:header_size]
    encrypted = buffer[header_size : len(buffer) - AUTH_TAG_LENGTH - UNPADDED_NONCE_LENGTH]
    auth_tag = buffer[
        len(buffer) - AUTH_TAG_LENGTH - UNPADDED_NONCE_LENGTH : len(buffer) - UNPADDED_NONCE_LENGTH
    ]
    if mode == "aead_aes256_gcm_rtpsize":
        return AESGCM(secret_key).decrypt(bytes(nonce), encrypted + auth_tag, header)
    return crypto_aead_xchacha20poly1305_ietf_decrypt(
        encrypted + auth_tag, header, bytes(nonce), secret_key
    )


def discord_js_parse_packet(buffer: bytes, mode: str, secret_key: bytes) -> bytes:
    """``VoiceReceiver.parsePacket`` without DAVE (dave_protocol_version 0)."""
    packet = discord_js_decrypt(buffer, mode, secret_key)
    if buffer[0] & 32:
        padding_amount = packet[-1]
        if padding_amount < len(packet):
            packet = packet[: len(packet) - padding_amount]
    if buffer[12:14] == HEADER_EXTENSION_BYTE:
        header_extension_length = int.from_bytes(buffer[14:16], "big")
        packet = packet[4 * header_extension_length :]
    return packet


def _header(extension: bool, sequence: int = 7) -> bytes:
    return RtpHeader(
        sequence=sequence,
        timestamp=960 * sequence,
        ssrc=0x11223344,
        extension_profile=0xBEDE if extension else None,
        extension=BEDE_BODY if extension else b"",
    ).build()


@pytest.mark.parametrize("mode", DISCORD_JS_MODES)
@pytest.mark.parametrize("extension", [False, True])
def test_voxgate_opens_what_discord_js_layout_seals(mode: str, extension: bool) -> None:
    sender = DiscordJsSender(mode, SECRET_KEY, nonce=MAX_NONCE_SIZE - 1)
    cipher = transport_cipher(mode, SECRET_KEY)
    for n in range(3):  # counters 2^32-1, then 0 and 1 after the wrap
        header = _header(extension, sequence=n) if extension else discord_js_header(n, 960 * n, 9)
        packet = sender.seal(header, OPUS[n:])
        assert cipher.open(packet) == (header, OPUS[n:])
    assert sender.nonce == 1


@pytest.mark.parametrize("mode", DISCORD_JS_MODES)
def test_voxgate_seals_the_same_bytes_as_discord_js(mode: str) -> None:
    # discord.js increments before sealing: its packet k carries counter k + 1, voxgate's
    # carries the counter it holds; same counter, same bytes.
    sender = DiscordJsSender(mode, SECRET_KEY, nonce=MAX_NONCE_SIZE - 1)
    cipher = transport_cipher(mode, SECRET_KEY, nonce=MAX_NONCE_SIZE)
    for n in range(3):
        header = discord_js_header(n, 960 * n, 9)
        assert cipher.seal(header, OPUS) == sender.seal(header, OPUS)


@pytest.mark.parametrize("mode", DISCORD_JS_MODES)
@pytest.mark.parametrize("extension", [False, True])
def test_discord_js_layout_opens_what_voxgate_seals(mode: str, extension: bool) -> None:
    cipher = transport_cipher(mode, SECRET_KEY, nonce=MAX_NONCE_SIZE)
    for n in range(2):
        packet = cipher.seal(_header(extension, sequence=n), OPUS[n:])
        assert discord_js_parse_packet(packet, mode, SECRET_KEY) == OPUS[n:]


@pytest.mark.parametrize("mode", DISCORD_JS_MODES)
def test_discord_js_layout_sealed_under_another_key_does_not_open(mode: str) -> None:
    packet = DiscordJsSender(mode, bytes(32)).seal(discord_js_header(1, 2, 3), OPUS)
    with pytest.raises(DecryptionError):
        transport_cipher(mode, SECRET_KEY).open(packet)


# --- discord.js's own code, run in node -------------------------------------------------

NODE_SCRIPT = r"""
const voice = require("@discordjs/voice");
const { Networking, VoiceReceiver } = voice;

(async () => {
  const requests = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const out = requests.map((req) => {
    const key = new Uint8Array(Buffer.from(req.key, "hex"));
    if (req.op === "seal") {
      const connectionData = {
        sequence: req.sequence, timestamp: req.timestamp, ssrc: req.ssrc, secretKey: key,
        encryptionMode: req.mode, nonce: req.nonce,
        nonceBuffer: req.mode === "aead_aes256_gcm_rtpsize" ? Buffer.alloc(12) : Buffer.alloc(24),
      };
      const net = Object.create(Networking.prototype);
      return net.createAudioPacket(Buffer.from(req.opus, "hex"), connectionData, undefined)
        .toString("hex");
    }
    const receiver = Object.create(VoiceReceiver.prototype);
    receiver.voiceConnection = { state: { status: "signalling" } };
    const nonce = req.mode === "aead_aes256_gcm_rtpsize" ? Buffer.alloc(12) : Buffer.alloc(24);
    try {
      return receiver.parsePacket(Buffer.from(req.packet, "hex"), req.mode, nonce, key, "1")
        .toString("hex");
    } catch (e) { return null; }
  });
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def _run_discord_js(requests: list[dict[str, Any]]) -> list[Any]:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "@discordjs" / "voice").is_dir():
        pytest.skip("node or tests/interop/js/node_modules is not installed (make npm)")
    result = subprocess.run(
        [node, "-e", NODE_SCRIPT],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        cwd=JS_DIR,
        timeout=60,
        check=True,
    )
    answers: list[Any] = json.loads(result.stdout)
    return answers


def test_real_discord_js_and_voxgate_open_each_others_packets() -> None:
    mode = "aead_aes256_gcm_rtpsize"
    key = SECRET_KEY.hex()
    cipher = transport_cipher(mode, SECRET_KEY, nonce=MAX_NONCE_SIZE)
    voxgate_packets = [
        cipher.seal(_header(ext, sequence=n), OPUS[n:])
        for n, ext in enumerate([False, True, False])
    ]
    requests: list[dict[str, Any]] = [
        {
            "op": "seal",
            "mode": mode,
            "key": key,
            "opus": OPUS[n:].hex(),
            "sequence": n,
            "timestamp": 960 * n,
            "ssrc": 0x0A0B0C0D,
            "nonce": MAX_NONCE_SIZE - 1 + n,
        }
        for n in range(2)
    ]
    requests += [
        {"op": "open", "mode": mode, "key": key, "packet": p.hex()} for p in voxgate_packets
    ]
    tampered = bytearray(voxgate_packets[0])
    tampered[14] ^= 1
    requests.append({"op": "open", "mode": mode, "key": key, "packet": tampered.hex()})

    answers = _run_discord_js(requests)

    opener = transport_cipher(mode, SECRET_KEY)
    for n in range(2):
        header, payload = opener.open(bytes.fromhex(answers[n]))
        assert header == discord_js_header(n, 960 * n, 0x0A0B0C0D)
        assert payload == OPUS[n:]
    # discord.js increments first: from nonce 2^32-2 its packets carry 2^32-1, then 0
    assert [bytes.fromhex(a)[-4:] for a in answers[:2]] == [b"\xff\xff\xff\xff", bytes(4)]
    assert [bytes.fromhex(a) for a in answers[2:5]] == [OPUS[0:], OPUS[1:], OPUS[2:]]
    assert answers[5] is None  # discord.js refuses a tampered voxgate packet
