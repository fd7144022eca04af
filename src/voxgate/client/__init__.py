"""The voxgate client library: join a voice server, send audio, receive and record it."""

from voxgate.client.connection import (
    ConnectionClosed,
    ConnectionReady,
    ConnectionResumed,
    MemberDisconnected,
    MembersConnected,
    MemberSpeaking,
    VoiceConnection,
    VoiceConnectionError,
    VoiceEvent,
)
from voxgate.client.gateway import VoiceJoin

__all__ = [
    "ConnectionClosed",
    "ConnectionReady",
    "ConnectionResumed",
    "MemberDisconnected",
    "MemberSpeaking",
    "MembersConnected",
    "VoiceConnection",
    "VoiceConnectionError",
    "VoiceEvent",
    "VoiceJoin",
]
