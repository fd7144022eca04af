"""Channels, their members, and what one member's actions mean for the others.

The router holds every live :class:`~voxgate.server.session.VoiceSession` of a node, by
session id and by ssrc, grouped into channels. The gateway calls it for Identify, Resume,
Select Protocol and Speaking; it answers the caller and notifies the other members (Clients
Connect, Speaking with ``user_id``, Client Disconnect). The media plane calls
:meth:`Router.forward` with each authenticated packet: the per-packet fan-out that seals the
packet again for each receiver with the receiver's own key, mode and nonce counter.

Each channel whose id is a snowflake has a DAVE group machine (``server/dave.py``) unless
the node runs ``--dave off``: the router feeds it joins, leaves and the members' ops 23,
26, 28 and 31, and sends what it returns. The relay never opens a DAVE frame; in a call
that mixes members with and without DAVE it withholds DAVE frames from the latter
(:meth:`Router.forward_filtered`), and only such a call pays for that check.

Everything here is in-memory and synchronous; the one I/O it does is ``sendto`` on the
media socket it is given, so it runs the same under tests with no network.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from time import monotonic

from voxgate.protocol import mls
from voxgate.protocol.crypto import Address, SendTo, TransportCipher, reframe, transport_cipher
from voxgate.protocol.dave import is_dave_frame
from voxgate.protocol.messages import (
    ClientDisconnect,
    ClientsConnect,
    DaveTransitionReady,
    Identify,
    Message,
    MlsCommitWelcome,
    MlsInvalidCommitWelcome,
    MlsKeyPackage,
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
from voxgate.server.config import DavePolicy, ServerConfig
from voxgate.server.dave import (
    Close,
    DaveCounters,
    DaveGroup,
    Event,
    Joined,
    Left,
    Output,
    Received,
    snowflake,
)
from voxgate.server.guard import replay_window
from voxgate.server.session import GatewayConnection, VoiceSession
from voxgate.server.stats import NodeStats

log = logging.getLogger(__name__)

#: How far a new member's Session Description trails the announcement of its ssrc.
DESCRIPTION_LEAD_S = 0.05
#: Seconds between additions of the members' own counters (``packets_in``, ``packets_out``)
#: held by their routes to their sessions: the C path's MEMBER_COUNTERS_S. Written per
#: packet and per receiver, they were the Python path's largest cost after the ciphers;
#: their readers (the console's rates) call :meth:`Router.sync_counters` first.
MEMBER_COUNTERS_S = 0.25
ChannelKey = tuple[str, str]
#: A cipher class's :meth:`TransportCipher.seal_each`.
SealEach = Callable[[list[tuple[TransportCipher, Address]], bytes, bytes, SendTo], None]


Forward = Callable[[VoiceSession, bytes, bytes, bool], None]


class Channel:
    """The members of one voice channel on this node."""

    __slots__ = ("dave", "dave_receivers", "forward", "key", "members")

    def __init__(self, key: ChannelKey, forward: Forward, dave: DaveGroup | None = None) -> None:
        self.key = key
        # A list, not a dict: the fan-out iterates it for every packet.
        self.members: list[VoiceSession] = []
        #: The media plane calls this with each packet: Router.forward, or
        #: Router.forward_filtered while the call mixes members with and without DAVE.
        self.forward = forward
        self.dave = dave
        #: The members a DAVE frame goes to while filtering (those described with DAVE).
        self.dave_receivers: list[VoiceSession] = []


class Route:
    """Where one sender's packets go, as :meth:`Router.forward` finds it: every other
    member with a cipher and an address, split by framing and grouped by cipher class,
    each group its class's ``seal_each`` and the ``(cipher, address)`` of its members.
    Made at the sender's first packet and kept until :meth:`Router.routes_changed`, so a
    packet costs one ``seal_each`` call per mode among its receivers.

    It also holds the members' counters back: ``pending`` packets of the sender went to
    every one of ``receivers``, not yet added to their sessions (:meth:`add_counters`).
    """

    __slots__ = ("legacy", "members", "overhead", "pending", "receivers", "rtpsize", "sender")

    def __init__(self, sender: VoiceSession, members: list[VoiceSession]) -> None:
        self.sender = sender
        #: The list it was made from: the channel's members, or its ``dave_receivers``.
        self.members = members
        self.receivers: list[VoiceSession] = []
        #: (seal_each, [(cipher, address), ...]) of the receivers in an ``_rtpsize`` mode,
        #: and of the others.
        self.rtpsize: list[tuple[SealEach, list[tuple[TransportCipher, Address]]]] = []
        self.legacy: list[tuple[SealEach, list[tuple[TransportCipher, Address]]]] = []
        #: What the receivers' modes add to a packet, summed: the bytes sent are
        #: ``len(receivers) * (len(clear) + len(plaintext)) + overhead`` in either framing.
        self.overhead = 0
        self.pending = 0
        # Classes of both framings can share a seal_each (the generic one): the key is both.
        groups: dict[tuple[SealEach, bool], list[tuple[TransportCipher, Address]]] = {}
        for receiver in members:
            cipher = receiver.cipher
            address = receiver.address
            if receiver is sender or cipher is None or address is None:
                continue
            self.receivers.append(receiver)
            key = (cipher.seal_each, cipher.rtpsize)
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
                framing = self.rtpsize if cipher.rtpsize else self.legacy
                framing.append((cipher.seal_each, group))
            group.append((cipher, address))
            self.overhead += cipher.overhead

    def add_counters(self) -> None:
        """Add the ``pending`` packets to the sender's ``packets_in`` and every receiver's
        ``packets_out``."""
        pending, self.pending = self.pending, 0
        if pending:
            self.sender.packets_in += pending
            for receiver in self.receivers:
                receiver.packets_out += pending


def _no_socket(packet: bytes, address: tuple[str, int]) -> None:
    return None


def _as_is(session: VoiceSession) -> None:
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
        #: "native" or "python": the media path (server/fastpath.py), set with the socket.
        self.media_path = "python"
        #: Called with each session just described: the native path gives it C state here.
        self.on_described: Callable[[VoiceSession], None] = _as_is
        #: Bumped by :meth:`routes_changed` whenever what Router.forward reads could differ:
        #: the native path keeps each sender's receivers between packets until it changes.
        self.generation = 0
        #: Every sender's :class:`Route` made since the last :meth:`routes_changed`.
        self.routes: list[Route] = []
        #: When the Python media path next adds the routes' counters to the sessions.
        self.counters_due = 0.0
        #: The native path's ``Relay.sync`` while it runs, which :meth:`sync_counters` calls.
        self.sync_native: Callable[[], None] | None = None
        #: Asked before a channel opens on this node: None admits it, else the reason it
        #: is hosted elsewhere (a cluster node's placement sets it; closes with 4022).
        self.admit_channel: Callable[[ChannelKey], str | None] = _admit_any
        #: The node's MLS external sender, one key for all its channels (DAVE.md §8).
        self.external_sender = None if config.dave is DavePolicy.OFF else mls.ExternalSender()
        #: DAVE counters of every channel the node has had, for /metrics.
        self.dave_counters = DaveCounters()
        #: Sessions an operator disconnected or whose call it ended, until their tokens
        #: expire: a client that comes back with the same session is refused (4014).
        self.removed: dict[str, float] = {}

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
        max_dave = message.max_dave_protocol_version
        max_dave = max_dave if isinstance(max_dave, int) else 0
        if self.config.dave is DavePolicy.REQUIRED:
            refusal = _dave_refusal(max_dave, grant.user_id, grant.channel_id)
            if refusal is not None:
                # As Discord since March 2026 (DAVE.md §1): before the session opens.
                connection.close(CloseCode.E2EE_REQUIRED, refusal)
                return
        if self.removed and self._removed_by_operator(grant.session_id):
            # Its token is still valid, but an operator took it out of the call.
            connection.close(CloseCode.DISCONNECTED, "disconnected by an operator")
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

        channel = self.open_channel(key)
        session = VoiceSession(
            grant,
            message.token,
            self._allocate_ssrc(),
            channel,
            packet_rate_cap=self.config.packet_rate_cap,
        )
        session.max_dave_protocol_version = max_dave
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
        self.routes_changed()

    def routes_changed(self) -> None:
        """Say that a session's cipher, replay window, rate, address, mute or channel, a
        channel's members or its forward, or ``by_ssrc`` changed. Whatever changes one of
        them, in this module or elsewhere, calls this."""
        self.generation += 1
        # The senders' routes go (their counters added first): each is made again from
        # the new state at its sender's next packet.
        for route in self.routes:
            route.add_counters()
            route.sender.route = route.sender.dave_route = None
        self.routes.clear()

    def add_member_counters(self, now: float) -> None:
        """Add what the routes counted to the members' sessions (the Python media path
        calls this every MEMBER_COUNTERS_S, with the time of the packet it handles)."""
        self.counters_due = now + MEMBER_COUNTERS_S
        for route in self.routes:
            route.add_counters()

    def sync_counters(self) -> None:
        """Make every member's ``packets_in`` and ``packets_out`` exact now, on either media
        path: what a reader of them (the console's rates, a test) calls first."""
        if self.sync_native is not None:
            self.sync_native()
        self.add_member_counters(monotonic())

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
        channel = session.channel
        others = [m for m in channel.members if m is not session and m.described]
        dave_outputs: list[Output] = []
        group = channel.dave
        if first_description and group is not None:
            capable = _dave_refusal(
                session.max_dave_protocol_version, session.user_id, session.channel_id
            )
            dave_outputs = self._dave(channel, Joined(session.user_id, capable is None), now)
            session.dave_protocol_version = group.description_version(session.user_id)
        session.mode = mode
        session.cipher = transport_cipher(mode, secret_key)
        session.replay = replay_window(mode)
        self.on_described(session)
        self.routes_changed()
        reply: list[Message] = [
            SessionDescription(
                mode=mode.value,
                secret_key=list(secret_key),
                dave_protocol_version=session.dave_protocol_version,
                audio_codec="opus",
                media_session_id=os.urandom(16).hex(),
            )
        ]
        session.log.info(
            "session described, mode %s, dave %d", mode.value, session.dave_protocol_version
        )
        if not first_description or not others:
            for reply_message in reply:
                session.send(reply_message)
            self._apply_dave(channel, dave_outputs)
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
        # After op 4 in the joiner's order (send_in_order), at once for the others.
        self._apply_dave(channel, dave_outputs)

    def speaking(self, session: VoiceSession, message: Speaking) -> None:
        session.speaking = message.speaking
        # A server-muted member speaks to nobody: the others keep seeing it silent.
        flags = 0 if session.muted else message.speaking
        relayed = Speaking(speaking=flags, ssrc=session.ssrc, user_id=session.user_id)
        for member in session.channel.members:
            if member is not session and member.described:
                member.send(relayed)

    # --- operator actions (the admin API and dashboard) --------------------------------

    def find_member(self, key: ChannelKey, user_id: str) -> VoiceSession | None:
        """The session of ``user_id`` in channel ``key`` (guild id, channel id), or None."""
        channel = self.channels.get(key)
        if channel is None:
            return None
        return next((m for m in channel.members if m.user_id == user_id), None)

    def disconnect(self, session: VoiceSession, reason: str = "disconnected by an operator") -> None:  # noqa: E501
        """End ``session`` as Discord does when a member is kicked from the call (4014)."""
        self._remove(session)
        self.leave(session, "disconnected by an operator", close=CloseCode.DISCONNECTED,
                   reason=reason)  # fmt: skip

    def end_call(self, key: ChannelKey, reason: str = "call ended by an operator") -> int:
        """Close every member of channel ``key`` with 4022; returns how many there were."""
        channel = self.channels.get(key)
        members = list(channel.members) if channel is not None else []
        # Every WebSocket closed first: a member told of the others leaving (op 13, DAVE
        # proposals) would answer into a closing socket, miss the close code and resume.
        for member in members:
            self._remove(member)
            if member.connection is not None:
                member.connection.close(CloseCode.CALL_TERMINATED, reason)
        for member in members:
            self.leave(member, "call ended by an operator")
        return len(members)

    def _remove(self, session: VoiceSession) -> None:
        now = monotonic()
        for session_id, until in list(self.removed.items()):
            if until <= now:
                del self.removed[session_id]
        self.removed[session.session_id] = now + self.authority.ttl_s

    def _removed_by_operator(self, session_id: str) -> bool:
        until = self.removed.get(session_id)
        return until is not None and until > monotonic()

    def mute(self, session: VoiceSession, muted: bool) -> None:
        """Server-mute (or unmute) ``session``: while muted its audio is dropped, not
        forwarded, and every member, itself included, is told through Speaking (op 5) that
        it is not speaking; unmuted, the others see the Speaking flags it last sent."""
        if session.muted == muted:
            return
        session.muted = muted
        self.routes_changed()
        session.log.info("server %s by an operator", "muted" if muted else "unmuted")
        flags = 0 if muted else session.speaking
        told = Speaking(speaking=flags, ssrc=session.ssrc, user_id=session.user_id)
        for member in session.channel.members:
            if member.described and (member is not session or muted):
                member.send(told)

    def detach(
        self, connection: GatewayConnection, session: VoiceSession, now: float, *, leaving: bool
    ) -> None:
        if session.connection is connection:
            session.detach(now)
            if leaving:
                self.leave(session, "left")
            else:
                session.log.info("gateway lost; resumable for %.0f s", self.config.resume_grace_s)

    def leave(
        self, session: VoiceSession, why: str, *, close: int | None = None, reason: str = ""
    ) -> None:
        """End ``session``: out of its channel, the others told (op 13); ``close`` closes
        its WebSocket with ``reason`` (default: "disconnected: ``why``")."""
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
        self.routes_changed()
        for member in channel.members:
            member.send(ClientDisconnect(user_id=session.user_id))
        if close is not None and session.connection is not None:
            session.connection.close(close, reason or f"disconnected: {why}")
        session.connection = None
        session.log.info("session ended: %s", why)
        if channel.dave is not None and channel.members:
            # After op 13: a client recognises Adds only of users op 11 named and op 13
            # did not take back (DAVE.md §2), and revokes follow the leave (§4.4).
            self._apply_dave(channel, self._dave(channel, Left(session.user_id), monotonic()))

    # --- DAVE --------------------------------------------------------------------------

    def dave_message(
        self,
        session: VoiceSession,
        message: DaveTransitionReady | MlsInvalidCommitWelcome | MlsKeyPackage | MlsCommitWelcome,
        now: float,
    ) -> None:
        """A member's op 23, 26, 28 or 31: its channel's group machine decides; without
        one (``--dave off``, or a channel id DAVE cannot name) it is ignored."""
        if session.channel.dave is not None:
            event = Received(session.user_id, message)
            self._apply_dave(session.channel, self._dave(session.channel, event, now))

    def dave_timer(self, channel: Channel, now: float) -> None:
        group = channel.dave
        if group is not None:
            due = group.next_timer()
            if due is not None and now >= due:
                self._apply_dave(channel, self._dave(channel, None, now))

    def dave_groups(self) -> list[tuple[ChannelKey, DaveGroup]]:
        return [(key, ch.dave) for key, ch in self.channels.items() if ch.dave is not None]

    def open_channel(self, key: ChannelKey) -> Channel:
        """The channel ``key``, made (with its DAVE group, when it can have one) and
        registered if it is new."""
        channel = self.channels.get(key)
        if channel is None:
            channel_id = snowflake(key[1])
            group = None
            if self.external_sender is not None and channel_id is not None:
                group = DaveGroup(channel_id, self.external_sender, self.dave_counters)
            channel = self.channels[key] = Channel(key, self.forward, group)
        return channel

    def _dave(self, channel: Channel, event: Event | None, now: float) -> list[Output]:
        """``channel``'s group machine on ``event`` (None: its timer). A bug in it costs
        that one event (logged and counted), never the gateway or the other members."""
        group = channel.dave
        assert group is not None
        try:
            return group.on_timer(now) if event is None else group.handle(event, now)
        except Exception:
            log.exception("DAVE group of channel %s failed on %r", channel.key, event)
            self.dave_counters.ignored["internal_error"] += 1
            if event is None:
                # Its deadlines would fire again at once, forever: they are given up.
                group.transitions.clear()
            return []

    def _apply_dave(self, channel: Channel, outputs: list[Output]) -> None:
        """Send what the group machine returned, then say how the relay treats the call."""
        if outputs:
            by_user = {member.user_id: member for member in channel.members}
            for output in outputs:
                member = by_user.get(output.user_id)
                if member is None or member.closed:
                    continue
                if isinstance(output, Close):
                    self.leave(member, output.reason, close=output.code, reason=output.reason)
                else:
                    member.send_in_order(output.message)
        group = channel.dave
        forward = channel.forward
        if group is not None and group.filters_media:
            dave_receivers = [
                member for member in channel.members if member.dave_protocol_version > 0
            ]
            channel.forward = self.forward_filtered
        else:
            dave_receivers = []
            channel.forward = self.forward
        # The same list while its members stay: the senders' DAVE routes are made from it.
        if channel.forward != forward or dave_receivers != channel.dave_receivers:
            channel.dave_receivers = dave_receivers
            self.routes_changed()

    def expire(self, now: float) -> None:
        """End sessions whose WebSocket has been gone longer than the resume grace, and
        report described sessions whose media has gone silent."""
        for channel in list(self.channels.values()):
            self.dave_timer(channel, now)
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
        self.routes_changed()

    def _allocate_ssrc(self) -> int:
        while True:
            ssrc = secrets.randbits(32)
            if ssrc and ssrc not in self.by_ssrc:
                return ssrc

    # --- media ---------------------------------------------------------------------------

    def forward(
        self,
        sender: VoiceSession,
        clear: bytes,
        plaintext: bytes,
        rtpsize: bool,
        receivers: list[VoiceSession] | None = None,
    ) -> None:
        """Seal a packet of ``sender`` for every other described member (or those of
        ``receivers``) and send it.

        ``clear`` and ``plaintext`` are the packet as the sender's framing splits it
        (``rtpsize``), as :meth:`TransportCipher.open_split` returns it. The hot path: no
        allocation beyond each sealed packet, no logging, no awaits; who gets it is the
        sender's :class:`Route`, and the members' counters wait there.
        """
        if receivers is None:
            route = sender.route
            if route is None:
                route = sender.route = self._route(sender, sender.channel.members)
        else:
            route = sender.dave_route
            if route is None or route.members is not receivers:
                route = sender.dave_route = self._route(sender, receivers)
        route.pending += 1
        # A channel has at most two framings (rtpsize and legacy): the packet is split for
        # the sender's already, and reframed at most once for the other.
        if rtpsize:
            same, other = route.rtpsize, route.legacy
        else:
            same, other = route.legacy, route.rtpsize
        sendto = self.sendto
        for seal_each, receivers_of_mode in same:
            seal_each(receivers_of_mode, clear, plaintext, sendto)
        if other:
            clear, plaintext = reframe(clear, plaintext, to_rtpsize=not rtpsize)
            for seal_each, receivers_of_mode in other:
                seal_each(receivers_of_mode, clear, plaintext, sendto)
        stats = self.stats
        sent = len(route.receivers)
        stats.packets_out += sent
        stats.bytes_out += sent * (len(clear) + len(plaintext)) + route.overhead

    def _route(self, sender: VoiceSession, members: list[VoiceSession]) -> Route:
        route = Route(sender, members)
        self.routes.append(route)
        return route

    def forward_filtered(
        self, sender: VoiceSession, clear: bytes, plaintext: bytes, rtpsize: bool
    ) -> None:
        """:meth:`forward` for a call that mixes members with and without DAVE (a
        downgrade, DAVE.md §4.5): a DAVE frame goes only to members described with DAVE,
        never to one that cannot read it (WP:623-631); anything else goes to everyone."""
        channel = sender.channel
        if is_dave_frame(_media_payload(clear, plaintext, rtpsize)):
            receivers = channel.dave_receivers
            self.stats.dave_frames_withheld += len(channel.members) - len(receivers)
            self.forward(sender, clear, plaintext, rtpsize, receivers)
        else:
            self.forward(sender, clear, plaintext, rtpsize)


def _media_payload(clear: bytes, plaintext: bytes, rtpsize: bool) -> bytes:
    """The media payload of a split packet: the plaintext after any extension body."""
    if not clear[0] & 0x10:
        return plaintext
    header = clear[-4:] if rtpsize else plaintext[:4]
    body = 4 * int.from_bytes(header[2:4], "big") + (0 if rtpsize else 4)
    return plaintext[body:]


def _dave_refusal(max_dave_protocol_version: int, user_id: str, channel_id: str) -> str | None:
    """Why a member cannot do DAVE (the close reason under ``--dave required``), or None."""
    if max_dave_protocol_version < 1:
        return "E2EE/DAVE protocol required: identify with max_dave_protocol_version 1"
    if snowflake(user_id) is None or snowflake(channel_id) is None:
        return "E2EE/DAVE protocol required, and DAVE needs numeric user and channel ids"
    return None
