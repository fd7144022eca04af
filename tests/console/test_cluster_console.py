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
from typing import Any

import aiohttp

from tests.cluster.conftest import redis_server, redis_url  # noqa: F401 - fixtures
from voxgate.bench.cluster import ClusterSecrets, share_tls, start_cluster_node
from voxgate.client import VoiceConnection


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
    dirs = [tmp_path / "n0", tmp_path / "n1"]
    share_tls(tmp_path / "shared", dirs)
    nodes = [
        start_cluster_node(redis_url, f"n{i}", folder, secrets, log_path=folder / "serve.log")
        for i, folder in enumerate(dirs)
    ]
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
        for channel in remote["channels"]:
            assert channel["members"] == [] and channel["guild_id"] == guild
        assert local["channels"] and remote["channels"], "placement put every call on one node"
    finally:
        for client in clients:
            await client.close()
        for node in nodes:
            node.stop()
