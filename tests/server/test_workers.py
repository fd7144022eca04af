"""``voxgate serve --workers N``: the endpoint claim, the placement rules, and real workers.

The placement is tested as a pure object with ``now`` passed in; the rest runs real
``voxgate serve`` processes on loopback and joins them with the client library.
"""

from __future__ import annotations

from voxgate.protocol.messages import Identify, Ready, Resume
from voxgate.protocol.opcodes import CloseCode
from voxgate.server.auth import TokenAuthority

OTHER = "127.0.0.1:1"


# --- the endpoint claim on one node ------------------------------------------------------


async def test_identify_with_a_token_for_another_node_is_refused_with_4004(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node()
    peer = peers(node)
    token, grant = authority.mint("g", "c", "u", endpoint=OTHER)
    await peer.open()
    await peer.send(Identify(server_id="g", user_id="u", session_id=grant.session_id, token=token))
    code, reason = await peer.closed()
    assert code == CloseCode.AUTHENTICATION_FAILED
    assert reason == f"authentication failed: token is for another node ({OTHER})"
    assert node.session_count() == 0


async def test_identify_with_a_token_for_this_node_or_for_any_node_is_accepted(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node()
    for user, endpoint in (("bound", node.endpoint), ("unbound", None)):
        peer = peers(node)
        token, grant = authority.mint("g", "c", user, endpoint=endpoint)
        await peer.open()
        await peer.send(
            Identify(server_id="g", user_id=user, session_id=grant.session_id, token=token)
        )
        await peer.expect(Ready)
    assert node.session_count() == 2


async def test_resume_with_a_token_for_another_node_is_refused_with_4004(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node()
    peer = peers(node)
    token, grant = authority.mint("g", "c", "u", endpoint=OTHER)
    await peer.open()
    await peer.send(Resume(server_id="g", session_id=grant.session_id, token=token, seq_ack=-1))
    code, reason = await peer.closed()
    assert code == CloseCode.AUTHENTICATION_FAILED
    assert reason == f"authentication failed: token is for another node ({OTHER})"
