"""Each real client's messages, in its own forms, through the gateway machine: nothing closes.

The forms are ``tests/protocol/client_forms.py`` (docs/client-messages.md); here they go
through a real :class:`GatewayConnection` and router, as one session would send them, and
the other member of the channel sees what the server made of them.
"""

from __future__ import annotations

import pytest

from tests.protocol.client_forms import FORMS, Form, Values
from voxgate.protocol.messages import (
    DaveTransitionReady,
    HeartbeatAck,
    Identify,
    MlsCommitWelcome,
    MlsInvalidCommitWelcome,
    MlsKeyPackage,
    Resume,
    SessionDescription,
    Speaking,
    decode_server_frame,
)
from voxgate.server.auth import TokenAuthority
from voxgate.server.config import ServerConfig
from voxgate.server.router import DESCRIPTION_LEAD_S, Router
from voxgate.server.session import GatewayConnection
from voxgate.server.stats import NodeStats

from .conftest import SECRET

# DAVE messages are the DAVE machine's to judge, not the decoder's; Identify and Resume
# each open a session and are sent first, one per connection.
_DAVE = (DaveTransitionReady, MlsInvalidCommitWelcome, MlsKeyPackage, MlsCommitWelcome)
_AFTER_IDENTIFY = [f for f in FORMS if f.kind not in (Identify, Resume, *_DAVE)]
_IDENTIFIES = [f for f in FORMS if f.kind is Identify]


@pytest.fixture
def router() -> Router:
    return Router(ServerConfig(port=8443), TokenAuthority(SECRET), NodeStats())


def _join(router: Router, identify: Form, user: str, now: float) -> GatewayConnection:
    token, grant = router.authority.mint("g", "c", user)
    connection = GatewayConnection(router, now=now)
    values = Values(server_id="g", user_id=user, session_id=grant.session_id, token=token)
    connection.receive(identify.frame(values), now)
    assert connection.close_request is None, connection.close_request
    return connection


@pytest.mark.parametrize("identify", _IDENTIFIES, ids=lambda f: f.name)
def test_a_session_in_any_real_client_form_is_never_closed(router, identify: Form) -> None:
    listener = _join(router, _IDENTIFIES[0], "listener", 0.0)
    [select] = [f for f in _AFTER_IDENTIFY if f.name == "select protocol"]
    listener.receive(select.frame(Values(mode="aead_aes256_gcm_rtpsize")), 0.0)
    client = _join(router, identify, "client", 0.1)
    now = 0.2
    for form in _AFTER_IDENTIFY:
        listener.take_outbox()
        now += 2 * DESCRIPTION_LEAD_S
        values = Values(mode="aead_xchacha20_poly1305_rtpsize", ssrc=999, speaking=5)
        client.receive(form.frame(values), now)
        client.on_timer(now + DESCRIPTION_LEAD_S)
        assert client.close_request is None, (form.client, form.name, client.close_request)
        replies = [decode_server_frame(frame)[0] for frame in client.take_outbox()]
        if form.kind.__name__ == "Heartbeat":
            assert any(isinstance(reply, HeartbeatAck) for reply in replies)
        if form.kind.__name__ == "SelectProtocol":
            assert any(isinstance(reply, SessionDescription) for reply in replies)
        if form.kind is Speaking:
            # relayed with the speaker's own ssrc and user, whatever the client said (or not)
            [relayed] = [
                m
                for m, _ in map(decode_server_frame, listener.take_outbox())
                if isinstance(m, Speaking)
            ]
            assert relayed.ssrc == client.session.ssrc and relayed.user_id == "client"
            assert relayed.speaking == form.expect(values)["speaking"]
    assert listener.close_request is None
