"""``voxgate bench cluster``: N nodes on one Redis on this machine, and what placement costs.

Every node is a real ``voxgate serve --redis URL --node-id nI`` process on free ports, all
sharing one token secret, one admin key and one certificate (as nodes of one cluster
would); Redis is a throwaway ``redis-server`` without persistence. The bench measures, from
outside as an operator would:

- joins per second through the nodes' admin APIs (``POST /v1/voice/join``, spread over all
  nodes, a new channel every ``per_channel`` joins) and their round-trip p50 and p99;
- placement latency p50 and p99 as the nodes measure it (``/healthz``);
- Redis commands per join and per heartbeat, from Redis's own ``INFO commandstats`` (the
  calls a node sends, and the commands its scripts run inside Redis);
- the relay's throughput on a cluster node next to a plain one (optional, ``--relay``), to
  show the cluster costs the media path nothing.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxgate.bench.node import BenchNode, start_node
from voxgate.bench.redis_server import RedisServer
from voxgate.server.placement import HEARTBEAT_S

#: Commands a node sends itself (the rest of commandstats ran inside its scripts).
SENT = ("evalsha", "eval", "script|load", "script", "ping", "del", "smembers")


@dataclass
class ClusterSecrets:
    secret: str
    admin_key: str

    @classmethod
    def make(cls) -> ClusterSecrets:
        return cls(secrets.token_hex(32), secrets.token_urlsafe(32))

    def args(self) -> list[str]:
        return ["--secret", self.secret, "--admin-key", self.admin_key]


def share_tls(folder: Path, data_dirs: Sequence[Path]) -> None:
    """One CA and one certificate (for 127.0.0.1) in every node's data dir, so a client
    trusts whichever node a join sends it to with the same ``tls/ca.pem``."""
    from voxgate.server.tls import ensure_self_signed

    ensure_self_signed(folder, [])
    for data_dir in data_dirs:
        data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder / "tls", data_dir / "tls", dirs_exist_ok=True)


def start_cluster_node(
    redis_url: str,
    node_id: str,
    data_dir: Path,
    cluster: ClusterSecrets,
    *,
    log_path: Path | None = None,
    ports: tuple[int, int, int] | None = None,
    args: Sequence[str] = (),
) -> BenchNode:
    return start_node(
        "--redis", redis_url, "--node-id", node_id, *cluster.args(), *args,
        data_dir=data_dir, log_path=log_path, ports=ports,
    )  # fmt: skip


def start_cluster(
    count: int, redis_url: str, folder: Path, cluster: ClusterSecrets, *, logs: bool = False
) -> list[BenchNode]:
    dirs = [folder / f"n{index}" for index in range(count)]
    share_tls(folder / "shared", dirs)
    nodes: list[BenchNode] = []
    try:
        for index, data_dir in enumerate(dirs):
            log_path = data_dir / "serve.log" if logs else None
            nodes.append(
                start_cluster_node(redis_url, f"n{index}", data_dir, cluster, log_path=log_path)
            )
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def commandstats(port: int) -> dict[str, int]:
    """``INFO commandstats`` of the Redis on ``port``: calls by command."""
    import redis

    client = redis.Redis(port=port)
    try:
        raw = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in raw.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}


def _split(delta: dict[str, int]) -> tuple[int, int]:
    sent = sum(count for name, count in delta.items() if name in SENT)
    return sent, sum(delta.values())


def _join(node: BenchNode, key: str, guild: str, channel: str, user: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{node.admin_url}/v1/voice/join",
        data=json.dumps({"guild_id": guild, "channel_id": channel, "user_id": user}).encode(),
        headers={"Authorization": f"Bearer {key}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        events: dict[str, Any] = json.load(response)
    return events


async def _joins(
    nodes: list[BenchNode], key: str, count: int, per_channel: int, parallel: int
) -> tuple[float, list[float], dict[str, int]]:
    loop = asyncio.get_running_loop()
    semaphore = asyncio.Semaphore(parallel)
    latencies: list[float] = []
    landed: dict[str, int] = {}

    async def one(index: int) -> None:
        node = nodes[index % len(nodes)]
        async with semaphore:
            started = time.perf_counter()
            events = await loop.run_in_executor(
                None, _join, node, key, "bench", f"c{index // per_channel}", f"u{index}"
            )
            latencies.append(time.perf_counter() - started)
        endpoint = events["voice_server"]["endpoint"]
        landed[endpoint] = landed.get(endpoint, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(count)))
    return time.perf_counter() - started, latencies, landed


def _ms(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 2)


async def run(
    nodes: int = 3,
    joins: int = 2000,
    per_channel: int = 4,
    parallel: int = 16,
    idle_s: float = 6.0,
) -> dict[str, Any]:
    """Start Redis and ``nodes`` nodes, measure, stop them all; returns the figures."""
    folder = Path(tempfile.mkdtemp(prefix="voxgate-bench-cluster-"))
    server = RedisServer().start()
    cluster = ClusterSecrets.make()
    started: list[BenchNode] = []
    try:
        started = start_cluster(nodes, server.url, folder, cluster)
        await asyncio.sleep(HEARTBEAT_S * 2)  # every node registered and beating

        # Heartbeats alone: the cluster at rest.
        before = commandstats(server.port)
        await asyncio.sleep(idle_s)
        idle = _delta(before, commandstats(server.port))
        beats = nodes * idle_s / HEARTBEAT_S
        idle_sent, idle_total = _split(idle)

        # Joins (heartbeats go on meanwhile: their share is taken out).
        before = commandstats(server.port)
        seconds, latencies, landed = await _joins(
            started, cluster.admin_key, joins, per_channel, parallel
        )
        during = _delta(before, commandstats(server.port))
        sent, total = _split(during)
        beats_during = nodes * seconds / HEARTBEAT_S
        per_beat_sent, per_beat_total = idle_sent / beats, idle_total / beats
        health = [node.health()["cluster"] for node in started]
        placement = [h["placement_latency"] for h in health if h["placement_latency"]]
        return {
            "nodes": nodes,
            "joins": joins,
            "channels": -(-joins // per_channel),
            "parallel_requests": parallel,
            "joins_per_s": round(joins / seconds, 1),
            "join_round_trip_p50_ms": _ms(latencies, 0.50),
            "join_round_trip_p99_ms": _ms(latencies, 0.99),
            "placement_p50_ms": round(statistics.median(p["p50_ms"] for p in placement), 3),
            "placement_p99_ms": round(max(p["p99_ms"] for p in placement), 3),
            "redis_calls_per_join": round((sent - beats_during * per_beat_sent) / joins, 2),
            "redis_commands_per_join": round((total - beats_during * per_beat_total) / joins, 2),
            "redis_calls_per_heartbeat": round(per_beat_sent, 2),
            "redis_commands_per_heartbeat": round(per_beat_total, 2),
            "heartbeat_s": HEARTBEAT_S,
            "joins_by_node": dict(sorted(landed.items())),
            "idle_commandstats": idle,
            "joins_commandstats": during,
        }
    finally:
        for node in started:
            node.stop()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
