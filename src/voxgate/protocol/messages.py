"""One typed struct per voice gateway message, and the codecs for text and binary frames.

PROTOCOL.md §1-§2. Text frames are JSON ``{"op": int, "d": ..., "seq": int?}``; DAVE's MLS
messages travel in binary frames, ``[seq u16][op u8][payload]`` from the server and
``[op u8][payload]`` from a client. Decoding depends on who sent the frame, because op 5
(Speaking) and the binary layouts differ by direction: the server decodes with
:func:`decode_client_frame`, a client with :func:`decode_server_frame`.

Optional fields use :data:`msgspec.UNSET` so that an absent field is omitted on the wire
rather than sent as ``null``.

What a client must send is what the server needs to act, no more (``docs/client-messages.md``
has the table, field by field, with the client behind each rule): real clients are older,
newer and sloppier than the spec, and Discord accepts them. A field the server reads is
type-checked; a field it only carries is typed ``Any``; a field no struct names is ignored
(msgspec never forbids unknown fields). Missing a field the server needs is a 4002 whose
reason names the field.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Final, TypeAlias

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from voxgate.protocol.errors import MessageDecodeError
from voxgate.protocol.opcodes import CloseCode, Op

U8 = Annotated[int, Meta(ge=0, le=0xFF)]
U16 = Annotated[int, Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, Meta(ge=0, le=0xFFFF_FFFF)]
SecretKey = Annotated[list[U8], Meta(min_length=32, max_length=32)]


class _Message(Struct, frozen=True, kw_only=True):
    """Common base: every message knows its opcode as a class variable ``op``."""


# --- client -> server -------------------------------------------------------------------


class Identify(_Message, frozen=True, kw_only=True):
    """Op 0: begin a session with the token from VOICE_SERVER_UPDATE."""

    server_id: str
    user_id: str
    session_id: str
    token: str
    max_dave_protocol_version: int | UnsetType = UNSET
    # Discord's own clients announce video here; voxgate carries audio only and never
    # reads these, so any form is accepted.
    video: Any = UNSET
    streams: Any = UNSET


class SelectProtocolData(Struct, frozen=True, kw_only=True):
    """The client's discovered address and the mode it chose from Ready."""

    address: str
    port: U16
    mode: str


class SelectProtocol(_Message, frozen=True, kw_only=True):
    """Op 1: the media transport. Only ``protocol == "udp"`` is served (else 4012)."""

    protocol: str
    data: SelectProtocolData
    # Sent by Discord's own clients; never read (the codec is Opus, payload type 120).
    codecs: Any = UNSET
    rtc_connection_id: Any = UNSET
    experiments: Any = UNSET


class Heartbeat(_Message, frozen=True, kw_only=True):
    """Op 3, in either form: v8 ``{"t": ms, "seq_ack": n}`` or the spec's integer nonce.

    ``nonce_form`` records which form was (or is to be) used; it is not a wire field.
    """

    t: int
    seq_ack: int | UnsetType = UNSET
    nonce_form: bool = False


class Speaking(_Message, frozen=True, kw_only=True):
    """Op 5, both directions; the server adds the speaker's ``user_id`` when relaying.

    From a client only ``speaking`` is needed. ``ssrc`` is optional there: discord.py
    before 2.3 and py-cord 2.8 leave it out, and the server relays the session's own ssrc
    whatever the client says. From the server it is always present (receivers map ssrc to
    user from it), and :func:`decode_server_frame` insists on it. ``speaking`` is decoded
    from the old boolean form too, as the flags it meant (``true`` = microphone).
    """

    speaking: int | bool
    ssrc: U32 | UnsetType = UNSET
    delay: int = 0
    user_id: str | UnsetType = UNSET


class Resume(_Message, frozen=True, kw_only=True):
    """Op 7: resume a session after the WebSocket dropped; ``seq_ack`` is v8's."""

    server_id: str
    session_id: str
    token: str
    seq_ack: int | UnsetType = UNSET


class ClientConnect(_Message, frozen=True, kw_only=True):
    """Op 12: sent by discord.py with its ``audio_ssrc``; servers accept and ignore it.

    Discord's own clients add ``video_ssrc``, ``rtx_ssrc`` (0 when there is no video) and
    their simulcast ``streams``.
    """

    audio_ssrc: U32 | UnsetType = UNSET
    video_ssrc: U32 | UnsetType = UNSET
    rtx_ssrc: U32 | UnsetType = UNSET
    streams: Any = UNSET


