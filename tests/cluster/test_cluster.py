"""Many ``voxgate serve --redis`` nodes on one real Redis: placement, failover, Redis trouble.

Every node is its own process on free ports, sharing the cluster's secret, admin key and
certificate; Redis runs on a free loopback port without persistence. Clients are the
voxgate client (with a rejoin callback that asks the nodes' admin APIs) and, for interop,
unmodified discord.js and discord.py.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.support.audio import SILENCE, audio_arrives_byte_exact, ogg_packets, read_packet_log
from tests.support.drivers import VoiceChannel
from tests.support.proxy import CuttableProxy
from voxgate.bench.cluster import ClusterSecrets, share_tls, start_cluster_node
from voxgate.bench.node import BenchNode, free_port, start_node
from voxgate.bench.redis_server import RedisServer
from voxgate.client import SessionRestarted, VoiceConnection, VoiceConnectionError
from voxgate.protocol.opcodes import CloseCode
from voxgate.server.placement import NODE_TTL_S
from voxgate.server.redis_placement import SETTLE_S

# Receivers start listening this long before a sender starts (as in tests/interop).
LEAD_S = 1.5


def _dave_off() -> list[str]:
    """``--dave off`` where the server has the flag: these tests are about placement."""
    from voxgate.cli.serve import serve

    return ["--dave", "off"] if "dave" in inspect.signature(serve).parameters else []


@dataclass
class Cluster:
    folder: Path
    secrets: ClusterSecrets = field(default_factory=ClusterSecrets.make)
    nodes: list[BenchNode] = field(default_factory=list)

    def start(self, redis_url: str, count: int = 1) -> list[BenchNode]:
        """``count`` nodes, once the Redis places new channels."""
        started = [self.start_one(redis_url) for _ in range(count)]
        _wait_settled(redis_url)
        return started

    def start_one(self, redis_url: str) -> BenchNode:
        """One more node ``n<i>``, without waiting for Redis (which may not be up)."""
        index = len(self.nodes)
        data_dir = self.folder / f"n{index}"
        share_tls(self.folder / "shared", [data_dir])
        node = start_cluster_node(
            redis_url, f"n{index}", data_dir, self.secrets,
            log_path=data_dir / "serve.log", args=_dave_off(),
        )  # fmt: skip
        self.nodes.append(node)
        return node

    @property
    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.nodes[0].ca_path))

    def endpoint(self, node: BenchNode) -> str:
        return f"127.0.0.1:{node.port}"

    def node_at(self, endpoint: str) -> BenchNode:
        return next(node for node in self.nodes if self.endpoint(node) == endpoint)

    def log(self, node: BenchNode) -> str:
        return (node.data_dir / "serve.log").read_text(errors="replace")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _wait_settled(redis_url: str) -> None:
    """Wait until the Redis places new channels (a fresh Redis holds off for SETTLE_S)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 30
        while (since := client.get("vg:since")) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        seconds, micros = client.time()
        waited = seconds * 1000 + micros // 1000 - int(since or 0)
        time.sleep(max(0.0, SETTLE_S - waited / 1000) + 0.05)
    finally:
        client.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path)
    yield started
    started.stop()


async def _join(node: BenchNode, guild: str, channel: str, user: str) -> dict[str, Any]:
    return await asyncio.to_thread(node.join, guild, channel, user)


async def _placed(node: BenchNode, channel: str, user: str = "probe") -> str:
    endpoint: str = (await _join(node, "g", channel, user))["voice_server"]["endpoint"]
    return endpoint


def _rejoiner(nodes: list[BenchNode], channel: str, user: str) -> Any:
    """A rejoin callback: asks each node's admin API in turn until one answers."""

    async def rejoin() -> tuple[dict[str, Any], dict[str, Any]]:
        failure: Exception | None = None
        for node in nodes:
            try:
                events = await _join(node, "g", channel, user)
            except OSError as exc:  # refused, reset, or an HTTP error (503)
                failure = exc
                continue
            return events["voice_state"], events["voice_server"]
        assert failure is not None
        raise failure

    return rejoin


