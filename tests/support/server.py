"""A real ``voxgate serve`` in its own process, on free ports, with a temporary data dir.

This is what a bot's test suite would do to test against voxgate: start the node, wait for
``/healthz``, mint the two join events through ``POST /v1/voice/join`` and hand them to
the client under test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 30.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A ``voxgate serve`` process and what a client needs to join it."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    udp_port: int
    admin_port: int
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin_key").read_text().strip()

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def join(self, guild: str, channel: str, user: str) -> dict[str, Any]:
        """The VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE payloads for ``user``."""
        request = urllib.request.Request(
            f"{self.admin_url}/v1/voice/join",
            data=json.dumps({"guild_id": guild, "channel_id": channel, "user_id": user}).encode(),
            headers={"Authorization": f"Bearer {self.admin_key}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            events: dict[str, Any] = json.load(response)
        return events

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

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.port, self.udp_port, self.admin_port

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    data_dir: Path, *args: str, ports: tuple[int, int, int] | None = None
) -> RunningServer:
    """Start ``voxgate serve`` with ``args`` and wait until its admin API says it is healthy.

    ``ports`` (gateway, udp, admin) restarts a node where it was; by default any free ones.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port, udp_port, admin_port = ports or (free_port(), free_port(socket.SOCK_DGRAM), free_port())
    log_path = data_dir / f"server-{port}-{time.monotonic_ns()}.log"
    command = [
        sys.executable,
        "-m",
        "voxgate",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--udp-port",
        str(udp_port),
        "--admin-port",
        str(admin_port),
        "--data-dir",
        str(data_dir),
        *args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = RunningServer(process, data_dir, port, udp_port, admin_port, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"voxgate serve exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.admin_url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"voxgate serve did not become healthy:\n{server.log()}")
        time.sleep(0.1)
