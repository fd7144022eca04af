"""``voxgate serve --workers N``: the endpoint claim, the placement rules, and real workers.

The placement rules live in tests/cluster/test_placement.py (both backends); this runs
real ``voxgate serve --workers`` processes on loopback and joins them with the client
library.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.audio import audio_arrives_byte_exact
from voxgate.bench.node import BenchNode
from voxgate.client import VoiceConnection, VoiceConnectionError
from voxgate.protocol.messages import Identify, Ready, Resume
from voxgate.protocol.opcodes import CloseCode
from voxgate.server.auth import TokenAuthority

OTHER = "127.0.0.1:1"


# --- the endpoint claim on one node ------------------------------------------------------


async def test_identify_with_a_token_for_another_node_is_refused_with_4004(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node()
    peer = peers(node)
    token, grant = authority.mint("g", "c", "u", endpoint=OTHER)
    await peer.open()
    await peer.send(Identify(server_id="g", user_id="u", session_id=grant.session_id, token=token))
    code, reason = await peer.closed()
    assert code == CloseCode.AUTHENTICATION_FAILED
    assert reason == f"authentication failed: token is for another node ({OTHER})"
    assert node.session_count() == 0


async def test_identify_with_a_token_for_this_node_or_for_any_node_is_accepted(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node()
    for user, endpoint in (("bound", node.endpoint), ("unbound", None)):
        peer = peers(node)
        token, grant = authority.mint("g", "c", user, endpoint=endpoint)
        await peer.open()
        await peer.send(
            Identify(server_id="g", user_id=user, session_id=grant.session_id, token=token)
        )
        await peer.expect(Ready)
    assert node.session_count() == 2


async def test_resume_with_a_token_for_another_node_is_refused_with_4004(
    start_node, peers, authority: TokenAuthority
) -> None:
    node = await start_node()
    peer = peers(node)
    token, grant = authority.mint("g", "c", "u", endpoint=OTHER)
    await peer.open()
    await peer.send(Resume(server_id="g", session_id=grant.session_id, token=token, seq_ack=-1))
    code, reason = await peer.closed()
    assert code == CloseCode.AUTHENTICATION_FAILED
    assert reason == f"authentication failed: token is for another node ({OTHER})"


# The placement rules (least-loaded, sticky, kept while a token is valid, adopted, released)
# are tested in tests/cluster/test_placement.py over the supervisor's memory backend and
# over Redis.


# --- real workers ------------------------------------------------------------------------


VOXGATE = [sys.executable, "-m", "voxgate"]


def _voxgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VOXGATE, *args], capture_output=True, text=True, timeout=60)


@dataclass
class Supervised(BenchNode):
    """A ``voxgate serve --workers N`` process and what its ready line says."""

    ready_line: str = ""
    log_path: Path = Path()

    @property
    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def stop(self) -> int:  # type: ignore[override]
        super().stop()
        return self.process.returncode


def _serve_workers(data_dir: Path, workers: int = 2) -> Supervised:
    data_dir.mkdir(parents=True, exist_ok=True)
    out_path, log_path = data_dir / "stdout", data_dir / "serve.log"
    ports = ["--port", "0", "--admin-port", "0"]
    with out_path.open("wb") as out, log_path.open("wb") as log:
        process = subprocess.Popen(
            [*VOXGATE, "serve", "--workers", str(workers), *ports, "--data-dir", str(data_dir)],
            stdout=out,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + 60
    while not (line := out_path.read_text()).endswith("\n"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"voxgate serve --workers did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    admin = re.search(r" admin=http://[^:]+:(\d+) ", line)
    assert admin is not None, line
    return Supervised(process, data_dir, 0, 0, int(admin.group(1)), line.strip(), log_path)


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    """One two-worker node shared by the tests below, in order; the last one kills a worker."""
    node = _serve_workers(tmp_path_factory.mktemp("workers"))
    yield node
    node.stop()


async def _connect(node: Supervised, events: dict[str, Any]) -> VoiceConnection:
    return await VoiceConnection.connect(
        events["voice_state"], events["voice_server"], ssl=node.trust
    )


async def _call(node: Supervised, guild: str, channel: str) -> tuple[VoiceConnection, ...]:
    """Two members of one channel; returns (speaker, listener)."""
    speaker = await _connect(node, node.join(guild, channel, f"{channel}-speaker"))
    listener = await _connect(node, node.join(guild, channel, f"{channel}-listener"))
    return speaker, listener


def test_ready_line_lists_the_workers_and_the_node_file_records_them(
    supervised: Supervised,
) -> None:
    workers = supervised.health()["workers"]
    listed = ", ".join(f"{w['endpoint']} udp {w['udp_port']}" for w in workers)
    assert f"/?v=8 (+2 workers: {listed}) udp=" in supervised.ready_line
    assert f"admin={supervised.admin_url} join: " in supervised.ready_line
    recorded = json.loads((supervised.data_dir / "node.json").read_text())
    assert recorded["workers"] == [w["endpoint"] for w in workers]
    assert len({w["endpoint"] for w in workers}) == 2


async def test_channels_spread_over_workers_and_each_call_relays_byte_exact(
    supervised: Supervised,
) -> None:
    first = supervised.join("g", "first", "probe")["voice_server"]["endpoint"]
    second = supervised.join("g", "second", "probe")["voice_server"]["endpoint"]
    assert first != second
    assert supervised.join("g", "first", "another")["voice_server"]["endpoint"] == first
    calls = [await _call(supervised, "g", "first"), await _call(supervised, "g", "second")]
    for (speaker, listener), endpoint in zip(calls, (first, second), strict=True):
        assert speaker.join.endpoint == listener.join.endpoint == endpoint
        await audio_arrives_byte_exact(speaker, listener, timeout=5)
    health = supervised.health()
    assert health["sessions"] == 4 and health["channels"] == 2
    assert [w["sessions"] for w in health["workers"]] == [2, 2]
    for connection in (*calls[0], *calls[1]):
        await connection.close()


def test_the_cluster_view_lists_each_worker_as_a_node_with_its_channels(
    supervised: Supervised,
) -> None:
    import urllib.request

    first = supervised.join("g", "first", "probe")["voice_server"]["endpoint"]
    second = supervised.join("g", "second", "probe")["voice_server"]["endpoint"]
    with urllib.request.urlopen(f"{supervised.admin_url}/v1/cluster", timeout=10) as response:
        view = json.load(response)
    assert sorted(node["node_id"] for node in view["nodes"]) == ["worker-0", "worker-1"]
    placed = {n["endpoint"]: [c["channel_id"] for c in n["placed"]] for n in view["nodes"]}
    assert "first" in placed[first] and "second" in placed[second]
    assert all(node["state"] == "serving" for node in view["nodes"])


def test_voxgate_token_asks_the_supervisor_where_the_channel_lives(
    supervised: Supervised,
) -> None:
    placed = supervised.join("g", "first", "x")["voice_server"]["endpoint"]
    done = _voxgate(
        "token", "--data-dir", str(supervised.data_dir), "--guild", "g", "--channel", "first",
        "--user", "cli",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = json.loads(done.stdout)
    assert events["voice_server"]["endpoint"] == placed
    grant = TokenAuthority((supervised.data_dir / "secret").read_text().strip().encode()).verify(
        events["voice_server"]["token"]
    )
    assert grant.endpoint == placed


async def test_a_token_for_one_worker_is_refused_by_the_other_with_4004(
    supervised: Supervised,
) -> None:
    events = supervised.join("g", "first", "wanderer")
    mine = events["voice_server"]["endpoint"]
    other = next(w["endpoint"] for w in supervised.health()["workers"] if w["endpoint"] != mine)
    events["voice_server"]["endpoint"] = other
    with pytest.raises(VoiceConnectionError) as refused:
        await _connect(supervised, events)
    assert refused.value.close_code == CloseCode.AUTHENTICATION_FAILED
    assert refused.value.reason == f"authentication failed: token is for another node ({mine})"


async def test_a_killed_worker_is_restarted_on_its_ports_and_the_other_call_goes_on(
    supervised: Supervised,
) -> None:
    victim_channel, calm_channel = "victim", "calm"
    victim_endpoint = supervised.join("g", victim_channel, "probe")["voice_server"]["endpoint"]
    calm = await _call(supervised, "g", calm_channel)
    assert calm[0].join.endpoint != victim_endpoint
    doomed = await _call(supervised, "g", victim_channel)
    before = {w["endpoint"]: w for w in supervised.health()["workers"]}
    victim = before[victim_endpoint]
    os.kill(victim["pid"], signal.SIGKILL)

    deadline = time.monotonic() + 30
    while True:
        after = {w["endpoint"]: w for w in supervised.health()["workers"]}
        if after[victim_endpoint]["alive"] and after[victim_endpoint]["pid"] != victim["pid"]:
            break
        assert time.monotonic() < deadline, after
        await asyncio.sleep(0.2)
    assert after[victim_endpoint]["udp_port"] == victim["udp_port"]
    assert "ERROR voxgate.server.workers: worker" in supervised.log_path.read_text()

    # The channel stays placed on the restarted worker, and a fresh join there works.
    fresh = supervised.join("g", victim_channel, "fresh-speaker")
    assert fresh["voice_server"]["endpoint"] == victim_endpoint
    speaker = await _connect(supervised, fresh)
    listener = await _connect(supervised, supervised.join("g", victim_channel, "fresh-listener"))
    await audio_arrives_byte_exact(speaker, listener, timeout=5)

    await audio_arrives_byte_exact(*calm, timeout=5)
    assert [(c.resumes, c.reidentifies) for c in calm] == [(0, 0), (0, 0)]
    for connection in (*calm, *doomed, speaker, listener):
        await connection.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); its state says it is dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pids: list[int], timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if not _gone(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def test_sigterm_stops_every_worker_and_exits_0(tmp_path: Path) -> None:
    node = _serve_workers(tmp_path / "node")
    pids = [worker["pid"] for worker in node.health()["workers"]]
    assert node.stop() == 0
    assert _wait_gone(pids, timeout=1) == []
    done = _voxgate(
        "token", "--data-dir", str(node.data_dir), "--guild", "g", "--channel", "c", "--user", "u"
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("voxgate: the node in ") and "did not answer" in line


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    node = _serve_workers(tmp_path / "node")
    pids = [worker["pid"] for worker in node.health()["workers"]]
    node.process.kill()
    node.process.wait()
    assert _wait_gone(pids) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "voxgate: --workers must be between 1 and 64, not 0"),
        (["--workers", "65"], "voxgate: --workers must be between 1 and 64, not 65"),
        (
            ["--workers", "3", "--port", "9000", "--admin-port", "9002"],
            "voxgate: --admin-port 9002 is worker 2's gateway port (--port 9000 + 2); "
            "set --admin-port outside 9000-9002",
        ),
    ],
)
def test_bad_worker_settings_are_refused_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = _voxgate("serve", "--data-dir", str(tmp_path), *args)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [message]


def test_a_worker_that_cannot_bind_fails_the_start_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _voxgate(
            "serve", "--data-dir", str(tmp_path), "--workers", "2", "--port", str(port - 1),
            "--admin-port", "0", "--log-level", "error",
        )  # fmt: skip
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    # Port P is held here; P - 1 was only free when asked, and another test process may
    # have taken it since: either way the start fails in one line naming the port.
    refused = (f"127.0.0.1:{port} ", f"127.0.0.1:{port - 1} ")
    assert line.startswith(tuple(f"voxgate: cannot listen on {where}" for where in refused)), line
