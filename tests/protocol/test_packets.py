"""Example tests for the UDP side: datagram classification, RTP/RTCP headers, IP discovery
bytes and where each transport mode puts header, extension and nonce (PROTOCOL.md §4-§5).
"""

from __future__ import annotations

import pytest

from voxgate.protocol import DecryptionError, PacketError, discovery, rtp
from voxgate.protocol.crypto import transport_cipher
from voxgate.protocol.rtp import DatagramKind, RtpHeader

KEY = bytes(range(32))
# a receiver report (RFC 3550 §6.4.2) as discord.js's RTCP carries: RC=0, PT=201, length 1
RECEIVER_REPORT = bytes.fromhex("80c9 0001 0000 0539")


@pytest.mark.parametrize(
    ("datagram", "kind"),
    [
        (discovery.build_request(7), DatagramKind.DISCOVERY),
        (discovery.build_response(7, "127.0.0.1", 5), DatagramKind.DISCOVERY),
        (rtp.build_keepalive(3), DatagramKind.KEEPALIVE),
        # 8 bytes is discord.js's keep-alive even when it looks like a bare RTCP header:
        # its LE counter can start 0x80 0xc9; real (encrypted) RTCP is always longer
        (RECEIVER_REPORT, DatagramKind.KEEPALIVE),
        (RECEIVER_REPORT + bytes(16), DatagramKind.RTCP),
        (RtpHeader(sequence=1, timestamp=2, ssrc=3).build(), DatagramKind.RTP),
        (RtpHeader(sequence=1, timestamp=2, ssrc=3).build() + bytes(62), DatagramKind.RTP),
        (b"", DatagramKind.UNKNOWN),
        (b"\x80", DatagramKind.UNKNOWN),
        (b"\x80\x78" + bytes(7), DatagramKind.UNKNOWN),  # 9 bytes: too short for RTP
        (b"\x00\x78" + bytes(20), DatagramKind.UNKNOWN),  # version 0
        (b"\x00\x03" + bytes(72), DatagramKind.UNKNOWN),  # 74 bytes, discovery type 3
    ],
)
def test_classify(datagram: bytes, kind: DatagramKind) -> None:
    assert rtp.classify(datagram) is kind


def test_rtcp_header_parse() -> None:
    header = rtp.parse_rtcp_header(RECEIVER_REPORT)
    assert header == rtp.RtcpHeader(count=0, packet_type=201, length=1, ssrc=1337)
    with pytest.raises(PacketError):
        rtp.parse_rtcp_header(RtpHeader(sequence=1, timestamp=2, ssrc=3).build())


def test_discord_rtp_header_bytes() -> None:
    plain = RtpHeader(sequence=0x0102, timestamp=0x03040506, ssrc=0x0708090A).build()
    assert plain == bytes.fromhex("8078 0102 03040506 0708090a")
    extended = RtpHeader(
        sequence=1, timestamp=2, ssrc=3, extension_profile=0xBEDE, extension=b"\x10\xff\x00\x00"
    ).build()
    assert extended[:2] == b"\x90\x78"
    assert extended[12:] == bytes.fromhex("bede 0001 10ff0000")
    assert rtp.header_size(extended) == 16
    assert rtp.header_size(extended, with_extension_body=True) == 20


def test_rtp_header_build_refuses_what_rtp_cannot_carry() -> None:
    with pytest.raises(PacketError):
        RtpHeader(sequence=1, timestamp=2, ssrc=3, csrcs=tuple(range(16))).build()
    with pytest.raises(PacketError):
        RtpHeader(sequence=1, timestamp=2, ssrc=3, extension_profile=0xBEDE, extension=b"x").build()


def test_rtp_header_size_refuses_truncated_headers() -> None:
    with pytest.raises(PacketError):
        rtp.header_size(b"\x90\x78" + bytes(10))  # X set, no extension header
    with pytest.raises(PacketError):
        rtp.header_size(b"\x82\x78" + bytes(14))  # two CSRCs announced, one present
    with pytest.raises(PacketError):
        rtp.parse_header(b"\x90\x78" + bytes(10) + b"\xbe\xde\x00\x02" + bytes(4))
    with pytest.raises(PacketError):
        rtp.ssrc_of(bytes(11))


def test_silence_and_frame_constants() -> None:
    assert rtp.SILENCE_FRAME == b"\xf8\xff\xfe"
    assert rtp.SAMPLES_PER_FRAME == 48_000 // 50