class DaveTransitionReady(_Message, frozen=True, kw_only=True):
    """Op 23: the member is ready to execute a DAVE transition."""

    transition_id: U16


class MlsInvalidCommitWelcome(_Message, frozen=True, kw_only=True):
    """Op 31: the member could not process a commit or welcome."""

    transition_id: U16


class MlsKeyPackage(_Message, frozen=True, kw_only=True):
    """Op 26 (binary): the member's MLS key package."""

    key_package: bytes


class MlsCommitWelcome(_Message, frozen=True, kw_only=True):
    """Op 28 (binary): an MLS commit, optionally followed by a welcome."""

    commit_welcome: bytes


# --- server -> client -------------------------------------------------------------------


class Ready(_Message, frozen=True, kw_only=True):
    """Op 2: the session's ssrc and the UDP endpoint, with the modes in preference order."""

    ssrc: U32
    ip: str
    port: U16
    modes: list[str]
    experiments: list[str] = msgspec.field(default_factory=list)
    streams: list[Any] = msgspec.field(default_factory=list)
    heartbeat_interval: float | UnsetType = UNSET


class SessionDescription(_Message, frozen=True, kw_only=True):
    """Op 4: the chosen mode and the 32-byte secret key.

    ``dave_protocol_version`` is always sent: discord.py 2.7 reads it unconditionally.
    """

    mode: str
    secret_key: SecretKey
    dave_protocol_version: int = 0
    audio_codec: str | UnsetType = UNSET
    video_codec: str | UnsetType = UNSET
    media_session_id: str | UnsetType = UNSET


class HeartbeatAck(_Message, frozen=True, kw_only=True):
    """Op 6: echoes the heartbeat, in the form it came in (see :class:`Heartbeat`)."""

    t: int
    nonce_form: bool = False


class Hello(_Message, frozen=True, kw_only=True):
    """Op 8: the first message after the upgrade; milliseconds, fractions allowed."""

    heartbeat_interval: float
    v: int | UnsetType = UNSET


class Resumed(_Message, frozen=True, kw_only=True):
    """Op 9: the resume succeeded; ``d`` is ``null`` on the wire."""


class ClientsConnect(_Message, frozen=True, kw_only=True):
    """Op 11: members present in the channel (to a joiner) or the joiner (to the others)."""

    user_ids: list[str]


class ClientDisconnect(_Message, frozen=True, kw_only=True):
    """Op 13: a member left the channel."""

    user_id: str


class ClientFlags(_Message, frozen=True, kw_only=True):
    """Op 18: informational flags of a member."""

    user_id: str
    flags: int | None = None


class ClientPlatform(_Message, frozen=True, kw_only=True):
    """Op 20: informational platform of a member."""

    user_id: str
    platform: int | None = None


class DavePrepareTransition(_Message, frozen=True, kw_only=True):
    """Op 21: a DAVE protocol transition is coming."""

    protocol_version: int
    transition_id: U16


class DaveExecuteTransition(_Message, frozen=True, kw_only=True):
    """Op 22: execute the prepared transition."""

    transition_id: U16


class DavePrepareEpoch(_Message, frozen=True, kw_only=True):
    """Op 24: a new MLS epoch; ``epoch == 1`` means create a new group.

    ``transition_id`` is in DOCS:276 and discord-api-types' older form; discord.py and
    discord.js read only the other two, so the server sends all three (DAVE.md §2).
    """

    protocol_version: int
    epoch: int
    transition_id: U16 | UnsetType = UNSET


class MlsExternalSender(_Message, frozen=True, kw_only=True):
    """Op 25 (binary): the server's external-sender credential and signature key."""

    external_sender: bytes


class MlsProposals(_Message, frozen=True, kw_only=True):
    """Op 27 (binary): ``operation_type`` 0 appends proposals, 1 revokes them."""

    operation_type: U8
    proposals: bytes


class MlsAnnounceCommitTransition(_Message, frozen=True, kw_only=True):
    """Op 29 (binary): a commit to apply at ``transition_id``."""

    transition_id: U16
    commit: bytes


