"""Per-sender checks on authenticated media: replayed packets and floods.

A packet that authenticates can still be a copy of an earlier one, sent again by anyone
who saw it on the wire; relayed, it would be played twice by every receiver. The
:class:`ReplayWindow` is the anti-replay window of IPsec and DTLS (RFC 4303 §3.4.3) over
the sender's nonce counter, which the mode authenticates: a packet is accepted once, in any
order, within the last ``size`` counters. :class:`RateLimit` is a token bucket that caps
what one session may make the node forward.
"""

from __future__ import annotations

from collections.abc import Callable

from voxgate.protocol.opcodes import EncryptionMode

#: How far behind the newest counter a reordered packet is still accepted.
WINDOW = 1024


class ReplayWindow:
    """Accepts each counter once; counters wrap at ``2**bits`` as clients' do."""

    __slots__ = ("_bits", "_half", "_highest", "_mask", "_window", "counter_of", "size")

    def __init__(
        self, size: int = WINDOW, bits: int = 32, counter_of: Callable[[bytes], int] | None = None
    ) -> None:
        self.size = size
        #: Reads the authenticated counter out of a packet, for :meth:`accept_packet`.
        self.counter_of = counter_of or _nonce_suffix
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        self._window = (1 << size) - 1
        self._highest: int | None = None
        self._bits = 0  # bit i set: counter (highest - i) seen

    def accept_packet(self, packet: bytes) -> bool:
        """Whether ``packet`` (already authenticated) is new; records it when it is."""
        return self.accept(self.counter_of(packet))

    def accept(self, counter: int) -> bool:
        """Whether ``counter`` is new; records it when it is."""
        highest = self._highest
        if highest is None:
            self._highest = counter
            self._bits = 1
            return True
        ahead = (counter - highest) & self._mask
        if ahead and ahead < self._half:
            # A jump past the window leaves only the new counter in it; shifted, a jump of
            # 2**31 made a 2**31-bit integer (half a second, 256 MB) for every such packet.
            if ahead < self.size:
                self._bits = ((self._bits << ahead) | 1) & self._window
            else:
                self._bits = 1
            self._highest = counter
            return True
        behind = (highest - counter) & self._mask
        if behind >= self.size:
            return False
        bit = 1 << behind
        if self._bits & bit:
            return False
        self._bits |= bit
        return True


def replay_window(mode: EncryptionMode) -> ReplayWindow | None:
    """The window for a sender in ``mode``; None where the mode leaves nothing to check.

    ``xsalsa20_poly1305_suffix`` uses random nonces and authenticates no header, so an
    exact copy is indistinguishable from a new packet there.
    """
    if mode is EncryptionMode.XSALSA20_POLY1305_SUFFIX:
        return None
    if mode is EncryptionMode.XSALSA20_POLY1305:
        # The RTP header is the nonce there, so a replay repeats its 16-bit sequence number.
        return ReplayWindow(bits=16, counter_of=_rtp_sequence)
    return ReplayWindow()


def _nonce_suffix(packet: bytes) -> int:
    return int.from_bytes(packet[-4:], "big")


def _rtp_sequence(packet: bytes) -> int:
    return int.from_bytes(packet[2:4], "big")


class RateLimit:
    """A token bucket: ``rate`` packets a second, bursts up to ``burst``."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def allow(self, now: float) -> bool:
        tokens = self._tokens + (now - self._last) * self.rate
        self._last = now
        # min(tokens, burst), without a builtin call per packet.
        burst = self.burst
        if burst < tokens:
            tokens = burst
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False
