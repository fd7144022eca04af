"""A node of a cluster shows every node: its own calls in full, the others' as Redis says.

Two ``voxgate serve --redis`` nodes on a real redis-server; voxgate clients join calls
placed by the cluster; one node's event stream (the dashboard's) names both nodes and
each call under the node that hosts it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
from pathlib import Path
from typing import Any

import aiohttp

from tests.cluster.conftest import redis_server, redis_url  # noqa: F401 - fixtures
from tests.console.conftest import ARTIFACTS
from tests.server.test_workers import _serve_workers
from voxgate.bench.cluster import ClusterSecrets, share_tls, start_cluster_node
from voxgate.client import ConnectionClosed, VoiceConnection

# Imported at collection, not first by share_tls's lazy import deep in a test's stack:
# there CPython 3.11.7 parsing it for pytest's assertion rewriting (voxgate is a pytest
# plugin) raised "SystemError: AST constructor recursion depth mismatch" in a full run.
from voxgate.server import tls  # noqa: F401


async def _join(node: Any, guild: str, channel: str, user: str) -> dict[str, Any]:
    """The node's join, once the fresh cluster places channels (503 until Redis settles)."""
    async with asyncio.timeout(30):
        while True:
            try:
                events: dict[str, Any] = await asyncio.to_thread(node.join, guild, channel, user)
                return events
            except urllib.error.HTTPError as exc:
                if exc.code != 503:
                    raise
            await asyncio.sleep(0.2)


def _two_nodes(redis: str, folder: Path, secrets: ClusterSecrets) -> list[Any]:
    """Nodes n0 and n1 of one cluster, sharing a certificate authority, with their data
    in ``folder``/n0 and n1."""
    dirs = [folder / "n0", folder / "n1"]
    share_tls(folder / "shared", dirs)
    return [
        start_cluster_node(redis, f"n{i}", node, secrets, log_path=node / "serve.log")
        for i, node in enumerate(dirs)
    ]


async def _snapshot(http: aiohttp.ClientSession, admin_url: str, key: str, want: Any) -> Any:
    """The first event of ``admin_url``'s stream for which ``want(snapshot)`` holds."""
    headers = {"Authorization": f"Bearer {key}"}
    async with http.get(f"{admin_url}/v1/console/events", headers=headers) as events:
        assert events.status == 200
        async for line in events.content:
            if line.startswith(b"data:"):
                snapshot = json.loads(line[5:])
                if want(snapshot):
                    return snapshot
    raise AssertionError("the stream ended")


async def test_a_cluster_node_dashboard_lists_every_node_and_where_each_call_is(
    redis_url: str, tmp_path, ids  # noqa: F811 - the fixture
) -> None:
    secrets = ClusterSecrets.make()
    nodes = _two_nodes(redis_url, tmp_path, secrets)
    clients: list[VoiceConnection] = []
    try:
        trust = ssl.create_default_context(cafile=str(nodes[0].ca_path))
        guild = ids()
        calls = [ids() for _ in range(4)]
        users: dict[str, str] = {}
        for channel in calls:
            users[channel] = ids()
            events = await _join(nodes[0], guild, channel, users[channel])
            clients.append(await VoiceConnection.connect(
                events["voice_state"], events["voice_server"], ssl=trust))  # fmt: skip

        def complete(snapshot: dict[str, Any]) -> bool:
            shown = {c["channel_id"] for node in snapshot["nodes"] for c in node["channels"]}
            return len(snapshot["nodes"]) == 2 and shown == set(calls)

        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            snapshot = await _snapshot(http, nodes[0].admin_url, secrets.admin_key, complete)
        local, remote = snapshot["nodes"]
        assert local["name"].startswith("n0 (") and not local["remote"]
        assert remote["name"].startswith("n1 (") and remote["remote"]
        # Its own calls in full, with their members; the other node's as placed there.
        for channel in local["channels"]:
            assert [m["user_id"] for m in channel["members"]] == [users[channel["channel_id"]]]
        # The other node's calls with their members too, as its own admin API says.
        for channel in remote["channels"]:
            assert channel["guild_id"] == guild
        assert local["channels"] and remote["channels"], "placement put every call on one node"
    finally:
        for client in clients:
            await client.close()
        for node in nodes:
            node.stop()


