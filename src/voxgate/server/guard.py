"""Per-sender checks on authenticated media: replayed packets and floods.

A packet that authenticates can still be a copy of an earlier one, sent again by anyone
who saw it on the wire; relayed, it would be played twice by every receiver. The
:class:`ReplayWindow` is the anti-replay window of IPsec and DTLS (RFC 4303 §3.4.3) over
the sender's nonce counter, which the mode authenticates: a packet is accepted once, in any
order, within the last ``size`` counters. :class:`RateLimit` is a token bucket that caps
what one session may make the node forward.
"""

from __future__ import annotations

from voxgate.protocol.opcodes import EncryptionMode

#: How far behind the newest counter a reordered packet is still accepted.
WINDOW = 1024
# Where a packet's counter is: the AEAD and lite modes' 4-byte nonce suffix, and the
# RTP sequence number, which is the nonce of xsalsa20_poly1305.
_SUFFIX = slice(-4, None)
_RTP_SEQUENCE = slice(2, 4)
# Bound once: ``int.from_bytes`` in a call looks up the classmethod and binds it each time.
_from_bytes = int.from_bytes


class ReplayWindow:
    """Accepts each counter once; counters wrap at ``2**bits`` as clients' do.

    The window is a ring of flags over the last ``size`` counters, each slot True when the
    counter of the window that falls there was accepted: in order, a packet costs one
    store. The bitmap of RFC 6479 is a 1024-bit integer in Python, and shifting it made
    three such integers a packet, as much as the rest of the guards together. The ring is a
    list of the two bools (8 KB for 1024): a list store is one specialized bytecode, where
    an ``array`` store parses its value as a C call does, and a ring of the counters
    themselves would keep an int object per slot alive (40 KB).
    """

    __slots__ = ("_accepted", "_counter_at", "_half", "_highest", "_mask", "_ring", "size")

    def __init__(self, size: int = WINDOW, bits: int = 32, counter_at: slice = _SUFFIX) -> None:
        if size < 1 or size & (size - 1) or size > 1 << bits:
            raise ValueError(f"the window's size must be a power of two up to 2**bits: {size}")
        self.size = size
        #: Where the authenticated counter is in a packet, for :meth:`accept_packet`.
        self._counter_at = counter_at
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        self._ring = size - 1
        self._highest = -1  # none accepted yet
        # _accepted[c & _ring] says whether counter c was accepted, for the counters of the
        # window: a slot is cleared (or taken) as the newest counter moves past it, and
        # only one counter of the window has its slot. size divides 2**bits, so wrapping
        # keeps slots.
        self._accepted = [False] * size

    def accept_packet(self, packet: bytes) -> bool:
        """Whether ``packet`` (already authenticated) is new; records it when it is."""
        # One call a packet on the Python path, where a call level costs what this body
        # does: a packet in order is decided here, any other by accept.
        counter = _from_bytes(packet[self._counter_at], "big")
        if counter == self._highest + 1:
            # The one after the newest, nearly every packet: its slot was the counter's a
            # window ago, which is out of the window now.
            self._accepted[counter & self._ring] = True
            self._highest = counter
            return True
        return self.accept(counter)

    def accept(self, counter: int) -> bool:
        """Whether ``counter`` (below ``2**bits``) is new; records it when it is."""
        highest = self._highest
        accepted = self._accepted
        ring = self._ring
        ahead = (counter - highest) & self._mask
        if highest < 0 or (ahead and ahead < self._half):
            if ahead > 1 and highest >= 0:
                # The counters skipped were not seen; their slots still flag older ones.
                if ahead >= self.size:
                    accepted[:] = [False] * self.size
                else:
                    for skipped in range(highest + 1, highest + ahead):
                        accepted[skipped & ring] = False
            accepted[counter & ring] = True
            self._highest = counter
            return True
        if (highest - counter) & self._mask >= self.size or accepted[counter & ring]:
            return False
        accepted[counter & ring] = True
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
        return ReplayWindow(bits=16, counter_at=_RTP_SEQUENCE)
    return ReplayWindow()


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
