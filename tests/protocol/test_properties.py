"""Property tests (hypothesis) for every codec of the protocol core.

Round trips: every gateway message struct through encode and the receiving side's decoder;
seal/open in every transport mode, with and without CSRCs and a header extension; RTP
header build/parse; IP discovery. Robustness: arbitrary input to every parser raises only
the module's own error (the server must never crash on bad input, PROTOCOL.md §3), and
flipping any bit of a sealed packet is detected wherever the mode protects that bit.
"""

from __future__ import annotations

import contextlib
import string
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxgate.protocol import (
    DecryptionError,
    EncryptionMode,
    MessageDecodeError,
    PacketError,
    discovery,
    rtp,
)
from voxgate.protocol.crypto import reframe, transport_cipher
from voxgate.protocol.messages import (
    OP_OF,
    ClientConnect,
    ClientDisconnect,
    ClientFlags,
    ClientPlatform,
    ClientsConnect,
    DaveExecuteTransition,
    DavePrepareEpoch,
    DavePrepareTransition,
    DaveTransitionReady,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Identify,
    Message,
    MlsAnnounceCommitTransition,
    MlsCommitWelcome,
    MlsExternalSender,
    MlsInvalidCommitWelcome,
    MlsKeyPackage,
    MlsProposals,
    MlsWelcome,
    Ready,
    Resume,
    Resumed,
    SelectProtocol,
    SelectProtocolData,
    SessionDescription,
    Speaking,
    decode_client_frame,
    decode_server_frame,
    encode,
    is_binary,
    payload_of,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODES = [str(mode) for mode in EncryptionMode]

# --- strategies ------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
i64 = st.integers(-(2**63), 2**63 - 1)
ms = st.integers(0, 2**63 - 1)
text = st.text(max_size=40)
snowflake = st.integers(0, 2**64 - 1).map(str)
unset_or = lambda strategy: st.one_of(st.just(msgspec.UNSET), strategy)  # noqa: E731
json_scalar = st.one_of(st.none(), st.booleans(), i64, text)
json_value = st.recursive(
    json_scalar,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
finite = st.floats(allow_nan=False, allow_infinity=False)
mode_name = st.one_of(st.sampled_from(MODES), text)

heartbeats = st.one_of(
    st.builds(Heartbeat, t=ms, seq_ack=unset_or(i64)),
    st.builds(Heartbeat, t=i64, nonce_form=st.just(True)),
)
heartbeat_acks = st.one_of(
    st.builds(HeartbeatAck, t=ms), st.builds(HeartbeatAck, t=i64, nonce_form=st.just(True))
)

client_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Identify,
        server_id=snowflake,
        user_id=snowflake,
        session_id=text,
        token=text,
        max_dave_protocol_version=unset_or(st.integers(0, 10)),
        video=unset_or(st.booleans()),
        streams=unset_or(st.lists(json_value, max_size=3)),
    ),
    st.builds(
        SelectProtocol,
        protocol=st.sampled_from(["udp", "webrtc"]),
        data=st.builds(SelectProtocolData, address=text, port=u16, mode=mode_name),
        codecs=unset_or(st.lists(json_value, max_size=3)),
        rtc_connection_id=unset_or(text),
    ),
    heartbeats,
    st.builds(Speaking, speaking=st.integers(0, 7), ssrc=u32, delay=i64),
    st.builds(Resume, server_id=snowflake, session_id=text, token=text, seq_ack=unset_or(i64)),
    st.builds(
        ClientConnect, audio_ssrc=unset_or(u32), video_ssrc=unset_or(u32), rtx_ssrc=unset_or(u32)
    ),
    st.builds(DaveTransitionReady, transition_id=u16),
    st.builds(MlsInvalidCommitWelcome, transition_id=u16),
    st.builds(MlsKeyPackage, key_package=st.binary(max_size=200)),
    st.builds(MlsCommitWelcome, commit_welcome=st.binary(max_size=200)),
)