async def _connect(
    cluster: Cluster, via: BenchNode, channel: str, user: str, rejoin_via: list[BenchNode]
) -> VoiceConnection:
    events = await _join(via, "g", channel, user)
    return await VoiceConnection.connect(
        events["voice_state"],
        events["voice_server"],
        ssl=cluster.trust,
        rejoin=_rejoiner(rejoin_via, channel, user),
    )


async def _eventually(check: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll ``check`` (sync or async) until it returns something true; an admin API that
    refuses meanwhile (a 503 while Redis is away) counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
        except OSError:
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every)


async def _missing(store: aioredis.Redis, key: str) -> bool:
    return int(await store.exists(key)) == 0


def _view(node: BenchNode) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{node.admin_url}/v1/cluster", timeout=10) as response:
        view: dict[str, Any] = json.load(response)
    return view


def _placed_channels(view: dict[str, Any]) -> dict[str, list[str]]:
    return {n["node_id"]: sorted(c["channel_id"] for c in n["placed"]) for n in view["nodes"]}


# --- placement across nodes --------------------------------------------------------------


async def test_channels_spread_over_the_nodes_and_every_node_sends_a_channel_to_one_node(
    cluster: Cluster, redis_url: str
) -> None:
    first, second, third = cluster.start(redis_url, 3)
    placed = {channel: await _placed(first, channel) for channel in "abcdef"}
    assert len(set(placed.values())) >= 2
    for channel, endpoint in placed.items():
        assert {await _placed(node, channel, "other") for node in cluster.nodes} == {endpoint}
    view = _view(second)
    assert sorted(n["node_id"] for n in view["nodes"]) == ["n0", "n1", "n2"]
    by_node = _placed_channels(view)
    assert sorted(c for channels in by_node.values() for c in channels) == list("abcdef")
    for node in view["nodes"]:
        for channel in by_node[node["node_id"]]:
            assert placed[channel] == node["endpoint"]

    # Two members joined through two different nodes meet on the channel's node.
    speaker = await _connect(cluster, first, "a", "speaker", [])
    listener = await _connect(cluster, third, "a", "listener", [])
    assert speaker.join.endpoint == listener.join.endpoint == placed["a"]
    await audio_arrives_byte_exact(speaker, listener)
    for connection in (speaker, listener):
        await connection.close()
    metrics = first.metrics()
    assert metrics["voxgate_placement_seconds_count"] >= 7  # first's own placements
    assert metrics["voxgate_cluster_nodes_live"] == 3
    assert metrics["voxgate_cluster_channels_placed"] == 6


async def test_a_node_stopped_cleanly_has_its_channel_placed_again_at_once(
    cluster: Cluster, redis_url: str
) -> None:
    first, second = cluster.start(redis_url, 2)
    assert await _placed(second, "moving") == cluster.endpoint(first)
    first.stop()  # SIGTERM: the node drops its liveness key on the way out
    store = aioredis.Redis.from_url(redis_url)
    assert await _missing(store, "vg:alive:n0")
    await store.aclose()
    assert await _placed(second, "moving") == cluster.endpoint(second)


async def test_a_token_for_the_hosting_node_is_refused_by_another_with_4004(
    cluster: Cluster, redis_url: str
) -> None:
    first, _ = cluster.start(redis_url, 2)
    events = await _join(first, "g", "x", "wanderer")
    mine = events["voice_server"]["endpoint"]
    other = next(cluster.endpoint(n) for n in cluster.nodes if cluster.endpoint(n) != mine)
    events["voice_server"]["endpoint"] = other
    with pytest.raises(VoiceConnectionError) as refused:
        await VoiceConnection.connect(
            events["voice_state"], events["voice_server"], ssl=cluster.trust
        )
    assert refused.value.close_code == CloseCode.AUTHENTICATION_FAILED
    assert refused.value.reason == f"authentication failed: token is for another node ({mine})"


async def test_voxgate_token_asks_the_cluster_where_the_channel_lives(
    cluster: Cluster, redis_url: str
) -> None:
    first, second = cluster.start(redis_url, 2)
    placed = await _placed(first, "t")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voxgate", "token", "--data-dir", str(second.data_dir),
         "--guild", "g", "--channel", "t", "--user", "cli"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["voice_server"]["endpoint"] == placed


