"""Start ``voxgate serve`` in its own process for a benchmark, and read its vital signs.

Benchmarks measure the node from outside, as an operator would: CPU time and RSS from
``/proc/<pid>``, open file descriptors, and the admin API's ``/healthz`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxgate.client import VoiceConnection

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BenchNode:
    process: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    udp_port: int
    admin_port: int

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    def join(self, guild: str, channel: str, user: str, key: str | None = None) -> dict[str, Any]:
        """POST /v1/voice/join as ``user``; ``key`` is the admin key (default: the node's own)."""
        if key is None:
            key = (self.data_dir / "admin_key").read_text().strip()
        request = urllib.request.Request(
            f"{self.admin_url}/v1/voice/join",
            data=json.dumps({"guild_id": guild, "channel_id": channel, "user_id": user}).encode(),
            headers={"Authorization": f"Bearer {key}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            events: dict[str, Any] = json.load(response)
        return events

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.admin_url}/healthz", timeout=10) as response:
            health: dict[str, Any] = json.load(response)
        return health

    def metrics(self) -> dict[str, float]:
        """The Prometheus samples of ``/metrics``, by name with labels."""
        with urllib.request.urlopen(f"{self.admin_url}/metrics", timeout=10) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def media_path(self) -> str:
        """"native" or "python": the media path the node runs, as its /metrics says."""
        with urllib.request.urlopen(f"{self.admin_url}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("voxgate_media_path{") and line.endswith(" 1.0"):
                    return line.split('"')[1]
        return "unknown"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


#: A port found free may be taken by another process before the node binds it (the tests
#: start nodes from several processes at once): a node that cannot start on ports picked
#: here is started again on new ones, this many times in all.
FREE_PORT_ATTEMPTS = 5


def start_node(
    *args: str,
    cpu: int | None = None,
    data_dir: Path | None = None,
    ports: tuple[int, int, int] | None = None,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> BenchNode:
    """A node on free ports (or ``ports``: gateway, udp, admin), healthy on return.

    Pinned to ``cpu`` when given and the machine allows; logs at INFO into ``log_path``
    when given, else only warnings, to nowhere. ``env`` adds to its environment (for
    instance ``VOXGATE_NO_EXTENSIONS=1``, the pure-Python media path).
    """
    folder = data_dir or Path(tempfile.mkdtemp(prefix="voxgate-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    attempts = 1 if ports is not None else FREE_PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        chosen = ports or (free_port(), free_port(socket.SOCK_DGRAM), free_port())
        try:
            return _launch(args, chosen, folder, cpu, log_path, env)
        except _ExitedEarly as exc:
            if attempt == attempts:
                raise RuntimeError(str(exc)) from None
    raise AssertionError("unreachable")


class _ExitedEarly(Exception):
    pass


def _launch(
    args: tuple[str, ...],
    ports: tuple[int, int, int],
    folder: Path,
    cpu: int | None,
    log_path: Path | None,
    env: Mapping[str, str] | None,
) -> BenchNode:
    environment = {**os.environ, **(env or {})}
    port, udp_port, admin_port = ports
    command = [
        sys.executable,
        "-m",
        "voxgate",
        "serve",
        "--data-dir",
        str(folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--udp-port",
        str(udp_port),
        "--admin-port",
        str(admin_port),
        "--log-level",
        "info" if log_path else "warning",
        *args,
    ]
    if log_path is not None:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**environment, "PYTHONUNBUFFERED": "1"},
            )
    else:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
        )
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(process.pid, {cpu})
    node = BenchNode(process, folder, port, udp_port, admin_port)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise _ExitedEarly(
                f"voxgate serve exited with {process.returncode}{_tail(log_path)}"
            )
        try:
            node.health()
            return node
        except OSError:
            if time.monotonic() > deadline:
                node.stop()
                raise RuntimeError(
                    f"voxgate serve did not become healthy{_tail(log_path)}"
                ) from None
            time.sleep(0.1)


def _tail(log_path: Path | None) -> str:
    if log_path is None or not log_path.exists():
        return ""
    return ":\n" + log_path.read_text(errors="replace")[-4000:]


async def join_many(
    node: BenchNode,
    count: int,
    channel_of: Callable[[int], str],
    *,
    guild: str = "bench",
    parallel: int = 50,
) -> list[VoiceConnection]:
    """``count`` voxgate clients joined to ``node`` through the whole handshake."""
    trust = ssl.create_default_context(cafile=str(node.ca_path))
    loop = asyncio.get_running_loop()
    semaphore = asyncio.Semaphore(parallel)
    connections: list[VoiceConnection] = []

    async def join(index: int) -> None:
        async with semaphore:
            events = await loop.run_in_executor(
                None, node.join, guild, channel_of(index), f"u{index}"
            )
            connections.append(
                await VoiceConnection.connect(
                    events["voice_state"], events["voice_server"], ssl=trust
                )
            )

    await asyncio.gather(*(join(index) for index in range(count)))
    return connections