async def test_a_member_on_another_node_is_shown_and_disconnected_from_this_node(
    redis_url: str, tmp_path, ids, browser: Any  # noqa: F811 - the fixture
) -> None:
    from selenium.webdriver.common.by import By

    secrets = ClusterSecrets.make()
    nodes = _two_nodes(redis_url, tmp_path, secrets)
    clients: dict[str, VoiceConnection] = {}
    try:
        trust = ssl.create_default_context(cafile=str(nodes[0].ca_path))
        guild = ids()
        # Joins through node 0 until one call is placed on node 1.
        for _ in range(8):
            channel, user = ids(), ids()
            events = await _join(nodes[0], guild, channel, user)
            clients[user] = await VoiceConnection.connect(
                events["voice_state"], events["voice_server"], ssl=trust
            )
            if str(nodes[1].port) in events["voice_server"]["endpoint"]:
                break
        else:
            raise AssertionError("no call was placed on node 1")

        def shows_member(snapshot: dict[str, Any]) -> bool:
            remote = [n for n in snapshot["nodes"] if n["remote"]]
            return any(
                m["user_id"] == user
                for node in remote
                for c in node["channels"]
                for m in c["members"]
            )

        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            # Node 0's dashboard stream: the member of node 1's call, under node 1.
            snapshot = await _snapshot(http, nodes[0].admin_url, secrets.admin_key, shows_member)
            (remote,) = [n for n in snapshot["nodes"] if n["remote"]]
            assert remote["name"].startswith("n1 (") and remote["unreachable"] is None
            (call,) = [c for c in remote["channels"] if c["channel_id"] == channel]
            (member,) = call["members"]
            assert member["mode"] and member["connected"]
            headers = {"Authorization": f"Bearer {secrets.admin_key}"}
            # Node 0's own API lists it too, and forwards the disconnect to node 1.
            async with http.get(f"{nodes[0].admin_url}/v1/channels", headers=headers) as r:
                listed = (await r.json())["channels"]
            assert any(c["channel_id"] == channel and c["node"].startswith("n1 (") for c in listed)
            path = f"/v1/channels/{guild}/{channel}/members/{user}"
            async with http.post(f"{nodes[0].admin_url}{path}/mute", headers=headers) as r:
                assert r.status == 200 and (await r.json())["muted"] is True
            async with http.post(f"{nodes[0].admin_url}{path}/disconnect", headers=headers) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"disconnected": user, "close_code": 4014, "node": "n1"}
        closed = await clients[user].next_event(ConnectionClosed, timeout=30)
        assert closed.code == 4014
        # Nobody hosts a member that is not there: the 404 says so.
        async with aiohttp.ClientSession() as http, http.post(
            f"{nodes[0].admin_url}/v1/channels/{guild}/{channel}/members/nobody/disconnect",
            headers=headers,
        ) as r:
            assert r.status == 404

        # In the browser: node 0's dashboard shows a member of node 1's call under node 1,
        # and its Disconnect button (the page's cookie and CSRF token; node 0 forwards the
        # action with the admin key) closes that client with 4014.
        clicked = ids()
        events = await _join(nodes[0], guild, channel, clicked)
        assert str(nodes[1].port) in events["voice_server"]["endpoint"]
        clients[clicked] = await VoiceConnection.connect(
            events["voice_state"], events["voice_server"], ssl=trust
        )
        login = json.loads((tmp_path / "n0" / "node.json").read_text())["dashboard_url"]
        await asyncio.to_thread(browser.get, login)
        row = f'section.node.remote[data-node^="n1 ("] tr.member[data-user="{clicked}"]'
        async with asyncio.timeout(30):
            while not await asyncio.to_thread(browser.find_elements, By.CSS_SELECTOR, row):
                await asyncio.sleep(0.2)
        await asyncio.to_thread(
            lambda: browser.find_element(By.CSS_SELECTOR, f"{row} button.disconnect").click()
        )
        closed = await clients[clicked].next_event(ConnectionClosed, timeout=30)
        assert closed.code == 4014
        async with asyncio.timeout(30):
            while f"disconnected {clicked}" not in await asyncio.to_thread(
                lambda: browser.find_element(By.ID, "message").text
            ):
                await asyncio.sleep(0.2)
        await asyncio.to_thread(
            browser.save_screenshot, str(ARTIFACTS / "dashboard-cluster.png")
        )
        # Its row goes at the next read of node 1 (the page keeps updating other nodes).
        async with asyncio.timeout(30):
            while await asyncio.to_thread(browser.find_elements, By.CSS_SELECTOR, row):
                await asyncio.sleep(0.2)
    finally:
        for client in clients.values():
            await client.close()
        for node in nodes:
            node.stop()


async def test_the_supervisor_lists_each_workers_members_and_disconnects_them(
    tmp_path, ids
) -> None:
    node = _serve_workers(tmp_path / "workers", workers=2)
    clients: dict[str, VoiceConnection] = {}
    try:
        guild = ids()
        calls = {ids(): ids() for _ in range(4)}  # channel: user
        for channel, user in calls.items():
            events = await asyncio.to_thread(node.join, guild, channel, user)
            clients[user] = await VoiceConnection.connect(
                events["voice_state"], events["voice_server"], ssl=node.trust
            )
        headers = {"Authorization": f"Bearer {(node.data_dir / 'admin_key').read_text().strip()}"}
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            async with http.get(f"{node.admin_url}/v1/channels", headers=headers) as r:
                assert r.status == 200
                listed = (await r.json())["channels"]
            shown = {
                c["channel_id"]: ([m["user_id"] for m in c["members"]], c["node"]) for c in listed
            }
            assert {c: users for c, (users, _) in shown.items()} == {
                c: [u] for c, u in calls.items()
            }
            hosts = {where.partition(" ")[0] for _, where in shown.values()}
            assert hosts == {"worker-0", "worker-1"}, shown
            for channel, user in calls.items():
                path = f"/v1/channels/{guild}/{channel}/members/{user}/disconnect"
                async with http.post(f"{node.admin_url}{path}", headers=headers) as r:
                    assert r.status == 200, await r.text()
                    answer = await r.json()
                assert answer["close_code"] == 4014
                assert answer["node"] == shown[channel][1].partition(" ")[0]
                closed = await clients[user].next_event(ConnectionClosed, timeout=30)
                assert closed.code == 4014
            async with http.post(
                f"{node.admin_url}/v1/channels/{guild}/nope/end", headers=headers
            ) as r:
                assert r.status == 404
    finally:
        for client in clients.values():
            await client.close()
        node.stop()