server_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Ready,
        ssrc=u32,
        ip=text,
        port=u16,
        modes=st.lists(mode_name, max_size=6),
        experiments=st.lists(text, max_size=3),
        streams=st.lists(json_value, max_size=3),
        heartbeat_interval=unset_or(finite),
    ),
    st.builds(
        SessionDescription,
        mode=mode_name,
        secret_key=st.lists(u8, min_size=32, max_size=32),
        dave_protocol_version=st.integers(0, 1),
        audio_codec=unset_or(st.just("opus")),
        video_codec=unset_or(text),
        media_session_id=unset_or(text),
    ),
    heartbeat_acks,
    st.builds(Speaking, speaking=st.integers(0, 7), ssrc=u32, delay=i64, user_id=snowflake),
    st.builds(Hello, heartbeat_interval=finite, v=unset_or(st.integers(4, 8))),
    st.just(Resumed()),
    st.builds(ClientsConnect, user_ids=st.lists(snowflake, max_size=5)),
    st.builds(ClientDisconnect, user_id=snowflake),
    st.builds(ClientFlags, user_id=snowflake, flags=st.one_of(st.none(), i64)),
    st.builds(ClientPlatform, user_id=snowflake, platform=st.one_of(st.none(), i64)),
    st.builds(DavePrepareTransition, protocol_version=st.integers(0, 1), transition_id=u16),
    st.builds(DaveExecuteTransition, transition_id=u16),
    st.builds(DavePrepareEpoch, protocol_version=st.integers(0, 1), epoch=st.integers(0, 2**32)),
    st.builds(MlsExternalSender, external_sender=st.binary(max_size=200)),
    st.builds(MlsProposals, operation_type=st.integers(0, 1), proposals=st.binary(max_size=200)),
    st.builds(MlsAnnounceCommitTransition, transition_id=u16, commit=st.binary(max_size=200)),
    st.builds(MlsWelcome, transition_id=u16, welcome=st.binary(max_size=200)),
)


# --- gateway messages --------------------------------------------------------------------


@SETTINGS
@given(message=client_messages)
def test_client_message_round_trip(message: Message) -> None:
    assert decode_client_frame(encode(message)) == message


@SETTINGS
@given(message=server_messages, seq=st.integers(0, 2**40))
def test_server_message_round_trip(message: Message, seq: int) -> None:
    decoded, decoded_seq = decode_server_frame(encode(message, seq=seq))
    assert decoded == message
    assert decoded_seq == (seq & 0xFFFF if is_binary(message) else seq)


frames = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    # near-misses: real envelopes with arbitrary ops and payloads
    st.builds(
        lambda op, d, seq: msgspec.json.encode({"op": op, "d": d, "seq": seq}).decode(),
        st.one_of(st.integers(-5, 40), json_value),
        json_value,
        json_value,
    ),
    st.builds(
        lambda op, d: msgspec.json.encode({"op": op, "d": d}).decode(),
        st.integers(0, 31),
        st.dictionaries(
            st.sampled_from(
                [
                    "server_id",
                    "user_id",
                    "session_id",
                    "token",
                    "t",
                    "seq_ack",
                    "ssrc",
                    "speaking",
                    "delay",
                    "transition_id",
                    "protocol",
                    "data",
                    "mode",
                    "secret_key",
                    "heartbeat_interval",
                    "user_ids",
                    "ip",
                    "port",
                    "modes",
                ]
            ),
            json_value,
        ),
    ),
)


frames = st.one_of(
    frames,
    # nesting deeper than msgspec's recursion limit, in a frame well under MAX_FRAME_SIZE
    st.integers(0, 3000).map(lambda depth: '{"op":0,"d":' + "[" * depth + "]" * depth + "}"),
)


@SETTINGS
@given(frame=frames, binary=st.one_of(st.none(), st.booleans()))
def test_client_frame_decoder_raises_only_message_decode_error(
    frame: str | bytes, binary: bool | None
) -> None:
    try:
        decode_client_frame(frame, binary=binary)
    except MessageDecodeError as exc:
        assert exc.close_code in (4001, 4002)


@SETTINGS
@given(frame=frames, binary=st.one_of(st.none(), st.booleans()))
def test_server_frame_decoder_raises_only_message_decode_error(
    frame: str | bytes, binary: bool | None
) -> None:
    try:
        decode_server_frame(frame, binary=binary)
    except MessageDecodeError as exc:
        assert exc.close_code in (4001, 4002)


@SETTINGS
@given(frame=frames)
def test_whatever_the_server_accepts_it_re_encodes_faithfully(frame: str | bytes) -> None:
    try:
        message = decode_client_frame(frame)
    except MessageDecodeError:
        return
    assert decode_client_frame(encode(message)) == message


@SETTINGS
@given(frame=frames)
def test_whatever_a_client_accepts_it_re_encodes_faithfully(frame: str | bytes) -> None:
    try:
        message, seq = decode_server_frame(frame)
    except MessageDecodeError:
        return
    assert decode_server_frame(encode(message, seq=seq)) == (message, seq)


