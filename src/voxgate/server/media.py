"""The UDP media plane: one socket, every datagram of every session on the node.

A datagram is one of four things, told apart by length and first bytes (PROTOCOL.md §4-5):

- **RTP**: looked up by ssrc, opened with the sender's key and mode. A packet that does not
  authenticate is dropped and counted, never forwarded; one that does confirms (or moves)
  the sender's address and goes to :meth:`Router.forward`, which seals it again for each
  receiver.
- **IP discovery** request: answered with the address and port it came from, only for the
  ssrc of an identified session, with a reply exactly as long as the request (no
  amplification). The first request sets the session's address; after that only packets
  that authenticate can move it, so a spoofed request cannot redirect anyone's audio.
  Until the session selects a protocol the answer is sent again a few times
  (:data:`DISCOVERY_REPEATS_S`): a client that never asks twice is otherwise stranded by
  one lost answer.
- **Keep-alive** (discord.js's 8 bytes every 5 s): counted and dropped.
- **RTCP**: terminated here, counted and not forwarded. A receiver report describes the
  leg between the server and the receiver, which the sender neither sees nor controls, and
  Discord's clients neither need nor act on forwarded reports.

Anything else is dropped and counted by reason in :class:`NodeStats`. Nothing here logs
per packet or raises.

With ``voxgate._fastpath`` built, C reads the socket and relays the RTP of the two AEAD
modes itself (``server/fastpath.py``), and every other datagram still comes here.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import cast

from voxgate.protocol import discovery
from voxgate.protocol.errors import DecryptionError, PacketError
from voxgate.server.router import Router
from voxgate.server.session import VoiceSession
from voxgate.server.stats import NodeStats

log = logging.getLogger(__name__)

_DISCOVERY_SIZE = discovery.SIZE
_KEEPALIVE_SIZE = 8
# Bound once: ``int.from_bytes`` in a call looks up the classmethod and binds it each time.
_from_bytes = int.from_bytes

# Seconds after an answer to send it again while the session has not selected a protocol.
# discord.py asks once and waits forever; worse, with voice receive (discord-ext-voice-recv)
# its socket reader already runs when it sends the request, and it registers the listener
# for the answer only after sending, so an answer over loopback can arrive first and be
# dropped. Each repeat is the request's size and a new request for the ssrc replaces the
# chain, so what a spoofed request can reflect stays under 100 bytes a second per session
# that is identified and has not selected a protocol.
DISCOVERY_REPEATS_S = (0.25, 0.5, 1.0, 2.0)


class MediaEndpoint(asyncio.DatagramProtocol):
    """The asyncio protocol of the node's UDP socket."""

    def __init__(self, router: Router, stats: NodeStats) -> None:
        self.router = router
        self.stats = stats
        self.transport: asyncio.DatagramTransport | None = None
        # The pending repeat of each ssrc's last discovery answer.
        self._repeats: dict[int, asyncio.TimerHandle] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport does not subclass DatagramTransport, uvloop's does.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.router.sendto = self.transport.sendto

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for handle in self._repeats.values():
            handle.cancel()
        self._repeats.clear()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a receiver that went away surfaces here, not in sendto.
        self.stats.send_errors += 1

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        stats = self.stats
        size = len(data)
        stats.packets_in += 1
        stats.bytes_in += size
        if size >= 12 and data[0] >> 6 == 2 and not 200 <= data[1] <= 204:
            router = self.router
            session = router.by_ssrc.get(_from_bytes(data[8:12], "big"))
            if session is None:
                stats.dropped["unknown_ssrc"] += 1
                return
            # The session's packets_in is counted where the packet ends: by _drop, or by
            # its route in Router.forward (added to the session every MEMBER_COUNTERS_S).
            cipher = session.cipher
            if cipher is None:
                self._drop(session, "not_described")
                return
            try:
                clear, plaintext = cipher.open_split(data)
            except DecryptionError:
                self._drop(session, "decrypt_failed")
                return
            except PacketError:
                self._drop(session, "malformed")
                return
            window = session.replay
            if window is not None and not window.accept_packet(data):
                self._drop(session, "replayed")
                return
            # After authentication: forged packets must not spend a member's allowance.
            now = monotonic()
            if not session.rate.allow(now):
                self._drop(session, "rate_limited")
                return
            session.last_media_at = now
            if session.address != addr:
                router.move(session, addr)
            if session.muted:
                self._drop(session, "server_muted")
                return
            # Router.forward, or its DAVE-filtering variant in a call that needs one. Read into
            # a local first: ``channel.forward(...)`` would be a method lookup, which CPython
            # 3.11 does not specialize for an attribute held in a slot.
            forward = session.channel.forward
            forward(session, clear, plaintext, cipher.rtpsize)
            if now >= router.counters_due:
                router.add_member_counters(now)
        elif size == _DISCOVERY_SIZE and data[0] == 0 and data[1] == discovery.REQUEST:
            self._discovery(data, addr)
        elif size == _KEEPALIVE_SIZE:
            stats.keepalives_in += 1
            sender = self.router.by_address.get(addr)
            if sender is not None:
                sender.last_media_at = monotonic()
        elif size >= 8 and data[0] >> 6 == 2:
            stats.rtcp_in += 1
        else:
            stats.dropped["unknown_kind"] += 1

    def _drop(self, session: VoiceSession, reason: str) -> None:
        """Count a dropped packet of ``session``: the node's total and the member's own."""
        self.stats.dropped[reason] += 1
        session.packets_in += 1
        session.dropped[reason] = session.dropped.get(reason, 0) + 1

    def _discovery(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            request = discovery.parse(data)
        except PacketError:
            self.stats.dropped["unknown_kind"] += 1
            return
        session = self.router.by_ssrc.get(request.ssrc)
        if session is None:
            self.stats.dropped["discovery_refused"] += 1
            return
        if session.address is None:
            self.router.move(session, addr)
        # A request from another address is still answered (a client behind a NAT that
        # rebinds asks again, and the answer is no larger than the question), but the
        # session's address moves only with its first packet that authenticates.
        response = discovery.build_response(request.ssrc, addr[0], addr[1])
        if self.transport is not None:
            self.transport.sendto(response, addr)
            self.stats.discovery_answered += 1
            pending = self._repeats.pop(request.ssrc, None)
            if pending is not None:
                pending.cancel()
            if not session.described:
                self._schedule_repeat(session, response, addr, 0)

    def _schedule_repeat(
        self, session: VoiceSession, response: bytes, addr: tuple[str, int], index: int
    ) -> None:
        if index >= len(DISCOVERY_REPEATS_S):
            return
        self._repeats[session.ssrc] = asyncio.get_running_loop().call_later(
            DISCOVERY_REPEATS_S[index],
            self._repeat_discovery,
            session,
            response,
            addr,
            index,
        )

    def _repeat_discovery(
        self, session: VoiceSession, response: bytes, addr: tuple[str, int], index: int
    ) -> None:
        ssrc = session.ssrc
        del self._repeats[ssrc]
        # A session that selected a protocol has its answer; one that went away, or whose
        # ssrc now belongs to another session, must not be answered for.
        if (
            self.transport is None
            or session.described
            or session.closed
            or self.router.by_ssrc.get(ssrc) is not session
        ):
            return
        self.transport.sendto(response, addr)
        self.stats.discovery_repeated += 1
        self._schedule_repeat(session, response, addr, index + 1)
