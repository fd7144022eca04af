"""Opcodes, close codes, speaking flags and transport encryption mode names.

PROTOCOL.md §2, §3, §5 and §6; the names follow Discord's developer documentation.
"""

from __future__ import annotations

import enum


class Op(enum.IntEnum):
    """Voice gateway opcodes (both directions)."""

    IDENTIFY = 0
    SELECT_PROTOCOL = 1
    READY = 2
    HEARTBEAT = 3
    SESSION_DESCRIPTION = 4
    SPEAKING = 5
    HEARTBEAT_ACK = 6
    RESUME = 7
    HELLO = 8
    RESUMED = 9
    CLIENTS_CONNECT = 11
    CLIENT_CONNECT = 12
    CLIENT_DISCONNECT = 13
    MEDIA_SINK_WANTS = 15
    CLIENT_FLAGS = 18
    CLIENT_PLATFORM = 20
    DAVE_PREPARE_TRANSITION = 21
    DAVE_EXECUTE_TRANSITION = 22
    DAVE_TRANSITION_READY = 23
    DAVE_PREPARE_EPOCH = 24
    MLS_EXTERNAL_SENDER = 25
    MLS_KEY_PACKAGE = 26
    MLS_PROPOSALS = 27
    MLS_COMMIT_WELCOME = 28
    MLS_ANNOUNCE_COMMIT_TRANSITION = 29
    MLS_WELCOME = 30
    MLS_INVALID_COMMIT_WELCOME = 31


class CloseCode(enum.IntEnum):
    """Voice gateway close codes (PROTOCOL.md §3), plus the RFC 6455 ones we use."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    SESSION_NO_LONGER_VALID = 4006
    SESSION_TIMEOUT = 4009
    SERVER_NOT_FOUND = 4011
    UNKNOWN_PROTOCOL = 4012
    DISCONNECTED = 4014
    VOICE_SERVER_CRASHED = 4015
    UNKNOWN_ENCRYPTION_MODE = 4016
    E2EE_REQUIRED = 4017
    BAD_REQUEST = 4020
    RATE_LIMITED = 4021
    CALL_TERMINATED = 4022


#: Close codes after which a client resumes its session (PROTOCOL.md §3).
RESUMABLE_CLOSE_CODES = frozenset(
    {CloseCode.SESSION_TIMEOUT, CloseCode.VOICE_SERVER_CRASHED, CloseCode.GOING_AWAY}
)
#: Close codes after which a client must not reconnect at all.
FATAL_CLOSE_CODES = frozenset({CloseCode.AUTHENTICATION_FAILED, CloseCode.DISCONNECTED})


class SpeakingFlags(enum.IntFlag):
    """The ``speaking`` bitfield of op 5; 0 means stopped."""

    NONE = 0
    MICROPHONE = 1
    SOUNDSHARE = 2
    PRIORITY = 4


class EncryptionMode(enum.StrEnum):
    """Transport encryption modes, in the order Discord prefers them (PROTOCOL.md §5)."""

    AEAD_AES256_GCM_RTPSIZE = "aead_aes256_gcm_rtpsize"
    AEAD_XCHACHA20_POLY1305_RTPSIZE = "aead_xchacha20_poly1305_rtpsize"
    XSALSA20_POLY1305_LITE = "xsalsa20_poly1305_lite"
    XSALSA20_POLY1305_SUFFIX = "xsalsa20_poly1305_suffix"
    XSALSA20_POLY1305 = "xsalsa20_poly1305"


#: The default order a server offers modes in Ready, and a client prefers them in.
DEFAULT_MODES: tuple[EncryptionMode, ...] = tuple(EncryptionMode)
