"""The sandbox's main gateway (v10, JSON): what a bot's library connects to after login.

Hello, heartbeats, Identify (READY, then a GUILD_CREATE per guild built from the model),
intents (voice states behind 1 << 7, message content behind 1 << 15, unapproved
privileged intents closed with 4014), op 4 handed to the sandbox (which answers with
VOICE_STATE_UPDATE, then VOICE_SERVER_UPDATE), op 8, resume (op 6: the dispatches after
``seq`` replayed, then RESUMED), server-sent op 7 and op 9, and ``compress=zlib-stream``.
Bad input closes that one socket with the main gateway's own close codes (4000-4014) and a
reason; nothing a client sends can end another client's connection or the process.

A :class:`GatewaySession` is what Identify creates and Resume finds again: it outlives its
WebSocket for :attr:`Gateway.resume_grace_s`, buffering what is dispatched meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import logging
import secrets
import socket as _socket  # a GatewaySocket is ``socket`` in this module
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from voxgate.sandbox.model import (
    ALL_INTENTS,
    PRIVILEGED_INTENTS,
    Bot,
    Intent,
    Payload,
    SandboxModel,
)

log = logging.getLogger(__name__)

#: Discord refuses client payloads over 4096 bytes.
MAX_PAYLOAD_BYTES = 4096
#: aiohttp's own cut-off for a frame (close 1009); between the two we close 4002 with a reason.
HARD_FRAME_LIMIT = 64 * 1024
#: Discord's budget: 120 gateway commands per 60 s per connection.
RATE_LIMIT_COMMANDS = 120
RATE_LIMIT_WINDOW_S = 60.0
#: How many dispatches a session keeps for a Resume.
REPLAY_BUFFER = 2000
#: Payloads waiting for a socket that does not drain before it is closed (4000, resumable).
OUTBOX_LIMIT = 10000
DEFAULT_HEARTBEAT_INTERVAL_MS = 41250
#: How long a session whose WebSocket dropped may be resumed.
DEFAULT_RESUME_GRACE_S = 60.0
SUPPORTED_VERSIONS = ("9", "10")
#: How long op 4 waits for its answer: Discord's is a network round trip away.
VOICE_ANSWER_DELAY_S = 0.05
#: Linux's TCP_CORK (:func:`_corked`); None elsewhere.
_TCP_CORK: int | None = getattr(_socket, "TCP_CORK", None)
#: Close codes with which a client ends its session on purpose (no resume).
ENDING_CLOSE_CODES = frozenset({1000, 1001})


class GatewayCloseCode(enum.IntEnum):
    """The main gateway's close codes (Discord's ``opcodes-and-status-codes``)."""

    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SEQ = 4007
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    INVALID_SHARD = 4010
    SHARDING_REQUIRED = 4011
    INVALID_API_VERSION = 4012
    INVALID_INTENTS = 4013
    DISALLOWED_INTENTS = 4014


class Op(enum.IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11
    REQUEST_SOUNDBOARD_SOUNDS = 31


class GatewayError(Exception):
    """A client payload that ends its connection with ``code``."""

    def __init__(self, code: GatewayCloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class VoiceBackend(Protocol):
    """What the gateway asks of the sandbox for op 4 and for sessions that end."""

    def bot_voice_update(
        self,
        session: GatewaySession,
        guild_id: int,
        channel_id: int | None,
        self_mute: bool,
        self_deaf: bool,
    ) -> None: ...

    def session_ended(self, session: GatewaySession) -> None: ...


def _encode(payload: Payload) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


@dataclass(eq=False)
class GatewaySession:
    """One identified gateway session: a bot, its intents, its sequence and replay buffer."""

    session_id: str
    bot: Bot
    intents: int
    shard: tuple[int, int]
    seq: int = 0
    replay: collections.deque[tuple[int, str]] = field(
        default_factory=lambda: collections.deque(maxlen=REPLAY_BUFFER)
    )
    socket: GatewaySocket | None = None
    detached_at: float | None = None
    ended: bool = False

    @property
    def user_id(self) -> int:
        return self.bot.user.id

    def has(self, intent: Intent) -> bool:
        return bool(self.intents & intent)

    def sees_guild(self, guild_id: int) -> bool:
        shard_id, shards = self.shard
        return (guild_id >> 22) % shards == shard_id

    def dispatch(self, event: str, data: Any) -> None:
        """Send (or buffer, while detached) one dispatch with the session's next ``s``."""
        if self.ended:
            return
        self.seq += 1
        frame = _encode({"op": int(Op.DISPATCH), "t": event, "s": self.seq, "d": data})
        self.replay.append((self.seq, frame))
        if self.socket is not None:
            self.socket.send(frame)


