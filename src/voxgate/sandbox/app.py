"""The :class:`Sandbox`: a local Discord for voice bots, in one object.

It composes the state model (``model.py``), REST (``rest.py``) and the main gateway
(``gateway.py``) on one aiohttp port, an in-process voice node (``voxgate.server.node``)
behind TLS from a CA generated under the data dir, and the control API (``control.py``) on
its own port. What a simulated user does (join voice, send a message, invoke a command) is
a method here: it changes the model, then dispatches what bots would see on Discord.

    sandbox = await Sandbox.start(Path("var/sandbox"))
    alice = sandbox.create_user("alice")
    voice_state, voice_server = await sandbox.join_voice(alice.id, sandbox.voice_channel_id)
    ...
    await sandbox.stop()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import ssl
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from voxgate.protocol.opcodes import CloseCode
from voxgate.sandbox.gateway import (
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_RESUME_GRACE_S,
    Gateway,
    GatewaySession,
)
from voxgate.sandbox.model import (
    ChannelType,
    Intent,
    Interaction,
    ModelError,
    Payload,
    SandboxModel,
    User,
    VoiceState,
    privileged_mask,
)
from voxgate.server import datadir
from voxgate.server.auth import TokenAuthority, new_session_id
from voxgate.server.config import ServerConfig
from voxgate.server.node import VoiceNode
from voxgate.server.tls import ensure_self_signed

log = logging.getLogger(__name__)

SEED_FILE = "sandbox_seed"
INFO_FILE = "sandbox.json"
DAVE_POLICIES = ("off", "preferred", "required")
#: As Discord does since March 2026 (issue 11 §5): the voice node speaks DAVE (issue 10).
DEFAULT_DAVE = "required"
#: Log lines kept for :meth:`Sandbox.logs`.
LOG_LINES = 5000
#: An empty RTCP receiver report (no blocks, ssrc 0): what wakes a moved discord.py
#: client's reader on its old socket (:meth:`Sandbox._wake_old_sockets`).
WAKE_DATAGRAM = b"\x80\xc9\x00\x01\x00\x00\x00\x00"
#: How long a voice-server failover leaves the endpoint null before the new one.
FAILOVER_GAP_S = 0.25


class _LogBuffer(logging.Handler):
    """The last lines the gateway, REST and the voice node logged, for a failing test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a log line must never break the sandbox
            self.handleError(record)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _seed(data_dir: Path) -> tuple[bytes, int]:
    """The data dir's seed (ids and tokens derive from it) and the time it was made."""
    path = data_dir / SEED_FILE
    made = f"{secrets.token_hex(32)} {int(time.time() * 1000)}"
    text = datadir._read_or_create(path, made)
    hex_seed, _, base = text.partition(" ")
    return bytes.fromhex(hex_seed), int(base) if base.isdigit() else 1_700_000_000_000


def _write_ca_bundle(ca: Path, bundle: Path) -> None:
    """System CAs plus voxgate's CA: ``SSL_CERT_FILE`` replaces the system bundle, so a bot
    that also fetches HTTPS media must still trust the public CAs."""
    paths = ssl.get_default_verify_paths()
    parts: list[str] = []
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            parts.append(Path(candidate).read_text(errors="replace"))
            break
    else:
        try:
            import certifi  # type: ignore[import-not-found,unused-ignore]

            parts.append(Path(certifi.where()).read_text())
        except ImportError:
            log.warning("no system CA bundle found: ca_bundle holds voxgate's CA only")
    parts.append(ca.read_text())
    temporary = bundle.with_suffix(".tmp")
    temporary.write_text("\n".join(part.rstrip("\n") for part in parts) + "\n")
    temporary.replace(bundle)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


