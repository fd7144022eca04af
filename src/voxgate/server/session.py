"""The voice gateway's state machines, with no sockets in them.

Two objects, because a voice session outlives the WebSocket that opened it:

- :class:`GatewayConnection` is one WebSocket: Hello, heartbeats and their timeout, the
  rule that nothing but a heartbeat comes before Identify or Resume, and decoding. Frames go
  in through :meth:`GatewayConnection.receive` with the time; frames to send collect in
  ``outbox`` and a requested close in ``close_request``. Time is a parameter, so timeouts
  are tested by passing a later ``now`` (aioquic's way), and the aiohttp adapter in
  ``gateway.py`` only moves frames.
- :class:`VoiceSession` is one member's session: its ssrc, key, mode and UDP address, its
  sequence numbers and the buffer of sent messages a Resume replays. While its WebSocket is
  gone the session keeps relaying media and collecting messages, for ``resume_grace_s``.

What crosses sessions (who is in a channel, Speaking relayed, Clients Connect and Client
Disconnect) is the router's job (``router.py``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, MutableMapping
from time import monotonic
from typing import TYPE_CHECKING, Any

from voxgate.protocol.crypto import TransportCipher
from voxgate.protocol.errors import MessageDecodeError
from voxgate.protocol.messages import (
    ClientConnect,
    DaveTransitionReady,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Identify,
    Message,
    MlsCommitWelcome,
    MlsInvalidCommitWelcome,
    MlsKeyPackage,
    Resume,
    SelectProtocol,
    Speaking,
    decode_client_frame,
    encode,
)
from voxgate.protocol.opcodes import CloseCode, EncryptionMode
from voxgate.server.guard import RateLimit, ReplayWindow

if TYPE_CHECKING:
    from voxgate.server.auth import VoiceGrant
    from voxgate.server.router import Channel, Route, Router

log = logging.getLogger(__name__)

Frame = str | bytes

#: Messages kept for a Resume. A client acknowledges with every heartbeat, so this only
#: has to hold what is sent between two heartbeats plus a WebSocket gap.
REPLAY_BUFFER = 1024
#: A connection that has not identified or resumed by then is closed (4003).
IDENTIFY_TIMEOUT_S = 30.0
#: Heartbeats may be this many intervals apart before the session times out (4009):
#: one late heartbeat is network weather, two missed ones are a dead client.
HEARTBEAT_TOLERANCE = 2.0
#: Messages a client may send: a burst, then a steady rate. Real clients send a heartbeat
#: every few seconds and Speaking when audio starts or stops; far more is abuse (4021).
MESSAGE_BURST = 100
MESSAGE_RATE = 20.0
#: Frames waiting for a WebSocket that does not drain: beyond this the reader is too slow,
#: and its connection is closed (resumable) rather than growing without bound.
OUTBOX_LIMIT = 4096


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes each line with the session's guild, user and ssrc."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        return (
            f"[guild={extra.get('guild_id')} user={extra.get('user_id')} "
            f"ssrc={extra.get('ssrc')}] {msg}",
            kwargs,
        )


class VoiceSession:
    """One member's voice session: identity, media state and the messages sent to it."""

    # Slots, not an instance dict: the media plane reads a sender's session for every
    # packet, and with more than 30 attributes CPython 3.11 gives each instance a whole
    # dict of its own (the keys are no longer shared), several cache lines to miss.
    __slots__ = (
        "_forgotten", "_sent", "_seq", "address", "channel", "channel_id", "cipher", "closed",
        "connection", "dave_protocol_version", "dave_route", "deferred", "deferred_due",
        "detached_at", "dropped", "guild_id", "last_media_at", "log",
        "max_dave_protocol_version", "media_silent", "mode", "muted", "packets_in",
        "packets_out", "rate", "replay", "route", "session_id", "speaking", "ssrc", "token",
        "user_id",
    )

    def __init__(
        self,
        grant: VoiceGrant,
        token: str,
        ssrc: int,
        channel: Channel,
        *,
        packet_rate_cap: float,
    ) -> None:
        self.guild_id = grant.guild_id
        self.channel_id = grant.channel_id
        self.user_id = grant.user_id
        self.session_id = grant.session_id
        # Resume carries the token again; it must be the one that opened the session,
        # which may have expired since (tokens only bound the time to Identify).
        self.token = token
        self.ssrc = ssrc
        self.channel = channel
        self.mode: EncryptionMode | None = None
        self.cipher: TransportCipher | None = None
        # Learnt from IP discovery, then moved only by packets that authenticate.
        self.address: tuple[str, int] | None = None
        self.speaking = 0
        #: From Identify: what the client can do (0 or missing = no DAVE).
        self.max_dave_protocol_version = 0
        #: What its Session Description said: 0 means it gets no DAVE frames (the relay
        #: withholds them in a call that mixes both kinds, see Router.forward_filtered).
        self.dave_protocol_version = 0
        self.replay: ReplayWindow | None = None
        # Last authenticated datagram (or keep-alive) from the member, time.monotonic().
        self.last_media_at = monotonic()
        self.media_silent = False
        #: Plain counters the media plane bumps and the dashboard reads (admin.py, console).
        #: Those of forwarded packets wait in the routes for up to a quarter second
        #: (Router.MEMBER_COUNTERS_S); Router.sync_counters() makes them exact.
        self.packets_in = 0
        self.packets_out = 0
        self.dropped: dict[str, int] = {}
        #: Where its packets go, made by Router.forward and dropped by Router.routes_changed;
        #: the second while its call withholds DAVE frames (Router.forward_filtered).
        self.route: Route | None = None
        self.dave_route: Route | None = None
        #: Server-muted by an operator: its audio is dropped, not forwarded (Router.mute).
        self.muted = False
        # The media plane reads time.monotonic(), which the loop's clock need not be (uvloop).
        self.rate = RateLimit(packet_rate_cap, packet_rate_cap, monotonic())
        self.connection: GatewayConnection | None = None
        self.detached_at: float | None = None
        self.closed = False
        # Messages held back for a moment (see Router.select_protocol), and when they are due.
        self.deferred: list[Message] = []
        self.deferred_due: float | None = None
        self._seq = 0
        self._sent: deque[tuple[int, Frame]] = deque(maxlen=REPLAY_BUFFER)
        # Sequence numbers at or below this may have fallen out of the buffer.
        self._forgotten = 0
        self.log = SessionLog(
            log, {"guild_id": self.guild_id, "user_id": self.user_id, "ssrc": ssrc}
        )

    @property
    def described(self) -> bool:
        """Whether the session has its key (Session Description sent) and can carry media."""
        return self.cipher is not None

    def send(self, message: Message) -> None:
        """Number ``message``, keep it for a Resume, and hand it to the WebSocket if any."""
        self._seq += 1
        frame = encode(message, seq=self._seq)
        if len(self._sent) == self._sent.maxlen:
            self._forgotten = self._sent[0][0]
        self._sent.append((self._seq, frame))
        if self.connection is not None:
            self.connection.push(frame)

    def send_in_order(self, message: Message) -> None:
        """Send ``message`` after any held back: what follows op 4 must come after it."""
        if self.deferred:
            self.deferred.append(message)
        else:
            self.send(message)

    def send_later(self, messages: list[Message], due: float) -> None:
        """Send ``messages`` at ``due`` (the connection's timer does it), in this order."""
        self.deferred.extend(messages)
        self.deferred_due = due if self.deferred_due is None else min(self.deferred_due, due)

    def send_deferred(self) -> None:
        messages, self.deferred, self.deferred_due = self.deferred, [], None
        for message in messages:
            self.send(message)

    def acknowledge(self, seq_ack: int) -> None:
        """Forget messages the client says it has (heartbeat ``seq_ack``)."""
        while self._sent and self._sent[0][0] <= seq_ack:
            self._forgotten = self._sent.popleft()[0]

    def replay_after(self, seq_ack: int) -> list[Frame] | None:
        """The frames sent after ``seq_ack``; None when some of them are no longer kept."""
        if seq_ack < self._forgotten or seq_ack > self._seq:
            return None
        return [frame for seq, frame in self._sent if seq > seq_ack]

    def attach(self, connection: GatewayConnection) -> None:
        self.connection = connection
        self.detached_at = None
        connection.session = self

    def detach(self, now: float) -> None:
        self.send_deferred()  # into the replay buffer: a Resume delivers them
        self.connection = None
        self.detached_at = now