@pytest.mark.interop
@pytest.mark.parametrize(("sender_kind", "receiver_kind"), [("js", "dpy"), ("dpy", "js")])
async def test_discord_js_and_discord_py_hear_each_other_on_a_channel_minted_by_another_node(
    cluster: Cluster, redis_url: str, tmp_path: Path, tones: Any, sender_kind: str,
    receiver_kind: str,
) -> None:  # fmt: skip
    cluster.start(redis_url, 3)
    minting = cluster.nodes[2]
    # Real clients take snowflakes: numeric ids.
    guild, channel = "3001", "3002"
    hosting = (await _join(minting, guild, channel, "2000"))["voice_server"]["endpoint"]
    assert hosting != cluster.endpoint(minting)
    file, _ = tones(2.0, 1)
    sent = ogg_packets(file)
    async with VoiceChannel(minting, tmp_path, guild, channel) as call:
        receiver = await call.start(receiver_kind, "receive", "2001", out=True, seconds=LEAD_S + 4)
        await receiver.wait_for("listening")
        await call.start(sender_kind, "play", "2002", file=file)
        await call.finish()
    assert receiver.out is not None
    received = read_packet_log(receiver.out).get("2002", [])
    while received and received[-1] == SILENCE:
        received = received[:-1]
    assert received == sent
    assert cluster.node_at(hosting).health()["sessions"] == 0  # both left cleanly


async def test_workers_on_redis_are_nodes_of_the_cluster_and_the_supervisor_places_on_all(
    cluster: Cluster, redis_url: str
) -> None:
    [single] = cluster.start(redis_url)
    data_dir = cluster.folder / "m"
    share_tls(cluster.folder / "shared", [data_dir])
    supervisor = start_node(
        "--workers", "2", "--redis", redis_url, "--node-id", "m", *cluster.secrets.args(),
        *_dave_off(), data_dir=data_dir, ports=(0, 0, free_port()),
        log_path=data_dir / "serve.log",
    )  # fmt: skip
    cluster.nodes.append(supervisor)
    workers = {w["endpoint"] for w in supervisor.health()["workers"]}
    await _eventually(lambda: len(_view(single)["nodes"]) == 3)
    placed = {channel: await _placed(supervisor, channel) for channel in "abcdef"}
    # Three nodes (n0 and the two workers, m-0 and m-1), two channels each.
    assert sorted(n["node_id"] for n in _view(single)["nodes"]) == ["m-0", "m-1", "n0"]
    assert set(placed.values()) == {*workers, cluster.endpoint(single)}
    for channel, endpoint in placed.items():
        assert await _placed(single, channel, "other") == endpoint
    # A call on a worker, joined through the other node's admin API.
    on_worker = next(c for c, e in placed.items() if e in workers)
    speaker = await _connect(cluster, single, on_worker, "speaker", [])
    listener = await _connect(cluster, supervisor, on_worker, "listener", [])
    assert speaker.join.endpoint == listener.join.endpoint == placed[on_worker]
    await audio_arrives_byte_exact(speaker, listener)
    for connection in (speaker, listener):
        await connection.close()


# --- failover ----------------------------------------------------------------------------


