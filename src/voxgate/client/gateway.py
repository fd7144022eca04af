"""The client side of the voice gateway as a state machine, with no sockets in it.

:class:`ClientGateway` turns frames the server sent into typed events and builds the frames
a client sends, exactly as Discord's voice servers expect them (PROTOCOL.md §1-2):
Identify with ``max_dave_protocol_version``, v8 heartbeats ``{t, seq_ack}``, Resume with
the last ``seq`` seen, Select Protocol with the best mode both sides support. DAVE's
messages go to the session's :class:`~voxgate.client.dave.DaveMember`, whose answers wait
in :meth:`ClientGateway.frames_to_send`. It also says what to do when the WebSocket closes
(:func:`after_close`). ``connection.py`` is the adapter that moves the frames and does the
UDP side.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from voxgate.client.dave import DaveMember
from voxgate.protocol.messages import (
    ClientDisconnect,
    ClientsConnect,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Identify,
    Ready,
    Resume,
    Resumed,
    SelectProtocol,
    SelectProtocolData,
    ServerMessage,
    SessionDescription,
    Speaking,
    decode_server_frame,
    encode,
)
from voxgate.protocol.opcodes import CloseCode, EncryptionMode

#: Best first: the AEAD modes, then the retired xsalsa20 ones only when nothing better is
#: offered (PROTOCOL.md §5).
MODE_PREFERENCE: tuple[EncryptionMode, ...] = (
    EncryptionMode.AEAD_AES256_GCM_RTPSIZE,
    EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE,
    EncryptionMode.XSALSA20_POLY1305_LITE,
    EncryptionMode.XSALSA20_POLY1305_SUFFIX,
    EncryptionMode.XSALSA20_POLY1305,
)


class CloseAction(enum.Enum):
    """What a client does after its WebSocket closed with a given code."""

    RESUME = "resume"  # same session, new WebSocket, replay from seq_ack
    IDENTIFY = "identify"  # the session is gone: start a new one with the same join
    STOP = "stop"  # do not reconnect: authentication failed, kicked, or left


_STOP = frozenset(
    {
        CloseCode.NORMAL,
        CloseCode.AUTHENTICATION_FAILED,
        CloseCode.DISCONNECTED,
        CloseCode.UNKNOWN_PROTOCOL,
        CloseCode.UNKNOWN_ENCRYPTION_MODE,
        CloseCode.E2EE_REQUIRED,
        CloseCode.RATE_LIMITED,
        CloseCode.CALL_TERMINATED,
    }
)
_IDENTIFY = frozenset(
    {
        CloseCode.SESSION_NO_LONGER_VALID,
        CloseCode.SERVER_NOT_FOUND,
        CloseCode.NOT_AUTHENTICATED,
        CloseCode.ALREADY_AUTHENTICATED,
    }
)


def after_close(code: int | None) -> CloseAction:
    """The action for a close ``code`` (None: the connection was lost without one).

    4009 (timeout), 4015 (server crashed), network loss and anything unknown below 4000
    resume, as discord.js does; 4006 and its kin start a new session; 4004, 4014 and the
    other refusals stop for good, because retrying cannot succeed.
    """
    if code in _STOP:
        return CloseAction.STOP
    if code in _IDENTIFY:
        return CloseAction.IDENTIFY
    return CloseAction.RESUME


@dataclass(frozen=True)
class VoiceJoin:
    """The two events a bot gets from Discord's main gateway to join a voice channel."""

    guild_id: str
    channel_id: str
    user_id: str
    session_id: str
    token: str
    endpoint: str

    @classmethod
    def from_events(
        cls, voice_state: dict[str, object], voice_server: dict[str, object]
    ) -> VoiceJoin:
        """Build from VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE payloads.

        Raises ValueError naming the first field that is missing or empty.
        """

        def field(payload: dict[str, object], name: str) -> str:
            value = payload.get(name)
            if value is None or value == "":
                raise ValueError(f"join event lacks {name}")
            return str(value)

        endpoint = field(voice_server, "endpoint").removeprefix("wss://").rstrip("/")
        return cls(
            guild_id=field(voice_server, "guild_id"),
            channel_id=field(voice_state, "channel_id"),
            user_id=field(voice_state, "user_id"),
            session_id=field(voice_state, "session_id"),
            token=field(voice_server, "token"),
            endpoint=endpoint,
        )

    @property
    def url(self) -> str:
        return f"wss://{self.endpoint}/?v=8"


class GatewayState(enum.Enum):
    CONNECTING = "connecting"  # WebSocket open, Identify or Resume sent
    DISCOVERING = "discovering"  # Ready received: IP discovery on UDP, then Select Protocol
    SELECTING = "selecting"  # Select Protocol sent, waiting for Session Description
    READY = "ready"  # media can flow
    RESUMING = "resuming"  # Resume sent, waiting for Resumed