extra_fields = st.dictionaries(st.text(min_size=1, max_size=12), json_value, min_size=1, max_size=3)


@SETTINGS
@given(message=client_messages, extra=extra_fields)
def test_server_ignores_fields_it_does_not_know(message: Message, extra: dict[str, Any]) -> None:
    # Discord's clients add fields over time (video, streams, codecs...): accept and ignore
    d = payload_of(message)
    if is_binary(message) or not isinstance(d, dict):
        return
    known = {field.encode_name for field in msgspec.structs.fields(message)} | {"nonce_form"}
    d.update({key: value for key, value in extra.items() if key not in known})
    frame = msgspec.json.encode({"op": int(OP_OF[type(message)]), "d": d}).decode()
    assert decode_client_frame(frame) == message


@SETTINGS
@given(message=server_messages, extra=extra_fields)
def test_client_ignores_fields_it_does_not_know(message: Message, extra: dict[str, Any]) -> None:
    d = payload_of(message)
    if is_binary(message) or not isinstance(d, dict):
        return
    known = {field.encode_name for field in msgspec.structs.fields(message)} | {"nonce_form"}
    d.update({key: value for key, value in extra.items() if key not in known})
    frame = msgspec.json.encode({"op": int(OP_OF[type(message)]), "d": d, "seq": 1}).decode()
    assert decode_server_frame(frame) == (message, 1)


# --- RTP -------------------------------------------------------------------------------

rtp_headers = st.builds(
    rtp.RtpHeader,
    sequence=u16,
    timestamp=u32,
    ssrc=u32,
    payload_type=st.integers(0, 127),
    marker=st.booleans(),
    padding=st.booleans(),
    csrcs=st.lists(u32, max_size=15).map(tuple),
    extension_profile=st.one_of(st.none(), u16),
    extension=st.integers(0, 8).flatmap(
        lambda words: st.binary(min_size=4 * words, max_size=4 * words)
    ),
).filter(lambda h: h.extension_profile is not None or not h.extension)

# what the transport ciphers see: no padding (Discord never sets P), Opus payload type
media_headers = st.builds(
    rtp.RtpHeader,
    sequence=u16,
    timestamp=u32,
    ssrc=u32,
    marker=st.booleans(),
    csrcs=st.lists(u32, max_size=3).map(tuple),
    extension_profile=st.one_of(st.none(), st.just(rtp.EXTENSION_PROFILE)),
    extension=st.integers(0, 3).flatmap(
        lambda words: st.binary(min_size=4 * words, max_size=4 * words)
    ),
).filter(lambda h: h.extension_profile is not None or not h.extension)


@SETTINGS
@given(header=rtp_headers, payload=st.binary(max_size=50))
def test_rtp_header_build_parse_round_trip(header: rtp.RtpHeader, payload: bytes) -> None:
    built = header.build()
    assert len(built) == header.size
    packet = built + payload
    assert rtp.parse_header(packet) == header
    assert rtp.header_size(packet, with_extension_body=True) == header.size
    assert rtp.ssrc_of(packet) == header.ssrc
    assert rtp.classify(packet) in (rtp.DatagramKind.RTP, rtp.DatagramKind.RTCP) or len(packet) in (
        rtp.KEEPALIVE_SIZE,
        rtp.DISCOVERY_SIZE,
    )


@SETTINGS
@given(data=st.binary(max_size=120))
def test_rtp_parsers_raise_only_packet_error(data: bytes) -> None:
    for parse in (rtp.parse_header, rtp.ssrc_of, rtp.header_size, rtp.parse_rtcp_header):
        with contextlib.suppress(PacketError):
            parse(data)
    kind = rtp.classify(data)  # never raises
    if kind is rtp.DatagramKind.RTCP:
        assert rtp.parse_rtcp_header(data).packet_type == data[1]
    if kind is rtp.DatagramKind.DISCOVERY:
        assert data[1] in (discovery.REQUEST, discovery.RESPONSE)


@SETTINGS
@given(counter=st.integers(0, 2**40))
def test_keepalive_is_classified_as_keepalive(counter: int) -> None:
    datagram = rtp.build_keepalive(counter)
    assert rtp.classify(datagram) is rtp.DatagramKind.KEEPALIVE
    assert int.from_bytes(datagram[:4], "little") == counter % 2**32


# --- transport crypto --------------------------------------------------------------------


