"""DAVE through a real node on loopback: davey members over real WebSockets and UDP.

Each member is a bare protocol-core peer (tests/server/conftest.py) whose DAVE side is a
davey session driven as discord.py drives it (tests/server/dave_call.py). The node is the
real one; only its policy changes between tests.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.server.conftest import Peer
from tests.server.dave_call import OPUS
from tests.server.dave_wire import AES, XCHACHA, DaveClient, established, until
from tests.support.server import start_server
from voxgate.protocol.messages import (
    DaveExecuteTransition,
    DavePrepareTransition,
    Identify,
    MlsAnnounceCommitTransition,
    MlsExternalSender,
    MlsProposals,
    MlsWelcome,
    Resumed,
    SessionDescription,
)
from voxgate.protocol.opcodes import CloseCode
from voxgate.server.admin import admin_app
from voxgate.server.config import DavePolicy
from voxgate.server.dave import GroupState

GUILD = "1"
CHANNEL = "927310423890473011"


Clients = Callable[..., DaveClient]


@pytest.fixture
async def clients(peers) -> AsyncIterator[Clients]:
    """Makes DaveClients on a node; their drivers are stopped after the test."""
    made: list[DaveClient] = []

    def make(node, user_id: str, *, dave: bool = True) -> DaveClient:
        client = DaveClient(peers(node), user_id, GUILD, CHANNEL, dave=dave)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.stop()


async def test_two_members_make_a_group_and_the_relay_carries_their_dave_frames(
    start_node, clients, authority
) -> None:
    node = await start_node()
    alice = clients(node, "1001")
    bob = clients(node, "1002")
    await alice.join(authority, AES)
    await bob.join(authority, XCHACHA)
    await established(alice, bob)
    assert alice.description.dave_protocol_version == 1  # type: ignore[union-attr]
    # Op 25 only after op 4 (discord.py drops binary frames before it), also for bob,
    # whose op 4 the node holds back a moment (the first-packet race).
    for client in (alice, bob):
        kinds = client.kinds()
        assert kinds.index(SessionDescription) < kinds.index(MlsExternalSender)
    # One counter numbers JSON and binary frames alike (DAVE.md §2).
    seqs = [seq for _, seq in bob.frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert any(isinstance(m, MlsWelcome | MlsAnnounceCommitTransition) for m, _ in bob.frames)
    # Media: each encrypts, the relay forwards the DAVE frame byte for byte, the other opens.
    for sender, receiver in ((alice, bob), (bob, alice)):
        payload = sender.send_opus(OPUS)
        assert payload.endswith(b"\xfa\xfa") and payload != OPUS
        ((_, relayed),) = await receiver.peer.receive_audio(1)
        assert relayed == payload
        assert receiver.member.decrypt(sender.user_id, relayed) == OPUS
    await until(
        lambda: DaveExecuteTransition in alice.kinds() and DaveExecuteTransition in bob.kinds()
    )
    ((key, group),) = node.router.dave_groups()
    assert key == (GUILD, CHANNEL) and group.epoch == 1 and group.state is GroupState.ESTABLISHED


async def test_resume_replays_the_binary_frames_missed(start_node, clients, authority) -> None:
    node = await start_node()
    alice = clients(node, "1001")
    await alice.join(authority)
    await until(lambda: node.router.dave_groups()[0][1].members["1001"].key_package is not None)
    await alice.stop()
    await alice.peer.cut()
    # bob joins while alice has no WebSocket: his Add (op 27, binary) waits for her.
    bob = clients(node, "1002")
    await bob.join(authority)
    await until(lambda: bob.member.commits_sent == 1)
    await alice.peer.resume()
    alice.start()
    await until(lambda: Resumed in alice.kinds())
    replayed = alice.kinds()[: alice.kinds().index(Resumed)]
    assert MlsProposals in replayed
    await established(alice, bob)
    payload = alice.send_opus(OPUS)
    ((_, relayed),) = await bob.peer.receive_audio(1)
    assert bob.member.decrypt("1001", relayed) == OPUS and relayed == payload


async def test_dave_required_closes_a_client_without_dave_with_4017(
    start_node, clients, authority
) -> None:
    node = await start_node(dave=DavePolicy.REQUIRED)
    alice = clients(node, "1001")
    await alice.join(authority)
    legacy = clients(node, "1003", dave=False)
    with_ids = clients(node, "not-a-snowflake")
    for client in (legacy, with_ids):
        token, grant = authority.mint(GUILD, CHANNEL, client.user_id)
        await client.peer.open()
        await client.peer.send(
            Identify(
                server_id=GUILD,
                user_id=client.user_id,
                session_id=grant.session_id,
                token=token,
                max_dave_protocol_version=0 if client is legacy else 1,
            )
        )
        code, reason = await client.peer.closed()
        assert code == CloseCode.E2EE_REQUIRED
        assert "E2EE/DAVE protocol required" in reason
    assert node.session_count() == 1  # refused before a session opened
    bob = clients(node, "1002")
    await bob.join(authority)
    await established(alice, bob)


async def test_dave_off_describes_version_0_and_sends_no_dave(
    start_node, clients, authority
) -> None:
    node = await start_node(dave=DavePolicy.OFF)
    alice, bob = clients(node, "1001"), clients(node, "1002")
    await alice.join(authority)
    await bob.join(authority)
    await asyncio.sleep(0.2)
    for client in (alice, bob):
        assert client.description.dave_protocol_version == 0  # type: ignore[union-attr]
        assert MlsExternalSender not in client.kinds()
    assert node.router.dave_groups() == []
    alice.send_opus(OPUS)
    assert await bob.peer.receive_audio(1) == [(alice.peer.ready.ssrc, OPUS)]  # type: ignore[union-attr]


async def test_downgrade_withholds_dave_frames_from_the_member_without_dave(
    start_node, clients, authority
) -> None:
    node = await start_node()
    alice, bob = clients(node, "1001"), clients(node, "1002")
    await alice.join(authority)
    await bob.join(authority)
    before = await established(alice, bob)
    legacy = clients(node, "1003", dave=False)
    await legacy.join(authority)
    assert legacy.description.dave_protocol_version == 0  # type: ignore[union-attr]
    await until(lambda: alice.member.protocol_version == 0 and bob.member.protocol_version == 0)
    for client in (alice, bob):
        assert DavePrepareTransition in client.kinds()
    # A DAVE frame still in flight goes to bob only; plain Opus goes to both.
    frame = alice.member.encrypt(OPUS)
    alice.peer.send_audio(frame)
    alice.peer.send_audio(OPUS)
    assert [payload for _, payload in await bob.peer.receive_audio(2)] == [frame, OPUS]
    assert [payload for _, payload in await legacy.peer.receive_audio(1)] == [OPUS]
    assert node.stats.dave_frames_withheld == 1
    # The last member without DAVE leaves: the upgrade re-creates the group.
    await legacy.peer.close()
    await established(alice, bob, after=before)
    assert node.router.channels[(GUILD, CHANNEL)].forward == node.router.forward
    payload = bob.send_opus(OPUS)
    ((_, relayed),) = await alice.peer.receive_audio(1)
    assert relayed == payload and alice.member.decrypt("1002", relayed) == OPUS


async def test_metrics_show_each_channel_group(start_node, clients, authority) -> None:
    node = await start_node()
    alice, bob = clients(node, "1001"), clients(node, "1002")
    await alice.join(authority)
    await bob.join(authority)
    await established(alice, bob)
    await until(lambda: not node.router.dave_groups()[0][1].transitions)
    async with TestClient(TestServer(admin_app(node, authority, "k" * 32, node.endpoint))) as http:
        text = await (await http.get("/metrics")).text()
    labels = f'channel="{CHANNEL}",guild="{GUILD}"'
    assert f"voxgate_dave_channel_epoch{{{labels}}} 1.0" in text
    assert f'voxgate_dave_channel_state{{{labels},state="established"}} 1.0' in text
    assert f"voxgate_dave_channel_members{{{labels}}} 2.0" in text
    assert f"voxgate_dave_channel_commits_accepted_total{{{labels}}} 1.0" in text
    assert f"voxgate_dave_channel_transitions_total{{{labels}}} 1.0" in text
    assert "voxgate_dave_commits_accepted_total 1.0" in text
    # The loser's commit of epoch 0 came too late: ignored and counted by reason.
    assert 'voxgate_dave_commits_rejected_total{reason="epoch"} 1.0' in text


class _AdminMint:
    """Joins minted by a running node's admin API, in ``authority.mint``'s shape."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def mint(self, guild: str, channel: str, user: str) -> tuple[str, Any]:
        events = self.server.join(guild, channel, user)
        self.port = int(events["voice_server"]["endpoint"].rsplit(":", 1)[1])
        return events["voice_server"]["token"], SimpleNamespace(
            session_id=events["voice_state"]["session_id"]
        )


async def test_workers_apply_the_dave_policy(tmp_path) -> None:
    # Port 0: each worker takes any free ports (a free P does not make P + 1 free).
    server = start_server(
        tmp_path / "node", "--workers", "2", "--dave", "required", "--port", "0", "--udp-port", "0"
    )
    try:
        trust = ssl.create_default_context(cafile=str(server.ca_path))
        mint = _AdminMint(server)
        async with aiohttp.ClientSession() as http:
            token, grant = mint.mint(GUILD, CHANNEL, "1003")
            worker: Any = SimpleNamespace(port=mint.port)  # the worker hosting the channel
            legacy = Peer(worker, http, trust)
            await legacy.open()
            await legacy.send(
                Identify(server_id=GUILD, user_id="1003", session_id=grant.session_id, token=token)
            )
            code, reason = await legacy.closed()
            assert code == CloseCode.E2EE_REQUIRED, reason
            alice = DaveClient(Peer(worker, http, trust), "1001", GUILD, CHANNEL)
            await alice.join(mint)
            assert alice.description.dave_protocol_version == 1  # type: ignore[union-attr]
            await until(lambda: MlsExternalSender in alice.kinds())
            await alice.stop()
            await alice.peer.close()
    finally:
        server.stop()
