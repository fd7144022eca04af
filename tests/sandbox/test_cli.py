"""``voxgate sandbox`` as a process: its ready line, ``sandbox.json`` (fields, ids as strings,
written once everything accepts), SIGTERM, and the same bots logging in again after a
restart on the same data dir."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from tests.sandbox.conftest import RawGateway

READY_PREFIX = "voxgate sandbox ready "


class SandboxProcess:
    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voxgate",
                "sandbox",
                "--port",
                "0",
                "--data-dir",
                str(data_dir),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._ready = threading.Event()
        threading.Thread(
            target=self._pump, args=(self.process.stdout, self.stdout), daemon=True
        ).start()
        threading.Thread(
            target=self._pump, args=(self.process.stderr, self.stderr), daemon=True
        ).start()

    def _pump(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))
            if line.startswith(READY_PREFIX):
                self._ready.set()

    def ready_line(self, timeout: float = 60) -> str:
        if not self._ready.wait(timeout):
            self.process.kill()
            raise AssertionError("no ready line:\n" + "\n".join(self.stdout + self.stderr))
        return next(line for line in self.stdout if line.startswith(READY_PREFIX))

    @property
    def info(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "sandbox.json").read_text())

    def terminate(self, timeout: float = 20) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def start_sandbox(tmp_path: Path) -> Iterator[Any]:
    started: list[SandboxProcess] = []

    def start(data_dir: Path | None = None, *args: str) -> SandboxProcess:
        process = SandboxProcess(data_dir or tmp_path / "sandbox", *args)
        started.append(process)
        process.ready_line()
        return process

    yield start
    for process in started:
        process.kill()


def accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


async def me(api: str, token: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{api}/v10/users/@me", headers={"Authorization": f"Bot {token}"}) as response,
    ):
        assert response.headers["Content-Type"] == "application/json"
        return dict(await response.json())


async def test_ready_line_and_sandbox_json(start_sandbox: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "existing"
    data_dir.mkdir()
    (data_dir / "keep.txt").write_text("the data dir may already exist")
    sandbox = start_sandbox(data_dir)
    info = sandbox.info
    line = sandbox.ready_line()
    assert f"api={info['api']}" in line and f"gateway={info['gateway']}" in line
    assert str(data_dir / "sandbox.json") in line

    assert set(info) >= {
        "api",
        "gateway",
        "ca",
        "ca_bundle",
        "control",
        "control_key",
        "guild_id",
        "voice_channel_id",
        "text_channel_id",
        "bots",
    }
    assert info["api"].startswith("http://127.0.0.1:") and info["api"].endswith("/api")
    assert info["gateway"].startswith("ws://127.0.0.1:") and info["gateway"].endswith("/gateway")
    assert info["control"].startswith("http://127.0.0.1:")
    for name in ("guild_id", "voice_channel_id", "text_channel_id"):
        assert isinstance(info[name], str) and info[name].isdigit()
    assert len(info["bots"]) == 2
    for bot in info["bots"]:
        assert all(isinstance(bot[key], str) for key in ("user_id", "token", "application_id"))
        assert bot["user_id"].isdigit()
        assert (await me(info["api"], bot["token"]))["id"] == bot["user_id"]
    assert not [p for p in data_dir.iterdir() if p.name.endswith(".tmp")]

    # `ca` is the issuing CA; the bundle holds it and the system's CAs; TLS lives in the dir.
    ca = x509.load_pem_x509_certificate(Path(info["ca"]).read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert Path(info["ca"]).parent == data_dir / "tls"
    bundle = Path(info["ca_bundle"]).read_text()
    assert Path(info["ca"]).read_text().strip() in bundle
    assert bundle.count("BEGIN CERTIFICATE") > 1

    # Everything accepts: REST + gateway, control, and the voice node over TLS for 127.0.0.1.
    host, port = info["voice_endpoint"].rsplit(":", 1)
    context = ssl.create_default_context(cafile=info["ca"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host),
    ):
        pass
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{info['control']}/v1/sandbox",
            headers={"Authorization": f"Bearer {info['control_key']}"},
        ) as response,
    ):
        assert response.status == 200 and await response.json() == info
    gateway = await RawGateway.connect(info["gateway"])
    ready = await gateway.identify(info["bots"][0]["token"])
    assert ready["user"]["id"] == info["bots"][0]["user_id"]
    await gateway.close()


async def test_sigterm_exits_cleanly_and_a_restart_keeps_bots_and_logs_in_again(
    start_sandbox: Any, tmp_path: Path
) -> None:
    first = start_sandbox(tmp_path / "sandbox", "--bots", "3")
    info = first.info
    assert len(info["bots"]) == 3
    gateway = await RawGateway.connect(info["gateway"])
    await gateway.identify(info["bots"][2]["token"], 1 | 1 << 7)
    await gateway.send(
        {"op": 4, "d": {"guild_id": info["guild_id"], "channel_id": info["voice_channel_id"]}}
    )
    await gateway.dispatch("VOICE_SERVER_UPDATE")

    exited = asyncio.create_task(asyncio.to_thread(first.terminate))
    code, _ = await gateway.closed()
    assert code == 1001
    assert await exited == 0
    await gateway.close()
    # Everything it started went with it: REST and gateway, control, the voice node.
    api_port = int(info["api"].rsplit(":", 1)[1].split("/")[0])
    control_port = int(info["control"].rsplit(":", 1)[1])
    voice_port = int(info["voice_endpoint"].rsplit(":", 1)[1])
    for port in (api_port, control_port, voice_port):
        assert not accepts_tcp("127.0.0.1", port)

    second = start_sandbox(tmp_path / "sandbox", "--bots", "3")
    again = second.info
    assert again["bots"] == info["bots"]
    assert (again["guild_id"], again["voice_channel_id"], again["text_channel_id"]) == (
        info["guild_id"],
        info["voice_channel_id"],
        info["text_channel_id"],
    )
    assert Path(again["ca"]).read_bytes() == Path(info["ca"]).read_bytes()
    gateway = await RawGateway.connect(again["gateway"])
    ready = await gateway.identify(again["bots"][2]["token"], 1 | 1 << 7)
    assert ready["user"]["id"] == info["bots"][2]["user_id"]
    guild = (await gateway.dispatch("GUILD_CREATE"))["d"]
    assert guild["voice_states"] == []
    await gateway.close()
    assert second.terminate() == 0


@pytest.mark.parametrize("policy", ["off", "preferred", "required"])
async def test_dave_policy_is_accepted(start_sandbox: Any, tmp_path: Path, policy: str) -> None:
    sandbox = start_sandbox(tmp_path / policy, "--dave", policy)
    assert sandbox.info["dave"] == policy
    assert f"dave={policy}" in sandbox.ready_line()


def _sandbox_fails(data_dir: Path, *args: str) -> str:
    """Run ``voxgate sandbox`` with ``args``; it must exit 1. Returns its stderr, stripped."""
    result = subprocess.run(
        [sys.executable, "-m", "voxgate", "sandbox", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    return result.stderr.strip()


def test_a_bad_flag_fails_in_one_line(tmp_path: Path) -> None:
    assert (
        _sandbox_fails(tmp_path, "--dave", "on")
        == "voxgate: --dave must be off, preferred or required, not 'on'"
    )


def test_a_port_in_use_fails_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stderr = _sandbox_fails(tmp_path, "--port", str(port))
    assert stderr.splitlines()[-1].startswith("voxgate: cannot listen on 127.0.0.1")
    assert not (tmp_path / "sandbox.json").exists()


def test_sigterm_while_bots_are_connected(start_sandbox: Any) -> None:
    sandbox = start_sandbox()

    async def connect_and_hold() -> None:
        gateway = await RawGateway.connect(sandbox.info["gateway"])
        await gateway.identify(sandbox.info["bots"][0]["token"])
        exited = asyncio.create_task(asyncio.to_thread(sandbox.terminate))
        code, _ = await gateway.closed()
        assert code == 1001
        assert await exited == 0
        await gateway.close()

    asyncio.run(connect_and_hold())


async def test_host_is_used_by_every_url_the_voice_endpoint_and_the_certificate(
    start_sandbox: Any, tmp_path: Path
) -> None:
    host = "127.0.0.2"  # loopback too, on Linux
    sandbox = start_sandbox(tmp_path / "host", "--host", host)
    info = sandbox.info
    for name in ("api", "gateway", "control"):
        assert info[name].split("//", 1)[1].startswith(f"{host}:")
    assert info["voice_endpoint"].startswith(f"{host}:")
    cert = x509.load_pem_x509_certificate((tmp_path / "host" / "tls" / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert host in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    port = int(info["voice_endpoint"].rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=info["ca"])
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host),
    ):
        pass
    assert (await me(info["api"], info["bots"][0]["token"]))["id"] == info["bots"][0]["user_id"]


def test_an_unknown_privileged_intent_fails_in_one_line(tmp_path: Path) -> None:
    stderr = _sandbox_fails(tmp_path, "--privileged-intents", "members,voice")
    assert stderr.startswith("voxgate: --privileged-intents: unknown privileged intent 'voice'")