@SETTINGS
@given(
    mode=st.sampled_from(MODES),
    secret_key=st.binary(min_size=32, max_size=32),
    nonce=u32,
    header=media_headers,
    payload=st.binary(max_size=200),
)
def test_seal_open_round_trip(
    mode: str, secret_key: bytes, nonce: int, header: rtp.RtpHeader, payload: bytes
) -> None:
    sealer = transport_cipher(mode, secret_key, nonce=nonce)
    built = header.build()
    packet = sealer.seal(built, payload)
    assert len(packet) == len(built) + len(payload) + sealer.overhead
    assert transport_cipher(mode, secret_key).open(packet) == (built, payload)
    # the clear part of the header stays readable on the wire: relays route on the ssrc
    assert rtp.ssrc_of(packet) == header.ssrc
    assert rtp.classify(packet) is rtp.DatagramKind.RTP or len(packet) in (8, 74)


@SETTINGS
@given(
    sender_mode=st.sampled_from(MODES),
    receiver_mode=st.sampled_from(MODES),
    secret_key=st.binary(min_size=32, max_size=32),
    header=media_headers,
    payload=st.binary(max_size=200),
)
def test_a_relayed_packet_opens_at_the_receiver_as_the_sender_sealed_it(
    sender_mode: str,
    receiver_mode: str,
    secret_key: bytes,
    header: rtp.RtpHeader,
    payload: bytes,
) -> None:
    # The relay's path: open_split in the sender's framing, reframe when the receiver's
    # differs, seal_split for the receiver; the receiver must read the sender's packet.
    built = header.build()
    sender = transport_cipher(sender_mode, secret_key)
    relay_in = transport_cipher(sender_mode, secret_key)
    relay_out = transport_cipher(receiver_mode, secret_key[::-1])
    clear, plaintext = relay_in.open_split(sender.seal(built, payload))
    assert (clear, plaintext) == relay_in.split(built, payload)
    if relay_in.rtpsize != relay_out.rtpsize:
        clear, plaintext = reframe(clear, plaintext, to_rtpsize=relay_out.rtpsize)
    assert (clear, plaintext) == relay_out.split(built, payload)
    packet = relay_out.seal_split(clear, plaintext)
    assert transport_cipher(receiver_mode, secret_key[::-1]).open(packet) == (built, payload)


@SETTINGS
@given(mode=st.sampled_from(MODES), data=st.binary(max_size=120))
def test_open_split_fails_exactly_where_open_does(mode: str, data: bytes) -> None:
    cipher = transport_cipher(mode, bytes(range(32)))
    try:
        opened = cipher.open(data)
    except PacketError as exc:
        with pytest.raises(type(exc)):
            cipher.open_split(data)
    else:
        assert cipher.open_split(data) == cipher.split(*opened)


@pytest.mark.parametrize(
    "mode", ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize", "xsalsa20_poly1305_lite"]
)
def test_nonce_counter_wraps_at_2_to_the_32(mode: str) -> None:
    cipher = transport_cipher(mode, bytes(range(32)), nonce=2**32 - 1)
    header = rtp.RtpHeader(sequence=1, timestamp=2, ssrc=3).build()
    first = cipher.seal(header, b"opus")
    second = cipher.seal(header, b"opus")
    assert first[-4:] == b"\xff\xff\xff\xff"
    assert second[-4:] == b"\x00\x00\x00\x00"
    assert cipher.nonce == 1
    opener = transport_cipher(mode, bytes(range(32)))
    assert opener.open(first) == opener.open(second) == (header, b"opus")


def test_counter_nonce_beyond_u32_is_reduced() -> None:
    assert transport_cipher(MODES[0], bytes(32), nonce=2**32 + 5).nonce == 5


@SETTINGS
@given(mode=st.sampled_from(MODES), data=st.binary(max_size=120))
def test_open_of_arbitrary_bytes_raises_only_packet_error(mode: str, data: bytes) -> None:
    cipher = transport_cipher(mode, bytes(range(32)))
    with pytest.raises(PacketError):
        cipher.open(data)


@SETTINGS
@given(
    mode=st.sampled_from(MODES),
    header=media_headers,
    body=st.binary(max_size=80),
)
def test_open_of_a_plausible_header_with_garbage_raises_decryption_error(
    mode: str, header: rtp.RtpHeader, body: bytes
) -> None:
    with pytest.raises(DecryptionError):
        transport_cipher(mode, bytes(range(32))).open(header.build() + body)