class MlsWelcome(_Message, frozen=True, kw_only=True):
    """Op 30 (binary): a welcome into the group at ``transition_id``."""

    transition_id: U16
    welcome: bytes


ClientMessage: TypeAlias = (
    Identify
    | SelectProtocol
    | Heartbeat
    | Speaking
    | Resume
    | ClientConnect
    | DaveTransitionReady
    | MlsInvalidCommitWelcome
    | MlsKeyPackage
    | MlsCommitWelcome
)
ServerMessage: TypeAlias = (
    Ready
    | SessionDescription
    | HeartbeatAck
    | Speaking
    | Hello
    | Resumed
    | ClientsConnect
    | ClientDisconnect
    | ClientFlags
    | ClientPlatform
    | DavePrepareTransition
    | DaveExecuteTransition
    | DavePrepareEpoch
    | MlsExternalSender
    | MlsProposals
    | MlsAnnounceCommitTransition
    | MlsWelcome
)
Message: TypeAlias = ClientMessage | ServerMessage

OP_OF: Final[dict[type[Message], Op]] = {
    Identify: Op.IDENTIFY,
    SelectProtocol: Op.SELECT_PROTOCOL,
    Ready: Op.READY,
    Heartbeat: Op.HEARTBEAT,
    SessionDescription: Op.SESSION_DESCRIPTION,
    Speaking: Op.SPEAKING,
    HeartbeatAck: Op.HEARTBEAT_ACK,
    Resume: Op.RESUME,
    Hello: Op.HELLO,
    Resumed: Op.RESUMED,
    ClientsConnect: Op.CLIENTS_CONNECT,
    ClientConnect: Op.CLIENT_CONNECT,
    ClientDisconnect: Op.CLIENT_DISCONNECT,
    ClientFlags: Op.CLIENT_FLAGS,
    ClientPlatform: Op.CLIENT_PLATFORM,
    DavePrepareTransition: Op.DAVE_PREPARE_TRANSITION,
    DaveExecuteTransition: Op.DAVE_EXECUTE_TRANSITION,
    DaveTransitionReady: Op.DAVE_TRANSITION_READY,
    DavePrepareEpoch: Op.DAVE_PREPARE_EPOCH,
    MlsExternalSender: Op.MLS_EXTERNAL_SENDER,
    MlsKeyPackage: Op.MLS_KEY_PACKAGE,
    MlsProposals: Op.MLS_PROPOSALS,
    MlsCommitWelcome: Op.MLS_COMMIT_WELCOME,
    MlsAnnounceCommitTransition: Op.MLS_ANNOUNCE_COMMIT_TRANSITION,
    MlsWelcome: Op.MLS_WELCOME,
    MlsInvalidCommitWelcome: Op.MLS_INVALID_COMMIT_WELCOME,
}

_CLIENT_JSON: Final[dict[int, type[ClientMessage]]] = {
    Op.IDENTIFY: Identify,
    Op.SELECT_PROTOCOL: SelectProtocol,
    Op.HEARTBEAT: Heartbeat,
    Op.SPEAKING: Speaking,
    Op.RESUME: Resume,
    Op.CLIENT_CONNECT: ClientConnect,
    Op.DAVE_TRANSITION_READY: DaveTransitionReady,
    Op.MLS_INVALID_COMMIT_WELCOME: MlsInvalidCommitWelcome,
}
_SERVER_JSON: Final[dict[int, type[ServerMessage]]] = {
    Op.READY: Ready,
    Op.SESSION_DESCRIPTION: SessionDescription,
    Op.HEARTBEAT_ACK: HeartbeatAck,
    Op.SPEAKING: Speaking,
    Op.HELLO: Hello,
    Op.RESUMED: Resumed,
    Op.CLIENTS_CONNECT: ClientsConnect,
    Op.CLIENT_DISCONNECT: ClientDisconnect,
    Op.CLIENT_FLAGS: ClientFlags,
    Op.CLIENT_PLATFORM: ClientPlatform,
    Op.DAVE_PREPARE_TRANSITION: DavePrepareTransition,
    Op.DAVE_EXECUTE_TRANSITION: DaveExecuteTransition,
    Op.DAVE_PREPARE_EPOCH: DavePrepareEpoch,
}
_BINARY_OPS: Final = frozenset(
    {
        Op.MLS_EXTERNAL_SENDER,
        Op.MLS_KEY_PACKAGE,
        Op.MLS_PROPOSALS,
        Op.MLS_COMMIT_WELCOME,
        Op.MLS_ANNOUNCE_COMMIT_TRANSITION,
        Op.MLS_WELCOME,
    }
)
_CLIENT_OPS: Final = frozenset(_CLIENT_JSON) | {Op.MLS_KEY_PACKAGE, Op.MLS_COMMIT_WELCOME}
_SERVER_OPS: Final = frozenset(_SERVER_JSON) | (_BINARY_OPS - _CLIENT_OPS)


