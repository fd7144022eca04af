"""The server's decoder takes every message form real clients send (docs/client-messages.md).

Examples first (each form as its client sends it, and what the server must read from it),
then properties: whatever values a client puts in a form, with whatever fields a newer
client adds and in whatever key order, the frame decodes into the right message, so the
server never closes a real client for the shape of what it sent. The fields the server
needs still close with 4002 and a reason naming them.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocol.client_forms import FORMS, Form, Values
from voxgate.protocol import CloseCode, MessageDecodeError, messages
from voxgate.protocol.messages import Speaking, decode_client_frame, encode

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(form: Form, values: Values, frame: str | bytes) -> None:
    message = decode_client_frame(frame)
    assert type(message) is form.kind, form.name
    for field, expected in form.expect(values).items():
        assert getattr(message, field) == expected, (form.name, field)


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.name)
def test_every_real_client_form_decodes_into_what_the_server_reads(form: Form) -> None:
    _check(form, Values(), form.frame(Values()))


def test_py_cord_speaking_without_ssrc_is_accepted() -> None:
    # issue 16: py-cord 2.8.1 sends this right after Session Description
    message = decode_client_frame('{"op": 5, "d": {"speaking": 0, "delay": 0}}')
    assert message == Speaking(speaking=0, delay=0)


def test_boolean_speaking_is_read_as_the_microphone_flag_and_relayed_as_an_integer() -> None:
    message = decode_client_frame('{"op":5,"d":{"speaking":true,"delay":0}}')
    assert isinstance(message, Speaking) and message.speaking == 1
    assert type(message.speaking) is int
    relayed = Speaking(speaking=message.speaking, ssrc=7, user_id="1")
    assert json.loads(encode(relayed))["d"]["speaking"] == 1
    assert decode_client_frame('{"op":5,"d":{"speaking":false}}') == Speaking(speaking=0)


#: What the server needs to act: without it (or with it mistyped) the connection closes 4002
#: with a reason that names the field.
NEEDED: list[tuple[str, str]] = [
    ('{"op":0,"d":{"user_id":"2","session_id":"3","token":"4"}}', "server_id"),
    ('{"op":0,"d":{"server_id":"1","session_id":"3","token":"4"}}', "user_id"),
    ('{"op":0,"d":{"server_id":"1","user_id":"2","token":"4"}}', "session_id"),
    ('{"op":0,"d":{"server_id":"1","user_id":"2","session_id":"3"}}', "token"),
    ('{"op":0,"d":{"server_id":"1","user_id":"2","session_id":"3","token":4}}', "token"),
    (
        '{"op":0,"d":{"server_id":"1","user_id":"2","session_id":"3","token":"4",'
        '"max_dave_protocol_version":"1"}}',
        "max_dave_protocol_version",
    ),
    ('{"op":1,"d":{"data":{"address":"a","port":1,"mode":"m"}}}', "protocol"),
    ('{"op":1,"d":{"protocol":"udp"}}', "data"),
    ('{"op":1,"d":{"protocol":"udp","data":{"address":"a","port":1}}}', "mode"),
    ('{"op":1,"d":{"protocol":"udp","data":{"port":1,"mode":"m"}}}', "address"),
    ('{"op":1,"d":{"protocol":"udp","data":{"address":"a","mode":"m"}}}', "port"),
    ('{"op":1,"d":{"protocol":"udp","data":{"address":"a","port":70000,"mode":"m"}}}', "port"),
    ('{"op":3,"d":{"seq_ack":1}}', "t"),
    ('{"op":3,"d":{"t":1,"seq_ack":"1"}}', "seq_ack"),
    ('{"op":5,"d":{"delay":0,"ssrc":1}}', "speaking"),
    ('{"op":7,"d":{"server_id":"1","token":"t"}}', "session_id"),
    ('{"op":7,"d":{"server_id":"1","session_id":"s"}}', "token"),
    ('{"op":7,"d":{"session_id":"s","token":"t"}}', "server_id"),
    ('{"op":23,"d":{}}', "transition_id"),
    ('{"op":31,"d":{}}', "transition_id"),
]


@pytest.mark.parametrize(("frame", "field"), NEEDED, ids=lambda x: x if len(x) < 20 else None)
def test_a_field_the_server_needs_still_closes_4002_naming_it(frame: str, field: str) -> None:
    with pytest.raises(MessageDecodeError) as info:
        decode_client_frame(frame)
    assert info.value.close_code == CloseCode.DECODE_ERROR
    assert field in info.value.reason


def test_no_struct_of_the_decoder_forbids_unknown_fields() -> None:
    structs = [
        value
        for value in vars(messages).values()
        if isinstance(value, type) and issubclass(value, msgspec.Struct)
    ]
    assert messages.SelectProtocolData in structs and messages._Envelope in structs
    for struct in structs:
        assert not struct.__struct_config__.forbid_unknown_fields, struct.__name__


# --- properties ------------------------------------------------------------------------

snowflake = st.integers(0, 2**64 - 1).map(str)
token = st.text(st.characters(codec="utf-8"), max_size=200)
values = st.builds(
    Values,
    server_id=snowflake,
    user_id=snowflake,
    session_id=st.text(max_size=64),
    token=token,
    t=st.integers(0, 2**53),  # Date.now() and int(time.time() * 1000)
    seq_ack=st.integers(-1, 2**31),
    ssrc=st.integers(0, 2**32 - 1),
    speaking=st.integers(0, 7),
    address=st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
    port=st.integers(0, 0xFFFF),
    mode=st.sampled_from(
        [
            "aead_aes256_gcm_rtpsize",
            "aead_xchacha20_poly1305_rtpsize",
            "xsalsa20_poly1305_lite",
            "xsalsa20_poly1305_suffix",
            "xsalsa20_poly1305",
        ]
    ),
    max_dave=st.integers(0, 1),
    transition_id=st.integers(0, 0xFFFF),
    blob=st.binary(max_size=300),
)
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=12)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
#: Fields a newer client might add: any name the form does not already use, any value.
extra = st.dictionaries(st.text(min_size=1, max_size=16), json_value, max_size=4)


@SETTINGS
@given(form=st.sampled_from(FORMS), values=values)
def test_every_form_decodes_whatever_values_a_client_puts_in_it(form: Form, values: Values) -> None:
    _check(form, values, form.frame(values))


@SETTINGS
@given(form=st.sampled_from(FORMS), values=values, added=extra, data=st.data())
def test_every_form_decodes_with_fields_newer_clients_add_in_any_order(
    form: Form, values: Values, added: dict[str, Any], data: st.DataObject
) -> None:
    frame = form.frame(values)
    if isinstance(frame, bytes):
        return  # binary frames have no fields
    envelope = json.loads(frame)
    d = envelope["d"]
    if isinstance(d, dict):
        d.update({key: value for key, value in added.items() if key not in d})
        keys = data.draw(st.permutations(list(d)))
        envelope["d"] = {key: d[key] for key in keys}
    # and fields outside ``d`` too, as a main-gateway-shaped client might send (``s``, ``t``)
    envelope.update({key: value for key, value in added.items() if key not in ("op", "d", "seq")})
    _check(form, values, json.dumps(envelope))


@SETTINGS
@given(form=st.sampled_from(FORMS), values=values)
def test_every_form_decodes_from_bytes_handed_over_as_text(form: Form, values: Values) -> None:
    # aiohttp may hand a text frame over as bytes; the flag says which framing it came in
    frame = form.frame(values)
    if isinstance(frame, str):
        compact = msgspec.json.encode(json.loads(frame))
        assert decode_client_frame(compact, binary=False) == decode_client_frame(frame)
