"""Channels, their members, and what one member's actions mean for the others.

The router holds every live :class:`~voxgate.server.session.VoiceSession` of a node, by
session id and by ssrc, grouped into channels. The gateway calls it for Identify, Resume,
Select Protocol and Speaking; it answers the caller and notifies the other members (Clients
Connect, Speaking with ``user_id``, Client Disconnect). The media plane calls
:meth:`Router.forward` with each authenticated packet: the per-packet fan-out that seals the
packet again for each receiver with the receiver's own key, mode and nonce counter.

Everything here is in-memory and synchronous; the one I/O it does is ``sendto`` on the
media socket it is given, so it runs the same under tests with no network.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from time import monotonic

from voxgate.protocol.crypto import reframe, transport_cipher
from voxgate.protocol.messages import (
    ClientDisconnect,
    ClientsConnect,
    Identify,
    Message,
    Ready,
    Resume,
    Resumed,
    SelectProtocol,
    SessionDescription,
    Speaking,
    encode,
)
from voxgate.protocol.opcodes import CloseCode, EncryptionMode
from voxgate.server.auth import InvalidToken, TokenAuthority
from voxgate.server.config import ServerConfig
from voxgate.server.guard import replay_window
from voxgate.server.session import GatewayConnection, VoiceSession
from voxgate.server.stats import NodeStats

log = logging.getLogger(__name__)

SendTo = Callable[[bytes, tuple[str, int]], None]
#: How far a new member's Session Description trails the announcement of its ssrc.
DESCRIPTION_LEAD_S = 0.05
ChannelKey = tuple[str, str]


class Channel:
    """The members of one voice channel on this node."""

    __slots__ = ("key", "members")

    def __init__(self, key: ChannelKey) -> None:
        self.key = key
        # A list, not a dict: the fan-out iterates it for every packet.
        self.members: list[VoiceSession] = []


def _no_socket(packet: bytes, address: tuple[str, int]) -> None:
    return None


def _admit_any(key: ChannelKey) -> str | None:
    return None


def _another_node(endpoint: str) -> str:
    return f"authentication failed: token is for another node ({endpoint[:64]})"


class Router:
    """Every session and channel of one node."""

    def __init__(self, config: ServerConfig, authority: TokenAuthority, stats: NodeStats) -> None:
        self.config = config
        self.authority = authority
        self.stats = stats
        self.sessions: dict[str, VoiceSession] = {}
        self.by_ssrc: dict[int, VoiceSession] = {}
        #: Who sends from where, for datagrams that carry no ssrc (keep-alives).
        self.by_address: dict[tuple[str, int], VoiceSession] = {}
        self.channels: dict[ChannelKey, Channel] = {}
        #: The media socket's sendto; the node sets it once the socket is bound.
        self.sendto: SendTo = _no_socket
        #: Asked before a channel opens on this node: None admits it, else the reason it
        #: is hosted elsewhere (a cluster node's placement sets it; closes with 4022).
        self.admit_channel: Callable[[ChannelKey], str | None] = _admit_any

    # --- gateway -------------------------------------------------------------------------

    def identify(self, connection: GatewayConnection, message: Identify, now: float) -> None:
        try:
            grant = self.authority.verify(message.token)
        except InvalidToken as exc:
            connection.close(
                CloseCode.AUTHENTICATION_FAILED, f"authentication failed: {exc.reason}"
            )
            return
        if grant.endpoint is not None and grant.endpoint != self.config.endpoint:
            connection.close(CloseCode.AUTHENTICATION_FAILED, _another_node(grant.endpoint))
            return
        if (grant.guild_id, grant.user_id, grant.session_id) != (
            message.server_id,
            message.user_id,
            message.session_id,
        ):
            connection.close(
                CloseCode.AUTHENTICATION_FAILED,
                "authentication failed: token is for another guild, user or session",
            )
            return
        key = (grant.guild_id, grant.channel_id)
        if key not in self.channels and (elsewhere := self.admit_channel(key)) is not None:
            connection.close(CloseCode.CALL_TERMINATED, elsewhere)
            return
        existing = self.sessions.get(grant.session_id)
        if existing is not None:
            if existing.connection is not None:
                connection.close(
                    CloseCode.AUTHENTICATION_FAILED,
                    "authentication failed: session already connected",
                )
                return
            # The client lost its WebSocket and identifies again instead of resuming.
            self.leave(existing, "identified again")
        for other in list(self.sessions.values()):
            if other.guild_id == grant.guild_id and other.user_id == grant.user_id:
                # One voice state per user per guild, as on Discord: the newer join wins.
                self.leave(other, "joined from another session", close=CloseCode.DISCONNECTED)

        channel = self.channels.get(key)
        if channel is None:
            channel = self.channels[key] = Channel(key)
        session = VoiceSession(
            grant,
            message.token,
            self._allocate_ssrc(),
            channel,
            packet_rate_cap=self.config.packet_rate_cap,
        )
        self.sessions[session.session_id] = session
        self.by_ssrc[session.ssrc] = session
        session.attach(connection)
        session.log.info("identified in channel %s", grant.channel_id)
        session.send(
            Ready(
                ssrc=session.ssrc,
                ip=self.config.effective_public_ip,
                port=self.config.effective_udp_port,
                modes=[str(mode) for mode in self.config.modes],
            )
        )
        present = [member.user_id for member in channel.members]
        if present:
            session.send(ClientsConnect(user_ids=present))
        for member in channel.members:
            member.send(ClientsConnect(user_ids=[session.user_id]))
        channel.members.append(session)

    def resume(self, connection: GatewayConnection, message: Resume, now: float) -> None:
        # Checked before the session lookup: a client resuming at the wrong worker is told
        # where it belongs (4004) rather than that its session is gone (4006, re-identify).
        claimed = self.authority.endpoint_of(message.token)
        if claimed is not None and claimed != self.config.endpoint:
            connection.close(CloseCode.AUTHENTICATION_FAILED, _another_node(claimed))
            return
        session = self.sessions.get(message.session_id)
        if session is None or session.guild_id != message.server_id:
            connection.close(CloseCode.SESSION_NO_LONGER_VALID, "session no longer valid")
            return
        if message.token != session.token:
            connection.close(
                CloseCode.AUTHENTICATION_FAILED, "authentication failed: token does not match"
            )
            return
        seq_ack = message.seq_ack if isinstance(message.seq_ack, int) else -1
        missed = session.replay_after(max(seq_ack, -1)) if seq_ack >= 0 else []
        if missed is None:
            connection.close(
                CloseCode.SESSION_NO_LONGER_VALID, "session no longer valid: too much missed"
            )
            return
        previous = session.connection
        if previous is not None:
            # A half-open WebSocket the client has already given up on.
            previous.session = None
            previous.close(CloseCode.SESSION_NO_LONGER_VALID, "resumed on another connection")
        session.attach(connection)
        for frame in missed:
            connection.push(frame)
        connection.push(encode(Resumed()))
        session.log.info("resumed, %d messages replayed", len(missed))

    def select_protocol(
        self,
        connection: GatewayConnection,
        session: VoiceSession,
        message: SelectProtocol,
        now: float,
    ) -> None:
        if message.protocol != "udp":
            connection.close(
                CloseCode.UNKNOWN_PROTOCOL, f"unknown protocol {message.protocol[:32]!r}"
            )
            return
        try:
            mode = EncryptionMode(message.data.mode)
        except ValueError:
            mode = None
        if mode is None or mode not in self.config.modes:
            connection.close(
                CloseCode.UNKNOWN_ENCRYPTION_MODE,
                f"unknown encryption mode {message.data.mode[:48]!r}",
            )
            return
        secret_key = secrets.token_bytes(32)
        first_description = session.cipher is None
        others = [m for m in session.channel.members if m is not session and m.described]
        session.mode = mode
        session.cipher = transport_cipher(mode, secret_key)
        session.replay = replay_window(mode)
        reply: list[Message] = [
            SessionDescription(
                mode=mode.value,
                secret_key=list(secret_key),
                dave_protocol_version=0,
                audio_codec="opus",
                media_session_id=os.urandom(16).hex(),
            )
        ]
        session.log.info("session described, mode %s", mode.value)
        if not first_description or not others:
            for reply_message in reply:
                session.send(reply_message)
            return
        # PROTOCOL.md §8, the first-packet race: receivers map ssrc -> user only from op 5
        # and drop packets of unknown ssrcs, and discord.py sends audio within a millisecond
        # of getting its key. So the others learn the new ssrc first, and the new member
        # gets its key DESCRIPTION_LEAD_S later: long enough for their clients to have read
        # the announcement (Node's WebSocket lags its UDP by milliseconds under load).
        announced = Speaking(speaking=session.speaking, ssrc=session.ssrc, user_id=session.user_id)
        for member in others:
            member.send(announced)
        reply += [
            Speaking(speaking=member.speaking, ssrc=member.ssrc, user_id=member.user_id)
            for member in others
        ]
        session.send_later(reply, now + DESCRIPTION_LEAD_S)

    def speaking(self, session: VoiceSession, message: Speaking) -> None:
        session.speaking = message.speaking
        relayed = Speaking(speaking=message.speaking, ssrc=session.ssrc, user_id=session.user_id)
        for member in session.channel.members:
            if member is not session and member.described:
                member.send(relayed)

    def detach(
        self, connection: GatewayConnection, session: VoiceSession, now: float, *, leaving: bool
    ) -> None:
        if session.connection is connection:
            session.detach(now)
            if leaving:
                self.leave(session, "left")
            else:
                session.log.info("gateway lost; resumable for %.0f s", self.config.resume_grace_s)

    def leave(self, session: VoiceSession, why: str, *, close: int | None = None) -> None:
        """End ``session``: out of its channel, the others told (op 13)."""
        if session.closed:
            return
        session.closed = True
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]
        if self.by_ssrc.get(session.ssrc) is session:
            del self.by_ssrc[session.ssrc]
        if session.address is not None and self.by_address.get(session.address) is session:
            del self.by_address[session.address]
        channel = session.channel
        if session in channel.members:
            channel.members.remove(session)
        if not channel.members and self.channels.get(channel.key) is channel:
            del self.channels[channel.key]
        for member in channel.members:
            member.send(ClientDisconnect(user_id=session.user_id))
        if close is not None and session.connection is not None:
            session.connection.close(close, f"disconnected: {why}")
        session.connection = None
        session.log.info("session ended: %s", why)

    def expire(self, now: float) -> None:
        """End sessions whose WebSocket has been gone longer than the resume grace, and
        report described sessions whose media has gone silent."""
        grace = self.config.resume_grace_s
        media_now = monotonic()
        silence = self.config.media_silence_s
        for session in list(self.sessions.values()):
            if session.detached_at is not None and now - session.detached_at >= grace:
                self.leave(session, "not resumed in time")
            elif session.described:
                silent = media_now - session.last_media_at >= silence
                if silent and not session.media_silent:
                    # Reported, not ended: a member that only listens sends nothing (discord.py
                    # has no UDP keep-alive); a dead client is ended by its missed heartbeats.
                    session.log.warning("no media from this member for %.0f s", silence)
                elif session.media_silent and not silent:
                    session.log.info("media from this member again")
                session.media_silent = silent

    def media_silent_count(self) -> int:
        return sum(1 for session in self.sessions.values() if session.media_silent)

    def move(self, session: VoiceSession, address: tuple[str, int]) -> None:
        """Record ``session``'s media address (learnt from discovery or an authentic packet)."""
        if session.address is not None and self.by_address.get(session.address) is session:
            del self.by_address[session.address]
        session.address = address
        self.by_address[address] = session

    def _allocate_ssrc(self) -> int:
        while True:
            ssrc = secrets.randbits(32)
            if ssrc and ssrc not in self.by_ssrc:
                return ssrc

    # --- media ---------------------------------------------------------------------------

    def forward(self, sender: VoiceSession, clear: bytes, plaintext: bytes, rtpsize: bool) -> None:
        """Seal a packet of ``sender`` for every other described member and send it.

        ``clear`` and ``plaintext`` are the packet as the sender's framing splits it
        (``rtpsize``), as :meth:`TransportCipher.open_split` returns it. The hot path: no
        allocation beyond each sealed packet, no logging, no awaits.
        """
        sendto = self.sendto
        sent = sent_bytes = 0
        # A channel has at most two framings (rtpsize and legacy): the packet is split for
        # the sender's already, and reframed at most once for the other.
        other: tuple[bytes, bytes] | None = None
        for receiver in sender.channel.members:
            cipher = receiver.cipher
            address = receiver.address
            if receiver is sender or cipher is None or address is None:
                continue
            if cipher.rtpsize == rtpsize:
                packet = cipher.seal_split(clear, plaintext)
            else:
                if other is None:
                    other = reframe(clear, plaintext, to_rtpsize=cipher.rtpsize)
                packet = cipher.seal_split(*other)
            sendto(packet, address)
            sent += 1
            sent_bytes += len(packet)
        stats = self.stats
        stats.packets_out += sent
        stats.bytes_out += sent_bytes