class _Envelope(Struct):
    op: int
    d: msgspec.Raw = msgspec.Raw(b"null")
    seq: int | None = None


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_payload_decoders: Final[dict[type[Message], msgspec.json.Decoder[Any]]] = {
    cls: msgspec.json.Decoder(cls) for cls in OP_OF if OP_OF[cls] not in _BINARY_OPS
}
_nonce_decoder: Final = msgspec.json.Decoder(int)
_json_encoder: Final = msgspec.json.Encoder()
_SEQ_OP: Final = struct.Struct(">HB")
_U16: Final = struct.Struct(">H")

#: Frames larger than this are refused before decoding (PROTOCOL.md §1; close 1009).
MAX_FRAME_SIZE: Final = 64 * 1024


def _decode_error(reason: str) -> MessageDecodeError:
    return MessageDecodeError(CloseCode.DECODE_ERROR, reason)


def _unknown_op(op: int) -> MessageDecodeError:
    return MessageDecodeError(CloseCode.UNKNOWN_OPCODE, f"unknown opcode {op}")


def _envelope(frame: str | bytes) -> _Envelope:
    try:
        return _envelope_decoder.decode(frame)
    except (msgspec.DecodeError, UnicodeError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than msgspec's limit, well within 64 KiB
        raise _decode_error(f"undecodable payload: {exc}") from None


def _payload(cls: type[Message], raw: msgspec.Raw) -> Any:
    try:
        if cls is Resumed:
            return Resumed()
        if cls is Heartbeat or cls is HeartbeatAck:
            # The spec's form: the payload is the bare integer nonce.
            stripped = bytes(raw).strip()
            if stripped[:1] not in (b"{", b""):
                return cls(t=_nonce_decoder.decode(raw), nonce_form=True)
        message = _payload_decoders[cls].decode(raw)
        if (cls is Heartbeat or cls is HeartbeatAck) and message.nonce_form:
            # nonce_form is voxgate's bookkeeping, not a wire field: an object is the v8 form
            message = msgspec.structs.replace(message, nonce_form=False)
        elif cls is Speaking and type(message.speaking) is bool:
            # The pre-bitfield form: relayed on as the flags it meant, never as a boolean.
            message = msgspec.structs.replace(message, speaking=int(message.speaking))
        return message
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _decode_error(f"invalid op {int(OP_OF[cls])} payload: {exc}") from None


def decode_client_frame(frame: str | bytes, *, binary: bool | None = None) -> ClientMessage:
    """Decode a frame a client sent (what the server receives).

    ``binary`` says whether ``frame`` came in a binary WebSocket frame; when omitted,
    ``bytes`` means binary and ``str`` means text.

    Raises :class:`MessageDecodeError` with 4002 for undecodable or mistyped payloads and
    4001 for opcodes a client does not send.
    """
    if binary if binary is not None else isinstance(frame, bytes):
        data = frame.encode() if isinstance(frame, str) else frame
        if not data:
            raise _decode_error("empty binary frame")
        op, payload = data[0], bytes(data[1:])
        if op == Op.MLS_KEY_PACKAGE:
            return MlsKeyPackage(key_package=payload)
        if op == Op.MLS_COMMIT_WELCOME:
            return MlsCommitWelcome(commit_welcome=payload)
        # A server-only op is as unknown from a client as an unassigned one (close 4001,
        # as in text frames); a client op in the wrong framing is undecodable (4002).
        raise (
            _unknown_op(op)
            if op not in _CLIENT_OPS
            else _decode_error(f"op {op} is not a client binary message")
        )
    envelope = _envelope(frame)
    cls = _CLIENT_JSON.get(envelope.op)
    if cls is None:
        raise _unknown_op(envelope.op)
    message: ClientMessage = _payload(cls, envelope.d)
    return message


def decode_server_frame(
    frame: str | bytes, *, binary: bool | None = None
) -> tuple[ServerMessage, int | None]:
    """Decode a frame the server sent (what a client receives), returning ``(message, seq)``.

    ``seq`` is the frame's sequence number, ``None`` when the server sent none (pre-v8).
    Raises :class:`MessageDecodeError` as :func:`decode_client_frame` does.
    """
    if binary if binary is not None else isinstance(frame, bytes):
        data = frame.encode() if isinstance(frame, str) else frame
        if len(data) < 3:
            raise _decode_error("binary frame shorter than its 3-byte header")
        seq, op = _SEQ_OP.unpack_from(data)
        payload = bytes(data[3:])
        if op == Op.MLS_EXTERNAL_SENDER:
            return MlsExternalSender(external_sender=payload), seq
        if op == Op.MLS_PROPOSALS:
            if not payload:
                raise _decode_error("op 27 without an operation type")
            return MlsProposals(operation_type=payload[0], proposals=payload[1:]), seq
        if op in (Op.MLS_ANNOUNCE_COMMIT_TRANSITION, Op.MLS_WELCOME):
            if len(payload) < 2:
                raise _decode_error(f"op {op} without a transition id")
            (transition_id,) = _U16.unpack_from(payload)
            if op == Op.MLS_WELCOME:
                return MlsWelcome(transition_id=transition_id, welcome=payload[2:]), seq
            return MlsAnnounceCommitTransition(transition_id=transition_id, commit=payload[2:]), seq
        raise (
            _unknown_op(op)
            if op not in _SERVER_OPS
            else _decode_error(f"op {op} is not a server binary message")
        )
    envelope = _envelope(frame)
    cls = _SERVER_JSON.get(envelope.op)
    if cls is None:
        raise _unknown_op(envelope.op)
    message: ServerMessage = _payload(cls, envelope.d)
    if isinstance(message, Speaking) and message.ssrc is UNSET:
        # Optional from a client, but a receiver maps ssrc -> user only from this.
        raise _decode_error("op 5 from the server without ssrc")
    return message, envelope.seq


def _binary_payload(message: Message) -> bytes:
    match message:
        case MlsKeyPackage():
            return message.key_package
        case MlsCommitWelcome():
            return message.commit_welcome
        case MlsExternalSender():
            return message.external_sender
        case MlsProposals():
            return bytes((message.operation_type,)) + message.proposals
        case MlsAnnounceCommitTransition():
            return _U16.pack(message.transition_id) + message.commit
        case MlsWelcome():
            return _U16.pack(message.transition_id) + message.welcome
    raise TypeError(f"{type(message).__name__} is not a binary message")


def is_binary(message: Message) -> bool:
    """Whether ``message`` travels in a binary WebSocket frame."""
    return OP_OF[type(message)] in _BINARY_OPS


def payload_of(message: Message) -> Any:
    """The ``d`` of a JSON message as plain Python values (dicts, lists, ints, strings)."""
    match message:
        case Heartbeat(nonce_form=True) | HeartbeatAck(nonce_form=True):
            return message.t
        case Heartbeat():
            d: dict[str, Any] = {"t": message.t}
            if message.seq_ack is not UNSET:
                d["seq_ack"] = message.seq_ack
            return d
        case HeartbeatAck():
            return {"t": message.t}
        case Resumed():
            return None
    return msgspec.to_builtins(message)


def encode(message: Message, *, seq: int | None = None) -> str | bytes:
    """Encode a message into the frame to send: ``str`` for a text frame, ``bytes`` for binary.

    ``seq`` is the server's sequence number (v8); pass it for server messages only. A
    binary server message carries it as a u16 (wrapping), a JSON one as the ``seq`` field.
    """
    op = OP_OF[type(message)]
    if op in _BINARY_OPS:
        payload = _binary_payload(message)
        if seq is None:
            return bytes((op,)) + payload
        return _SEQ_OP.pack(seq & 0xFFFF, op) + payload
    envelope: dict[str, Any] = {"op": int(op), "d": payload_of(message)}
    if seq is not None:
        envelope["seq"] = seq
    return _json_encoder.encode(envelope).decode()