def _protected_bits(mode: str, header: bytes, packet: bytes) -> range:
    """Bit positions of ``packet`` the mode authenticates (PROTOCOL.md §5's table)."""
    if mode.endswith("_rtpsize"):
        return range(len(packet) * 8)  # header (AAD), ciphertext, tag and nonce
    clear = 12 + 4 * (header[0] & 0x0F)
    if mode == "xsalsa20_poly1305":
        # the fixed 12 bytes are the nonce; CSRCs are neither encrypted nor authenticated
        return range(len(packet) * 8) if clear == 12 else range(12 * 8)
    return range(clear * 8, len(packet) * 8)  # lite/suffix authenticate nothing in clear


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    header=media_headers,
    payload=st.binary(min_size=1, max_size=40),
)
def test_flipping_any_protected_bit_is_detected(
    mode: str, header: rtp.RtpHeader, payload: bytes
) -> None:
    secret_key = bytes(range(32))
    built = header.build()
    packet = transport_cipher(mode, secret_key).seal(built, payload)
    opener = transport_cipher(mode, secret_key)
    protected = _protected_bits(mode, built, packet)
    for bit in range(len(packet) * 8):
        tampered = bytearray(packet)
        tampered[bit // 8] ^= 1 << (bit % 8)
        if bit in protected:
            # DecryptionError, or PacketError where the flip breaks the layout itself
            with pytest.raises(PacketError):
                opener.open(bytes(tampered))
        else:
            # an unprotected header bit: the mode cannot notice, but the encrypted content
            # still comes out unchanged (or the packet no longer parses)
            try:
                got_header, got_payload = opener.open(bytes(tampered))
            except PacketError:
                continue
            clear = 12 + 4 * (built[0] & 0x0F)
            assert got_header[:clear] == bytes(tampered[:clear])
            assert got_header[clear:] + got_payload == built[clear:] + payload


def test_seal_refuses_a_header_that_is_not_rtp() -> None:
    cipher = transport_cipher(MODES[0], bytes(32))
    with pytest.raises(PacketError):
        cipher.seal(b"\x00" * 12, b"opus")
    with pytest.raises(PacketError):
        cipher.seal(b"\x81" + bytes(11), b"")  # one CSRC announced, none present


@pytest.mark.parametrize("mode", MODES)
def test_transport_cipher_rejects_bad_keys_and_modes(mode: str) -> None:
    with pytest.raises(ValueError):
        transport_cipher(mode, bytes(31))
    with pytest.raises(ValueError):
        transport_cipher(mode.upper() + "x", bytes(32))


# --- IP discovery ------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)


@SETTINGS
@given(ssrc=u32)
def test_discovery_request_round_trip(ssrc: int) -> None:
    packet = discovery.build_request(ssrc)
    assert len(packet) == discovery.SIZE
    assert rtp.classify(packet) is rtp.DatagramKind.DISCOVERY
    assert discovery.parse(packet) == discovery.Discovery(type=discovery.REQUEST, ssrc=ssrc)


@SETTINGS
@given(ssrc=u32, address=st.one_of(ipv4, st.ip_addresses(v=6).map(str)), port=u16)
def test_discovery_response_round_trip(ssrc: int, address: str, port: int) -> None:
    packet = discovery.build_response(ssrc, address, port)
    assert len(packet) == discovery.SIZE
    assert rtp.classify(packet) is rtp.DatagramKind.DISCOVERY
    assert discovery.parse(packet) == discovery.Discovery(
        type=discovery.RESPONSE, ssrc=ssrc, address=address, port=port
    )


@SETTINGS
@given(
    data=st.one_of(
        st.binary(max_size=100),
        st.binary(min_size=74, max_size=74),
        st.builds(
            lambda kind, address, port: (
                kind + b"\x00\x46" + b"\x00\x00\x00\x01" + address.ljust(64, b"\x00")[:64] + port
            ),
            st.sampled_from([b"\x00\x01", b"\x00\x02", b"\x00\x03"]),
            st.one_of(
                st.binary(max_size=64), st.text(string.printable, max_size=64).map(str.encode)
            ),
            st.binary(min_size=2, max_size=2),
        ),
    )
)
def test_discovery_parse_raises_only_packet_error(data: bytes) -> None:
    try:
        parsed = discovery.parse(data)
    except PacketError:
        return
    assert parsed.type in (discovery.REQUEST, discovery.RESPONSE)
    assert len(data) == discovery.SIZE


def test_discovery_response_refuses_an_address_too_long_for_its_field() -> None:
    with pytest.raises(PacketError):
        discovery.build_response(1, "1" * 64, 2)
