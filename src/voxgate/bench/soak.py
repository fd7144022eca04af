"""The soak: many connect / identify / stream / disconnect cycles, and nothing left behind.

Each cycle is a real voxgate client joining through the whole handshake, sending a few
frames to a channel partner, and leaving. Before and after, the node's sessions, asyncio
tasks, open file descriptors and RSS are read; a node that leaks shows it here.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import ssl
import time
from dataclasses import asdict, dataclass
from typing import Any

from voxgate.bench.node import BenchNode
from voxgate.client import VoiceConnection


@dataclass
class Vitals:
    sessions: int
    tasks: int
    open_fds: int
    rss_mb: float


@dataclass
class SoakResult:
    cycles: int
    concurrency: int
    failures: int
    seconds: float
    before: Vitals
    after: Vitals

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def vitals(node: BenchNode) -> Vitals:
    health = node.health()
    return Vitals(
        sessions=int(health["sessions"]),
        tasks=int(health.get("tasks", -1)),
        open_fds=node.open_fds(),
        rss_mb=round(node.rss_bytes() / 1e6, 1),
    )


async def _settle(node: BenchNode, timeout: float = 10.0) -> None:
    """Wait for the node to have no sessions left (leaves are processed asynchronously)."""
    deadline = time.monotonic() + timeout
    while node.health()["sessions"] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def soak(node: BenchNode, cycles: int, concurrency: int, frames: int = 5) -> SoakResult:
    trust = ssl.create_default_context(cafile=str(node.ca_path))
    ids = itertools.count()
    failures = 0
    done = 0
    # Warm up once so lazily made things (TLS contexts, imports) do not count as growth.
    await _cycle(node, trust, "warm", frames)
    await _settle(node)
    gc.collect()
    before = vitals(node)
    started = time.monotonic()

    async def worker() -> None:
        nonlocal failures, done
        while done < cycles:
            done += 1
            try:
                await _cycle(node, trust, str(next(ids)), frames)
            except Exception:
                failures += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    took = time.monotonic() - started
    await _settle(node)
    return SoakResult(cycles, concurrency, failures, round(took, 1), before, vitals(node))


async def _cycle(node: BenchNode, trust: ssl.SSLContext, tag: str, frames: int) -> None:
    loop = asyncio.get_running_loop()
    events = await loop.run_in_executor(None, node.join, "soak", f"channel-{tag}", f"user-{tag}")
    connection = await VoiceConnection.connect(
        events["voice_state"], events["voice_server"], ssl=trust
    )
    try:
        await connection.set_speaking(True)
        for _ in range(frames):
            connection.send_opus(b"\xfc\xff\xfe")
            await asyncio.sleep(0.02)
    finally:
        await connection.close()
