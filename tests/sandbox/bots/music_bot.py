"""A discord.py music bot that also records: joins your voice channel, plays files, listens.

    DISCORD_TOKEN=... python music_bot.py

Commands, in any text channel of a guild: ``!join`` (or ``/join``) joins the voice channel
you are in, ``!play <file>`` plays a file through FFmpeg, ``!listen`` starts recording
everyone, ``!save`` writes each speaker's Opus packets to ``$RECORDINGS/<user id>.hex``
(one packet per line, hex) and says how many, ``!leave`` leaves. Only discord.py's and
discord-ext-voice-recv's public API: nothing here knows about voxgate.
"""

import asyncio
import os
from pathlib import Path

import discord
from discord.ext import commands, voice_recv

intents = discord.Intents.default()
intents.message_content = True
bot = commands.Bot(command_prefix="!", intents=intents)
recordings = Path(os.environ.get("RECORDINGS", "recordings"))
heard: dict[int, list[bytes]] = {}


@bot.event
async def on_ready() -> None:
    for guild in bot.guilds:
        channels = " ".join(str(channel.id) for channel in guild.voice_channels)
        print(f"ready as {bot.user.id} in guild {guild.id} voice channels {channels}", flush=True)
    await bot.tree.sync()


@bot.event
async def on_resumed() -> None:
    print("resumed", flush=True)


async def join(member: discord.Member) -> str:
    if member.voice is None or member.voice.channel is None:
        return "join a voice channel first"
    channel = member.voice.channel
    voice = member.guild.voice_client
    if voice is not None and voice.channel != channel:
        # Leave and join again: move_to() waits for the voice server to close the old
        # socket, which voice-recv stops reading when a member leaves while not listening.
        await voice.disconnect()
        voice = None
    if voice is None:
        await channel.connect(cls=voice_recv.VoiceRecvClient, self_deaf=False)
    return f"joined {channel.id}"


@bot.command(name="join")
async def join_command(ctx: commands.Context) -> None:
    await ctx.send(await join(ctx.author))


@bot.tree.command(name="join", description="Join the voice channel you are in")
async def join_slash(interaction: discord.Interaction) -> None:
    await interaction.response.defer()
    await interaction.followup.send(await join(interaction.user))


@bot.command()
async def play(ctx: commands.Context, *, path: str) -> None:
    voice = ctx.voice_client
    if voice is None:
        await ctx.send("not in a voice channel: !join first")
        return
    source = await discord.FFmpegOpusAudio.from_probe(path)
    finished = asyncio.Event()
    voice.play(source, after=lambda error: bot.loop.call_soon_threadsafe(finished.set))
    await ctx.send(f"playing {Path(path).name}")
    await finished.wait()
    await ctx.send(f"finished {Path(path).name}")


@bot.command()
async def listen(ctx: commands.Context) -> None:
    voice = ctx.voice_client
    if voice is None:
        await ctx.send("not in a voice channel: !join first")
        return
    heard.clear()

    def on_packet(user: discord.User | None, data: voice_recv.VoiceData) -> None:
        if user is not None and data.opus is not None:
            heard.setdefault(user.id, []).append(data.opus)

    voice.listen(voice_recv.BasicSink(on_packet, decode=False))
    await ctx.send("listening")


@bot.command()
async def save(ctx: commands.Context) -> None:
    voice = ctx.voice_client
    if voice is not None and voice.is_listening():
        voice.stop_listening()
    recordings.mkdir(parents=True, exist_ok=True)
    for user_id, packets in heard.items():
        (recordings / f"{user_id}.hex").write_text("".join(p.hex() + "\n" for p in packets))
    summary = ", ".join(f"{len(packets)} packets from {uid}" for uid, packets in heard.items())
    await ctx.send(f"saved {summary or 'nothing'}")


@bot.command()
async def leave(ctx: commands.Context) -> None:
    if ctx.voice_client is not None:
        await ctx.voice_client.disconnect()
    await ctx.send("left")


bot.run(os.environ["DISCORD_TOKEN"])
