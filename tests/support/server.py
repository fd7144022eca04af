"""A real ``voxgate serve`` in its own process, on free ports, with a temporary data dir.

This is what a bot's test suite would do to test against voxgate: start the node, wait for
``/healthz``, mint the two join events through ``POST /v1/voice/join`` and hand them to
the client under test. The launching is :mod:`voxgate.bench.node`'s; this adds what tests
read: the node's log and its Prometheus samples.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from voxgate.bench.node import BenchNode, start_node


@dataclass
class RunningServer(BenchNode):
    """A ``voxgate serve`` process and what a client needs to join it."""

    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin_key").read_text().strip()

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.port, self.udp_port, self.admin_port

    def dropped(self, reason: str) -> float:
        return self.metrics().get(f'voxgate_packets_dropped_total{{reason="{reason}"}}', 0.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to close anything."""
        self.process.kill()
        self.process.wait()


def start_server(
    data_dir: Path, *args: str, ports: tuple[int, int, int] | None = None
) -> RunningServer:
    """Start ``voxgate serve`` with ``args`` and wait until its admin API says it is healthy.

    ``ports`` (gateway, udp, admin) restarts a node where it was; by default any free ones.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"server-{time.monotonic_ns()}.log"
    node = start_node(*args, data_dir=data_dir, ports=ports, log_path=log_path)
    return RunningServer(
        node.process, node.data_dir, node.port, node.udp_port, node.admin_port, log_path
    )
