"""Every message form real clients send to a voice server, as data.

Read from the clients' own code (docs/client-messages.md names the files): discord.py 2.0
to 2.7, py-cord 2.8, @discordjs/voice 0.16 to 0.19, Discord's own clients (the fields
they add), and the older forms servers still meet (discord.js 11's boolean ``speaking``,
a Speaking without ``delay``). Each form builds the frame from :class:`Values`, so a
property test can vary what clients vary (ids, tokens, clocks, ssrcs, flags) and keep what
they keep (the shape).

Each form also says what the server must make of it: ``expect`` maps the decoded
message's fields to the values they must have (``UNSET``: absent).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msgspec import UNSET

from voxgate.protocol.messages import (
    ClientConnect,
    DaveTransitionReady,
    Heartbeat,
    Identify,
    Message,
    MlsCommitWelcome,
    MlsInvalidCommitWelcome,
    MlsKeyPackage,
    Resume,
    SelectProtocol,
    Speaking,
)


@dataclass(frozen=True)
class Values:
    """What differs between two sends of the same form."""

    server_id: str = "1100000000000000001"
    user_id: str = "1200000000000000002"
    session_id: str = "6f1d0c5a2be94e7a8c3d0f1e2a3b4c5d"
    token: str = "3f2a9c4e1b7d8a6f"
    t: int = 1_764_580_000_123  # milliseconds since the epoch, as every client sends
    seq_ack: int = -1  # -1 until the first server seq (discord.py, py-cord, discord.js)
    ssrc: int = 123_456
    speaking: int = 1
    address: str = "203.0.113.7"
    port: int = 50_123
    mode: str = "aead_xchacha20_poly1305_rtpsize"
    max_dave: int = 1
    transition_id: int = 1
    blob: bytes = b"\x00\x01mls"


Build = Callable[[Values], str | bytes]


@dataclass(frozen=True)
class Form:
    client: str
    name: str
    build: Build
    kind: type[Message]
    expect: Callable[[Values], dict[str, Any]]

    def frame(self, values: Values) -> str | bytes:
        return self.build(values)


def _json(op: int, d: Any) -> str:
    return json.dumps({"op": op, "d": d})


def _identify(v: Values, **extra: Any) -> str:
    d = {"server_id": v.server_id, "user_id": v.user_id, "session_id": v.session_id}
    return _json(0, {**d, "token": v.token, **extra})


def _identified(v: Values) -> dict[str, Any]:
    return {
        "server_id": v.server_id,
        "user_id": v.user_id,
        "session_id": v.session_id,
        "token": v.token,
    }


def _select(v: Values, **extra: Any) -> str:
    data = {"address": v.address, "port": v.port, "mode": v.mode}
    return _json(1, {"protocol": "udp", "data": data, **extra})


def _selected(v: Values) -> dict[str, Any]:
    return {"protocol": "udp"}


def _resume(v: Values, **extra: Any) -> str:
    d = {"token": v.token, "server_id": v.server_id, "session_id": v.session_id}
    return _json(7, {**d, **extra})


def _resumed(v: Values) -> dict[str, Any]:
    return {"server_id": v.server_id, "session_id": v.session_id, "token": v.token}


DPY_OLD = "discord.py 2.0-2.2"
DPY_V4 = "discord.py 2.0-2.5"
DPY_SSRC = "discord.py 2.3-2.7"
DPY_V8 = "discord.py 2.6-2.7"
DPY_DAVE = "discord.py 2.7"
PYCORD = "py-cord 2.8"
DJS_V4 = "@discordjs/voice 0.16-0.18"
DJS_V8 = "@discordjs/voice 0.19"
DJS_ALL = "@discordjs/voice 0.16-0.19"
DISCORD = "Discord's own clients"
DJS11 = "discord.js 11"

FORMS: list[Form] = [
    # --- op 0 Identify ---------------------------------------------------------------
    Form(
        f"discord.py 2.0-2.6, {DJS_V4}",
        "identify",
        _identify,
        Identify,
        lambda v: {**_identified(v), "max_dave_protocol_version": UNSET},
    ),
    Form(
        f"{DPY_DAVE}, {PYCORD}, {DJS_V8}",
        "identify with max_dave_protocol_version",
        lambda v: _identify(v, max_dave_protocol_version=v.max_dave),
        Identify,
        lambda v: {**_identified(v), "max_dave_protocol_version": v.max_dave},
    ),
    Form(
        DISCORD,
        "identify with video and streams",
        lambda v: _identify(
            v,
            video=True,
            streams=[{"type": "video", "rid": "100", "quality": 100}],
            max_dave_protocol_version=v.max_dave,
        ),
        Identify,
        lambda v: {**_identified(v), "max_dave_protocol_version": v.max_dave},
    ),
    # --- op 1 Select Protocol ----------------------------------------------------------
    Form(
        f"{DPY_V4}, {DPY_V8}, {PYCORD}, {DJS_ALL}",
        "select protocol",
        _select,
        SelectProtocol,
        _selected,
    ),
    Form(
        DISCORD,
        "select protocol with codecs, rtc_connection_id and experiments",
        lambda v: _select(
            v,
            codecs=[
                {"name": "opus", "type": "audio", "priority": 1000, "payload_type": 120},
                {
                    "name": "H264",
                    "type": "video",
                    "priority": 1000,
                    "payload_type": 101,
                    "rtx_payload_type": 102,
                    "encode": True,
                    "decode": True,
                },
            ],
            rtc_connection_id="7c4d2f4e-1a2b-4c3d-9e8f-0a1b2c3d4e5f",
            experiments=["fixed_keyframe_interval"],
        ),
        SelectProtocol,
        _selected,
    ),
    # --- op 3 Heartbeat ------------------------------------------------------------------
    Form(
        f"{DPY_V4}, {DJS_V4}",
        "heartbeat, integer nonce (v4)",
        lambda v: _json(3, v.t),
        Heartbeat,
        lambda v: {"t": v.t, "nonce_form": True},
    ),
    Form(
        f"{DPY_V8}, {PYCORD}, {DJS_V8}",
        "heartbeat {t, seq_ack} (v8)",
        lambda v: _json(3, {"t": v.t, "seq_ack": v.seq_ack}),
        Heartbeat,
        lambda v: {"t": v.t, "seq_ack": v.seq_ack, "nonce_form": False},
    ),
    # --- op 5 Speaking -----------------------------------------------------------------
    Form(
        f"{DPY_OLD}, {PYCORD}",
        "speaking without ssrc",
        lambda v: _json(5, {"speaking": v.speaking, "delay": 0}),
        Speaking,
        lambda v: {"speaking": v.speaking, "ssrc": UNSET},
    ),
    Form(
        f"{DPY_SSRC}, {DJS_ALL}",
        "speaking with ssrc",
        lambda v: _json(5, {"speaking": v.speaking, "delay": 0, "ssrc": v.ssrc}),
        Speaking,
        lambda v: {"speaking": v.speaking, "ssrc": v.ssrc},
    ),
    Form(
        DJS11,
        "speaking as a boolean",
        lambda v: _json(5, {"speaking": bool(v.speaking), "delay": 0}),
        Speaking,
        lambda v: {"speaking": int(bool(v.speaking)), "ssrc": UNSET},
    ),
    Form(
        "older third-party clients (no client in the range above omits it)",
        "speaking without delay",
        lambda v: _json(5, {"speaking": v.speaking, "ssrc": v.ssrc}),
        Speaking,
        lambda v: {"speaking": v.speaking, "delay": 0},
    ),
    # --- op 7 Resume ---------------------------------------------------------------------
    Form(f"{DPY_V4}, {DJS_V4}", "resume", _resume, Resume, _resumed),
    Form(
        f"{DPY_V8}, {PYCORD}, {DJS_V8}",
        "resume with seq_ack",
        lambda v: _resume(v, seq_ack=v.seq_ack),
        Resume,
        lambda v: {**_resumed(v), "seq_ack": v.seq_ack},
    ),
    # --- op 12 Client Connect ---------------------------------------------------------------
    Form(
        "discord.py 2.x's client_connect(), Discord's own clients",
        "client connect {audio_ssrc}",
        lambda v: _json(12, {"audio_ssrc": v.ssrc}),
        ClientConnect,
        lambda v: {"audio_ssrc": v.ssrc},
    ),
    Form(
        DISCORD,
        "client connect with video, rtx and streams",
        lambda v: _json(
            12,
            {
                "audio_ssrc": v.ssrc,
                "video_ssrc": 0,
                "rtx_ssrc": 0,
                "streams": [
                    {
                        "type": "video",
                        "rid": "100",
                        "ssrc": 0,
                        "active": False,
                        "quality": 100,
                        "rtx_ssrc": 0,
                        "max_bitrate": 2_500_000,
                        "max_framerate": 30,
                        "max_resolution": {"type": "fixed", "width": 1280, "height": 720},
                    }
                ],
            },
        ),
        ClientConnect,
        lambda v: {"audio_ssrc": v.ssrc},
    ),
    # --- DAVE ----------------------------------------------------------------------------
    Form(
        f"{DPY_DAVE}, {PYCORD}, {DJS_V8}",
        "dave transition ready",
        lambda v: _json(23, {"transition_id": v.transition_id}),
        DaveTransitionReady,
        lambda v: {"transition_id": v.transition_id},
    ),
    Form(
        f"{DPY_DAVE}, {PYCORD}, {DJS_V8}",
        "mls invalid commit welcome",
        lambda v: _json(31, {"transition_id": v.transition_id}),
        MlsInvalidCommitWelcome,
        lambda v: {"transition_id": v.transition_id},
    ),
    Form(
        f"{DPY_DAVE}, {PYCORD}, {DJS_V8}",
        "mls key package (binary)",
        lambda v: bytes([26]) + v.blob,
        MlsKeyPackage,
        lambda v: {"key_package": v.blob},
    ),
    Form(
        f"{DPY_DAVE}, {PYCORD}, {DJS_V8}",
        "mls commit welcome (binary)",
        lambda v: bytes([28]) + v.blob,
        MlsCommitWelcome,
        lambda v: {"commit_welcome": v.blob},
    ),
]
