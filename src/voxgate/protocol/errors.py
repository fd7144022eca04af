"""Errors raised by the protocol core; each carries what its caller needs to act."""

from __future__ import annotations

from voxgate.errors import VoxgateError
from voxgate.protocol.opcodes import CloseCode


class ProtocolError(VoxgateError):
    """Base class of errors raised by :mod:`voxgate.protocol`."""


class MessageDecodeError(ProtocolError):
    """A gateway frame could not be decoded into a message.

    ``close_code`` is the code to close the WebSocket with (4002 for undecodable or
    mistyped payloads, 4001 for unknown opcodes) and ``reason`` a short text for the
    close frame (at most 123 bytes, the RFC 6455 limit).
    """

    def __init__(self, close_code: CloseCode, reason: str) -> None:
        super().__init__(f"{int(close_code)}: {reason}")
        self.close_code = close_code
        self.reason = reason[:120]


class PacketError(ProtocolError):
    """A datagram is not a well-formed packet of the kind its parser reads."""


class DecryptionError(PacketError):
    """A packet did not authenticate under the session's key (or is too short to try)."""


class MlsError(ProtocolError):
    """An MLS structure of DAVE (DAVE.md §2-§3) is malformed or fails a check.

    ``reason`` is short and fixed per kind of failure ("bad key package signature",
    "wrong cipher suite", "trailing bytes" ...), fit for a WebSocket close reason and as
    the label of a rejection counter.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:120]


class DaveFrameError(MlsError):
    """A media payload is not a well-formed DAVE frame (DAVE.md §5)."""
