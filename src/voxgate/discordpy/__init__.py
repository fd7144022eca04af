"""voxgate as the voice backend of a discord.py 2.7 bot (``pip install voxgate[discordpy]``).

``vc = await channel.connect(cls=voxgate.discordpy.VoiceClient)`` gives the bot voxgate's
voice client behind discord.py's own API: ``play()`` with discord.py's ``AudioSource``s,
``pause``/``resume``/``stop``, ``move_to``, ``latency``; and receiving, which discord.py
lacks: ``vc.listen(sink)`` with discord-ext-voice-recv's sink interface (its sinks work
unchanged) and ``async for member, pcm in vc.receive()``, after DAVE decryption, with
``vc.privacy_code`` for the call's end-to-end encryption.

This package imports discord.py; ``import voxgate`` alone never does.
"""

from voxgate.discordpy.client import ConnectionFailed, VoiceClient
from voxgate.discordpy.sinks import AudioSink, BasicSink, RtpPacket, VoiceData, WaveSink

__all__ = [
    "AudioSink",
    "BasicSink",
    "ConnectionFailed",
    "RtpPacket",
    "VoiceClient",
    "VoiceData",
    "WaveSink",
]
