"""A recording bot written for discord-ext-voice-recv, as its users write them.

Its sink subclasses voice-recv's ``AudioSink``: decoded PCM per speaker, and the speaking
events through ``@AudioSink.listener()``. Switching it to voxgate is the one line
``from discord.ext import voice_recv`` -> ``from voxgate.discordpy import voice_recv``;
the test runs this file with exactly that line changed and nothing else.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import discord
from discord.ext import voice_recv


class SpeakerSink(voice_recv.AudioSink):
    """Keeps each speaker's PCM and when they started and stopped talking."""

    def __init__(self) -> None:
        super().__init__()
        self.pcm: dict[int, bytearray] = defaultdict(bytearray)
        self.spurts: list[tuple[str, int]] = []

    def wants_opus(self) -> bool:
        return False

    def write(self, user: Any, data: voice_recv.VoiceData) -> None:
        if user is not None:
            self.pcm[user.id] += data.pcm

    @voice_recv.AudioSink.listener()
    def on_voice_member_speaking_start(self, member: discord.Member) -> None:
        self.spurts.append(("start", member.id))

    @voice_recv.AudioSink.listener()
    def on_voice_member_speaking_stop(self, member: discord.Member) -> None:
        self.spurts.append(("stop", member.id))

    def cleanup(self) -> None:
        pass


async def record(channel: discord.VoiceChannel, until: asyncio.Event) -> SpeakerSink:
    """Join ``channel``, record until ``until`` is set, leave."""
    vc = await channel.connect(cls=voice_recv.VoiceRecvClient)
    sink = SpeakerSink()
    vc.listen(sink)
    await until.wait()
    vc.stop_listening()
    await vc.disconnect()
    return sink
