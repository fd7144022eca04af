"""The gateway state machine without sockets: time is a parameter, frames are strings."""

from __future__ import annotations

import json

import pytest

from voxgate.protocol.messages import (
    ClientsConnect,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Identify,
    Ready,
    decode_server_frame,
    encode,
)
from voxgate.protocol.opcodes import CloseCode
from voxgate.server.auth import TokenAuthority
from voxgate.server.config import ServerConfig
from voxgate.server.router import Router
from voxgate.server.session import (
    IDENTIFY_TIMEOUT_S,
    OUTBOX_LIMIT,
    REPLAY_BUFFER,
    GatewayConnection,
)
from voxgate.server.stats import NodeStats

from .conftest import SECRET

INTERVAL_MS = 1000.0


@pytest.fixture
def router() -> Router:
    config = ServerConfig(port=8443, heartbeat_interval_ms=INTERVAL_MS)
    return Router(config, TokenAuthority(SECRET), NodeStats())


def _decoded(connection: GatewayConnection) -> list[tuple[object, int | None]]:
    return [decode_server_frame(frame) for frame in connection.take_outbox()]


def _identify(router: Router, connection: GatewayConnection, user: str, now: float = 0.0) -> None:
    token, grant = router.authority.mint("g", "c", user)
    frame = encode(Identify(server_id="g", user_id=user, session_id=grant.session_id, token=token))
    connection.receive(frame, now)


def test_hello_comes_first_with_the_configured_interval(router: Router) -> None:
    connection = GatewayConnection(router, now=0.0)
    [(hello, seq)] = _decoded(connection)
    assert hello == Hello(heartbeat_interval=INTERVAL_MS) and seq is None


@pytest.mark.parametrize("form", ["v8", "nonce"])
def test_heartbeats_are_acked_in_their_own_form_even_before_identify(router, form) -> None:
    connection = GatewayConnection(router, now=0.0)
    connection.take_outbox()
    payload = {"t": 1234, "seq_ack": -1} if form == "v8" else 1234
    connection.receive(json.dumps({"op": 3, "d": payload}), 0.1)
    [(ack, _)] = _decoded(connection)
    assert ack == HeartbeatAck(t=1234, nonce_form=form == "nonce")
    raw = connection.outbox
    assert connection.close_request is None and raw == []


def test_missed_heartbeats_time_out_with_4009(router: Router) -> None:
    connection = GatewayConnection(router, now=0.0)
    _identify(router, connection, "alice")
    connection.on_timer(1.9)
    assert connection.close_request is None
    connection.receive(encode(Heartbeat(t=1, seq_ack=1)), 1.9)
    connection.on_timer(3.8)
    assert connection.close_request is None
    connection.on_timer(3.9)
    assert connection.close_request is not None
    assert connection.close_request[0] == CloseCode.SESSION_TIMEOUT


def test_a_connection_that_never_identifies_is_closed(router: Router) -> None:
    connection = GatewayConnection(router, now=0.0)
    for n in range(int(IDENTIFY_TIMEOUT_S)):
        connection.receive(encode(Heartbeat(t=n, seq_ack=-1)), float(n))
    connection.on_timer(IDENTIFY_TIMEOUT_S)
    assert connection.close_request is not None
    assert connection.close_request[0] == CloseCode.NOT_AUTHENTICATED


def test_server_messages_carry_increasing_seq_and_connection_messages_none(router) -> None:
    alice = GatewayConnection(router, now=0.0)
    _identify(router, alice, "alice")
    bob = GatewayConnection(router, now=0.0)
    _identify(router, bob, "bob")
    messages = _decoded(alice)
    assert [type(m) for m, _ in messages] == [Hello, Ready, ClientsConnect]
    assert [seq for _, seq in messages] == [None, 1, 2]


def test_acknowledged_messages_are_forgotten_and_older_resumes_refused(router) -> None:
    connection = GatewayConnection(router, now=0.0)
    _identify(router, connection, "alice")
    session = connection.session
    assert session is not None
    for n in range(REPLAY_BUFFER + 10):
        session.send(ClientsConnect(user_ids=[str(n)]))
    # The buffer holds the last REPLAY_BUFFER messages: older acks cannot be replayed.
    assert session.replay_after(5) is None
    latest = 1 + REPLAY_BUFFER + 10
    assert len(session.replay_after(latest - 3) or []) == 3
    connection.receive(encode(Heartbeat(t=1, seq_ack=latest - 1)), 0.5)
    assert session.replay_after(latest - 3) is None
    assert len(session.replay_after(latest - 1) or []) == 1


def test_a_reader_that_never_drains_is_closed_not_buffered_forever(router) -> None:
    connection = GatewayConnection(router, now=0.0)
    _identify(router, connection, "alice")
    session = connection.session
    assert session is not None
    for n in range(OUTBOX_LIMIT + 1):
        session.send(ClientsConnect(user_ids=[str(n)]))
    assert connection.close_request is not None
    assert connection.close_request[0] == CloseCode.SESSION_TIMEOUT
    assert len(connection.outbox) <= OUTBOX_LIMIT


def test_a_described_member_gone_quiet_is_reported_not_ended(router: Router) -> None:
    connection = GatewayConnection(router, now=0.0)
    _identify(router, connection, "alice")
    session = connection.session
    assert session is not None
    connection.receive(
        json.dumps(
            {
                "op": 1,
                "d": {
                    "protocol": "udp",
                    "data": {"address": "127.0.0.1", "port": 1, "mode": "aead_aes256_gcm_rtpsize"},
                },
            }
        ),
        0.1,
    )
    assert session.described
    router.expire(1.0)
    assert router.media_silent_count() == 0
    session.last_media_at -= router.config.media_silence_s + 1
    router.expire(2.0)
    assert router.media_silent_count() == 1
    assert session.session_id in router.sessions  # reported, still a member
    session.last_media_at += router.config.media_silence_s + 1
    router.expire(3.0)
    assert router.media_silent_count() == 0


def _select(connection: GatewayConnection, now: float) -> None:
    data = {"address": "127.0.0.1", "port": 1, "mode": "aead_aes256_gcm_rtpsize"}
    connection.receive(json.dumps({"op": 1, "d": {"protocol": "udp", "data": data}}), now)


def test_others_learn_a_new_ssrc_before_its_owner_gets_the_key(router: Router) -> None:
    from voxgate.protocol.messages import SessionDescription, Speaking
    from voxgate.server.router import DESCRIPTION_LEAD_S

    alice = GatewayConnection(router, now=0.0)
    _identify(router, alice, "alice")
    _select(alice, 0.1)  # alone: described at once
    assert any(isinstance(m, SessionDescription) for m, _ in _decoded(alice))
    bob = GatewayConnection(router, now=0.0)
    _identify(router, bob, "bob")
    bob.take_outbox()
    _select(bob, 1.0)
    [(announced, _)] = [(m, s) for m, s in _decoded(alice) if isinstance(m, Speaking)]
    assert announced.user_id == "bob" and announced.ssrc == bob.session.ssrc
    assert bob.outbox == []  # the key waits...
    assert bob.next_timer() == pytest.approx(1.0 + DESCRIPTION_LEAD_S)
    bob.on_timer(1.0 + DESCRIPTION_LEAD_S)
    kinds = [type(m) for m, _ in _decoded(bob)]
    assert kinds == [SessionDescription, Speaking]  # ...then comes, with alice's ssrc
