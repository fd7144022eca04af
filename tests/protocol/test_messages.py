"""Example tests for every gateway message of PROTOCOL.md §2 and the decoders' close codes.

Each struct is encoded and decoded by the side that receives it (the server decodes what a
client sends, a client what the server sends); a few are pinned to their exact wire form,
the ones real clients are known to be strict about. Hostile frames are table-driven with
the close code the server must answer with (PROTOCOL.md §3).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from voxgate.protocol import CloseCode, MessageDecodeError, Op
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

SECRET_KEY = list(range(100, 132))

#: One realistic message per struct a client sends, as discord.py / discord.js send them.
CLIENT_MESSAGES: list[Message] = [
    Identify(
        server_id="1100000000000000001",
        user_id="1200000000000000002",
        session_id="f1b2c3d4e5",
        token="tok.abc",
        max_dave_protocol_version=1,
    ),
    Identify(server_id="1", user_id="2", session_id="s", token="t", video=True, streams=[]),
    SelectProtocol(
        protocol="udp",
        data=SelectProtocolData(
            address="203.0.113.7", port=50123, mode="aead_xchacha20_poly1305_rtpsize"
        ),
    ),
    SelectProtocol(
        protocol="udp",
        data=SelectProtocolData(address="127.0.0.1", port=1, mode="aead_aes256_gcm_rtpsize"),
        codecs=[{"name": "opus", "type": "audio", "priority": 1000, "payload_type": 120}],
        rtc_connection_id="c0ffee",
    ),
    Heartbeat(t=1_732_460_000_123, seq_ack=41),
    Heartbeat(t=1_732_460_000_123),
    Heartbeat(t=987654321, nonce_form=True),
    Speaking(speaking=1, ssrc=0xDEADBEEF, delay=0),
    Resume(server_id="1", session_id="s", token="t", seq_ack=17),
    Resume(server_id="1", session_id="s", token="t"),
    ClientConnect(audio_ssrc=1234),
    DaveTransitionReady(transition_id=65535),
    MlsInvalidCommitWelcome(transition_id=3),
    MlsKeyPackage(key_package=b"\x00\x01key-package\xff"),
    MlsCommitWelcome(commit_welcome=b"commit" + bytes(range(256))),
]

#: One realistic message per struct the server sends.
SERVER_MESSAGES: list[Message] = [
    Ready(
        ssrc=4_000_000_001,
        ip="127.0.0.1",
        port=50000,
        modes=["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"],
    ),
    SessionDescription(
        mode="xsalsa20_poly1305_lite",
        secret_key=SECRET_KEY,
        audio_codec="opus",
        media_session_id="m1",
    ),
    HeartbeatAck(t=1_732_460_000_123),
    HeartbeatAck(t=987654321, nonce_form=True),
    Speaking(speaking=5, ssrc=77, delay=0, user_id="1200000000000000002"),
    Hello(heartbeat_interval=13750.25),
    Resumed(),
    ClientsConnect(user_ids=["1", "2", "3"]),
    ClientDisconnect(user_id="1200000000000000002"),
    ClientFlags(user_id="9", flags=2),
    ClientPlatform(user_id="9", platform=0),
    DavePrepareTransition(protocol_version=1, transition_id=7),
    DaveExecuteTransition(transition_id=7),
    DavePrepareEpoch(protocol_version=1, epoch=1),
    MlsExternalSender(external_sender=b"\x01credential\x02key"),
    MlsProposals(operation_type=1, proposals=b"ref-1ref-2"),
    MlsAnnounceCommitTransition(transition_id=0x1234, commit=b"commit"),
    MlsWelcome(transition_id=0xFFFF, welcome=b""),
]


def test_every_struct_has_an_example() -> None:
    covered = {type(m) for m in CLIENT_MESSAGES + SERVER_MESSAGES}
    assert covered == set(OP_OF)


def test_every_opcode_of_protocol_md_has_a_struct() -> None:
    # op 15 (Media Sink Wants) is a known op no real client needs (PROTOCOL.md §2 omits it).
    assert {int(op) for op in OP_OF.values()} == {int(op) for op in Op} - {15}


@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=lambda m: type(m).__name__)
def test_client_message_round_trips_through_the_server_decoder(message: Message) -> None:
    frame = encode(message)
    assert isinstance(frame, bytes) == is_binary(message)
    assert decode_client_frame(frame) == message


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("seq", [None, 0, 70_000])
def test_server_message_round_trips_through_the_client_decoder(
    message: Message, seq: int | None
) -> None:
    frame = encode(message, seq=seq)
    assert isinstance(frame, bytes) == is_binary(message)
    if seq is None and isinstance(frame, bytes):
        # without a seq there is no server binary header: the frame is [op][payload]
        assert frame[0] == OP_OF[type(message)]
        return
    decoded, decoded_seq = decode_server_frame(frame)
    assert decoded == message
    if seq is None:
        assert decoded_seq is None
    elif is_binary(message):
        # the binary header carries seq as a u16 (PROTOCOL.md §1)
        assert decoded_seq == seq & 0xFFFF
    else:
        assert decoded_seq == seq


def _wire(message: Message, seq: int | None = None) -> Any:
    frame = encode(message, seq=seq)
    assert isinstance(frame, str)
    return json.loads(frame)


def test_speaking_from_server_carries_user_id_and_ssrc() -> None:
    speaking = Speaking(speaking=1, ssrc=42, user_id="99")
    assert _wire(speaking, seq=3) == {
        "op": 5,
        "d": {"speaking": 1, "ssrc": 42, "delay": 0, "user_id": "99"},
        "seq": 3,
    }


def test_speaking_from_client_omits_user_id() -> None:
    assert _wire(Speaking(speaking=0, ssrc=42)) == {
        "op": 5,
        "d": {"speaking": 0, "ssrc": 42, "delay": 0},
    }


def test_resumed_is_null_payload() -> None:
    assert encode(Resumed(), seq=9) == '{"op":9,"d":null,"seq":9}'


def test_session_description_always_carries_dave_protocol_version() -> None:
    # discord.py 2.7 reads d["dave_protocol_version"] unconditionally (KeyError otherwise).
    d = _wire(SessionDescription(mode="xsalsa20_poly1305", secret_key=SECRET_KEY))["d"]
    assert d == {
        "mode": "xsalsa20_poly1305",
        "secret_key": SECRET_KEY,
        "dave_protocol_version": 0,
    }


def test_ready_carries_empty_experiments_and_streams() -> None:
    d = _wire(Ready(ssrc=1, ip="127.0.0.1", port=2, modes=["xsalsa20_poly1305"]))["d"]
    assert d == {
        "ssrc": 1,
        "ip": "127.0.0.1",
        "port": 2,
        "modes": ["xsalsa20_poly1305"],
        "experiments": [],
        "streams": [],
    }


def test_heartbeat_forms_on_the_wire() -> None:
    assert _wire(Heartbeat(t=5, seq_ack=2)) == {"op": 3, "d": {"t": 5, "seq_ack": 2}}
    assert _wire(Heartbeat(t=5, nonce_form=True)) == {"op": 3, "d": 5}
    assert _wire(HeartbeatAck(t=5), seq=1) == {"op": 6, "d": {"t": 5}, "seq": 1}
    assert _wire(HeartbeatAck(t=5, nonce_form=True)) == {"op": 6, "d": 5}


def test_heartbeat_nonce_form_is_recognised_on_decode() -> None:
    assert decode_client_frame('{"op":3,"d":  12}') == Heartbeat(t=12, nonce_form=True)
    assert decode_client_frame('{"op":3,"d":{"t":12}}') == Heartbeat(t=12)
    assert decode_server_frame('{"op":6,"d":12}') == (HeartbeatAck(t=12, nonce_form=True), None)


def test_unset_optional_fields_are_omitted_not_null() -> None:
    d = _wire(Identify(server_id="1", user_id="2", session_id="3", token="4"))["d"]
    assert d == {"server_id": "1", "user_id": "2", "session_id": "3", "token": "4"}
    assert payload_of(Resume(server_id="1", session_id="2", token="3")) == {
        "server_id": "1",
        "session_id": "2",
        "token": "3",
    }


def test_binary_frame_layouts() -> None:
    # server -> client: [seq u16 BE][op u8][payload]; client -> server: [op u8][payload]
    assert encode(MlsProposals(operation_type=0, proposals=b"P"), seq=0x10203) == (
        b"\x02\x03\x1b\x00P"
    )
    assert encode(MlsWelcome(transition_id=0x0102, welcome=b"W"), seq=1) == (
        b"\x00\x01\x1e\x01\x02W"
    )
    assert encode(MlsAnnounceCommitTransition(transition_id=5, commit=b"C"), seq=2) == (
        b"\x00\x02\x1d\x00\x05C"
    )
    assert encode(MlsExternalSender(external_sender=b"E"), seq=0) == b"\x00\x00\x19E"
    assert encode(MlsKeyPackage(key_package=b"K")) == b"\x1aK"
    assert encode(MlsCommitWelcome(commit_welcome=b"CW")) == b"\x1cCW"


def test_binary_flag_overrides_the_frame_type() -> None:
    # a text frame handed over as bytes (as aiohttp may) still decodes as JSON
    frame = b'{"op":12,"d":{"audio_ssrc":5}}'
    assert decode_client_frame(frame, binary=False) == ClientConnect(audio_ssrc=5)
    assert decode_client_frame("\x1akp", binary=True) == MlsKeyPackage(key_package=b"kp")
    assert decode_server_frame(b'{"op":9,"d":null}', binary=False) == (Resumed(), None)
    assert decode_server_frame("\x00\x07\x19es", binary=True) == (
        MlsExternalSender(external_sender=b"es"),
        7,
    )


def test_resumed_without_d_decodes() -> None:
    assert decode_server_frame('{"op":9,"seq":4}') == (Resumed(), 4)


def test_encoding_a_json_message_as_binary_is_refused() -> None:
    from voxgate.protocol.messages import _binary_payload

    with pytest.raises(TypeError):
        _binary_payload(Resumed())


DECODE_ERRORS = CloseCode.DECODE_ERROR
UNKNOWN_OPCODE = CloseCode.UNKNOWN_OPCODE

#: (frame, binary, expected close code) for frames a client sends to the server.
HOSTILE_CLIENT_FRAMES: list[tuple[str | bytes, CloseCode]] = [
    ("not json", DECODE_ERRORS),
    ("", DECODE_ERRORS),
    ('{"op":0,"d":{"server_id":"1"', DECODE_ERRORS),  # truncated
    ("[0, {}]", DECODE_ERRORS),  # envelope not an object
    ("42", DECODE_ERRORS),
    ("null", DECODE_ERRORS),
    ('{"d":{}}', DECODE_ERRORS),  # no op
    ('{"op":"0","d":{}}', DECODE_ERRORS),  # op of the wrong type
    ('{"op":0,"d":[]}', DECODE_ERRORS),
    ('{"op":0,"d":{"server_id":"1","user_id":"2","session_id":"3"}}', DECODE_ERRORS),
    ('{"op":0,"d":{"server_id":1,"user_id":"2","session_id":"3","token":"4"}}', DECODE_ERRORS),
    (
        '{"op":1,"d":{"protocol":"udp","data":{"address":"a","port":70000,"mode":"m"}}}',
        DECODE_ERRORS,
    ),  # port out of u16
    ('{"op":1,"d":{"protocol":"udp"}}', DECODE_ERRORS),
    ('{"op":3,"d":"soon"}', DECODE_ERRORS),
    ('{"op":3,"d":null}', DECODE_ERRORS),
    ('{"op":3,"d":{"seq_ack":1}}', DECODE_ERRORS),
    ('{"op":5,"d":{"speaking":1,"ssrc":-1,"delay":0}}', DECODE_ERRORS),
    ('{"op":5,"d":{"ssrc":1,"delay":0}}', DECODE_ERRORS),  # speaking is what is relayed
    ('{"op":5,"d":{"speaking":"yes"}}', DECODE_ERRORS),
    ('{"op":7,"d":{"server_id":"1","session_id":"2"}}', DECODE_ERRORS),
    ('{"op":23,"d":{"transition_id":65536}}', DECODE_ERRORS),
    ('{"op":31}', DECODE_ERRORS),
    ('{"op":0,"d":{}', DECODE_ERRORS),
    (b"", DECODE_ERRORS),
    (b"\x00{}", DECODE_ERRORS),  # a JSON op in binary framing
    (b"\x17\x00\x01", DECODE_ERRORS),
    ('{"op":99,"d":{}}', UNKNOWN_OPCODE),
    ('{"op":-1,"d":{}}', UNKNOWN_OPCODE),
    ('{"op":10,"d":null}', UNKNOWN_OPCODE),
    ('{"op":15,"d":{}}', UNKNOWN_OPCODE),
    # server-only ops sent by a client are unknown ops too
    ('{"op":2,"d":{"ssrc":1,"ip":"x","port":1,"modes":[]}}', UNKNOWN_OPCODE),
    ('{"op":4,"d":{}}', UNKNOWN_OPCODE),
    ('{"op":6,"d":1}', UNKNOWN_OPCODE),
    ('{"op":8,"d":{"heartbeat_interval":1}}', UNKNOWN_OPCODE),
    ('{"op":9,"d":null}', UNKNOWN_OPCODE),
    ('{"op":13,"d":{"user_id":"1"}}', UNKNOWN_OPCODE),
    ('{"op":25,"d":null}', UNKNOWN_OPCODE),
    (b"\x19external-sender", UNKNOWN_OPCODE),
    (b"\x1b\x00proposals", UNKNOWN_OPCODE),
    (b"\x1d\x00\x01commit", UNKNOWN_OPCODE),
    (b"\x1e\x00\x01welcome", UNKNOWN_OPCODE),
    (b"\x63payload", UNKNOWN_OPCODE),
    (b"\xff\xfe", UNKNOWN_OPCODE),
]


@pytest.mark.parametrize(("frame", "close_code"), HOSTILE_CLIENT_FRAMES, ids=repr)
def test_hostile_client_frame_raises_with_close_code(
    frame: str | bytes, close_code: CloseCode
) -> None:
    with pytest.raises(MessageDecodeError) as info:
        decode_client_frame(frame)
    assert info.value.close_code == close_code
    assert info.value.reason
    assert len(info.value.reason.encode()) <= 123  # fits an RFC 6455 close frame


HOSTILE_SERVER_FRAMES: list[tuple[str | bytes, CloseCode]] = [
    ("{", DECODE_ERRORS),
    ('{"op":2,"d":{"ssrc":1}}', DECODE_ERRORS),
    ('{"op":4,"d":{"mode":"m","secret_key":[1,2,3]}}', DECODE_ERRORS),  # key not 32 bytes
    ('{"op":4,"d":{"mode":"m","secret_key":' + json.dumps([256] * 32) + "}}", DECODE_ERRORS),
    ('{"op":8,"d":{"heartbeat_interval":"5"}}', DECODE_ERRORS),
    ('{"op":13,"d":null}', DECODE_ERRORS),
    ('{"op":2,"d":{},"seq":"1"}', DECODE_ERRORS),
    ('{"op":5,"d":{"speaking":1,"user_id":"1"}}', DECODE_ERRORS),  # receivers need the ssrc
    (b"\x00", DECODE_ERRORS),
    (b"\x00\x01", DECODE_ERRORS),
    (b"\x00\x01\x1b", DECODE_ERRORS),  # proposals without operation type
    (b"\x00\x01\x1d\x05", DECODE_ERRORS),  # commit transition without a whole transition id
    (b"\x00\x01\x1e", DECODE_ERRORS),
    (b"\x00\x01\x02{}", DECODE_ERRORS),  # a JSON op in binary framing
    ('{"op":0,"d":{}}', UNKNOWN_OPCODE),  # client-only ops from the server
    ('{"op":1,"d":{}}', UNKNOWN_OPCODE),
    ('{"op":3,"d":1}', UNKNOWN_OPCODE),
    ('{"op":7,"d":{}}', UNKNOWN_OPCODE),
    ('{"op":12,"d":{}}', UNKNOWN_OPCODE),
    ('{"op":23,"d":{"transition_id":1}}', UNKNOWN_OPCODE),
    ('{"op":31,"d":{"transition_id":1}}', UNKNOWN_OPCODE),
    ('{"op":1000,"d":null}', UNKNOWN_OPCODE),
    (b"\x00\x01\x1akey-package", UNKNOWN_OPCODE),
    (b"\x00\x01\x1ccommit", UNKNOWN_OPCODE),
    (b"\x00\x01\xc8", UNKNOWN_OPCODE),
]


@pytest.mark.parametrize(("frame", "close_code"), HOSTILE_SERVER_FRAMES, ids=repr)
def test_hostile_server_frame_raises_with_close_code(
    frame: str | bytes, close_code: CloseCode
) -> None:
    with pytest.raises(MessageDecodeError) as info:
        decode_server_frame(frame)
    assert info.value.close_code == close_code


def test_decode_error_reason_is_truncated_for_the_close_frame() -> None:
    with pytest.raises(MessageDecodeError) as info:
        decode_client_frame('{"op":0,"d":{"server_id":' + '"' + "x" * 5000)
    assert len(info.value.reason) <= 120
    assert str(info.value).startswith("4002: ")


def test_decoded_messages_are_frozen() -> None:
    message = decode_client_frame('{"op":12,"d":{}}')
    with pytest.raises(AttributeError):
        message.audio_ssrc = 2  # type: ignore[misc, union-attr]
    assert msgspec.structs.asdict(message) == {
        "audio_ssrc": msgspec.UNSET,
        "video_ssrc": msgspec.UNSET,
        "rtx_ssrc": msgspec.UNSET,
        "streams": msgspec.UNSET,
    }


DEEP = "[" * 5000 + "]" * 5000  # 10 KB, far inside MAX_FRAME_SIZE, beyond msgspec's depth


@pytest.mark.parametrize(
    "frame",
    [
        '{"op":0,"d":{"server_id":"1","user_id":"2","session_id":"3","token":"4","streams":'
        + DEEP
        + "}}",
        '{"op":0,"junk":' + DEEP + ',"d":{}}',
        '{"op":3,"d":' + DEEP + "}",
        DEEP,
    ],
    ids=["in-payload", "unknown-envelope-field", "heartbeat", "envelope"],
)
def test_deeply_nested_json_is_a_decode_error_not_a_crash(frame: str) -> None:
    for decode in (decode_client_frame, decode_server_frame):
        with pytest.raises(MessageDecodeError) as info:
            decode(frame)
        assert info.value.close_code in (CloseCode.DECODE_ERROR, CloseCode.UNKNOWN_OPCODE)


def test_nonce_form_is_not_a_wire_field() -> None:
    # a v8 object payload is always answered in the v8 form, whatever keys it carries
    heartbeat = decode_client_frame('{"op":3,"d":{"t":7,"nonce_form":true}}')
    assert heartbeat == Heartbeat(t=7)
    ack, _ = decode_server_frame('{"op":6,"d":{"t":7,"nonce_form":true}}')
    assert ack == HeartbeatAck(t=7)
