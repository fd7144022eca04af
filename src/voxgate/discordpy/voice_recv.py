"""discord-ext-voice-recv's names, with voxgate's client as ``VoiceRecvClient``.

A bot written for discord-ext-voice-recv switches with one line::

    from discord.ext import voice_recv        # before
    from voxgate.discordpy import voice_recv  # after

and nothing else changes: its sinks (subclasses of voice-recv's own ``AudioSink``, and the
package's ``BasicSink``, ``WaveSink``, filters ...) are voice-recv's, and
``channel.connect(cls=voice_recv.VoiceRecvClient)`` now makes a
:class:`voxgate.discordpy.VoiceClient`, which hands them DAVE-decrypted audio.
Requires discord-ext-voice-recv itself (the bot has it already).
"""

from discord.ext.voice_recv import *  # noqa: F403 - the package's whole public surface
from discord.ext.voice_recv import extras, rtp  # noqa: F401 - submodules it re-exports

from voxgate.discordpy.client import VoiceClient as VoiceRecvClient  # type: ignore[assignment]  # noqa: F401