async def test_kill_9_of_a_node_its_channel_is_placed_again_and_clients_stream_on_a_live_node(
    cluster: Cluster, redis_url: str
) -> None:
    cluster.start(redis_url, 3)
    minting = cluster.nodes[0]
    channel = "failover"
    victim_endpoint = await _placed(minting, channel)
    victim = cluster.node_at(victim_endpoint)
    survivors = [node for node in cluster.nodes if node is not victim]
    speaker = await _connect(cluster, survivors[0], channel, "speaker", survivors)
    listener = await _connect(cluster, survivors[1], channel, "listener", survivors)
    assert speaker.join.endpoint == listener.join.endpoint == victim_endpoint
    await audio_arrives_byte_exact(speaker, listener)

    store = aioredis.Redis.from_url(redis_url)
    victim_id = f"n{cluster.nodes.index(victim)}"
    killed = time.monotonic()
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    ttl_left_ms = await store.pttl(f"vg:alive:{victim_id}")
    await _eventually(lambda: _missing(store, f"vg:alive:{victim_id}"), every=0.05)
    lapsed = time.monotonic() - killed

    async def replaced() -> str | None:
        endpoint = await _placed(survivors[0], channel, "probe")
        return endpoint if endpoint != victim_endpoint else None

    new_endpoint = await _eventually(replaced, every=0.05)
    replaced_after = time.monotonic() - killed
    assert cluster.node_at(new_endpoint) in survivors

    # The clients come back by themselves (their rejoin asks the survivors' admin APIs).
    for connection in (speaker, listener):
        await connection.next_event(SessionRestarted, timeout=30)
    back_after = time.monotonic() - killed
    assert speaker.join.endpoint == listener.join.endpoint == new_endpoint
    assert speaker.rejoins >= 1 and listener.rejoins >= 1
    await audio_arrives_byte_exact(speaker, listener)
    streaming_after = time.monotonic() - killed
    print(
        f"\nfailover: liveness TTL left at kill {ttl_left_ms} ms (of {NODE_TTL_S * 1000:.0f}); "
        f"liveness lapsed after {lapsed:.2f} s; channel re-placed after {replaced_after:.2f} s "
        f"({victim_endpoint} -> {new_endpoint}); both clients on the new node after "
        f"{back_after:.2f} s; byte-exact audio again after {streaming_after:.2f} s "
        f"(rejoins: speaker {speaker.rejoins}, listener {listener.rejoins})"
    )
    # The re-placement waited for Redis's clock alone: never before the liveness lapsed.
    assert replaced_after >= lapsed - 0.2
    assert 0 < ttl_left_ms <= NODE_TTL_S * 1000
    for connection in (speaker, listener):
        await connection.close()
    await store.aclose()


# --- Redis trouble -----------------------------------------------------------------------


def _join_status(node: BenchNode, channel: str) -> tuple[int, dict[str, Any]]:
    try:
        return 200, node.join("g", channel, "u")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_a_redis_restart_keeps_every_call_and_the_nodes_register_again(
    cluster: Cluster,
) -> None:
    server = RedisServer().start()
    try:
        first, second = cluster.start(server.url, 2)
        held = await _placed(first, "kept")
        holder = cluster.node_at(held)
        other = first if holder is second else second
        speaker = await _connect(cluster, other, "kept", "speaker", [])
        listener = await _connect(cluster, other, "kept", "listener", [])
        await audio_arrives_byte_exact(speaker, listener)

        server.kill()
        # While Redis is down: the call goes on, its holder still mints joins for it, and a
        # join for a channel nobody holds is a clear 503.
        status, body = await asyncio.to_thread(_join_status, other, "new-while-down")
        assert status == 503 and body["retry"] is True
        assert body["error"].startswith("channel not placed: Redis at ")
        status, events = await asyncio.to_thread(_join_status, holder, "kept")
        assert status == 200 and events["voice_server"]["endpoint"] == held
        await audio_arrives_byte_exact(speaker, listener)
        health = await _eventually(
            lambda: (h := holder.health())["cluster"]["redis"] == "unreachable" and h
        )
        assert health["status"] == "degraded"

        server.start()  # same port, empty: no persistence
        # A join for the call's channel at once, through the node that does not hold it:
        # the empty Redis must not place it there before its holder claims it again.
        status, events = await asyncio.to_thread(_join_status, other, "kept")
        if status == 200:
            assert events["voice_server"]["endpoint"] == held
        else:
            assert status == 503 and "came back empty" in events["error"], events
        await _eventually(lambda: len(_view(other)["nodes"]) == 2)
        await _eventually(lambda: _placed_channels(_view(other))[_id(cluster, holder)] == ["kept"])
        assert await _placed(other, "kept", "late") == held
        fresh = await _eventually(lambda: _join_status(other, "fresh")[0] == 200)
        assert fresh
        assert "ending its" not in cluster.log(holder)
        await audio_arrives_byte_exact(speaker, listener)
        assert [(c.resumes, c.reidentifies, c.rejoins) for c in (speaker, listener)] == [
            (0, 0, 0),
            (0, 0, 0),
        ]
        assert "Redis reachable again after" in cluster.log(holder)
        metrics = holder.metrics()
        assert metrics["voxgate_redis_errors_total"] > 0
        assert metrics["voxgate_cluster_nodes_live"] == 2
        for connection in (speaker, listener):
            await connection.close()
    finally:
        server.stop()


