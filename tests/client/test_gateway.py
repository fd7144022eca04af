"""The client's gateway machine: the frames it sends are the ones Discord's servers expect."""

from __future__ import annotations

import json

import pytest

from voxgate.client.gateway import ClientGateway, CloseAction, GatewayState, VoiceJoin, after_close
from voxgate.protocol.messages import Ready, SessionDescription, Speaking, encode

JOIN = VoiceJoin(
    guild_id="41771983423143937",
    channel_id="127121515262115840",
    user_id="80351110224678912",
    session_id="a2f1b6e5c0",
    token="tok",
    endpoint="voice.example.test:443",
)


def _ready(modes: list[str]) -> str:
    return str(encode(Ready(ssrc=7, ip="127.0.0.1", port=5000, modes=modes), seq=1))


@pytest.mark.parametrize(("dave", "version"), [(True, 1), (False, 0)])
def test_identify_carries_exactly_the_fields_discord_reads(dave: bool, version: int) -> None:
    frame = json.loads(ClientGateway(JOIN, dave=dave).identify())
    assert frame == {
        "op": 0,
        "d": {
            "server_id": JOIN.guild_id,
            "user_id": JOIN.user_id,
            "session_id": JOIN.session_id,
            "token": "tok",
            "max_dave_protocol_version": version,
        },
    }


def test_heartbeat_is_the_v8_form_with_the_last_seq_seen() -> None:
    gateway = ClientGateway(JOIN)
    assert json.loads(gateway.heartbeat(1000)) == {"op": 3, "d": {"t": 1000, "seq_ack": -1}}
    gateway.receive(_ready(["aead_aes256_gcm_rtpsize"]))
    gateway.receive(encode(Speaking(speaking=1, ssrc=9, user_id="5"), seq=4))
    assert json.loads(gateway.heartbeat(2000))["d"]["seq_ack"] == 4


def test_resume_sends_the_session_and_seq_ack() -> None:
    gateway = ClientGateway(JOIN)
    gateway.receive(_ready(["aead_aes256_gcm_rtpsize"]))
    frame = json.loads(gateway.resume())
    assert frame == {
        "op": 7,
        "d": {
            "server_id": JOIN.guild_id,
            "session_id": JOIN.session_id,
            "token": "tok",
            "seq_ack": 1,
        },
    }
    assert gateway.state is GatewayState.RESUMING


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (
            ["xsalsa20_poly1305", "aead_xchacha20_poly1305_rtpsize", "aead_aes256_gcm_rtpsize"],
            "aead_aes256_gcm_rtpsize",
        ),
        (
            ["xsalsa20_poly1305_lite", "aead_xchacha20_poly1305_rtpsize"],
            "aead_xchacha20_poly1305_rtpsize",
        ),
        (["xsalsa20_poly1305", "xsalsa20_poly1305_suffix"], "xsalsa20_poly1305_suffix"),
        (["xsalsa20_poly1305"], "xsalsa20_poly1305"),
    ],
)
def test_best_mode_both_sides_support_is_chosen(offered: list[str], chosen: str) -> None:
    gateway = ClientGateway(JOIN)
    gateway.receive(_ready(offered))
    frame = json.loads(gateway.select_protocol("203.0.113.5", 50000))
    assert frame == {
        "op": 1,
        "d": {"protocol": "udp", "data": {"address": "203.0.113.5", "port": 50000, "mode": chosen}},
    }


def test_no_common_mode_is_an_error_not_a_guess() -> None:
    gateway = ClientGateway(JOIN, modes=["aead_aes256_gcm_rtpsize"])
    gateway.receive(_ready(["xsalsa20_poly1305"]))
    with pytest.raises(ValueError, match="no common encryption mode"):
        gateway.select_protocol("127.0.0.1", 1)


def test_speaking_maps_ssrc_to_user_and_disconnect_forgets_it() -> None:
    gateway = ClientGateway(JOIN)
    gateway.receive(encode(Speaking(speaking=0, ssrc=99, user_id="u2"), seq=1))
    assert gateway.users_by_ssrc == {99: "u2"}
    gateway.receive(json.dumps({"op": 13, "d": {"user_id": "u2"}, "seq": 2}))
    assert gateway.users_by_ssrc == {}


def test_session_description_makes_the_session_ready() -> None:
    gateway = ClientGateway(JOIN)
    gateway.receive(_ready(["aead_aes256_gcm_rtpsize"]))
    gateway.receive(
        encode(SessionDescription(mode="aead_aes256_gcm_rtpsize", secret_key=[1] * 32), seq=2)
    )
    assert gateway.state is GatewayState.READY and gateway.mode == "aead_aes256_gcm_rtpsize"


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (None, CloseAction.RESUME),
        (1006, CloseAction.RESUME),
        (4009, CloseAction.RESUME),
        (4015, CloseAction.RESUME),
        (4006, CloseAction.IDENTIFY),
        (4004, CloseAction.STOP),
        (4014, CloseAction.STOP),
        (1000, CloseAction.STOP),
    ],
)
def test_what_to_do_after_each_close_code(code: int | None, action: CloseAction) -> None:
    assert after_close(code) is action


def test_join_events_are_read_from_what_discord_dispatches() -> None:
    join = VoiceJoin.from_events(
        {"guild_id": "1", "channel_id": "2", "user_id": "3", "session_id": "s"},
        {"token": "t", "guild_id": "1", "endpoint": "wss://host.example:443/"},
    )
    assert join.url == "wss://host.example:443/?v=8"
    with pytest.raises(ValueError, match="endpoint"):
        VoiceJoin.from_events(
            {"channel_id": "2", "user_id": "3", "session_id": "s"},
            {"token": "t", "guild_id": "1", "endpoint": None},
        )
