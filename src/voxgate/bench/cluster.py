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
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxgate.bench.node import BenchNode, start_node
from voxgate.bench.redis_server import RedisServer
from voxgate.server.placement import HEARTBEAT_S
from voxgate.server.redis_placement import FULL_EVERY

#: Commands a node sends itself (the rest of commandstats ran inside its scripts).
SENT = ("evalsha", "eval", "script|load", "script|exists", "ping", "hello")
#: The bench's own questions to Redis, counted out.
OWN = ("info",)


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
    """``INFO commandstats`` of the Redis on ``port``: calls by command, and the CPU time
    Redis has used (µs) as ``cpu_us``."""
    import redis

    client = redis.Redis(port=port)
    try:
        raw = client.info("commandstats")
        cpu = client.info("cpu")
    finally:
        client.close()
    calls = {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in raw.items()}
    calls["cpu_us"] = int((cpu["used_cpu_user"] + cpu["used_cpu_sys"]) * 1e6)
    # Time spent executing what the nodes sent (a script's usec includes what it ran).
    calls["exec_us"] = sum(
        int(stats["usec"]) for name, stats in raw.items() if name.removeprefix("cmdstat_") in SENT
    )
    return calls


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}


def _split(delta: dict[str, int]) -> tuple[int, int]:
    """(calls sent by the nodes, commands Redis ran for them)."""
    sent = sum(count for name, count in delta.items() if name in SENT)
    ran = sum(count for name, count in delta.items() if name not in (*OWN, "cpu_us", "exec_us"))
    return sent, ran


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
                None, node.join, "bench", f"c{index // per_channel}", f"u{index}", key
            )
            latencies.append(time.perf_counter() - started)
        endpoint = events["voice_server"]["endpoint"]
        landed[endpoint] = landed.get(endpoint, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(count)))
    return time.perf_counter() - started, latencies, landed


def asdict_step(step: Any) -> dict[str, Any]:
    keep = ("channels", "members", "offered_pps", "forwarded_pps", "loss", "latency_p50_ms",
            "latency_p99_ms", "server_cpu", "cpu_ms_per_1000", "generator")  # fmt: skip
    return {name: getattr(step, name) for name in keep}


def _ms(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 2)


async def _idle(
    port: int, nodes: int, seconds: float, baseline_us_per_s: float
) -> tuple[float, float, float, dict[str, int]]:
    """Redis calls, commands and CPU µs per heartbeat while only heartbeats happen (the
    CPU Redis spends on itself, ``baseline_us_per_s``, taken out)."""
    before = commandstats(port)
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    delta = _delta(before, commandstats(port))
    elapsed = time.perf_counter() - started
    beats = nodes * elapsed / HEARTBEAT_S
    sent, total = _split(delta)
    cpu = delta.get("cpu_us", 0) - baseline_us_per_s * elapsed
    delta["exec_us_per_beat"] = round(delta.get("exec_us", 0) / beats)
    return sent / beats, total / beats, max(cpu, 0.0) / beats, delta


async def relay_on(node: BenchNode, channels: int, seconds: float, loadgen: Path | None) -> Any:
    """One fixed load (``channels`` x 10 members, two speakers each) on ``node``."""
    from voxgate.bench.relay import AES, VoxgateRelay, measure

    relay = VoxgateRelay(node)
    return await measure(relay, channels, 10, 2, (AES,), seconds, loadgen=loadgen)


async def run(
    nodes: int = 3,
    joins: int = 2000,
    per_channel: int = 4,
    parallel: int = 16,
    idle_s: float = 6.0,
    relay_channels: int = 0,
    relay_seconds: float = 3.0,
    loadgen: Path | None = None,
    holding_s: float | None = None,
) -> dict[str, Any]:
    """Start Redis and ``nodes`` nodes, measure, stop them all; returns the figures.

    ``relay_channels`` > 0 also puts that fixed relay load on a plain node and on a node of
    a one-node cluster, one after the other, to compare their throughput. ``holding_s``
    is the window for heartbeats holding claims (default: one full reconcile per node).
    """
    folder = Path(tempfile.mkdtemp(prefix="voxgate-bench-cluster-"))
    server = RedisServer().start()
    cluster = ClusterSecrets.make()
    started: list[BenchNode] = []
    try:
        # What Redis spends on itself (its cron), with no node: taken out of the rest.
        before = commandstats(server.port)
        await asyncio.sleep(idle_s)
        baseline = _delta(before, commandstats(server.port)).get("cpu_us", 0) / idle_s
        started = start_cluster(nodes, server.url, folder, cluster)
        await asyncio.sleep(HEARTBEAT_S * 2)  # every node registered and beating

        # Heartbeats alone: the cluster at rest.
        per_beat_sent, per_beat_total, per_beat_cpu, idle = await _idle(
            server.port, nodes, idle_s, baseline
        )

        # Joins (heartbeats go on meanwhile: their share is taken out).
        before = commandstats(server.port)
        seconds, latencies, landed = await _joins(
            started, cluster.admin_key, joins, per_channel, parallel
        )
        during = _delta(before, commandstats(server.port))
        sent, total = _split(during)
        beats_during = nodes * seconds / HEARTBEAT_S
        health = [node.health()["cluster"] for node in started]
        placement = [h["placement_latency"] for h in health if h["placement_latency"]]
        # Heartbeats again, now that every node holds its share of the claims, over a
        # window holding one full reconcile per node (the others read only what changed).
        await asyncio.sleep(HEARTBEAT_S * 2)
        held_sent, held_total, held_cpu, held = await _idle(
            server.port,
            nodes,
            holding_s if holding_s is not None else max(idle_s, FULL_EVERY * HEARTBEAT_S),
            baseline,
        )
        result = {
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
            "redis_cpu_us_per_join": round(
                (during.get("cpu_us", 0) - (beats_during * per_beat_cpu + baseline * seconds))
                / joins,
                1,
            ),
            "redis_cpu_us_per_s_at_rest": round(baseline, 1),
            "redis_exec_us_per_join": round(
                (during.get("exec_us", 0) - beats_during * idle["exec_us_per_beat"]) / joins, 1
            ),
            "redis_exec_us_per_heartbeat": idle["exec_us_per_beat"],
            "redis_exec_us_per_heartbeat_holding": held["exec_us_per_beat"],
            "redis_cpu_us_per_heartbeat": round(per_beat_cpu, 1),
            "redis_cpu_us_per_heartbeat_holding": round(held_cpu, 1),
            "redis_calls_per_heartbeat": round(per_beat_sent, 2),
            "redis_commands_per_heartbeat": round(per_beat_total, 2),
            "redis_calls_per_heartbeat_holding": round(held_sent, 2),
            "redis_commands_per_heartbeat_holding": round(held_total, 2),
            "claims_held_per_node": round(-(-joins // per_channel) / nodes, 1),
            "heartbeat_s": HEARTBEAT_S,
            "full_reconcile_every": FULL_EVERY,
            "joins_by_node": dict(sorted(landed.items())),
            "idle_commandstats": idle,
            "joins_commandstats": during,
        }
        if relay_channels:
            for node in started:
                node.stop()
            started = []
            plain = start_node(data_dir=folder / "plain")
            started.append(plain)
            alone = start_cluster_node(server.url_for(1), "solo", folder / "solo", cluster)
            started.append(alone)
            result["relay"] = {
                name: asdict_step(await relay_on(node, relay_channels, relay_seconds, loadgen))
                for name, node in (("plain", plain), ("cluster", alone))
            }
        return result
    finally:
        for node in started:
            node.stop()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