async def test_a_node_started_while_redis_is_down_serves_and_registers_once_it_is_up(
    cluster: Cluster,
) -> None:
    server = RedisServer(port=free_port())  # not started yet
    try:
        node = await asyncio.to_thread(cluster.start_one, server.url)
        health = node.health()
        assert health["status"] == "degraded" and health["cluster"]["redis"] == "unreachable"
        status, body = await asyncio.to_thread(_join_status, node, "early")
        assert status == 503 and body["retry"] is True
        server.start()
        await _eventually(lambda: node.health()["cluster"]["redis"] == "ok")
        await asyncio.to_thread(_wait_settled, server.url)
        assert await _placed(node, "early") == cluster.endpoint(node)
        assert "Redis reachable again after" in cluster.log(node)
    finally:
        server.stop()


def _id(cluster: Cluster, node: BenchNode) -> str:
    return f"n{cluster.nodes.index(node)}"


async def test_a_node_cut_off_from_redis_is_fenced_and_no_channel_stays_split(
    cluster: Cluster, redis_url: str, redis_server: RedisServer
) -> None:
    proxy = CuttableProxy(redis_server.port)
    await proxy.start()
    db = redis_url.rsplit("/", 1)[1]
    try:
        # n0 reaches Redis only through the proxy (which runs in this event loop); n1 directly.
        [cut] = await asyncio.to_thread(cluster.start, f"redis://127.0.0.1:{proxy.port}/{db}")
        [direct] = await asyncio.to_thread(cluster.start, redis_url)
        await _eventually(lambda: len(_view(direct)["nodes"]) == 2)
        assert await _placed(direct, "split") == cluster.endpoint(cut)
        first = await _connect(cluster, direct, "split", "first", [direct])
        second = await _connect(cluster, direct, "split", "second", [direct])
        await audio_arrives_byte_exact(first, second)

        store = aioredis.Redis.from_url(redis_url)
        await proxy.block()
        await _eventually(lambda: _missing(store, "vg:alive:n0"), every=0.1)
        # Declared dead: the next join places the channel on n1, with a new epoch; the cut
        # node carries its members on meanwhile (it cannot know yet).
        assert await _placed(direct, "split", "third") == cluster.endpoint(direct)
        assert int(await store.hget('vg:chan:["g","split"]', "epoch")) == 2
        third = await _connect(cluster, direct, "split", "third", [direct])
        assert third.join.endpoint == cluster.endpoint(direct)
        await audio_arrives_byte_exact(first, second)

        proxy.unblock()
        # Back in touch, n0 learns from its reconcile that n1 holds the channel: it ends its
        # sessions (4022) and the clients rejoin where the channel is.
        for connection in (first, second):
            await connection.next_event(SessionRestarted, timeout=30)
        assert {c.join.endpoint for c in (first, second, third)} == {cluster.endpoint(direct)}
        await audio_arrives_byte_exact(first, third)
        await audio_arrives_byte_exact(third, second)
        assert cut.health()["sessions"] == 0 and direct.health()["sessions"] == 3
        # Off the event loop: n0 answers through Redis, and its Redis is behind this loop's proxy.
        view = await asyncio.to_thread(_view, cut)
        assert _placed_channels(view) == {"n0": [], "n1": ["split"]}
        assert "channel g/split is held by node n1 now: ending its 2 sessions here" in (
            cluster.log(cut)
        )
        metrics = await asyncio.to_thread(cut.metrics)
        assert metrics["voxgate_cluster_sessions_fenced_total"] == 2
        assert metrics["voxgate_cluster_claims_lost_total"] == 1
        for connection in (first, second, third):
            await connection.close()
        await store.aclose()
    finally:
        await proxy.close()