class ClientGateway:
    """One client session's gateway state, across the WebSockets that carry it."""

    def __init__(
        self,
        join: VoiceJoin,
        *,
        modes: Sequence[str] | None = None,
        dave: bool = True,
    ) -> None:
        self.join = join
        self.preferred_modes = tuple(modes) if modes else tuple(m.value for m in MODE_PREFERENCE)
        #: The call's end-to-end encryption, for this member (``dave=False``: never).
        self.dave = DaveMember(join.user_id, join.channel_id, enabled=dave)
        self.state = GatewayState.CONNECTING
        self.seq_ack = -1
        self.heartbeat_interval_s: float | None = None
        self.ready: Ready | None = None
        self.description: SessionDescription | None = None
        self.mode: str | None = None
        #: ssrc -> user_id, learnt from Speaking (the only place it is told).
        self.users_by_ssrc: dict[int, str] = {}
        self.last_heartbeat_sent: int | None = None
        self.heartbeats_acked = 0
        self._outgoing: list[str | bytes] = []

    @property
    def max_dave_protocol_version(self) -> int:
        return self.dave.max_protocol_version

    def identify(self) -> str | bytes:
        """Start a new session on a fresh WebSocket."""
        self.state = GatewayState.CONNECTING
        self.seq_ack = -1
        self.ready = None
        self.description = None
        self.dave.connected_users.clear()  # the new session's op 11 names them again
        return encode(
            Identify(
                server_id=self.join.guild_id,
                user_id=self.join.user_id,
                session_id=self.join.session_id,
                token=self.join.token,
                max_dave_protocol_version=self.max_dave_protocol_version,
            )
        )

    def resume(self) -> str | bytes:
        """Continue this session on a new WebSocket."""
        self.state = GatewayState.RESUMING
        return encode(
            Resume(
                server_id=self.join.guild_id,
                session_id=self.join.session_id,
                token=self.join.token,
                seq_ack=self.seq_ack,
            )
        )

    def heartbeat(self, now_ms: int) -> str | bytes:
        self.last_heartbeat_sent = now_ms
        return encode(Heartbeat(t=now_ms, seq_ack=self.seq_ack))

    def choose_mode(self) -> str:
        """The first of our preferred modes that the server offers.

        Raises ValueError when there is none.
        """
        assert self.ready is not None
        offered = set(self.ready.modes)
        for mode in self.preferred_modes:
            if mode in offered:
                return mode
        raise ValueError(f"no common encryption mode: server offers {self.ready.modes}")

    def select_protocol(self, address: str, port: int) -> str | bytes:
        """Select Protocol with our discovered address and the chosen mode."""
        self.mode = self.choose_mode()
        self.state = GatewayState.SELECTING
        data = SelectProtocolData(address=address, port=port, mode=self.mode)
        return encode(SelectProtocol(protocol="udp", data=data))

    def speaking(self, flags: int) -> str | bytes:
        assert self.ready is not None
        return encode(Speaking(speaking=flags, delay=0, ssrc=self.ready.ssrc))

    def receive(self, frame: str | bytes) -> ServerMessage:
        """Decode a server frame and update the state it describes.

        Raises :class:`~voxgate.protocol.errors.MessageDecodeError` for frames that are not
        voice gateway messages.
        """
        message, seq = decode_server_frame(frame)
        if seq is not None:
            if isinstance(frame, bytes) and self.seq_ack >= 0:
                # Binary frames carry the same counter as a wrapping u16 (DAVE.md §2).
                ahead = (seq - self.seq_ack) & 0xFFFF
                seq = self.seq_ack + ahead if ahead < 0x8000 else self.seq_ack
            self.seq_ack = max(self.seq_ack, seq)
        match message:
            case Hello():
                self.heartbeat_interval_s = message.heartbeat_interval / 1000
            case Ready():
                self.ready = message
                self.state = GatewayState.DISCOVERING
            case SessionDescription():
                self.description = message
                self.mode = message.mode
                self.state = GatewayState.READY
            case Resumed():
                self.state = GatewayState.READY if self.description else GatewayState.CONNECTING
            case HeartbeatAck():
                self.heartbeats_acked += 1
            case Speaking() if isinstance(message.user_id, str):
                self.users_by_ssrc[message.ssrc] = message.user_id
            case ClientDisconnect():
                for ssrc, user in list(self.users_by_ssrc.items()):
                    if user == message.user_id:
                        del self.users_by_ssrc[ssrc]
            case ClientsConnect():
                pass
        for reply in self.dave.handle(message):
            self._outgoing.append(encode(reply))
        return message

    def frames_to_send(self) -> list[str | bytes]:
        """The frames :meth:`receive` produced in answer (DAVE's), to send in this order."""
        frames, self._outgoing = self._outgoing, []
        return frames
