"""Run the real third-party clients (through the drivers in ``tests/interop``) as processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.audio import read_packet_log

INTEROP = Path(__file__).resolve().parents[1] / "interop"
JS_DRIVER = INTEROP / "js" / "client.mjs"
DPY_DRIVER = INTEROP / "dpy_client.py"
PYCORD_DRIVER = INTEROP / "pycord_client.py"
#: py-cord's own virtual environment (``make pycord``): it installs a ``discord`` package of
#: its own, so it can never share one with discord.py.
PYCORD_PYTHON = Path(__file__).resolve().parents[2] / ".venv-pycord" / "bin" / "python"


@dataclass
class Driver:
    """One real client process; ``events`` are the JSON lines it printed."""

    name: str
    process: asyncio.subprocess.Process
    out: Path | None
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: bytes = b""
    _reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        assert self.process.stdout is not None and self.process.stderr is not None

        async def drain_stderr() -> None:
            assert self.process.stderr is not None
            async for line in self.process.stderr:
                self.stderr += line

        stderr = asyncio.create_task(drain_stderr())
        async for line in self.process.stdout:
            try:
                self.events.append(json.loads(line))
            except json.JSONDecodeError:
                self.events.append({"event": "stdout", "line": line.decode(errors="replace")})
        await stderr

    async def wait_for(self, event: str, timeout: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for seen in self.events:
                    if seen.get("event") == event:
                        return seen
                if self.process.returncode is not None:
                    raise AssertionError(f"{self.name} exited before {event!r}: {self.report()}")
                await asyncio.sleep(0.02)

    def saw(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            seen
            for seen in self.events
            if seen.get("event") == event and all(seen.get(k) == v for k, v in fields.items())
        ]

    async def finish(self, timeout: float = 60) -> None:
        """Wait for the process to exit by itself; it must exit cleanly."""
        async with asyncio.timeout(timeout):
            await self.process.wait()
            if self._reader is not None:
                await self._reader
        assert self.process.returncode == 0, self.report()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    def received(self, user: str) -> list[bytes]:
        """The packets this client recorded from ``user`` (it was started with ``out``)."""
        assert self.out is not None
        return read_packet_log(self.out).get(user, [])

    def report(self) -> str:
        events = "\n".join(json.dumps(e) for e in self.events)
        stderr = self.stderr.decode(errors="replace")[-4000:]
        return f"{self.name} rc={self.process.returncode}\n{events}\n{stderr}"


async def start_driver(
    kind: str,
    command: str,
    join: dict[str, Any],
    ca_path: Path,
    workdir: Path,
    *,
    file: Path | None = None,
    out: bool = False,
    seconds: float | None = None,
    linger: float | None = None,
    flags: Sequence[str] = (),
) -> Driver:
    """Start the ``kind`` ("js", "dpy", "pycord") driver doing ``command`` ("play", "receive")."""
    user = join["voice_state"]["user_id"]
    join_path = workdir / f"join-{kind}-{user}.json"
    join_path.write_text(json.dumps(join))
    out_path = workdir / f"packets-{kind}-{user}.jsonl" if out else None
    args = [command, "--join", str(join_path)]
    if file is not None:
        args += ["--file", str(file)]
    if out_path is not None:
        args += ["--out", str(out_path)]
    if seconds is not None:
        args += ["--seconds", str(seconds)]
    if linger is not None:
        args += ["--linger", str(linger)]
    args += flags  # e.g. --e2ee (play once encrypted), --no-dave (js)
    env = dict(os.environ)
    if kind == "js":
        program = ["node", str(JS_DRIVER)]
        env["NODE_EXTRA_CA_CERTS"] = str(ca_path)
    elif kind == "pycord":
        program = [str(PYCORD_PYTHON), str(PYCORD_DRIVER)]
        env["SSL_CERT_FILE"] = str(ca_path)
    else:
        program = [sys.executable, str(DPY_DRIVER)]
        env["SSL_CERT_FILE"] = str(ca_path)
    process = await asyncio.create_subprocess_exec(
        *program,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(JS_DRIVER.parent if kind == "js" else workdir),
    )
    driver = Driver(f"{kind}:{command}:{user}", process, out_path)
    driver._reader = asyncio.create_task(driver._read())
    return driver


class VoiceChannel:
    """One voice channel on a running node, and the real clients a test joins to it.

    ``async with VoiceChannel(...) as channel``: every driver started through it is killed
    on the way out, whatever the test did; :meth:`finish` waits for all to exit cleanly.
    """

    def __init__(self, server: Any, workdir: Path, guild: str, channel: str) -> None:
        self.server = server
        self.workdir = workdir
        self.guild = guild
        self.channel = channel
        self.drivers: list[Driver] = []

    async def start(
        self, kind: str, command: str, user: str, *, endpoint: str | None = None, **options: Any
    ) -> Driver:
        """Mint ``user``'s join (pointed at ``endpoint`` when given) and start a driver."""
        join = self.server.join(self.guild, self.channel, user)
        if endpoint is not None:
            join["voice_server"]["endpoint"] = endpoint
        driver = await start_driver(
            kind, command, join, self.server.ca_path, self.workdir, **options
        )
        self.drivers.append(driver)
        return driver

    async def finish(self) -> None:
        for driver in self.drivers:
            await driver.finish()

    async def __aenter__(self) -> VoiceChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for driver in self.drivers:
            driver.kill()