class Sandbox:
    """A running sandbox. Make one with :meth:`start`; end it with :meth:`stop`."""

    # Set by :meth:`start`, before anything can reach them.
    model: SandboxModel
    gateway: Gateway
    authority: TokenAuthority
    ca: Path
    ca_bundle: Path

    def __init__(self, data_dir: Path, *, host: str, dave: str) -> None:
        """Not started yet: :meth:`start` makes and starts one."""
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.host = host
        self.dave = dave
        self._logs = _LogBuffer()
        self._logger_level = logging.NOTSET
        self._changed = asyncio.Event()
        self._runners: list[web.AppRunner] = []
        self._unhandled: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: Called as ``callback(user_id, voice_state, voice_server)`` (sync or async) when a
        #: simulated user is moved by someone else (:meth:`move_member`, a bot's REST call),
        #: so that its voice client can follow to the new channel.
        self.user_moved: list[Callable[[int, Payload, Payload], Any]] = []
        self.node: VoiceNode | None = None
        self.info: dict[str, Any] = {}

    @classmethod
    async def start(
        cls,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        bots: int = 2,
        dave: str = DEFAULT_DAVE,
        allow_privileged: bool | str | Iterable[str] = True,
        heartbeat_interval_ms: float = DEFAULT_HEARTBEAT_INTERVAL_MS,
        resume_grace_s: float = DEFAULT_RESUME_GRACE_S,
    ) -> Sandbox:
        """Start REST and the gateway on ``host:port``, the voice node, the control API on
        ``host:control_port`` (0: free ports), and write ``data_dir/sandbox.json`` once all
        of them accept connections.

        ``allow_privileged``: the privileged intents bots may identify with, True (all),
        False (none) or names (``"members"``, ``"presences"``, ``"message_content"``); any
        other closes 4014, as an intent not enabled in Discord's developer portal does.

        Raises ``ValueError`` for a bad argument and ``OSError`` when a port cannot be bound.
        """
        if dave not in DAVE_POLICIES:
            raise ValueError(f"dave must be one of {', '.join(DAVE_POLICIES)}, not {dave!r}")
        privileged_mask(allow_privileged)  # a bad name fails before anything starts
        self = cls(data_dir, host=host, dave=dave)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._attach_logs()
        try:
            await self._start(
                port, control_port, bots, allow_privileged, heartbeat_interval_ms, resume_grace_s
            )
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(
        self,
        port: int,
        control_port: int,
        bots: int,
        allow_privileged: bool | str | Iterable[str],
        heartbeat_interval_ms: float,
        resume_grace_s: float,
    ) -> None:
        from voxgate.sandbox.control import control_app
        from voxgate.sandbox.rest import rest_routes

        seed, base_ms = _seed(self.data_dir)
        self.model = SandboxModel(seed, base_ms, bots)
        tls = ensure_self_signed(self.data_dir, [self.host])
        assert tls.ca is not None
        self.ca = tls.ca
        self.ca_bundle = tls.ca.with_name("ca-bundle.pem")
        _write_ca_bundle(tls.ca, self.ca_bundle)
        self.authority = TokenAuthority(datadir.token_secret(self.data_dir))
        config = ServerConfig(host=self.host, port=0, ssl_context=tls.server_context())
        config = self._with_dave(config)
        self.node = VoiceNode(config, self.authority)
        await self.node.start()

        self.gateway = Gateway(
            self.model,
            self,
            resume_url=lambda: self.gateway_url,
            allowed_privileged=privileged_mask(allow_privileged),
            heartbeat_interval_ms=heartbeat_interval_ms,
            resume_grace_s=resume_grace_s,
        )
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/gateway/", self.gateway.handle)
        rest_routes(app, self)
        bound = await self._serve(app, port)
        self.port = bound
        base = f"http://{_url_host(self.host)}:{bound}"
        self.api_url = f"{base}/api"
        self.gateway_url = f"ws://{_url_host(self.host)}:{bound}/gateway"
        self.gateway.start()

        self.control_key = datadir.admin_key(self.data_dir)
        self.control_port = await self._serve(control_app(self, self.control_key), control_port)
        self.control_url = f"http://{_url_host(self.host)}:{self.control_port}"
        self.info = self._info()
        _write_atomically(self.data_dir / INFO_FILE, json.dumps(self.info, indent=2) + "\n")
        log.info(
            "sandbox ready: api %s, gateway %s, voice %s, control %s, dave %s",
            self.api_url,
            self.gateway_url,
            self.node.endpoint,
            self.control_url,
            self.dave,
        )

    def _with_dave(self, config: ServerConfig) -> ServerConfig:
        """Pass the DAVE policy to the node where the node has one (issue 10)."""
        from voxgate.server import config as server_config

        policy = getattr(server_config, "DavePolicy", None)
        if policy is not None and "dave" in {f.name for f in dataclasses.fields(ServerConfig)}:
            return dataclasses.replace(config, dave=policy(self.dave))
        if self.dave != "off":
            log.warning("this voice node does not speak DAVE: --dave %s served as off", self.dave)
        return config

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.host, port)
        await site.start()
        bound = [address for address in runner.addresses if isinstance(address, tuple)]
        return int(bound[0][1]) if bound else port

    def _info(self) -> dict[str, Any]:
        assert self.node is not None
        return {
            "api": self.api_url,
            "gateway": self.gateway_url,
            "ca": str(self.ca),
            "ca_bundle": str(self.ca_bundle),
            "control": self.control_url,
            "control_key": self.control_key,
            "guild_id": str(self.model.default_guild.id),
            "voice_channel_id": str(self.model.default_voice_channel.id),
            "text_channel_id": str(self.model.default_text_channel.id),
            "bots": [
                {
                    "user_id": str(bot.user.id),
                    "token": bot.token,
                    "application_id": str(bot.application_id),
                }
                for bot in self.model.bots
            ],
            "voice_endpoint": self.node.endpoint,
            "dave": self.dave,
        }

    def _attach_logs(self) -> None:
        logger = logging.getLogger("voxgate")
        self._logger_level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(self._logs)

    async def stop(self) -> None:
        """Close every connection and listener; the data dir is kept."""
        gateway = getattr(self, "gateway", None)
        if gateway is not None:
            await gateway.close()
        for task in list(self._tasks):
            task.cancel()
        if self.node is not None:
            await self.node.close()
            self.node = None
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        logger = logging.getLogger("voxgate")
        logger.removeHandler(self._logs)
        logger.setLevel(self._logger_level)

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- convenience ---------------------------------------------------------------------

    @property
    def guild_id(self) -> int:
        return self.model.default_guild.id

    @property
    def voice_channel_id(self) -> int:
        return self.model.default_voice_channel.id

    @property
    def text_channel_id(self) -> int:
        return self.model.default_text_channel.id

    @property
    def voice_endpoint(self) -> str:
        assert self.node is not None
        return self.node.endpoint

    def logs(self) -> str:
        """The gateway, REST and voice node log lines of this run (the last 5,000)."""
        return "\n".join(self._logs.lines)

    @property
    def unhandled_routes(self) -> list[str]:
        """``METHOD path`` of every REST request no route served, in order."""
        return list(self._unhandled)

    def notify(self) -> None:
        """Wake whoever waits in :meth:`wait_for`: the model changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate()`` is truthy (checked on every change); return its value.

        Raises ``TimeoutError`` when it is still false after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                value = predicate()
                if value:
                    return value
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), 0.5)

    # --- arranging -----------------------------------------------------------------------

    def create_user(self, name: str) -> User:
        """A simulated human user, a member of every guild."""
        user = self.model.create_user(name)
        log.info("user %s (%d) created", user.username, user.id)
        for guild in self.model.guilds_of(user.id):
            self.gateway.dispatch_guild(
                guild.id,
                "GUILD_MEMBER_ADD",
                {**self.model.member_payload(guild.id, user.id), "guild_id": str(guild.id)},
                Intent.GUILD_MEMBERS,
            )
        self.notify()
        return user

    def create_guild(self, name: str) -> int:
        """A guild holding every bot and user, with @everyone; bots get its GUILD_CREATE."""
        guild = self.model.create_guild(name)
        for session in self.gateway.live_sessions():
            if session.has(Intent.GUILDS) and session.sees_guild(guild.id):
                session.dispatch(
                    "GUILD_CREATE",
                    self.model.guild_create_payload(
                        guild, voice_states=session.has(Intent.GUILD_VOICE_STATES)
                    ),
                )
        self.notify()
        return guild.id

    def _create_channel(self, guild_id: int, name: str, kind: ChannelType) -> int:
        channel = self.model.create_channel(int(guild_id), name, kind)
        self.gateway.dispatch_guild(
            channel.guild_id, "CHANNEL_CREATE", self.model.channel_payload(channel), Intent.GUILDS
        )
        self.notify()
        return channel.id

    def create_voice_channel(self, guild_id: int, name: str) -> int:
        return self._create_channel(guild_id, name, ChannelType.GUILD_VOICE)

    def create_text_channel(self, guild_id: int, name: str) -> int:
        return self._create_channel(guild_id, name, ChannelType.GUILD_TEXT)

    # --- voice ---------------------------------------------------------------------------

    def _set_voice_state(self, state: VoiceState) -> None:
        guild = self.model.guild(state.guild_id)
        guild.voice_states[state.user_id] = state
        self.gateway.dispatch_guild(
            state.guild_id,
            "VOICE_STATE_UPDATE",
            self.model.voice_state_payload(state),
            Intent.GUILD_VOICE_STATES,
        )
        self.notify()

    def _clear_voice_state(
        self,
        guild_id: int,
        user_id: int,
        *,
        close_voice: bool,
        why: str,
        session_id: str | None = None,
    ) -> bool:
        """Take ``user_id`` out of voice in ``guild_id``: VOICE_STATE_UPDATE with no channel
        to the guild's bots and, with ``close_voice``, 4014 on its voice sessions."""
        guild = self.model.guild(guild_id)
        state = guild.voice_states.pop(user_id, None)
        if state is not None:
            self.gateway.dispatch_guild(
                guild_id,
                "VOICE_STATE_UPDATE",
                self.model.voice_left_payload(guild_id, user_id, state.session_id),
                Intent.GUILD_VOICE_STATES,
            )
            log.info("user %d left voice in guild %d: %s", user_id, guild_id, why)
        if close_voice:
            self._end_voice_sessions(guild_id, user_id, why, session_id)
        self.notify()
        return state is not None

    def _end_voice_sessions(
        self, guild_id: int, user_id: int, why: str, session_id: str | None = None
    ) -> None:
        """End ``user_id``'s voice sessions in ``guild_id`` on the node (only the one of
        ``session_id`` when given), closing their WebSockets with 4014."""
        if self.node is None:
            return
        router = self.node.router
        for session in list(router.sessions.values()):
            if session.guild_id != str(guild_id) or session.user_id != str(user_id):
                continue
            if session_id is None or session.session_id == session_id:
                router.leave(session, why, close=CloseCode.DISCONNECTED)

    def _voice_server(
        self, guild_id: int, channel_id: int, user_id: int, session_id: str
    ) -> Payload:
        token, _ = self.authority.mint(str(guild_id), str(channel_id), str(user_id), session_id)
        return {"token": token, "guild_id": str(guild_id), "endpoint": self.voice_endpoint}

    def _voice_channel(self, channel_id: int) -> Any:
        channel = self.model.channel(int(channel_id))
        if channel.type != ChannelType.GUILD_VOICE:
            raise ModelError(400, 50024, f"channel {channel.id} is not a voice channel")
        return channel

    async def join_voice(self, user_id: int, channel_id: int) -> tuple[Payload, Payload]:
        """Put simulated user ``user_id`` in voice channel ``channel_id`` (moving it when it
        is in another one): bots in the guild get VOICE_STATE_UPDATE. Returns the two events
        its voice client joins the node with: ``(voice_state, voice_server)``."""
        channel = self._voice_channel(channel_id)
        user = self.model.user(int(user_id))
        guild = self.model.guild(channel.guild_id)
        self.model.add_member(guild, user.id)
        current = guild.voice_states.get(user.id)
        if current is not None:
            # A move: its old voice session ends, as the new token is for another channel.
            self._end_voice_sessions(guild.id, user.id, "moved")
        state = VoiceState(user.id, guild.id, channel.id, new_session_id())
        if current is not None:
            state.mute, state.deaf = current.mute, current.deaf
        self._set_voice_state(state)
        log.info("user %s joined voice channel %d", user.username, channel.id)
        return (
            self.model.voice_state_payload(state),
            self._voice_server(guild.id, channel.id, user.id, state.session_id),
        )

    async def leave_voice(self, user_id: int, guild_id: int) -> None:
        """Take ``user_id`` out of voice: VOICE_STATE_UPDATE with no channel, and its voice
        session ended (the others get op 13)."""
        self._clear_voice_state(int(guild_id), int(user_id), close_voice=True, why="left")

    async def disconnect_member(self, user_id: int, guild_id: int) -> None:
        """What a moderator's "disconnect" does: VOICE_STATE_UPDATE with no channel to every
        bot, and close 4014 on the member's voice WebSocket."""
        self._clear_voice_state(
            int(guild_id), int(user_id), close_voice=True, why="disconnected by a moderator"
        )

    async def move_member(self, user_id: int, channel_id: int) -> None:
        """What a moderator dragging a member to ``channel_id`` does. A bot gets
        VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE for the new channel and its old voice
        WebSocket closes 4014; a simulated user is moved as by :meth:`join_voice`, and each
        of :attr:`user_moved` is called with the new events for its voice client.

        Raises ``ModelError`` (400, 40032) when the member is not in voice in that guild.
        """
        channel = self._voice_channel(channel_id)
        guild = self.model.guild(channel.guild_id)
        current = guild.voice_states.get(int(user_id))
        if current is None:
            raise ModelError(400, 40032, "Target user is not connected to voice.")
        session = self.gateway.sessions.get(current.session_id)
        if session is not None and not session.ended:
            self.bot_voice_update(
                session, guild.id, channel.id, current.self_mute, current.self_deaf
            )
            return
        voice_state, voice_server = await self.join_voice(int(user_id), channel.id)
        for callback in list(self.user_moved):
            result = callback(int(user_id), voice_state, voice_server)
            if asyncio.iscoroutine(result):
                await result

    async def set_voice_flags(
        self, user_id: int, guild_id: int, *, mute: bool | None = None, deaf: bool | None = None
    ) -> None:
        """Server-mute or server-deafen a member in voice: VOICE_STATE_UPDATE to the bots."""
        guild = self.model.guild(int(guild_id))
        state = guild.voice_states.get(int(user_id))
        if state is None:
            raise ModelError(400, 40032, "Target user is not connected to voice.")
        if mute is not None:
            state.mute = mute
        if deaf is not None:
            state.deaf = deaf
        self._set_voice_state(state)

    async def voice_server_failover(self, guild_id: int) -> None:
        """VOICE_SERVER_UPDATE with a null endpoint to every bot in voice in the guild, then
        one with a new token, as Discord does when a voice server goes away."""
        guild = self.model.guild(int(guild_id))
        affected: list[tuple[GatewaySession, VoiceState]] = []
        for state in guild.voice_states.values():
            session = self.gateway.sessions.get(state.session_id)
            if session is not None and not session.ended:
                affected.append((session, state))
        for session, _state in affected:
            session.dispatch(
                "VOICE_SERVER_UPDATE",
                {"token": secrets.token_hex(8), "guild_id": str(guild.id), "endpoint": None},
            )
        log.info("voice server failover in guild %d: %d bots told", guild.id, len(affected))
        await asyncio.sleep(FAILOVER_GAP_S)
        for session, state in affected:
            if session.ended or guild.voice_states.get(state.user_id) is not state:
                continue
            session.dispatch(
                "VOICE_SERVER_UPDATE",
                self._voice_server(guild.id, state.channel_id, state.user_id, state.session_id),
            )
        self.notify()

    def voice_states(self, guild_id: int | None = None) -> list[Payload]:
        guild = self.model.guild(int(guild_id or self.guild_id))
        return [self.model.voice_state_payload(state) for state in guild.voice_states.values()]

    # The gateway's VoiceBackend.

    def bot_voice_update(
        self,
        session: GatewaySession,
        guild_id: int,
        channel_id: int | None,
        self_mute: bool,
        self_deaf: bool,
    ) -> None:
        """Op 4 from a bot: VOICE_STATE_UPDATE to the guild, then (joining or moving)
        VOICE_SERVER_UPDATE to that session alone, in the order @discordjs/voice needs."""
        guild = self.model.guilds.get(guild_id)
        if guild is None or session.user_id not in guild.members:
            log.info(
                "op 4 from %s for unknown guild %d ignored", session.bot.user.username, guild_id
            )
            return
        if channel_id is None:
            self._clear_voice_state(guild_id, session.user_id, close_voice=False, why="left (op 4)")
            return
        channel = guild.channels.get(channel_id)
        if channel is None or channel.type != ChannelType.GUILD_VOICE:
            log.info(
                "op 4 from %s for channel %d, not a voice channel of guild %d: ignored",
                session.bot.user.username,
                channel_id,
                guild_id,
            )
            return
        current = guild.voice_states.get(session.user_id)
        same = (
            current is not None
            and current.channel_id == channel_id
            and current.session_id == session.session_id
        )
        if same and current is not None and self._voice_connected(session.session_id, channel_id):
            # Policy for a repeated op 4 (SANDBOX.md §7): with a live voice WebSocket only a
            # mute/deaf change is news; without one, a fresh token lets the client retry.
            if (current.self_mute, current.self_deaf) != (self_mute, self_deaf):
                current.self_mute, current.self_deaf = self_mute, self_deaf
                self._set_voice_state(current)
            return
        state = VoiceState(
            session.user_id,
            guild_id,
            channel_id,
            session.session_id,
            self_mute,
            self_deaf,
            # A server mute or deafen outlives the bot's own updates, as on Discord.
            mute=current.mute if current is not None else False,
            deaf=current.deaf if current is not None else False,
        )
        self._set_voice_state(state)
        if not session.has(Intent.GUILD_VOICE_STATES):
            log.info(
                "%s joins voice without the voice-states intent (1 << 7): it gets no "
                "VOICE_STATE_UPDATE, as on Discord",
                session.bot.user.username,
            )
        session.dispatch(
            "VOICE_SERVER_UPDATE",
            self._voice_server(guild_id, channel_id, session.user_id, session.session_id),
        )
        if current is not None and current.channel_id != channel_id:
            # A move: as Discord's voice server does, the old voice WebSocket is closed with
            # 4014, and discord.py reconnects with the update it just got.
            self._wake_old_sockets(guild_id, session.user_id, session.session_id)
            self._end_voice_sessions(guild_id, session.user_id, "moved to another channel")
            log.info("%s moved to voice channel %d", session.bot.user.username, channel_id)
            return
        log.info("%s joined voice channel %d", session.bot.user.username, channel_id)

    def _wake_old_sockets(self, guild_id: int, user_id: int, session_id: str) -> None:
        """Once the moved client identifies again, send one RTCP-shaped datagram to the UDP
        address of its old voice session.

        discord.py makes a new UDP socket for a move but its reader thread may still sit in
        ``select()`` on the old one for up to 30 s, longer than the new IP discovery waits,
        and the move then times out. On Discord the old socket still gets a packet now and
        then; here nothing else would send to it.
        """
        if self.node is None:
            return
        addresses = [
            voice.address
            for voice in self.node.router.sessions.values()
            if voice.guild_id == str(guild_id)
            and voice.user_id == str(user_id)
            and voice.address is not None
        ]
        if not addresses:
            return
        old = self.node.router.sessions.get(session_id)

        async def wake() -> None:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.node is not None:
                current = self.node.router.sessions.get(session_id)
                if current is not None and current is not old:
                    for address in addresses:
                        self.node.router.sendto(WAKE_DATAGRAM, address)
                    return
                await asyncio.sleep(0.02)

        task = asyncio.get_running_loop().create_task(wake())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _voice_connected(self, session_id: str, channel_id: int) -> bool:
        if self.node is None:
            return False
        voice = self.node.router.sessions.get(session_id)
        return (
            voice is not None
            and voice.connection is not None
            and voice.channel.key[1] == str(channel_id)
        )

    def session_ended(self, session: GatewaySession) -> None:
        """A gateway session ended for good: its bot's voice states go with it."""
        for guild in self.model.guilds.values():
            state = guild.voice_states.get(session.user_id)
            if state is not None and state.session_id == session.session_id:
                self._clear_voice_state(
                    guild.id,
                    session.user_id,
                    close_voice=True,
                    why="gateway session ended",
                    session_id=session.session_id,
                )
        self.notify()

    # --- messages and commands -----------------------------------------------------------

    def dispatch_message_create(self, message_id: int, channel_id: int) -> None:
        message = self.model.message(channel_id, message_id)
        full = self.model.message_payload(message)
        mentioned = {int(user["id"]) for user in full["mentions"]}

        def render(session: GatewaySession) -> Payload:
            # Without the message-content intent a bot sees content only of its own
            # messages and of those that mention it (Discord's rule).
            if (
                session.has(Intent.MESSAGE_CONTENT)
                or message.author_id == session.user_id
                or session.user_id in mentioned
            ):
                return full
            return {**full, "content": "", "embeds": [], "attachments": [], "components": []}

        if message.guild_id is not None:
            self.gateway.dispatch_guild(
                message.guild_id, "MESSAGE_CREATE", render, Intent.GUILD_MESSAGES
            )
        self.notify()

    async def send_message(self, user_id: int, channel_id: int, content: str) -> Payload:
        """User ``user_id`` posts ``content`` in ``channel_id``: bots with the
        guild-messages intent get MESSAGE_CREATE (content per the message-content intent)."""
        self.model.user(int(user_id))
        if not isinstance(content, str) or not 1 <= len(content) <= 2000:
            raise ModelError(400, 50035, "content is 1-2000 characters")
        message = self.model.add_message(int(channel_id), int(user_id), content)
        self.dispatch_message_create(message.id, message.channel_id)
        return self.model.message_payload(message)

    def messages(self, channel_id: int) -> list[Payload]:
        """Every message in ``channel_id``, oldest first (users' and bots' alike: filter on
        ``author.bot``)."""
        self.model.channel(int(channel_id))
        return [self.model.message_payload(m) for m in self.model.messages.get(int(channel_id), [])]

    async def invoke_command(
        self,
        user_id: int,
        channel_id: int,
        name: str,
        options: dict[str, Any] | list[Payload] | None = None,
        *,
        application_id: int | None = None,
    ) -> Interaction:
        """User ``user_id`` runs slash command ``name`` in ``channel_id``: the bot that
        registered it gets INTERACTION_CREATE. ``options``: ``{"name": value}`` or Discord's
        option objects. Wait for its answer with :meth:`wait_interaction_response`."""
        channel = self.model.channel(int(channel_id))
        command = self.model.find_command(channel.guild_id, name, application_id)
        rendered = _command_options(command.options, options)
        interaction = self.model.add_interaction(int(user_id), channel.id, command, rendered)
        payload = self.model.interaction_payload(interaction)
        sessions = [
            session
            for session in self.gateway.sessions_of(command.application_id)
            if session.sees_guild(channel.guild_id)
        ]
        if not sessions:
            log.warning("/%s invoked, but its bot has no gateway session", command.name)
        for session in sessions[:1]:
            session.dispatch("INTERACTION_CREATE", payload)
        log.info("user %d invoked /%s in channel %d", interaction.user_id, name, channel.id)
        self.notify()
        return interaction

    async def wait_interaction_response(
        self, interaction: Interaction, timeout: float = 10.0
    ) -> Payload:
        """The first callback the bot posted for ``interaction`` (``{"type", "data"}``)."""
        await self.wait_for(lambda: interaction.callbacks, timeout)
        return interaction.callbacks[0]

    # --- gateway faults ------------------------------------------------------------------

    def _bot_sessions(self, user_id: int | None) -> list[GatewaySession]:
        if user_id is None:
            return self.gateway.live_sessions()
        return self.gateway.sessions_of(int(user_id))

    async def drop_gateway(self, user_id: int | None = None, code: int = 4000) -> int:
        """Close the gateway WebSocket of bot ``user_id`` (every bot's when None) with
        ``code``; 4000 lets it resume. Returns how many sockets were closed."""
        sessions = [s for s in self._bot_sessions(user_id) if s.socket is not None]
        for session in sessions:
            self.gateway.drop(session, code)
        return len(sessions)

    async def send_reconnect(self, user_id: int | None = None) -> int:
        """Op 7 to bot ``user_id``'s sessions: they resume."""
        sessions = [s for s in self._bot_sessions(user_id) if s.socket is not None]
        for session in sessions:
            self.gateway.reconnect(session)
        return len(sessions)

    async def invalidate_session(self, user_id: int | None = None, resumable: bool = False) -> int:
        """Op 9 to bot ``user_id``'s sessions: re-identify (or resume when ``resumable``)."""
        sessions = [s for s in self._bot_sessions(user_id) if s.socket is not None]
        for session in sessions:
            self.gateway.invalidate(session, resumable)
        return len(sessions)

    def gateway_sessions(self) -> list[Payload]:
        return [
            {
                "session_id": session.session_id,
                "user_id": str(session.user_id),
                "connected": session.socket is not None,
                "seq": session.seq,
                "intents": session.intents,
                "shard": list(session.shard),
            }
            for session in self.gateway.live_sessions()
        ]


def _command_options(
    declared: list[Payload], given: dict[str, Any] | list[Payload] | None
) -> list[Payload]:
    """Discord's interaction option objects for ``given``, typed as the command declared."""
    if not given:
        return []
    if isinstance(given, list):
        return given
    types = {option.get("name"): option.get("type", 3) for option in declared}
    rendered = []
    for name, value in given.items():
        if name not in types:
            raise ModelError(400, 50035, f"the command has no option {name!r}")
        option_type = types[name]
        if option_type in (6, 7, 8, 9) and isinstance(value, int):
            value = str(value)  # user, channel, role, mentionable: snowflakes as strings
        rendered.append({"name": name, "type": option_type, "value": value})
    return rendered
