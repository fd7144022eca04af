"""``voxgate bench idle``: what a node spends on sessions that are joined and silent.

Many members identify, get described and then only heartbeat, as most members of a large
server do most of the time. The node's CPU over a window and its RSS per session show
the cost of the gateway side alone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from voxgate.bench.node import join_many, start_node
from voxgate.client import VoiceConnection


async def run(
    sessions: int = 1000, seconds: float = 10.0, heartbeat_ms: float = 5000
) -> dict[str, Any]:
    node = start_node("--heartbeat-interval", str(heartbeat_ms), cpu=0)
    connections: list[VoiceConnection] = []
    try:
        rss_before = node.rss_bytes()
        joined_at = time.monotonic()
        connections = await join_many(node, sessions, lambda index: f"c{index // 10}", guild="idle")
        join_seconds = time.monotonic() - joined_at
        await asyncio.sleep(1.0)
        cpu_before = node.cpu_seconds()
        started = time.monotonic()
        await asyncio.sleep(seconds)
        took = time.monotonic() - started
        cpu = node.cpu_seconds() - cpu_before
        health = node.health()
        rss = node.rss_bytes()
        return {
            "sessions": health["sessions"],
            "join_seconds": round(join_seconds, 1),
            "cpu_percent_of_a_core": round(100 * cpu / took, 2),
            "rss_mb": round(rss / 1e6, 1),
            "rss_per_session_kb": round((rss - rss_before) / 1024 / max(sessions, 1), 1),
            "heartbeat_interval_ms": heartbeat_ms,
        }
    finally:
        await asyncio.gather(*(connection.close() for connection in connections))
        node.stop()
