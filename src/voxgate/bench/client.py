"""``voxgate bench client``: many players in one process, and how evenly they pace.

K voxgate clients join a node and each plays an Ogg/Opus file by passthrough. What is
measured is the client side: how late each 20 ms frame left against its schedule (p50,
p99) and the CPU this process spent per stream.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import av

from voxgate.bench.node import join_many, start_node
from voxgate.client import AudioPlayer, OggOpusSource, VoiceConnection


def make_ogg(path: Path, seconds: float) -> None:
    """A 440 Hz tone as Ogg/Opus, 20 ms frames."""
    import math
    import struct

    container = av.open(str(path), "w", format="ogg")
    stream = container.add_stream("libopus", rate=48000)
    stream.layout = "stereo"
    pts = 0
    for _ in range(int(seconds * 50)):
        samples = b"".join(
            struct.pack("<hh", value, value)
            for value in (
                int(8000 * math.sin(2 * math.pi * 440 * (pts + n) / 48000)) for n in range(960)
            )
        )
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        frame.planes[0].update(samples)
        frame.sample_rate = 48000
        frame.pts = pts
        pts += 960
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()


def _process_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def run(players: int = 500, seconds: float = 10.0) -> dict[str, Any]:
    node = start_node(cpu=0)
    ogg = Path(tempfile.mkdtemp(prefix="voxgate-bench-")) / "tone.ogg"
    make_ogg(ogg, seconds)
    frames = list(OggOpusSource(ogg).frames())
    connections: list[VoiceConnection] = []
    try:
        connections = await join_many(node, players, lambda index: f"c{index}", guild="client")
        cpu_before = _process_cpu()
        started = time.monotonic()
        playing = [AudioPlayer(connection, frames) for connection in connections]
        await asyncio.gather(*(player.play() for player in playing))
        took = time.monotonic() - started
        cpu = _process_cpu() - cpu_before
        lateness = sorted(late for player in playing for late in player.lateness)
        return {
            "players": players,
            "seconds": round(took, 1),
            "frames_sent": sum(player.frames_sent for player in playing),
            "jitter_p50_ms": round(lateness[len(lateness) // 2] * 1000, 3),
            "jitter_p99_ms": round(lateness[int(len(lateness) * 0.99) - 1] * 1000, 3),
            "cpu_percent_of_a_core": round(100 * cpu / took, 1),
            "cpu_ms_per_stream_second": round(1000 * cpu / took / players, 3),
        }
    finally:
        await asyncio.gather(*(connection.close() for connection in connections))
        node.stop()