def test_discovery_bytes_match_protocol_md() -> None:
    request = discovery.build_request(0x01020304)
    assert request[:8] == bytes.fromhex("0001 0046 01020304")
    assert request[8:] == bytes(66)
    response = discovery.build_response(0x01020304, "127.0.0.1", 50000)
    assert response[:8] == bytes.fromhex("0002 0046 01020304")
    assert response[8:72] == b"127.0.0.1".ljust(64, b"\x00")
    assert response[72:] == (50000).to_bytes(2, "big")


@pytest.mark.parametrize(
    "packet",
    [
        bytes(73),
        discovery.build_request(1)[:2] + b"\x00\x45" + discovery.build_request(1)[4:],  # length
        b"\x00\x03" + discovery.build_request(1)[2:],  # type
        discovery.build_request(1)[:8] + b"not-an-ip".ljust(64, b"\x00") + b"\x00\x01",
        discovery.build_request(1)[:8] + b"\xff".ljust(64, b"\x00") + b"\x00\x01",
    ],
)
def test_discovery_parse_refuses_malformed_packets(packet: bytes) -> None:
    with pytest.raises(PacketError):
        discovery.parse(packet)


EXTENDED = RtpHeader(
    sequence=9, timestamp=960, ssrc=77, extension_profile=0xBEDE, extension=b"\x10\xab\x00\x00"
).build()


@pytest.mark.parametrize("mode", ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"])
def test_rtpsize_modes_leave_the_extension_header_clear_and_encrypt_its_body(mode: str) -> None:
    cipher = transport_cipher(mode, KEY, nonce=0x01020304)
    packet = cipher.seal(EXTENDED, b"OPUS")
    assert packet[:16] == EXTENDED[:16]
    assert len(packet) == 16 + 4 + 4 + 16 + 4  # clear, body, opus, tag, nonce
    assert packet[-4:] == b"\x01\x02\x03\x04"
    assert packet[16:20] != EXTENDED[16:20]


@pytest.mark.parametrize(
    ("mode", "trailer"),
    [("xsalsa20_poly1305_lite", 4), ("xsalsa20_poly1305_suffix", 24), ("xsalsa20_poly1305", 0)],
)
def test_legacy_modes_encrypt_the_whole_extension(mode: str, trailer: int) -> None:
    cipher = transport_cipher(mode, KEY)
    packet = cipher.seal(EXTENDED, b"OPUS")
    assert packet[:12] == EXTENDED[:12]
    assert len(packet) == 12 + 8 + 4 + 16 + trailer
    assert cipher.overhead == 16 + trailer
    assert transport_cipher(mode, KEY).open(packet) == (EXTENDED, b"OPUS")


def test_suffix_mode_uses_a_fresh_random_nonce_per_packet() -> None:
    cipher = transport_cipher("xsalsa20_poly1305_suffix", KEY)
    header = RtpHeader(sequence=1, timestamp=2, ssrc=3).build()
    assert cipher.seal(header, b"x")[-24:] != cipher.seal(header, b"x")[-24:]


@pytest.mark.parametrize(
    ("mode", "size"),
    [
        ("aead_aes256_gcm_rtpsize", 12 + 19),
        ("aead_xchacha20_poly1305_rtpsize", 12 + 19),
        ("xsalsa20_poly1305_lite", 12 + 3),
        ("xsalsa20_poly1305_suffix", 12 + 23),
        ("xsalsa20_poly1305", 12 + 15),
    ],
)
def test_packets_too_short_for_their_mode_are_decryption_errors(mode: str, size: int) -> None:
    packet = RtpHeader(sequence=1, timestamp=2, ssrc=3).build() + bytes(size - 12)
    with pytest.raises(DecryptionError):
        transport_cipher(mode, KEY).open(packet)


@pytest.mark.parametrize("mode", ["xsalsa20_poly1305_lite", "xsalsa20_poly1305"])
def test_legacy_extension_that_does_not_fit_the_plaintext_is_a_packet_error(mode: str) -> None:
    # X set, but the plaintext is shorter than an extension header, or than its body
    header = b"\x90" + RtpHeader(sequence=1, timestamp=2, ssrc=3).build()[1:]
    cipher = transport_cipher(mode, KEY)
    for plaintext in (b"\xbe\xde", b"\xbe\xde\x00\x05OPUS"):
        packet = cipher._seal(header, plaintext)
        with pytest.raises(PacketError) as info:
            transport_cipher(mode, KEY).open(packet)
        assert not isinstance(info.value, DecryptionError)
