"""voxgate's pytest plugin: a local Discord for testing voice bots, and a way to run them.

Installed with voxgate (entry point ``pytest11``), it gives every test suite:

- the ``voxgate_sandbox`` fixture: a :class:`SandboxFixture` over a fresh sandbox (REST,
  main gateway, voice node, simulated users) in the test's temporary folder, stopped with
  everything it started when the test ends; a failing test gets the sandbox's gateway,
  REST and voice logs and each bot's output in its report. Options by marker:
  ``@pytest.mark.voxgate_sandbox(dave="required", bots=2, allow_privileged=True)``.
- :func:`run_bot`: a bot *file*, run as its own process with the overrides applied from
  outside, so the file is exactly what runs on Discord: discord.py bots through
  ``python -m voxgate.sandbox.launch_dpy``, discord.js bots through ``node -r`` with
  ``voxgate/sandbox/preload.cjs``.

Example::

    async def test_bot_plays(voxgate_sandbox, tmp_path):
        bot = await voxgate_sandbox.run_bot("bot.py")
        await bot.wait_for_output("ready")
        alice = voxgate_sandbox.user("alice")
        await alice.join()
        await alice.send("!play song.ogg")
        heard = await alice.wait_heard(bot, packets=50, quiet=0.5)

The fixture is async (pytest-asyncio). Nothing heavy is imported until a test uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import time
import warnings
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from voxgate.sandbox.app import Sandbox
    from voxgate.sandbox.users import SimulatedUser

PRELOAD = Path(__file__).parent / "sandbox" / "preload.cjs"
#: How long a stopped bot gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 5.0


class UnhandledRouteWarning(UserWarning):
    """A bot called REST routes the sandbox does not serve: it got 404s that Discord would
    not have sent. Make it an error with ``-W error::voxgate.testing.UnhandledRouteWarning``."""

    def __init__(self, routes: Sequence[str]) -> None:
        super().__init__(
            f"the sandbox does not serve {', '.join(routes)}: the bot got 404 for each "
            "(the sandbox's log names them)"
        )
        self.routes = list(routes)


# --- bots as processes -------------------------------------------------------------------


class BotProcess:
    """A bot file running against a sandbox; its stdout and stderr, merged, in ``lines``."""

    def __init__(
        self, path: Path, bot: Mapping[str, Any], process: asyncio.subprocess.Process
    ) -> None:
        self.path = path
        self.user_id = str(bot["user_id"])
        self.token = str(bot["token"])
        self.application_id = str(bot.get("application_id", bot["user_id"]))
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    def __repr__(self) -> str:
        return f"<BotProcess {self.path.name} user {self.user_id} rc={self.returncode}>"

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_output(self, pattern: str, *, timeout: float = 30.0) -> re.Match[str]:
        """The first output line matching ``pattern`` (a regex), waiting for it. Raises
        AssertionError (with the output) when the bot exits or ``timeout`` passes first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if match := regex.search(line):
                    return match
            if self.returncode is not None:
                await asyncio.wait_for(self._reader, 5)
                if any(regex.search(line) for line in self.lines):
                    continue
                raise AssertionError(
                    f"{self.path.name} exited ({self.returncode}) before "
                    f"printing {pattern!r}:\n{self.output[-6000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.path.name} printed no {pattern!r} in {timeout:g} s:"
                    f"\n{self.output[-6000:]}"
                )
            await asyncio.sleep(0.05)

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`, to the bot's process group (the
        bot and what it started, such as FFmpeg); returns the bot's exit code."""
        if self.process.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_GRACE_S)
            except TimeoutError:
                self._signal(signal.SIGKILL)
                await self.process.wait()
        # Whatever the bot left running in its group goes with it.
        self._signal(signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)
        assert self.process.returncode is not None
        return self.process.returncode

    def _signal(self, signum: int) -> None:
        # run_bot starts each bot in a session of its own: its process group id is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


def bot_command(path: Path) -> list[str]:
    """The command that runs the bot file ``path`` with the sandbox's overrides applied."""
    if path.suffix == ".py":
        return [sys.executable, "-m", "voxgate.sandbox.launch_dpy", str(path)]
    if path.suffix in (".js", ".cjs", ".mjs"):
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed: discord.js bots need Node 20+")
        return [node, "-r", str(PRELOAD), str(path)]
    raise ValueError(f"{path}: a discord.py bot ends in .py, a discord.js bot in .js/.cjs/.mjs")


def bot_environment(
    info_path: Path, info: Mapping[str, Any], bot: Mapping[str, Any]
) -> dict[str, str]:
    """The variables a bot process gets: where the sandbox is, its token and the CAs to
    trust (``SSL_CERT_FILE`` replaces Python's system bundle, hence ``ca_bundle``;
    ``NODE_EXTRA_CA_CERTS`` adds to Node's)."""
    return {
        "VOXGATE_SANDBOX": str(info_path),
        "DISCORD_TOKEN": str(bot["token"]),
        "SSL_CERT_FILE": str(info["ca_bundle"]),
        "NODE_EXTRA_CA_CERTS": str(info["ca"]),
        "PYTHONUNBUFFERED": "1",
    }


async def run_bot(
    path: str | Path,
    sandbox: str | Path | Any,
    *,
    bot: int = 0,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    cwd: str | Path | None = None,
) -> BotProcess:
    """Start the bot file ``path`` against ``sandbox`` (a ``sandbox.json`` path, a
    :class:`SandboxFixture` or a ``Sandbox``), logged in as ``bots[bot]``.

    The file runs as it would with ``python bot.py`` / ``node bot.js`` (cwd: its folder
    unless told), with ``env`` added to this process's environment. Stop it with
    :meth:`BotProcess.stop`; the fixture's ``run_bot`` stops it for you.
    """
    info_path = _info_path(sandbox)
    info = json.loads(info_path.read_text())
    bot_path = Path(path).resolve()
    if not bot_path.is_file():
        raise FileNotFoundError(bot_path)
    entry = info["bots"][bot]
    environment = {**os.environ, **bot_environment(info_path, info, entry), **(env or {})}
    process = await asyncio.create_subprocess_exec(
        *bot_command(bot_path),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environment,
        cwd=str(cwd or bot_path.parent),
        start_new_session=True,
    )
    return BotProcess(bot_path, entry, process)


def _info_path(sandbox: str | Path | Any) -> Path:
    if isinstance(sandbox, str | Path):
        return Path(sandbox)
    data_dir = getattr(sandbox, "data_dir", None)
    if data_dir is not None and (Path(data_dir) / "sandbox.json").exists():
        return Path(data_dir) / "sandbox.json"
    raise TypeError(f"cannot tell where {sandbox!r}'s sandbox.json is")


# --- the fixture -------------------------------------------------------------------------


class SandboxFixture:
    """A running sandbox as a test sees it: its ids, users by name, bots it started.

    Everything else a ``Sandbox`` offers (``voice_server_failover``, ``disconnect_member``,
    ``drop_gateway``, ``logs`` ...) is reachable on this object too.
    """

    def __init__(self, sandbox: Sandbox, data_dir: Path) -> None:
        self.sandbox = sandbox
        self.data_dir = data_dir
        self.bot_processes: list[BotProcess] = []
        self._users: dict[str, SimulatedUser] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sandbox, name)

    @property
    def info(self) -> dict[str, Any]:
        return self.sandbox.info

    @property
    def info_path(self) -> Path:
        return self.data_dir / "sandbox.json"

    @property
    def guild_id(self) -> str:
        return str(self.info["guild_id"])

    @property
    def voice_channel_id(self) -> str:
        return str(self.info["voice_channel_id"])

    @property
    def text_channel_id(self) -> str:
        return str(self.info["text_channel_id"])

    @property
    def bots(self) -> list[dict[str, Any]]:
        return list(self.info["bots"])

    def user(self, name: str) -> SimulatedUser:
        """The simulated user called ``name``, made a guild member on first use."""
        from voxgate.sandbox.users import SimulatedUser

        if name not in self._users:
            self._users[name] = SimulatedUser.create(self.sandbox, name)
        return self._users[name]

    async def run_bot(
        self,
        path: str | Path,
        *,
        bot: int = 0,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        cwd: str | Path | None = None,
    ) -> BotProcess:
        """:func:`run_bot` against this sandbox; stopped when the test ends."""
        process = await run_bot(path, self.info_path, bot=bot, env=env, args=args, cwd=cwd)
        self.bot_processes.append(process)
        return process

    def messages(self, channel_id: str | int | None = None) -> list[dict[str, Any]]:
        """What was posted in a text channel (default: the sandbox's), oldest first."""
        return list(self.sandbox.messages(int(channel_id or self.text_channel_id)))

    async def wait_for_message(
        self,
        pattern: str,
        *,
        author: Any = None,
        after: Mapping[str, Any] | None = None,
        channel_id: str | int | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """The first message matching ``pattern`` (a regex on its content), from ``author``
        (a bot process, user or id) if given, newer than the message ``after`` if given."""
        from voxgate.sandbox.users import user_id_of

        regex = re.compile(pattern)
        wanted = None if author is None else user_id_of(author)
        since = None if after is None else int(after["id"])
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages(channel_id):
                if since is not None and int(message["id"]) <= since:
                    continue
                if wanted is not None and str(message["author"]["id"]) != wanted:
                    continue
                if regex.search(message.get("content") or ""):
                    return message
            if time.monotonic() > deadline:
                posted = "\n".join(
                    f"  {m['author']['id']}: {m.get('content')!r}"
                    for m in self.messages(channel_id)
                )
                raise AssertionError(
                    f"no message matching {pattern!r} in {timeout:g} s; the channel has:\n{posted}"
                )
            for process in self.bot_processes:
                if process.returncode is not None and user_id_of(process) == wanted:
                    raise AssertionError(
                        f"{process.path.name} exited ({process.returncode}):"
                        f"\n{process.output[-6000:]}"
                    )
            await asyncio.sleep(0.05)

    def report(self) -> str:
        """The sandbox's logs and every bot's output, for a failing test's report."""
        parts = []
        with contextlib.suppress(Exception):
            parts.append(self.sandbox.logs())
        for process in self.bot_processes:
            parts.append(
                f"--- {process.path.name} (user {process.user_id}, "
                f"rc={process.returncode}) ---\n{process.output[-20000:]}"
            )
        return "\n".join(parts)

    async def close(self) -> None:
        """Stop every bot, user and the sandbox itself."""
        for process in self.bot_processes:
            await process.stop()
        for user in self._users.values():
            await user.close()
        await self.sandbox.stop()


async def start_sandbox(data_dir: Path, **options: Any) -> SandboxFixture:
    """Start a sandbox in ``data_dir`` (``Sandbox.start`` options) as a :class:`SandboxFixture`;
    for suites that want their own fixture scope. Close it with ``await fixture.close()``."""
    from voxgate.sandbox.app import Sandbox

    options.setdefault("port", 0)
    sandbox = await Sandbox.start(data_dir, **options)
    return SandboxFixture(sandbox, data_dir)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "voxgate_sandbox(**options): options for the voxgate_sandbox fixture's Sandbox.start "
        "(dave, bots, allow_privileged)",
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # Remembered per phase, so the fixture's teardown knows whether the test failed.
    setattr(item, f"_voxgate_{report.when}", report)
    return report


async def _sandbox_fixture(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SandboxFixture]:
    marker = request.node.get_closest_marker("voxgate_sandbox")
    options = dict(marker.kwargs) if marker is not None else {}
    fixture = await start_sandbox(tmp_path / "voxgate-sandbox", **options)
    try:
        yield fixture
    finally:
        call = getattr(request.node, "_voxgate_call", None)
        failed = call is None or call.failed
        report = fixture.report() if failed else ""
        unhandled = fixture.sandbox.unhandled_routes
        await fixture.close()
        if failed:
            request.node.add_report_section("teardown", "voxgate sandbox", report)
        if unhandled:
            warnings.warn(UnhandledRouteWarning(unhandled), stacklevel=1)


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the plugin loads in suites without pytest-asyncio too

    @pytest.fixture(name="voxgate_sandbox")
    def _voxgate_sandbox_unavailable() -> None:
        raise pytest.UsageError("the voxgate_sandbox fixture needs pytest-asyncio installed")

else:
    voxgate_sandbox = pytest_asyncio.fixture(_sandbox_fixture, name="voxgate_sandbox")
