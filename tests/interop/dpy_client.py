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

DAVE: discord.py 2.7 does it itself with davey (the group, and the encryption of what it
sends). discord-ext-voice-recv 0.5.2a179 does not: it hands the application the DAVE
ciphertext (its issue #64). So this driver opens each received frame with discord.py's own
davey session, ``voice_client._connection.dave_session.decrypt(user_id,
davey.MediaType.audio, frame)``, as that project's open PR #62 does, on the event loop's
thread (where discord.py drives the same session), and counts what it opened. It prints
the privacy code each time it changes and, at the end, davey's own counters per sender.
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
import davey
import discord
from discord.oggparse import OggStream

SILENCE = b"\xf8\xff\xfe"


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


class _DaveReceive:
    """Opens what voice-recv hands over with discord.py's davey session (see the docstring)."""

    def __init__(self, voice: Any) -> None:
        self.voice = voice
        self.counts: dict[str, dict[str, int]] = {}
        #: davey's own counters per sender, the last seen (davey forgets a sender's when
        #: it leaves the group).
        self.stats: dict[str, dict[str, int]] = {}

    def refresh(self) -> None:
        session = self.voice._connection.dave_session
        if session is None:
            return
        for user_id in self.counts:
            if user_id == "None":
                continue
            try:
                stats = session.get_decryption_stats(int(user_id))
            except ValueError:
                continue  # no decryptor for that user (not, or no longer, in our group)
            if stats is not None:
                self.stats[user_id] = {
                    "successes": stats.successes,
                    "failures": stats.failures,
                    "passthroughs": stats.passthroughs,
                    "attempts": stats.attempts,
                }

    def open(self, user_id: str | None, opus: bytes) -> bytes | None:
        state = self.voice._connection
        session = state.dave_session
        counts = self.counts.setdefault(
            str(user_id),
            {"decrypted": 0, "passed_through": 0, "plain": 0, "failed": 0},
        )
        is_dave = len(opus) > 12 and opus[-2:] == b"\xfa\xfa"
        if opus == SILENCE or session is None or not session.ready:
            counts["plain"] += 1
            return opus
        if state.dave_protocol_version == 0 and not is_dave:
            counts["plain"] += 1  # downgraded: plain Opus is what is sent
            return opus
        if user_id is None:
            counts["failed"] += 1
            return None
        try:
            opened = session.decrypt(int(user_id), davey.MediaType.audio, opus)
        except ValueError:  # a frame davey cannot open: dropped, as any receiver would
            counts["failed"] += 1
            return None
        counts["decrypted" if is_dave else "passed_through"] += 1
        return bytes(opened)

    def report(self) -> None:
        self.refresh()
        emit(
            "dave",
            protocol_version=self.voice._connection.dave_protocol_version,
            privacy_code=self.voice.voice_privacy_code,
            opened=self.counts,
            decryption=self.stats,
        )


async def _watch_privacy_code(voice: Any, dave: _DaveReceive) -> None:
    shown: str | None = None
    while True:
        dave.refresh()
        session = voice._connection.dave_session
        code = voice.voice_privacy_code if session is not None and session.ready else None
        if code != shown:
            shown = code
            emit("privacy_code", code=code, epoch=None if session is None else session.epoch)
        await asyncio.sleep(0.02)


def _record(voice: Any, out: Path, dave: _DaveReceive) -> Any:
    """Write every received Opus packet to ``out``; returns the function that stops it."""
    from discord.ext import voice_recv

    sink_file = out.open("w")
    count = 0
    loop = asyncio.get_running_loop()

    def write(user_id: str | None, opus: bytes) -> None:
        nonlocal count
        if sink_file.closed:
            return
        opened = dave.open(user_id, opus)
        if opened is None:
            return
        count += 1
        sink_file.write(json.dumps({"user_id": user_id, "opus": opened.hex()}) + "\n")

    def on_packet(user: Any, data: Any) -> None:
        # voice-recv's router thread: hand over to the loop, where the davey session lives.
        if data.opus is None:
            return
        user_id = str(user.id) if user is not None else None
        loop.call_soon_threadsafe(write, user_id, bytes(data.opus))

    voice.listen(voice_recv.BasicSink(on_packet, decode=False))
    emit("listening")

    def stop() -> None:
        voice.stop_listening()
        sink_file.close()
        emit("received", packets=count)

    return stop


async def _until_encrypted(voice: Any) -> None:
    """Until the call is end-to-end encrypted for us, so no frame goes out in the clear."""
    while not voice._connection.can_encrypt:
        await asyncio.sleep(0.01)
    emit("e2ee", privacy_code=voice.voice_privacy_code)


async def play(
    events: dict[str, Any], file: Path, out: Path | None, linger: float, e2ee: bool
) -> None:
    voice, client = await _connect(events)
    if e2ee:
        await _until_encrypted(voice)
    dave = _DaveReceive(voice)
    watch = asyncio.create_task(_watch_privacy_code(voice, dave))
    stop_recording = _record(voice, out, dave) if out else None
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    voice.play(OggOpusSource(file), after=lambda error: loop.call_soon_threadsafe(done.set))
    emit("playing")
    await done.wait()
    emit("played")
    await asyncio.sleep(linger)
    if stop_recording:
        stop_recording()
    dave.report()
    watch.cancel()
    await voice.disconnect(force=True)
    await client.http.session.close()
    emit("closed")


async def receive(events: dict[str, Any], seconds: float, out: Path | None) -> None:
    voice, client = await _connect(events)
    dave = _DaveReceive(voice)
    watch = asyncio.create_task(_watch_privacy_code(voice, dave))
    stop_recording = _record(voice, out, dave) if out else None
    await asyncio.sleep(seconds)
    if stop_recording:
        stop_recording()
    dave.report()
    watch.cancel()
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
    parser.add_argument("--e2ee", action="store_true", help="play once the call is E2EE")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr)
    events = json.loads(args.join.read_text())
    try:
        if args.command == "play":
            asyncio.run(play(events, args.file, args.out, args.linger, args.e2ee))
        else:
            asyncio.run(receive(events, args.seconds, args.out))
    except Exception as exc:
        emit("error", error=f"{type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    main()