class GatewaySocket:
    """One WebSocket: its compression, its outbox and its writer task."""

    def __init__(self, ws: web.WebSocketResponse, compress: str | None, peer: str) -> None:
        self.ws = ws
        self.peer = peer
        self.transport_compress = compress == "zlib-stream"
        self._zlib = zlib.compressobj() if self.transport_compress else None
        self.payload_compress = False
        self.session: GatewaySession | None = None
        self._outbox: asyncio.Queue[str | tuple[int, str]] = asyncio.Queue()
        self.closing: tuple[int, str] | None = None
        self.window_start = time.monotonic()
        self.window_count = 0
        self.last_received = time.monotonic()

    def send(self, frame: str) -> None:
        if self.closing is not None:
            return
        if self._outbox.qsize() >= OUTBOX_LIMIT:
            # A client that does not read: its socket goes (the session stays resumable)
            # rather than the sandbox's memory.
            while not self._outbox.empty():
                self._outbox.get_nowait()
            self.close(GatewayCloseCode.UNKNOWN_ERROR, "client too slow to read its dispatches")
            return
        self._outbox.put_nowait(frame)

    def send_payload(self, payload: Payload) -> None:
        self.send(_encode(payload))

    def close(self, code: int, reason: str) -> None:
        """Close after what is already queued has been written."""
        if self.closing is None:
            self.closing = (code, reason)
            self._outbox.put_nowait((code, reason))

    def _wire(self, frame: str) -> str | bytes:
        if self._zlib is not None:
            # One zlib context per connection, each message ending 00 00 ff ff.
            return self._zlib.compress(frame.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
        if self.payload_compress:
            return zlib.compress(frame.encode())
        return frame

    async def write(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            frames = [item for item in batch if isinstance(item, str)]
            # What was dispatched together leaves together, in one TCP segment, so that the
            # client reads it in one go: discord.py 2.7 loses a VOICE_SERVER_UPDATE that it
            # reads a few loop iterations after the VOICE_STATE_UPDATE before it (its
            # _wait_for_state sets and clears an Event before the next waiter's task has
            # started waiting), then times out connecting to voice after 30 s. The
            # sandbox's bot test met it under a full `make test` on 2026-12-03.
            with _corked(self.ws, len(frames) > 1):
                for frame in frames:
                    if not await self._send(frame):
                        return
            if len(frames) < len(batch):
                # The close is last: send() queues nothing after it. Not corked, or its
                # frame would wait in the kernel while aiohttp waits for the client's reply.
                code, reason = next(item for item in batch if isinstance(item, tuple))
                if not self.ws.closed:
                    await self.ws.close(code=code, message=reason.encode()[:120])
                return

    async def _send(self, frame: str) -> bool:
        """Write one payload; False once the WebSocket is gone."""
        if self.ws.closed:
            return False
        wire = self._wire(frame)
        try:
            if isinstance(wire, bytes):
                await self.ws.send_bytes(wire)
            else:
                await self.ws.send_str(wire)
        except (ConnectionError, RuntimeError):
            return False
        return True


@contextlib.contextmanager
def _corked(ws: web.WebSocketResponse, cork: bool) -> Iterator[None]:
    """With ``cork``, hold what is written to ``ws`` meanwhile until the block ends, then
    send it in as few segments as it fills (Linux's TCP_CORK; elsewhere, as it comes)."""
    option = _TCP_CORK if cork else None
    sock = ws.get_extra_info("socket") if option is not None else None
    corked = False
    if sock is not None and option is not None:
        try:
            sock.setsockopt(_socket.IPPROTO_TCP, option, 1)
            corked = True
        except OSError:
            pass
    try:
        yield
    finally:
        if corked and sock is not None and option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(_socket.IPPROTO_TCP, option, 0)


def _field(
    data: Payload, name: str, kind: type | tuple[type, ...], *, optional: bool = False
) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    # bool is an int in Python; Discord's ints are never booleans.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise GatewayError(GatewayCloseCode.DECODE_ERROR, f"{name} must be {expected}")
    return value


def _snowflake(data: Payload, name: str, *, optional: bool = False) -> int | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64:
        return value
    raise GatewayError(GatewayCloseCode.DECODE_ERROR, f"{name} must be a snowflake")


class Gateway:
    """Every gateway session of one sandbox, and the aiohttp handler of its WebSocket."""

    def __init__(
        self,
        model: SandboxModel,
        backend: VoiceBackend,
        *,
        resume_url: Callable[[], str],
        allowed_privileged: int = PRIVILEGED_INTENTS,
        heartbeat_interval_ms: float = DEFAULT_HEARTBEAT_INTERVAL_MS,
        resume_grace_s: float = DEFAULT_RESUME_GRACE_S,
        voice_answer_delay_s: float = VOICE_ANSWER_DELAY_S,
    ) -> None:
        self.model = model
        self.voice_answer_delay_s = voice_answer_delay_s
        self.backend = backend
        self.resume_url = resume_url
        #: The privileged intent bits bots may identify with (4014 for any other).
        self.allowed_privileged = allowed_privileged
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.resume_grace_s = resume_grace_s
        self.sessions: dict[str, GatewaySession] = {}
        self.sockets: set[GatewaySocket] = set()
        self._expiry: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._expiry = asyncio.create_task(self._expire())

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        for socket in list(self.sockets):
            socket.close(1001, "sandbox shutting down")

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if (
                    session.detached_at is not None
                    and now - session.detached_at > self.resume_grace_s
                ):
                    self.end_session(session, "not resumed in time")

    def end_session(self, session: GatewaySession, why: str) -> None:
        """End ``session`` for good: no resume, its voice state cleared."""
        if session.ended:
            return
        session.ended = True
        self.sessions.pop(session.session_id, None)
        log.info(
            "gateway session %s of %s ended: %s", session.session_id, session.bot.user.username, why
        )
        self.backend.session_ended(session)

    # --- dispatching ---------------------------------------------------------------------

    def live_sessions(self) -> list[GatewaySession]:
        return [session for session in self.sessions.values() if not session.ended]

    def sessions_of(self, user_id: int) -> list[GatewaySession]:
        return [session for session in self.live_sessions() if session.user_id == user_id]

    def dispatch_guild(
        self,
        guild_id: int,
        event: str,
        data: Payload | Callable[[GatewaySession], Payload | None],
        intent: Intent | None,
    ) -> None:
        """Dispatch to every session of a bot in ``guild_id`` whose intents include ``intent``
        (None: ungated); ``data`` may render per session (message content), None skips."""
        guild = self.model.guilds.get(guild_id)
        if guild is None:
            return
        for session in self.live_sessions():
            if session.user_id not in guild.members or not session.sees_guild(guild_id):
                continue
            if intent is not None and not session.has(intent):
                continue
            payload = data(session) if callable(data) else data
            if payload is not None:
                session.dispatch(event, payload)

    # --- faults a test injects -----------------------------------------------------------

    def drop(
        self, session: GatewaySession, code: int = 4000, reason: str = "dropped by the sandbox"
    ) -> None:
        if session.socket is not None:
            session.socket.close(code, reason)

    def reconnect(self, session: GatewaySession) -> None:
        """Op 7: the client closes and resumes."""
        if session.socket is not None:
            session.socket.send_payload({"op": int(Op.RECONNECT), "d": None, "s": None, "t": None})

    def invalidate(self, session: GatewaySession, resumable: bool) -> None:
        """Op 9 ``d: resumable``; a session that may not resume ends here."""
        socket = session.socket
        if socket is not None:
            socket.send_payload(
                {"op": int(Op.INVALID_SESSION), "d": resumable, "s": None, "t": None}
            )
        if not resumable:
            if socket is not None:
                socket.session = None
            session.socket = None
            self.end_session(session, "invalidated by the sandbox")

    # --- the WebSocket -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        version = request.query.get("v", "10")
        encoding = request.query.get("encoding", "json")
        compress = request.query.get("compress")
        ws = web.WebSocketResponse(max_msg_size=HARD_FRAME_LIMIT, autoping=True, heartbeat=None)
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {"message": "WebSocket upgrade required", "code": 0}, status=426
            )
        await ws.prepare(request)
        peer = request.remote or "?"
        socket = GatewaySocket(ws, compress, peer)
        self.sockets.add(socket)
        writer = asyncio.create_task(socket.write())
        client_code: int | None = None
        try:
            if version not in SUPPORTED_VERSIONS:
                raise GatewayError(
                    GatewayCloseCode.INVALID_API_VERSION,
                    f"gateway version {version[:8]!r} is not served",
                )
            if encoding != "json":
                raise GatewayError(
                    GatewayCloseCode.DECODE_ERROR,
                    f"encoding {encoding[:16]!r} is not served (json only)",
                )
            socket.send_payload(
                {
                    "op": int(Op.HELLO),
                    "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                    "s": None,
                    "t": None,
                }
            )
            client_code = await self._read(socket)
        except GatewayError as exc:
            log.info("gateway %s closed %d: %s", peer, exc.code, exc.reason)
            socket.close(exc.code, exc.reason)
        except Exception:  # one client's bug is its connection's end, never the process's
            log.exception("gateway %s: unexpected error", peer)
            socket.close(GatewayCloseCode.UNKNOWN_ERROR, "internal error")
        finally:
            self._detach(socket, client_code)
            try:
                await asyncio.wait_for(writer, timeout=5)
            except (TimeoutError, asyncio.CancelledError, ConnectionError):
                writer.cancel()
            if not ws.closed:
                await ws.close()
            self.sockets.discard(socket)
        return ws

    def _detach(self, socket: GatewaySocket, client_code: int | None) -> None:
        session = socket.session
        socket.session = None
        if session is None or session.socket is not socket:
            return
        session.socket = None
        if client_code in ENDING_CLOSE_CODES:
            self.end_session(session, f"client closed with {client_code}")
        else:
            session.detached_at = time.monotonic()
            log.info(
                "gateway session %s of %s lost its socket; resumable for %.0f s",
                session.session_id,
                session.bot.user.username,
                self.resume_grace_s,
            )

    async def _read(self, socket: GatewaySocket) -> int | None:
        ws = socket.ws
        # A client that sends nothing (not even heartbeats) for this long is gone.
        silence_s = self.heartbeat_interval_ms / 1000 * 1.5 + 5
        while socket.closing is None:
            try:
                message = await ws.receive(timeout=silence_s)
            except TimeoutError:
                raise GatewayError(GatewayCloseCode.SESSION_TIMED_OUT, "no heartbeat") from None
            if message.type is WSMsgType.TEXT:
                self._receive(socket, message.data)
            elif message.type is WSMsgType.BINARY:
                raise GatewayError(
                    GatewayCloseCode.DECODE_ERROR,
                    "binary (ETF) payloads are not served: send JSON text",
                )
            elif message.type is WSMsgType.CLOSE:
                return int(message.data) if isinstance(message.data, int) else None
            elif message.type is WSMsgType.ERROR:
                # aiohttp has closed the socket itself (1009 past HARD_FRAME_LIMIT, 1007 for
                # text that is not UTF-8, 1002 for a protocol error).
                log.info("gateway %s: websocket error: %s", socket.peer, ws.exception())
                return None
            else:  # CLOSING, CLOSED
                return None
        return None

    def _receive(self, socket: GatewaySocket, text: str) -> None:
        if len(text) > MAX_PAYLOAD_BYTES:
            raise GatewayError(
                GatewayCloseCode.DECODE_ERROR, f"payload over {MAX_PAYLOAD_BYTES} bytes"
            )
        now = time.monotonic()
        socket.last_received = now
        if now - socket.window_start >= RATE_LIMIT_WINDOW_S:
            socket.window_start, socket.window_count = now, 0
        socket.window_count += 1
        if socket.window_count > RATE_LIMIT_COMMANDS:
            raise GatewayError(
                GatewayCloseCode.RATE_LIMITED,
                f"more than {RATE_LIMIT_COMMANDS} payloads in {RATE_LIMIT_WINDOW_S:.0f} s",
            )
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError):
            raise GatewayError(GatewayCloseCode.DECODE_ERROR, "payload is not JSON") from None
        if not isinstance(payload, dict):
            raise GatewayError(GatewayCloseCode.DECODE_ERROR, "payload is not a JSON object")
        op = payload.get("op")
        if not isinstance(op, int) or isinstance(op, bool):
            raise GatewayError(GatewayCloseCode.DECODE_ERROR, "op must be an integer")
        data = payload.get("d")
        if op == Op.HEARTBEAT:
            if data is not None and (not isinstance(data, int) or isinstance(data, bool)):
                raise GatewayError(
                    GatewayCloseCode.DECODE_ERROR, "heartbeat d must be an integer or null"
                )
            socket.send_payload({"op": int(Op.HEARTBEAT_ACK), "d": None, "s": None, "t": None})
            return
        if op == Op.IDENTIFY:
            self._identify(socket, data)
            return
        if op == Op.RESUME:
            self._resume(socket, data)
            return
        if op not in (
            Op.PRESENCE_UPDATE,
            Op.VOICE_STATE_UPDATE,
            Op.REQUEST_GUILD_MEMBERS,
            Op.REQUEST_SOUNDBOARD_SOUNDS,
        ):
            raise GatewayError(GatewayCloseCode.UNKNOWN_OPCODE, f"unknown opcode {op}")
        session = socket.session
        if session is None:
            raise GatewayError(GatewayCloseCode.NOT_AUTHENTICATED, f"op {op} before Identify")
        if not isinstance(data, dict):
            raise GatewayError(GatewayCloseCode.DECODE_ERROR, f"op {op} d must be an object")
        if op == Op.VOICE_STATE_UPDATE:
            guild_id = _snowflake(data, "guild_id")
            channel_id = _snowflake(data, "channel_id", optional=True)
            self_mute = bool(_field(data, "self_mute", bool, optional=True))
            self_deaf = bool(_field(data, "self_deaf", bool, optional=True))
            assert guild_id is not None
            # Answered a moment later, as over a real network: discord.py 2.7 marks itself
            # as connecting only after its op 4 send returns (voice_state.py
            # _inner_connect), and drops a VOICE_STATE_UPDATE that beats it there.
            asyncio.get_running_loop().call_later(
                self.voice_answer_delay_s,
                self._voice_update,
                session,
                guild_id,
                channel_id,
                self_mute,
                self_deaf,
            )
        elif op == Op.REQUEST_GUILD_MEMBERS:
            self._request_members(session, data)
        elif op == Op.PRESENCE_UPDATE:
            _field(data, "status", str, optional=True)

    def _voice_update(
        self,
        session: GatewaySession,
        guild_id: int,
        channel_id: int | None,
        self_mute: bool,
        self_deaf: bool,
    ) -> None:
        if session.ended:
            return
        try:
            self.backend.bot_voice_update(session, guild_id, channel_id, self_mute, self_deaf)
        except Exception:  # a timer callback: nothing above it would catch this
            log.exception("op 4 from %s failed", session.bot.user.username)

    def _identify(self, socket: GatewaySocket, data: Any) -> None:
        if socket.session is not None:
            raise GatewayError(GatewayCloseCode.ALREADY_AUTHENTICATED, "already identified")
        if not isinstance(data, dict):
            raise GatewayError(GatewayCloseCode.DECODE_ERROR, "identify d must be an object")
        token = _field(data, "token", str)
        intents = _field(data, "intents", int)
        _field(data, "properties", dict)
        compress = _field(data, "compress", bool, optional=True)
        shard_value = data.get("shard")
        shard = (0, 1)
        if shard_value is not None:
            if (
                not isinstance(shard_value, list)
                or len(shard_value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in shard_value)
            ):
                raise GatewayError(
                    GatewayCloseCode.DECODE_ERROR, "shard must be [shard_id, num_shards]"
                )
            shard_id, shards = shard_value
            if not (1 <= shards <= 64 and 0 <= shard_id < shards):
                raise GatewayError(GatewayCloseCode.INVALID_SHARD, f"invalid shard {shard_value}")
            shard = (shard_id, shards)
        bot = self.model.bot_for_token(token.removeprefix("Bot "))
        if bot is None:
            raise GatewayError(GatewayCloseCode.AUTHENTICATION_FAILED, "Authentication failed.")
        if intents < 0 or intents & ~ALL_INTENTS:
            raise GatewayError(GatewayCloseCode.INVALID_INTENTS, "Invalid intent(s).")
        if intents & PRIVILEGED_INTENTS & ~self.allowed_privileged:
            raise GatewayError(GatewayCloseCode.DISALLOWED_INTENTS, "Disallowed intent(s).")
        # A token logging in again after its last process died (SANDBOX contract): the
        # sessions it left behind, which nothing will resume now, end with their voice state.
        for old in self.sessions_of(bot.user.id):
            if old.socket is None and old.shard == shard:
                self.end_session(old, "its bot identified again")
        if compress and not socket.transport_compress:
            socket.payload_compress = True
        session = GatewaySession(secrets.token_hex(16), bot, intents, shard)
        self.sessions[session.session_id] = session
        socket.session = session
        session.socket = socket
        log.info(
            "gateway session %s: %s identified (intents %d, shard %s)",
            session.session_id,
            bot.user.username,
            intents,
            list(shard),
        )
        guilds = [g for g in self.model.guilds_of(bot.user.id) if session.sees_guild(g.id)]
        session.dispatch(
            "READY",
            {
                "v": 10,
                "user": self.model.me_payload(bot),
                "user_settings": {},
                "guilds": [{"id": str(guild.id), "unavailable": True} for guild in guilds],
                "presences": [],
                "private_channels": [],
                "relationships": [],
                "guild_join_requests": [],
                "session_id": session.session_id,
                "session_type": "normal",
                "resume_gateway_url": self.resume_url(),
                "application": {"id": str(bot.application_id), "flags": 0},
                "shard": list(shard),
                "auth": {},
                "geo_ordered_rtc_regions": ["local"],
                "_trace": ["voxgate-sandbox"],
            },
        )
        if session.has(Intent.GUILDS):
            voice = session.has(Intent.GUILD_VOICE_STATES)
            for guild in guilds:
                session.dispatch(
                    "GUILD_CREATE", self.model.guild_create_payload(guild, voice_states=voice)
                )

    def _resume(self, socket: GatewaySocket, data: Any) -> None:
        if socket.session is not None:
            raise GatewayError(GatewayCloseCode.ALREADY_AUTHENTICATED, "already identified")
        if not isinstance(data, dict):
            raise GatewayError(GatewayCloseCode.DECODE_ERROR, "resume d must be an object")
        token = _field(data, "token", str).removeprefix("Bot ")
        session_id = _field(data, "session_id", str)
        seq = _field(data, "seq", int, optional=True)
        bot = self.model.bot_for_token(token)
        if bot is None:
            raise GatewayError(GatewayCloseCode.AUTHENTICATION_FAILED, "Authentication failed.")
        session = self.sessions.get(session_id)
        seq = 0 if seq is None else seq
        oldest = session.replay[0][0] if session is not None and session.replay else 1
        if session is None or session.ended or session.bot is not bot or seq < oldest - 1:
            log.info(
                "gateway %s: resume of %s refused: invalid session", socket.peer, session_id[:40]
            )
            socket.send_payload({"op": int(Op.INVALID_SESSION), "d": False, "s": None, "t": None})
            return
        if seq > session.seq:
            raise GatewayError(GatewayCloseCode.INVALID_SEQ, f"seq {seq} was never sent")
        previous = session.socket
        if previous is not None:
            previous.session = None
            previous.close(GatewayCloseCode.SESSION_TIMED_OUT, "resumed on another connection")
        session.socket = socket
        session.detached_at = None
        socket.session = session
        if data.get("compress") is True and not socket.transport_compress:
            socket.payload_compress = True
        missed = [frame for s, frame in session.replay if s > seq]
        for frame in missed:
            socket.send(frame)
        session.dispatch("RESUMED", {"_trace": ["voxgate-sandbox"]})
        log.info(
            "gateway session %s of %s resumed, %d dispatches replayed",
            session.session_id,
            bot.user.username,
            len(missed),
        )

    def _request_members(self, session: GatewaySession, data: Payload) -> None:
        guild_id = _snowflake(data, "guild_id")
        assert guild_id is not None
        query = _field(data, "query", str, optional=True)
        limit = _field(data, "limit", int, optional=True) or 0
        user_ids = data.get("user_ids")
        nonce = _field(data, "nonce", str, optional=True)
        guild = self.model.guilds.get(guild_id)
        if guild is None or session.user_id not in guild.members:
            return
        wanted: list[int]
        if user_ids is not None:
            listed = user_ids if isinstance(user_ids, list) else [user_ids]
            wanted = [int(u) for u in listed if str(u).isdigit() and int(u) in guild.members]
        else:
            wanted = [
                user_id
                for user_id in guild.members
                if not query or self.model.users[user_id].username.lower().startswith(query.lower())
            ]
            if limit:
                wanted = wanted[:limit]
        chunk: Payload = {
            "guild_id": str(guild_id),
            "members": [self.model.member_payload(guild_id, user_id) for user_id in wanted],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if nonce is not None:
            chunk["nonce"] = nonce
        session.dispatch("GUILD_MEMBERS_CHUNK", chunk)
