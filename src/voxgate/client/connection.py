"""``VoiceConnection``: join a voice server with the two Discord events, send and receive RTP.

The asyncio adapter around :class:`~voxgate.client.gateway.ClientGateway`: one WebSocket
at a time (resumed or re-identified when it drops, per :func:`after_close`), one UDP
socket for the life of the connection (so a resume never interrupts media), heartbeats at
the interval Hello gives, and a keep-alive datagram every few seconds so NATs keep the
flow. Audio goes out through :meth:`VoiceConnection.send_opus`; what comes in is opened
with the session's key and handed to the listeners (see ``receiver.py``).

With DAVE (the default, ``dave=False`` to go without), each Opus frame is end-to-end
encrypted before the transport encryption once the call's group is ready, and each frame
received is opened with its sender's key after the transport decryption: the listeners
always get Opus. :attr:`VoiceConnection.dave` shows the state, the epoch and the privacy
code; a server that requires DAVE from a client without it closes with 4017, which is fatal.

Example::

    connection = await VoiceConnection.connect(events["voice_state"], events["voice_server"])
    async with connection:
        await connection.set_speaking(True)
        connection.send_opus(frame)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from voxgate.client.dave import DaveMember
from voxgate.client.gateway import ClientGateway, CloseAction, GatewayState, VoiceJoin, after_close
from voxgate.errors import VoxgateError
from voxgate.protocol import discovery
from voxgate.protocol.crypto import TransportCipher, transport_cipher
from voxgate.protocol.errors import MessageDecodeError, PacketError
from voxgate.protocol.messages import (
    MAX_FRAME_SIZE,
    ClientDisconnect,
    ClientsConnect,
    HeartbeatAck,
    Ready,
    Resumed,
    SessionDescription,
    Speaking,
)
from voxgate.protocol.opcodes import CloseCode, SpeakingFlags
from voxgate.protocol.rtp import build_keepalive

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL_S = 5.0
#: Frames (20 ms each) kept back at most while a DAVE transition executes, see
#: :meth:`VoiceConnection._hold`: its op 22 comes once every member processed the commit.
MAX_HELD_FRAMES = 10
DISCOVERY_TIMEOUT_S = 2.0
# DAVE frames of an ssrc no Speaking has named yet, held until one does: a second of audio
# for each of a few ssrcs. Speaking comes over the WebSocket and the first frames it names
# over UDP, so on a busy machine the frames can come first, and no key opens them then.
MAX_UNNAMED_FRAMES = 50
MAX_UNNAMED_SSRCS = 8
DISCOVERY_ATTEMPTS = 3
#: How long to keep trying to get the session back (resume, then a new session) before
#: giving up; the delay between tries doubles from 0.25 s up to RECONNECT_MAX_DELAY_S.
RECONNECT_TIMEOUT_S = 60.0
RECONNECT_MAX_DELAY_S = 2.0
_RTP_HEADER = struct.Struct(">BBHII")


def strip_padding(payload: bytes) -> bytes | None:
    """The payload of a packet with the RTP padding bit set, without its padding (RFC 3550
    §5.1: the last byte counts the padding, itself included); None if that count is 0 or
    longer than the payload.

    Discord's clients do pad packets, and padding left on hides the DAVE frame's trailer
    (py-cord #3202, Discord.Net #3262, disgo #593).
    """
    padding = payload[-1] if payload else 0
    if not 0 < padding <= len(payload):
        return None
    return payload[: len(payload) - padding]


class VoiceConnectionError(VoxgateError):
    """The connection failed or was closed in a way retrying cannot fix."""

    def __init__(self, reason: str, close_code: int | None = None) -> None:
        super().__init__(reason if close_code is None else f"{reason} (close {close_code})")
        self.reason = reason
        self.close_code = close_code


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionReady:
    ssrc: int
    mode: str


@dataclass(frozen=True)
class MemberSpeaking:
    user_id: str
    ssrc: int
    flags: int


@dataclass(frozen=True)
class MembersConnected:
    user_ids: tuple[str, ...]


@dataclass(frozen=True)
class MemberDisconnected:
    user_id: str


@dataclass(frozen=True)
class ConnectionResumed:
    replayed: int


@dataclass(frozen=True)
class SessionRestarted:
    """The session could not be resumed and a new one took its place (new ssrc)."""

    old_ssrc: int
    new_ssrc: int


@dataclass(frozen=True)
class ConnectionClosed:
    code: int | None
    reason: str


VoiceEvent = (
    ConnectionReady
    | MemberSpeaking
    | MembersConnected
    | MemberDisconnected
    | ConnectionResumed
    | SessionRestarted
    | ConnectionClosed
)

#: Called with (ssrc, rtp_header, opus_payload) for every authenticated RTP packet (its
#: padding removed, its DAVE frame opened).
PacketListener = Callable[[int, bytes, bytes], None]
#: Returns fresh (VOICE_STATE_UPDATE, VOICE_SERVER_UPDATE) payloads for the same channel:
#: what a bot gets from the main gateway when its voice server changes (for voxgate, any
#: node's ``POST /v1/voice/join``).
Rejoin = Callable[[], Awaitable[tuple[dict[str, Any], dict[str, Any]]]]
#: Closes after which a connection with a rejoin callback asks it where to go: the channel
#: moved to another node (4022), the token names another node (4004), or the session is gone.
_REJOIN_CODES = frozenset({CloseCode.CALL_TERMINATED, CloseCode.AUTHENTICATION_FAILED})


class _MediaSocket(asyncio.DatagramProtocol):
    def __init__(self, connection: VoiceConnection) -> None:
        self.connection = connection
        self.transport: asyncio.DatagramTransport | None = None
        self.discovery: asyncio.Future[discovery.Discovery] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) == discovery.SIZE and data[0] == 0 and data[1] == discovery.RESPONSE:
            if self.discovery is not None and not self.discovery.done():
                with contextlib.suppress(PacketError):
                    self.discovery.set_result(discovery.parse(data))
            return
        self.connection._on_datagram(data)


class VoiceConnection:
    """A joined voice session: gateway, media socket and the session's keys."""

    def __init__(
        self,
        join: VoiceJoin,
        *,
        ssl: ssl_module.SSLContext | bool | None = None,
        modes: Sequence[str] | None = None,
        dave: bool = True,
        reconnect: bool = True,
        rejoin: Rejoin | None = None,
    ) -> None:
        self.join = join
        self.gateway = ClientGateway(join, modes=modes, dave=dave)
        self._ssl = ssl
        self._reconnect = reconnect
        self._modes, self._dave_wanted, self._rejoin = modes, dave, rejoin
        #: Times the rejoin callback sent this connection to a new session.
        self.rejoins = 0
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._media: _MediaSocket | None = None
        self._cipher: TransportCipher | None = None
        self._events: asyncio.Queue[VoiceEvent] = asyncio.Queue()
        self._listeners: list[PacketListener] = []
        self._wire_listeners: list[PacketListener] = []
        self._held: list[tuple[bytes, int]] = []
        self._hold_given_up: int | None = None
        #: Frames kept back during a DAVE transition, and sent at its op 22.
        self.frames_held = 0
        self._ready = asyncio.Event()
        #: Set while the call is end-to-end encrypted for us (DAVE's group is ready).
        self._encrypted = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._failure: VoiceConnectionError | None = None
        self._closing = False
        self.closed = asyncio.Event()
        self.sequence = 0
        self.timestamp = 0
        self.packets_sent = 0
        self.packets_received = 0
        self.packets_dropped = 0
        self.frames_dropped = 0
        self.resumes = 0
        self.reidentifies = 0
        # Counts WebSockets that reached a described or resumed session.
        self._healthy = 0
        self._last_ssrc: int | None = None
        #: Heartbeat round trips (seconds), the most recent last.
        self.latencies: deque[float] = deque(maxlen=20)
        self._heartbeat_sent: tuple[int, float] | None = None
        self._unnamed: dict[int, list[tuple[bytes, bytes]]] = {}

    # --- joining -------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        voice_state: dict[str, Any],
        voice_server: dict[str, Any],
        *,
        ssl: ssl_module.SSLContext | bool | None = None,
        modes: Sequence[str] | None = None,
        dave: bool = True,
        reconnect: bool = True,
        rejoin: Rejoin | None = None,
        timeout: float = 20.0,
    ) -> VoiceConnection:
        """Join with VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE; returns once media can flow.

        ``ssl`` is the context to trust the server with (default: the system's CAs);
        ``modes`` overrides the order of encryption modes preferred; ``dave=False``
        identifies without end-to-end encryption (``max_dave_protocol_version: 0``);
        ``reconnect=False`` ends the connection when its WebSocket closes instead of
        resuming (discord.py's ``connect(reconnect=False)``). ``rejoin``, when given, is
        asked for fresh join events whenever the node cannot carry the session on (its
        channel moved: 4022; the session is gone; the node stops answering), and the
        connection comes back by itself where they point, as a bot does on a new
        VOICE_SERVER_UPDATE. Raises
        :class:`VoiceConnectionError` when the server refuses the session (4004, 4014,
        4017 "DAVE required", ...) or nothing answers within ``timeout`` seconds.
        """
        connection = cls(
            VoiceJoin.from_events(voice_state, voice_server),
            ssl=ssl,
            modes=modes,
            dave=dave,
            reconnect=reconnect,
            rejoin=rejoin,
        )
        try:
            async with asyncio.timeout(timeout):
                await connection._start()
        except TimeoutError:
            await connection.close()
            raise VoiceConnectionError(f"no voice session within {timeout:g} s") from None
        except BaseException:
            await connection.close()
            raise
        return connection

    async def _start(self) -> None:
        self._http = aiohttp.ClientSession()
        self._runner = asyncio.create_task(self._run())
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({ready, self._runner}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
        if self._failure is not None:
            raise self._failure
        if not self._ready.is_set():
            raise VoiceConnectionError("the connection closed during the handshake")

    # --- public API ----------------------------------------------------------------------

    @property
    def ssrc(self) -> int:
        ready = self.gateway.ready
        if ready is None:
            raise VoiceConnectionError("not connected")
        return ready.ssrc

    @property
    def media_transport(self) -> asyncio.DatagramTransport | None:
        """The UDP transport media flows on, once discovered: for socket options (DSCP,
        buffers) and for tools that take the socket over, such as the relay bench."""
        return None if self._media is None else self._media.transport

    @property
    def mode(self) -> str | None:
        return self.gateway.mode

    @property
    def dave(self) -> DaveMember:
        """The call's end-to-end encryption as this member sees it: ``state``, ``epoch``,
        ``privacy_code``, ``verification_code(user_id)`` and the frame counters."""
        return self.gateway.dave

    @property
    def user_id(self) -> str:
        return self.join.user_id

    def user_of(self, ssrc: int) -> str | None:
        """The user an ssrc belongs to, as the server's Speaking messages said."""
        return self.gateway.users_by_ssrc.get(ssrc)

    async def until_encrypted(self, timeout: float = 2.0) -> bool:
        """Wait until the call is end-to-end encrypted for us; False if ``timeout`` passed
        first (alone in the call there is no group to be in, DAVE.md §4.1).

        A frame sent before that goes out in the clear, and members already in a group drop
        it: :class:`~voxgate.client.player.AudioPlayer` waits here before its first frame
        when others are in the call.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._encrypted.wait()
        except TimeoutError:
            return False
        return True

    def add_listener(self, listener: PacketListener, *, opened: bool = True) -> None:
        """Call ``listener(ssrc, header, payload)`` for each packet received.

        ``opened=False`` hands over the payload as the server relayed it, before DAVE
        opens it (what the relay saw: a DAVE frame when the call is end-to-end encrypted);
        such listeners also get what DAVE then drops.
        """
        (self._listeners if opened else self._wire_listeners).append(listener)

    def remove_listener(self, listener: PacketListener) -> None:
        for listeners in (self._listeners, self._wire_listeners):
            with contextlib.suppress(ValueError):
                listeners.remove(listener)

    async def events(self) -> AsyncIterator[VoiceEvent]:
        """The connection's events, until it closes."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, ConnectionClosed):
                return

    async def next_event(self, kind: type[Any], timeout: float = 10.0) -> Any:
        """The next event of ``kind`` (others are skipped). Raises TimeoutError."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self._events.get()
                if isinstance(event, kind):
                    return event

    async def set_speaking(self, speaking: bool | int = True) -> None:
        """Send Speaking (op 5); a client must before its first audio packet."""
        flags = int(SpeakingFlags.MICROPHONE) if speaking is True else int(speaking)
        await self._send(self.gateway.speaking(flags))

    def send_opus(self, opus: bytes, *, samples: int = 960) -> bool:
        """Seal one Opus frame into an RTP packet and send it; advances sequence and timestamp.

        While the session is being re-established the frame is dropped (counted in
        ``frames_dropped``) and False returned, so a player keeps its pace through the gap.
        Between a DAVE commit and its execution (op 29/30 to op 22) frames are held, up to
        :data:`MAX_HELD_FRAMES`, and sent when the transition executes: see
        :meth:`_hold`. Raises :class:`VoiceConnectionError` once the connection is closed.
        """
        if self.closed.is_set():
            raise VoiceConnectionError("the connection is closed")
        if self._cipher is None or self._media is None or self.gateway.ready is None:
            self.frames_dropped += 1
            return False
        if self._hold(opus, samples):
            return True
        return self._send_now(opus, samples)

    def _hold(self, opus: bytes, samples: int) -> bool:
        """Keep the frame back while a DAVE transition that changes our key is pending.

        davey 0.1 encrypts with the new epoch's key as soon as it processed the commit,
        where libdave (Discord's own clients) waits for op 22; members that process the
        commit a moment later could not open those frames. So they wait here until op 22
        (or until :data:`MAX_HELD_FRAMES` are waiting: the others are slow, send anyway).
        """
        transition = self.gateway.dave.awaiting_execute
        if transition is None or transition == self._hold_given_up:
            self._flush_held()
            return False
        self._held.append((opus, samples))
        self.frames_held += 1
        if len(self._held) >= MAX_HELD_FRAMES:
            self._hold_given_up = transition
            self._flush_held()
        return True

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        for opus, samples in held:
            self._send_now(opus, samples)

    def _send_now(self, opus: bytes, samples: int) -> bool:
        cipher, media, ready = self._cipher, self._media, self.gateway.ready
        if cipher is None or media is None or media.transport is None or ready is None:
            self.frames_dropped += 1
            return False
        payload = self.gateway.dave.encrypt(opus)
        if payload is None:
            self.frames_dropped += 1  # DAVE could not encrypt it: never send it in the clear
            return False
        header = _RTP_HEADER.pack(0x80, 0x78, self.sequence, self.timestamp, ready.ssrc)
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + samples) & 0xFFFF_FFFF
        media.transport.sendto(cipher.seal(header, payload))
        self.packets_sent += 1
        return True

    async def close(self) -> None:
        """Leave: close the WebSocket normally (1000), the media socket and the HTTP session."""
        self._closing = True
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.close(code=1000)
        for task in (self._runner, self._keepalive):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._media is not None and self._media.transport is not None:
            self._media.transport.close()
        if self._http is not None:
            await self._http.close()
        if not self.closed.is_set():
            self.closed.set()
            self._events.put_nowait(ConnectionClosed(1000, "closed by us"))

    async def __aenter__(self) -> VoiceConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- the WebSocket, across reconnects ------------------------------------------------

    async def _run(self) -> None:
        action = CloseAction.IDENTIFY
        attempts = 0
        failing_since: float | None = None
        code: int | None = None
        reason = ""
        while not self._closing:
            healthy_before = self._healthy
            try:
                code, reason = await self._session(resume=action is CloseAction.RESUME)
            except VoiceConnectionError as exc:
                self._failure = exc
                code, reason = exc.close_code, exc.reason
                break
            except (aiohttp.ClientError, OSError) as exc:
                code, reason = None, f"{type(exc).__name__}: {exc}"
            if self._closing:
                break
            action = after_close(code)
            log.info("voice gateway closed (%s %s): %s", code, reason, action.value)
            if code == CloseCode.E2EE_REQUIRED:
                self._failure = VoiceConnectionError(self._dave_required(reason), code)
                reason = self._failure.reason
                break
            rejoined = self.rejoins
            if self._rejoin is not None and self._ready.is_set() and self._reconnect:
                action = await self._maybe_rejoin(code, action, attempts)
            if action is CloseAction.STOP or not self._reconnect:
                break
            if not self._ready.is_set() and action is not CloseAction.RESUME and attempts:
                break
            if self._healthy != healthy_before:
                attempts, failing_since = 0, None  # that WebSocket worked: a fresh streak
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > RECONNECT_TIMEOUT_S:
                reason = f"gave up reconnecting after {RECONNECT_TIMEOUT_S:g} s: {reason}"
                break
            attempts += 1
            if action is CloseAction.RESUME and self.gateway.ready is None:
                action = CloseAction.IDENTIFY
            if action is CloseAction.IDENTIFY and (code is not None or self.rejoins > rejoined):
                continue  # told "new session", or where one waits: no reason to wait
            await asyncio.sleep(min(0.25 * 2 ** (attempts - 1), RECONNECT_MAX_DELAY_S))
        if not self._ready.is_set() and self._failure is None:
            self._failure = VoiceConnectionError(reason or "the server closed the connection", code)
        if not self.closed.is_set():
            self.closed.set()
            self._events.put_nowait(ConnectionClosed(code, reason))

    async def _maybe_rejoin(
        self, code: int | None, action: CloseAction, attempts: int
    ) -> CloseAction:
        """Ask the rejoin callback where the session goes now, when the close says the node
        may no longer carry it; returns the action to take (a new session where the fresh
        join points, or the one ``after_close`` chose)."""
        moved_away = code in _REJOIN_CODES
        # A node that does not answer twice in a row may be dead: ask whether the channel
        # was placed elsewhere (until it is, the same node is tried again, to resume).
        unreachable = code is None and attempts >= 1
        if not (moved_away or action is CloseAction.IDENTIFY or unreachable):
            return action
        try:
            voice_state, voice_server = await self._rejoin()  # type: ignore[misc]
            join = VoiceJoin.from_events(voice_state, voice_server)
        except Exception as exc:  # the callback's own failure: tried again after a back-off
            log.warning("rejoin failed: %s", exc)
            return CloseAction.RESUME if code is None or moved_away else action
        if unreachable and not moved_away and join.endpoint == self.join.endpoint:
            return action  # still placed on the node that does not answer: keep trying it
        if join.endpoint != self.join.endpoint:
            log.info("rejoining on %s (was %s)", join.endpoint, self.join.endpoint)
            if self._media is not None and self._media.transport is not None:
                self._media.transport.close()
            self._media = None
        self.join = join
        self.gateway = ClientGateway(join, modes=self._modes, dave=self._dave_wanted)
        self._cipher = None
        self.rejoins += 1
        return CloseAction.IDENTIFY

    def _dave_required(self, reason: str) -> str:
        offered = self.gateway.max_dave_protocol_version
        told = f" ({reason})" if reason else ""
        if offered == 0:
            return (
                "the voice server requires DAVE end-to-end encryption"
                f"{told}; this connection was made with dave=False"
            )
        return (
            "the voice server requires DAVE end-to-end encryption"
            f"{told}, though this connection offered DAVE protocol version {offered}"
        )

    async def _session(self, *, resume: bool) -> tuple[int | None, str]:
        """One WebSocket, from open to close; returns the close code and reason."""
        assert self._http is not None
        ws = await self._http.ws_connect(
            self.join.url,
            ssl=self._ssl if self._ssl is not None else True,
            max_msg_size=MAX_FRAME_SIZE,
            autoclose=False,
        )
        self._ws = ws
        heartbeat: asyncio.Task[None] | None = None
        try:
            await self._send(self.gateway.resume() if resume else self.gateway.identify())
            if resume:
                self.resumes += 1
            elif self._ready.is_set():
                self.reidentifies += 1
            replayed = 0
            while True:
                message = await ws.receive()
                if message.type is aiohttp.WSMsgType.CLOSE:
                    await ws.close()
                    return message.data, str(message.extra or "")
                if message.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    return ws.close_code, "closed"
                if message.type is aiohttp.WSMsgType.ERROR:
                    return None, f"websocket error: {ws.exception()}"
                if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    continue
                try:
                    server_message = self.gateway.receive(message.data)
                except MessageDecodeError as exc:
                    log.debug("ignoring undecodable server frame: %s", exc.reason)
                    continue
                if heartbeat is None and self.gateway.heartbeat_interval_s:
                    heartbeat = asyncio.create_task(self._heartbeat(ws))
                if self.gateway.state is GatewayState.RESUMING:
                    replayed += 1
                for frame in self.gateway.frames_to_send():
                    await self._send(frame)  # DAVE's answers, before anything else happens
                await self._handle(server_message, replayed)
                if (
                    self._unnamed
                    and isinstance(server_message, Speaking)
                    and isinstance(server_message.ssrc, int)
                ):
                    self._named(server_message.ssrc)
                if self._held and self.gateway.dave.awaiting_execute is None:
                    self._flush_held()  # op 22: the new key is everyone's now
                if self.gateway.dave.ready:
                    self._encrypted.set()
                else:
                    self._encrypted.clear()
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            self._ws = None

    async def _handle(self, message: object, replayed: int) -> None:
        match message:
            case Ready():
                await self._discover_and_select(message)
            case SessionDescription():
                self._cipher = transport_cipher(message.mode, bytes(message.secret_key))
                if self._keepalive is None:
                    self._keepalive = asyncio.create_task(self._keep_alive())
                self._healthy += 1
                self._ready.set()
                previous, self._last_ssrc = self._last_ssrc, self.ssrc
                if previous is not None and previous != self.ssrc:
                    # The old session is gone (server restarted, or it expired): a new one
                    # with a new ssrc, which receivers learn from the server's Speaking.
                    self._events.put_nowait(SessionRestarted(previous, self.ssrc))
                    # Frames held for an unnamed ssrc were sealed under the old session's keys.
                    self._unnamed.clear()
                    log.warning("voice session replaced: ssrc %d -> %d", previous, self.ssrc)
                self._events.put_nowait(ConnectionReady(self.ssrc, message.mode))
                log.info("voice connection ready: ssrc %d, mode %s", self.ssrc, message.mode)
            case Speaking() if isinstance(message.user_id, str):
                self._events.put_nowait(
                    MemberSpeaking(message.user_id, message.ssrc, message.speaking)
                )
            case ClientsConnect():
                self._events.put_nowait(MembersConnected(tuple(message.user_ids)))
            case ClientDisconnect():
                self._events.put_nowait(MemberDisconnected(message.user_id))
            case HeartbeatAck() if self._heartbeat_sent and self._heartbeat_sent[0] == message.t:
                self.latencies.append(time.monotonic() - self._heartbeat_sent[1])
            case Resumed():
                self._healthy += 1
                self._events.put_nowait(ConnectionResumed(max(replayed - 1, 0)))

    async def _discover_and_select(self, ready: Ready) -> None:
        loop = asyncio.get_running_loop()
        if self._media is None:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: _MediaSocket(self), remote_addr=(ready.ip, ready.port)
            )
            self._media = protocol
        media = self._media
        assert media.transport is not None
        for _ in range(DISCOVERY_ATTEMPTS):
            media.discovery = loop.create_future()
            media.transport.sendto(discovery.build_request(ready.ssrc))
            try:
                found = await asyncio.wait_for(media.discovery, DISCOVERY_TIMEOUT_S)
                break
            except TimeoutError:
                continue
        else:
            raise VoiceConnectionError("IP discovery got no answer")
        try:
            frame = self.gateway.select_protocol(found.address, found.port)
        except ValueError as exc:
            raise VoiceConnectionError(str(exc)) from None
        await self._send(frame)

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        interval = self.gateway.heartbeat_interval_s or 5.0
        while not ws.closed:
            await asyncio.sleep(interval)
            nonce = int(time.time() * 1000)
            self._heartbeat_sent = (nonce, time.monotonic())
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send(self.gateway.heartbeat(nonce))

    async def _keep_alive(self) -> None:
        counter = 0
        while True:
            media = self._media
            if media is not None and media.transport is not None:
                media.transport.sendto(build_keepalive(counter))
                counter += 1
            await asyncio.sleep(KEEPALIVE_INTERVAL_S)

    async def _send(self, frame: str | bytes) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise VoiceConnectionError("the gateway is not connected")
        if isinstance(frame, str):
            await ws.send_str(frame)
        else:
            await ws.send_bytes(frame)

    # --- media in ------------------------------------------------------------------------

    def _on_datagram(self, data: bytes) -> None:
        cipher = self._cipher
        if cipher is None or len(data) < 12 or data[0] >> 6 != 2 or 200 <= data[1] <= 204:
            return  # keep-alives, RTCP and anything before the session is described
        try:
            header, payload = cipher.open(data)
        except PacketError:
            self.packets_dropped += 1
            return
        self.packets_received += 1
        if header[0] & 0x20:
            unpadded = strip_padding(payload)
            if unpadded is None:
                self.packets_dropped += 1
                return
            payload = unpadded
        ssrc = int.from_bytes(header[8:12], "big")
        for listener in self._wire_listeners:
            listener(ssrc, header, payload)
        if self._listeners:
            self._deliver(ssrc, header, payload)

    def _deliver(self, ssrc: int, header: bytes, payload: bytes) -> None:
        dave = self.gateway.dave
        if dave.enabled:
            user = self.gateway.users_by_ssrc.get(ssrc)
            opened = dave.decrypt(user, payload)
            if opened is None:
                if user is None:
                    self._hold_unnamed(ssrc, header, payload)
                return
            payload = opened
        for listener in self._listeners:
            listener(ssrc, header, payload)

    def _hold_unnamed(self, ssrc: int, header: bytes, payload: bytes) -> None:
        held = self._unnamed.get(ssrc)
        if held is None:
            if len(self._unnamed) >= MAX_UNNAMED_SSRCS:
                return
            held = self._unnamed[ssrc] = []
        if len(held) < MAX_UNNAMED_FRAMES:
            held.append((header, payload))

    def _named(self, ssrc: int) -> None:
        """A Speaking named ``ssrc``'s user: open the frames that came before it."""
        for header, payload in self._unnamed.pop(ssrc, ()):
            self._deliver(ssrc, header, payload)
