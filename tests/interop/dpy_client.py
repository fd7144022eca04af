"""Drive the real discord.py 2.7 ``VoiceClient`` (and discord-ext-voice-recv) against a server.

Run as its own process, because aiohttp builds its default SSL context when it is
imported and the test CA must be trusted through ``SSL_CERT_FILE`` before that:

    SSL_CERT_FILE=ca.pem python dpy_client.py play --join JOIN.json --file t.ogg [--out F]
    SSL_CERT_FILE=ca.pem python dpy_client.py receive --join JOIN.json --seconds 3 --out F

``JOIN.json`` holds the two events a bot gets from Discord's gateway, as ``voxgate token``
prints them. discord.py is driven only through its extension points: a ``VoiceClient``
built over the smallest stand-ins for the client, guild and channel objects it reads, fed
``on_voice_state_update`` / ``on_voice_server_update`` once its connector is waiting for
them, as Discord's gateway would (PROTOCOL.md §8). Events are printed as JSON lines on
stdout; received Opus packets are written one JSON line each: ``{"user_id", "opus"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import discord
from discord.oggparse import OggStream


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


class _Http:
    """The one HTTP method the voice client uses: opening its WebSocket."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def ws_connect(self, url: str, *, compress: int = 0) -> aiohttp.ClientWebSocketResponse:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        return await self.session.ws_connect(
            url, compress=compress, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=10.0)
        )


class _Guild:
    def __init__(self, guild_id: int, user: Any, events: dict[str, Any]) -> None:
        self.id = guild_id
        self.me = SimpleNamespace(id=user.id, voice=None)
        self._user = user
        self._events = events
        self.voice_client: discord.VoiceClient | None = None
        self.channels: dict[int, Any] = {}

    def get_member(self, user_id: int) -> Any:
        return SimpleNamespace(id=user_id, name=str(user_id), display_name=str(user_id), bot=False)

    def get_channel(self, channel_id: int) -> Any:
        return self.channels.get(channel_id)

    async def change_voice_state(
        self, *, channel: Any, self_deaf: bool = False, self_mute: bool = False
    ) -> None:
        client = self.voice_client
        assert client is not None
        state = {**self._events["voice_state"], "self_deaf": self_deaf, "self_mute": self_mute}
        server = self._events["voice_server"]

        async def deliver() -> None:
            # After the connector has started waiting, as a real gateway's events would be.
            await asyncio.sleep(0.05)
            if channel is None:
                await client.on_voice_state_update({**state, "channel_id": None})  # type: ignore[arg-type]
                return
            await client.on_voice_state_update(state)  # type: ignore[arg-type]
            await client.on_voice_server_update(server)  # type: ignore[arg-type]

        asyncio.get_running_loop().create_task(deliver())


class _Channel:
    def __init__(self, channel_id: int, guild: _Guild) -> None:
        self.id = channel_id
        self.guild = guild
        guild.channels[channel_id] = self

    def _get_voice_client_key(self) -> tuple[int, str]:
        return self.guild.id, "guild_id"


class _Client:
    """What ``VoiceClient`` and voice-recv read from a ``discord.Client``."""

    def __init__(self, user_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.user = SimpleNamespace(id=user_id, name=str(user_id))
        self.loop = loop
        self.http = _Http()
        self._connection = SimpleNamespace(
            loop=loop,
            http=self.http,
            user=self.user,
            _remove_voice_client=lambda key: None,
            _add_voice_client=lambda key, client: None,
        )

    def dispatch(self, event: str, *args: Any) -> None:
        if event.startswith("voice_member_"):
            member = args[0] if args else None
            emit(event, user_id=str(getattr(member, "id", "")))

    def get_user(self, user_id: int) -> Any:
        return SimpleNamespace(id=user_id, name=str(user_id))


class OggOpusSource(discord.AudioSource):
    """Plays an Ogg/Opus file's packets as they are, as FFmpegOpusAudio would (no ffmpeg)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self._packets = OggStream(self._file).iter_packets()

    def is_opus(self) -> bool:
        return True

    def read(self) -> bytes:
        for packet in self._packets:
            # OggStream yields the OpusHead and OpusTags header packets too: not audio.
            if not packet.startswith((b"OpusHead", b"OpusTags")):
                return packet
        return b""

    def cleanup(self) -> None:
        self._file.close()


async def _connect(events: dict[str, Any]) -> Any:
    # voice-recv's client is discord.py's VoiceClient plus a receive path; it also reports
    # the gateway's member events, which the tests read.
    from discord.ext import voice_recv

    state = events["voice_state"]
    loop = asyncio.get_running_loop()
    client = _Client(int(state["user_id"]), loop)
    guild = _Guild(int(state["guild_id"]), client.user, events)
    channel = _Channel(int(state["channel_id"]), guild)
    voice = voice_recv.VoiceRecvClient(client, channel)  # type: ignore[arg-type]
    guild.voice_client = voice
    await voice.connect(reconnect=True, timeout=20.0, self_deaf=False, self_mute=False)
    emit("ready", mode=voice.mode, ssrc=voice.ssrc)
    return voice, client


def _record(voice: Any, out: Path) -> Any:
    """Write every received Opus packet to ``out``; returns the function that stops it."""
    from discord.ext import voice_recv

    sink_file = out.open("w")
    count = 0

    def on_packet(user: Any, data: Any) -> None:
        nonlocal count
        if data.opus is None:
            return
        count += 1
        user_id = str(user.id) if user is not None else None
        sink_file.write(json.dumps({"user_id": user_id, "opus": data.opus.hex()}) + "\n")

    voice.listen(voice_recv.BasicSink(on_packet, decode=False))
    emit("listening")

    def stop() -> None:
        voice.stop_listening()
        sink_file.close()
        emit("received", packets=count)

    return stop


async def play(events: dict[str, Any], file: Path, out: Path | None, linger: float) -> None:
    voice, client = await _connect(events)
    stop_recording = _record(voice, out) if out else None
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    voice.play(OggOpusSource(file), after=lambda error: loop.call_soon_threadsafe(done.set))
    emit("playing")
    await done.wait()
    emit("played")
    await asyncio.sleep(linger)
    if stop_recording:
        stop_recording()
    await voice.disconnect(force=True)
    await client.http.session.close()
    emit("closed")


async def receive(events: dict[str, Any], seconds: float, out: Path | None) -> None:
    voice, client = await _connect(events)
    stop_recording = _record(voice, out) if out else None
    await asyncio.sleep(seconds)
    if stop_recording:
        stop_recording()
    await voice.disconnect(force=True)
    await client.http.session.close()
    emit("closed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["play", "receive"])
    parser.add_argument("--join", type=Path, required=True, help="JSON of the two join events")
    parser.add_argument("--file", type=Path, help="Ogg/Opus file to play")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, help="where received packets go (JSON lines)")
    parser.add_argument("--linger", type=float, default=0.5, help="seconds to stay after playing")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr)
    events = json.loads(args.join.read_text())
    try:
        if args.command == "play":
            asyncio.run(play(events, args.file, args.out, args.linger))
        else:
            asyncio.run(receive(events, args.seconds, args.out))
    except Exception as exc:
        emit("error", error=f"{type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    main()
