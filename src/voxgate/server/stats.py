"""The node's counters: plain integers the hot path bumps and the metrics exporter reads.

A Prometheus call per packet would cost more than forwarding the packet; an attribute
increment costs almost nothing, and ``admin.py`` turns these into metrics at scrape time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

#: Why a datagram was dropped; each is a label value of ``voxgate_packets_dropped``.
DROP_REASONS = (
    "unknown_kind",  # neither RTP, RTCP, IP discovery nor keep-alive
    "unknown_ssrc",  # no session has this ssrc
    "not_described",  # the session has no Session Description (no key) yet
    "malformed",  # not a well-formed packet of the sender's mode
    "decrypt_failed",  # did not authenticate with the sender's key
    "replayed",  # authenticated, but a copy of a packet already relayed
    "rate_limited",  # beyond the per-session packet rate cap
    "discovery_refused",  # IP discovery for an ssrc no identified session owns
    "server_muted",  # authentic audio of a member an operator muted (Router.mute)
)


class NodeStats:
    """Counters for one node, all monotonic."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "dave_frames_withheld",
        "discovery_answered",
        "discovery_repeated",
        "dropped",
        "keepalives_in",
        "packets_in",
        "packets_out",
        "rtcp_in",
        "send_errors",
    )

    def __init__(self) -> None:
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.rtcp_in = 0
        self.keepalives_in = 0
        self.discovery_answered = 0
        self.discovery_repeated = 0
        self.send_errors = 0
        # DAVE frames not sent to a member without DAVE, one per such receiver (a downgrade).
        self.dave_frames_withheld = 0
        self.dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})

    def counters(self) -> dict[str, int]:
        """Every counter but ``dropped``, by name: what crosses from a worker process."""
        return {name: getattr(self, name) for name in self.__slots__ if name != "dropped"}

    def add(self, counters: Mapping[str, int], dropped: Mapping[str, int]) -> None:
        """Add another node's :meth:`counters` and drops to these (a supervisor's sum)."""
        for name, value in counters.items():
            setattr(self, name, getattr(self, name) + value)
        self.dropped.update(dropped)
