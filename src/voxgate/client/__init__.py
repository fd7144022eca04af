"""The voxgate client library: join a voice server, send audio, receive and record it."""

from voxgate.client.connection import (
    ConnectionClosed,
    ConnectionReady,
    ConnectionResumed,
    MemberDisconnected,
    MembersConnected,
    MemberSpeaking,
    SessionRestarted,
    VoiceConnection,
    VoiceConnectionError,
    VoiceEvent,
)
from voxgate.client.dave import DaveMember, DaveState
from voxgate.client.gateway import VoiceJoin
from voxgate.client.player import AudioPlayer
from voxgate.client.receiver import AudioReceiver
from voxgate.client.sources import FFmpegSource, OggOpusSource, PCMSource, open_source

__all__ = [
    "AudioPlayer",
    "AudioReceiver",
    "ConnectionClosed",
    "ConnectionReady",
    "ConnectionResumed",
    "DaveMember",
    "DaveState",
    "FFmpegSource",
    "MemberDisconnected",
    "MemberSpeaking",
    "MembersConnected",
    "OggOpusSource",
    "PCMSource",
    "SessionRestarted",
    "VoiceConnection",
    "VoiceConnectionError",
    "VoiceEvent",
    "VoiceJoin",
    "open_source",
]