class GatewayConnection:
    """One WebSocket of the voice gateway, as a state machine."""

    def __init__(self, router: Router, now: float) -> None:
        self.router = router
        self.session: VoiceSession | None = None
        self.outbox: list[Frame] = []
        self.close_request: tuple[int, str] | None = None
        #: Called whenever ``outbox`` or ``close_request`` changes, to wake the adapter.
        self.on_output: Callable[[], None] = _nothing
        interval_s = router.config.heartbeat_interval_ms / 1000
        self._heartbeat_timeout_s = interval_s * HEARTBEAT_TOLERANCE
        self._heartbeat_deadline = now + self._heartbeat_timeout_s
        self._identify_deadline: float | None = now + IDENTIFY_TIMEOUT_S
        self._allowance = RateLimit(MESSAGE_RATE, MESSAGE_BURST, now)
        self.push(encode(Hello(heartbeat_interval=router.config.heartbeat_interval_ms)))

    def push(self, frame: Frame) -> None:
        if self.close_request is None:
            if len(self.outbox) >= OUTBOX_LIMIT:
                self.close(CloseCode.SESSION_TIMEOUT, "too slow reading the gateway")
                return
            self.outbox.append(frame)
            self.on_output()

    def take_outbox(self) -> list[Frame]:
        frames, self.outbox = self.outbox, []
        return frames

    def close(self, code: int, reason: str) -> None:
        """Ask the adapter to close the WebSocket; nothing more is sent or handled after."""
        if self.close_request is None:
            self.close_request = (int(code), reason)
            if self.session is not None:
                self.session.log.info("closing gateway: %d %s", code, reason)
            else:
                log.info("closing gateway before identify: %d %s", code, reason)
            self.on_output()

    def receive(self, frame: Frame, now: float) -> None:
        """Handle one frame the client sent."""
        if self.close_request is not None:
            return
        if not self._allowance.allow(now):
            self.close(CloseCode.RATE_LIMITED, "rate limited: too many messages")
            return
        try:
            message = decode_client_frame(frame)
        except MessageDecodeError as exc:
            self.close(exc.close_code, exc.reason[:120])
            return
        if isinstance(message, Heartbeat):
            self._heartbeat_deadline = now + self._heartbeat_timeout_s
            if self.session is not None and isinstance(message.seq_ack, int):
                self.session.acknowledge(message.seq_ack)
            self.push(encode(HeartbeatAck(t=message.t, nonce_form=message.nonce_form)))
            return
        session = self.session
        if isinstance(message, Identify | Resume):
            if session is not None:
                self.close(CloseCode.ALREADY_AUTHENTICATED, "already authenticated")
            elif isinstance(message, Identify):
                self._identify_deadline = None
                self.router.identify(self, message, now)
            else:
                self._identify_deadline = None
                self.router.resume(self, message, now)
            return
        if session is None:
            self.close(CloseCode.NOT_AUTHENTICATED, "not authenticated: send Identify first")
            return
        match message:
            case SelectProtocol():
                self.router.select_protocol(self, session, message, now)
            case Speaking():
                self.router.speaking(session, message)
            case (
                DaveTransitionReady()
                | MlsInvalidCommitWelcome()
                | MlsKeyPackage()
                | MlsCommitWelcome()
            ):
                self.router.dave_message(session, message, now)
            case ClientConnect():
                # discord.py's op 12 carries nothing the server acts on.
                pass

    def next_timer(self) -> float:
        """When :meth:`on_timer` must next run."""
        due = self._heartbeat_deadline
        if self._identify_deadline is not None:
            due = min(due, self._identify_deadline)
        session = self.session
        if session is not None:
            if session.deferred_due is not None:
                due = min(due, session.deferred_due)
            group = session.channel.dave
            dave_due = None if group is None else group.next_timer()
            if dave_due is not None:
                due = min(due, dave_due)
        return due

    def on_timer(self, now: float) -> None:
        if self.close_request is not None:
            return
        session = self.session
        if session is not None and session.deferred_due is not None and now >= session.deferred_due:
            session.send_deferred()
        if session is not None:
            self.router.dave_timer(session.channel, now)
        if self._identify_deadline is not None and now >= self._identify_deadline:
            self.close(CloseCode.NOT_AUTHENTICATED, "no Identify or Resume in time")
        elif now >= self._heartbeat_deadline:
            self.close(CloseCode.SESSION_TIMEOUT, "session timed out: no heartbeat")

    def connection_lost(self, now: float, *, leaving: bool) -> None:
        """The WebSocket is gone; ``leaving`` when the client closed it on purpose (1000)."""
        self.close_request = self.close_request or (CloseCode.NORMAL, "connection lost")
        if self.session is not None:
            self.router.detach(self, self.session, now, leaving=leaving)


def _nothing() -> None:
    return None
