"""The Discord voice protocol, pure: gateway messages, RTP, transport crypto, IP discovery,
and DAVE's MLS pieces (:mod:`.mls`) and media frame (:mod:`.dave`).

Nothing here opens a socket or touches asyncio; the server and the client are two users
of the same codecs.
"""

from voxgate.protocol.errors import (
    DaveFrameError,
    DecryptionError,
    MessageDecodeError,
    MlsError,
    PacketError,
    ProtocolError,
)
from voxgate.protocol.opcodes import CloseCode, EncryptionMode, Op, SpeakingFlags

__all__ = [
    "CloseCode",
    "DaveFrameError",
    "DecryptionError",
    "EncryptionMode",
    "MessageDecodeError",
    "MlsError",
    "Op",
    "PacketError",
    "ProtocolError",
    "SpeakingFlags",
]
