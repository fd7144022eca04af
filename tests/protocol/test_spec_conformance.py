"""Conformance of voxgate's message codecs to the project's AsyncAPI spec.

The spec (``spec/discord-voice-asyncapi.yaml``, the project's seed document) names 11
messages. For each, what :func:`encode` produces must validate against the spec's payload
schema, and an instance built from the schema alone (required fields, types, enum and
const values) must decode, with the decoder of the side that receives it, into the right
struct with the same field values. The message list is pinned so that a change to the
spec is noticed here first.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from voxgate.protocol import EncryptionMode
from voxgate.protocol.messages import (
    OP_OF,
    ClientDisconnect,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Identify,
    Message,
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
    payload_of,
)

SPEC_PATH = Path(__file__).resolve().parents[2] / "spec" / "discord-voice-asyncapi.yaml"

#: spec message name -> (voxgate struct, who sends it, a realistic instance)
MESSAGES: dict[str, tuple[type[Message], str, Message]] = {
    "VoiceIdentify": (
        Identify,
        "client",
        Identify(
            server_id="1100000000000000001",
            user_id="1200000000000000002",
            session_id="6f1d0c5a2b",
            token="a1b2c3",
            max_dave_protocol_version=0,
        ),
    ),
    "SelectProtocol": (
        SelectProtocol,
        "client",
        SelectProtocol(
            protocol="udp",
            data=SelectProtocolData(
                address="203.0.113.9", port=50321, mode="xsalsa20_poly1305_lite"
            ),
        ),
    ),
    # the spec's heartbeat is the integer nonce form
    "VoiceHeartbeat": (Heartbeat, "client", Heartbeat(t=1_732_460_000_123, nonce_form=True)),
    "Speaking": (Speaking, "client", Speaking(speaking=1, ssrc=0xCAFE, delay=0)),
    "VoiceResume": (
        Resume,
        "client",
        Resume(server_id="1100000000000000001", session_id="6f1d0c5a2b", token="a1b2c3"),
    ),
    "VoiceReady": (
        Ready,
        "server",
        Ready(
            ssrc=123456,
            ip="127.0.0.1",
            port=50000,
            modes=["aead_aes256_gcm_rtpsize", "xsalsa20_poly1305"],
        ),
    ),
    "SessionDescription": (
        SessionDescription,
        "server",
        SessionDescription(
            mode="aead_xchacha20_poly1305_rtpsize",
            secret_key=[(i * 37) % 256 for i in range(32)],
            audio_codec="opus",
        ),
    ),
    "VoiceHeartbeatAck": (
        HeartbeatAck,
        "server",
        HeartbeatAck(t=1_732_460_000_123, nonce_form=True),
    ),
    "VoiceHello": (Hello, "server", Hello(heartbeat_interval=41250.0)),
    "VoiceResumed": (Resumed, "server", Resumed()),
    "ClientDisconnect": (ClientDisconnect, "server", ClientDisconnect(user_id="1300")),
}

#: Constraints the spec states only in prose (descriptions), which the generator honours.
PROSE_ARRAY_LENGTHS = {"secret_key": 32}  # "32-byte secret key for encryption"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    with SPEC_PATH.open() as stream:
        loaded: dict[str, Any] = yaml.safe_load(stream)
    return loaded


def _schema(spec: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = spec["components"]["messages"][name]["payload"]
    return schema


def test_spec_has_exactly_the_eleven_messages(spec: dict[str, Any]) -> None:
    assert set(spec["components"]["messages"]) == set(MESSAGES)


def test_spec_directions_match_the_decoders(spec: dict[str, Any]) -> None:
    channel = spec["channels"]["/"]
    refs = {
        direction: {ref["$ref"].rsplit("/", 1)[1] for ref in channel[op]["message"]["oneOf"]}
        for direction, op in (("client", "publish"), ("server", "subscribe"))
    }
    for name, (_, sender, _) in MESSAGES.items():
        assert name in refs[sender]


def generate(schema: dict[str, Any], rng: random.Random, name: str = "") -> Any:
    """An instance of ``schema``: every listed property, of its type, honouring const/enum.

    The spec gives no numeric bounds, so integers stay within 0-255, the narrowest range
    any field the spec describes allows (a secret key byte); arrays take the length the
    spec's prose gives, else 1-4 items.
    """
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        properties: dict[str, Any] = schema.get("properties", {})
        assert set(schema.get("required", [])) <= set(properties)
        return {key: generate(sub, rng, key) for key, sub in properties.items()}
    if kind == "array":
        count = PROSE_ARRAY_LENGTHS.get(name, rng.randint(1, 4))
        return [generate(schema["items"], rng, name) for _ in range(count)]
    if kind == "integer":
        return rng.randint(0, 255)
    if kind == "number":
        return rng.choice([rng.randint(1, 60_000), rng.uniform(1, 60_000)])
    if kind == "string":
        return "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(1, 20)))
    if kind == "boolean":
        return rng.choice([True, False])
    raise AssertionError(f"schema type {kind!r} of {name!r} is not handled")


def _decode(sender: str, frame: str) -> Message:
    if sender == "client":
        return decode_client_frame(frame)
    message, _ = decode_server_frame(frame)
    return message


@pytest.mark.parametrize("name", list(MESSAGES))
def test_encoded_message_validates_against_spec(spec: dict[str, Any], name: str) -> None:
    _, sender, message = MESSAGES[name]
    frame = encode(message, seq=7 if sender == "server" else None)
    assert isinstance(frame, str)
    jsonschema.validate(json.loads(frame), _schema(spec, name))


@pytest.mark.parametrize("name", list(MESSAGES))
@pytest.mark.parametrize("seed", range(8))
def test_instance_from_spec_schema_decodes_to_same_values(
    spec: dict[str, Any], name: str, seed: int
) -> None:
    cls, sender, _ = MESSAGES[name]
    schema = _schema(spec, name)
    instance = generate(schema, random.Random(f"{name}-{seed}"))
    jsonschema.validate(instance, schema)  # the generator itself honours the schema

    message = _decode(sender, json.dumps(instance))

    assert type(message) is cls
    if "d" not in instance:
        assert cls is Resumed
        return
    d = instance["d"]
    decoded = payload_of(message)
    if isinstance(d, dict):
        # every field the spec sent arrives with the same value (voxgate may add defaults)
        assert {key: decoded[key] for key in d} == d
    else:
        assert decoded == d
    # and voxgate's re-encoding of what it decoded still conforms
    jsonschema.validate(json.loads(str(encode(message))), schema)


def test_v8_heartbeat_form_decodes_alongside_the_spec_form() -> None:
    v8 = decode_client_frame('{"op":3,"d":{"t":1732460000123,"seq_ack":4}}')
    spec_form = decode_client_frame('{"op":3,"d":1732460000123}')
    assert v8 == Heartbeat(t=1_732_460_000_123, seq_ack=4)
    assert spec_form == Heartbeat(t=1_732_460_000_123, nonce_form=True)
    ack, seq = decode_server_frame('{"op":6,"d":{"t":1732460000123},"seq":2}')
    assert (ack, seq) == (HeartbeatAck(t=1_732_460_000_123), 2)


def test_v8_heartbeat_ack_is_the_form_the_spec_does_not_describe(spec: dict[str, Any]) -> None:
    # The spec predates v8: its ack is the integer nonce, so v8's {"t": ...} echo does not
    # validate. voxgate answers each heartbeat in the form it came in.
    v8_ack = json.loads(str(encode(HeartbeatAck(t=5), seq=1)))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(v8_ack, _schema(spec, "VoiceHeartbeatAck"))
    jsonschema.validate(
        json.loads(str(encode(HeartbeatAck(t=5, nonce_form=True)))),
        _schema(spec, "VoiceHeartbeatAck"),
    )


@pytest.mark.parametrize("name", list(MESSAGES))
def test_spec_opcode_is_voxgates(spec: dict[str, Any], name: str) -> None:
    cls, _, _ = MESSAGES[name]
    assert _schema(spec, name)["properties"]["op"]["const"] == OP_OF[cls]


def test_spec_modes_are_exactly_voxgates(spec: dict[str, Any]) -> None:
    data = _schema(spec, "SelectProtocol")["properties"]["d"]["properties"]["data"]
    assert data["properties"]["mode"]["enum"] == [str(mode) for mode in EncryptionMode]
