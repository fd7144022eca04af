"""The Discord voice protocol, pure: gateway messages, RTP, transport crypto, IP discovery.

Nothing here opens a socket or touches asyncio; the server and the client are two users
of the same codecs.
"""

from voxgate.protocol.errors import (
    DecryptionError,
    MessageDecodeError,
    PacketError,
    ProtocolError,
)
from voxgate.protocol.opcodes import CloseCode, EncryptionMode, Op, SpeakingFlags

__all__ = [
    "CloseCode",
    "DecryptionError",
    "EncryptionMode",
    "MessageDecodeError",
    "Op",
    "PacketError",
    "ProtocolError",
    "SpeakingFlags",
]
