"""Drive the real py-cord 2.8 ``VoiceClient`` against a server, playing or recording.

Run as its own process, with the Python of py-cord's own virtual environment
(``.venv-pycord``: py-cord and discord.py both install the ``discord`` package, so they
never share one), and with the test CA trusted through ``SSL_CERT_FILE`` before aiohttp is
imported:

    SSL_CERT_FILE=ca.pem .venv-pycord/bin/python pycord_client.py play --join JOIN.json --file t.ogg
    SSL_CERT_FILE=ca.pem .venv-pycord/bin/python pycord_client.py receive --join JOIN.json --out F

``JOIN.json`` holds the two events a bot gets from Discord's gateway, as ``voxgate token``
prints them. py-cord is driven through its extension points, as ``dpy_client.py`` drives
discord.py: its ``VoiceClient`` built over the smallest stand-ins for the client, guild and
channel it reads, fed ``on_voice_state_update`` / ``on_voice_server_update`` (as py-cord's
raw event objects) once its connector waits for them; it plays through ``play()`` and
records through ``start_recording()`` into a ``discord.sinks.Sink``. Events are printed as
JSON lines on stdout; received Opus packets are written one JSON line each:
``{"user_id", "opus"}``, the same log ``dpy_client.py`` and ``js/client.mjs`` write.

py-cord 2.8.1's receive path has bugs of its own, which are worked around here and only
here, each where it is patched (see ``_work_around_py_cord_receive``): voxgate must not be
blamed for them, nor changed to hide them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import discord
from discord.oggparse import OggStream
from discord.raw_models import RawVoiceServerUpdateEvent, RawVoiceStateUpdateEvent
from discord.sinks import Sink
from discord.voice import VoiceClient

DAVE_MAGIC = b"\xfa\xfa"
#: Received payloads by how they were opened: through DAVE, or transport encryption only.
OPENED = {"dave": 0, "plain": 0}


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


def _member(user_id: int) -> Any:
    return SimpleNamespace(id=user_id, name=str(user_id), display_name=str(user_id), bot=False)


class _Guild:
    def __init__(self, guild_id: int, client: _Client, events: dict[str, Any]) -> None:
        self.id = guild_id
        self.me = SimpleNamespace(id=client.user.id, voice=None)
        self._client = client
        self._events = events
        self.voice_client: VoiceClient | None = None
        self.channels: dict[int, Any] = {}

    def get_member(self, user_id: int) -> Any:
        return _member(user_id)

    def get_channel(self, channel_id: int) -> Any:
        return self.channels.get(channel_id)

    async def change_voice_state(
        self, *, channel: Any, self_deaf: bool = False, self_mute: bool = False
    ) -> None:
        client = self.voice_client
        assert client is not None
        state = {**self._events["voice_state"], "self_deaf": self_deaf, "self_mute": self_mute}
        server = self._events["voice_server"]
        connection = self._client._connection

        async def deliver() -> None:
            # After the connector has started waiting, as a real gateway's events would be.
            await asyncio.sleep(0.05)
            if channel is None:
                left = {**state, "channel_id": None}
                await client.on_voice_state_update(
                    RawVoiceStateUpdateEvent(data=left, state=connection)  # type: ignore[arg-type]
                )
                return
            await client.on_voice_state_update(
                RawVoiceStateUpdateEvent(data=state, state=connection)  # type: ignore[arg-type]
            )
            await client.on_voice_server_update(
                RawVoiceServerUpdateEvent(data=server, state=connection)  # type: ignore[arg-type]
            )

        asyncio.get_running_loop().create_task(deliver())


class _Channel:
    def __init__(self, channel_id: int, guild: _Guild) -> None:
        self.id = channel_id
        self.guild = guild
        guild.channels[channel_id] = self

    def _get_voice_client_key(self) -> tuple[int, str]:
        return self.guild.id, "guild_id"


class _Client:
    """What py-cord's ``VoiceClient`` and its receive path read from a ``discord.Client``."""

    def __init__(self, user_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.user = SimpleNamespace(id=user_id, name=str(user_id))
        self.loop = loop
        self.http = _Http()
        self._connection = SimpleNamespace(
            loop=loop,
            http=self.http,
            user=self.user,
            self_id=user_id,
            _get_guild=lambda guild_id: None,
            get_channel=lambda channel_id: None,
            _remove_voice_client=lambda key: None,
            _add_voice_client=lambda key, client: None,
        )

    def dispatch(self, event: str, *args: Any) -> None:
        # The voice client's own member events: who connects, speaks and leaves.
        if event in ("member_connect", "member_disconnect", "member_speaking_state_update"):
            member = args[0] if args else None
            emit(f"voice_{event}", user_id=str(getattr(member, "id", "")))

    def get_user(self, user_id: int) -> Any:
        return _member(user_id)


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


class PacketLogSink(Sink):
    """A py-cord sink that writes each received Opus packet, undecoded, as one JSON line.

    ``__sink_listeners__`` and ``walk_children`` are what py-cord 2.8.1's event router reads
    from every sink, but its own ``Sink`` defines neither (py-cord issue #3241): without
    them ``start_recording`` raises AttributeError. ``is_opus`` asks its packet router for
    the Opus packets rather than decoded PCM, which is what the tests compare.
    """

    __sink_listeners__: list[tuple[str, str]] = []

    def __init__(self, out: Path) -> None:
        super().__init__()
        self._file = out.open("w")
        self.count = 0

    def walk_children(self) -> list[Sink]:
        return []

    def is_opus(self) -> bool:
        return True

    def write(self, data: Any, user: Any) -> None:
        # ``data`` is py-cord's VoiceData; a falsy packet is its stand-in for a lost one.
        if not data.packet or data.opus is None:
            return
        self.count += 1
        user_id = str(user.id) if user is not None else None
        self._file.write(json.dumps({"user_id": user_id, "opus": data.opus.hex()}) + "\n")

    def cleanup(self) -> None:
        self._file.close()


def _work_around_py_cord_receive() -> None:
    """Patch py-cord 2.8.1's receive path where it is broken, whatever the server does.

    - Its ``aead_xchacha20_poly1305_rtpsize`` decryptor returns ``result[8:]``: the first 8
      bytes of every payload are dropped, the Opus TOC byte with them (py-cord PR #3060,
      closed unmerged). The fix skips what RFC 3550 says precedes the payload in that mode:
      the header extension's body when there is one, nothing otherwise.
    - Its ``decrypt_rtp`` returns the packet's ``decrypted_data`` without ever setting it
      when the session has no DAVE, so every packet is dropped as "no decrypted data".
      The fix returns the transport-decrypted payload, through DAVE when DAVE is on.
    """
    from discord.voice.receive import reader

    def decrypt_xchacha20_rtpsize(self: Any, packet: Any) -> bytes:
        packet.adjust_rtpsize()
        nonce = bytes(packet.nonce) + bytes(20)
        try:
            result = self.box.decrypt(bytes(packet.data), bytes(packet.header), nonce)
        except Exception as exc:
            raise reader.CryptoError(exc) from exc
        if packet.extended:
            result = result[packet.update_extended_header(result) :]
        return bytes(result)

    def decrypt_rtp(self: Any, packet: Any) -> bytes:
        payload: bytes = self._decryptor_rtp(packet)
        state = self.client._connection
        dave = state.dave_session
        # Only DAVE frames (they end in the 0xFAFA marker) go through DAVE; the others are
        # what a sender sends before its group is ready, and are plain Opus.
        if dave is not None and dave.ready and payload.endswith(DAVE_MAGIC):
            user_id = state.ssrc_user_map.get(packet.ssrc)
            if user_id:
                payload = dave.decrypt(user_id, reader.davey.MediaType.audio, payload)
                OPENED["dave"] += 1
                return payload
        OPENED["plain"] += 1
        return payload

    decryptor = reader.PacketDecryptor
    decryptor._decrypt_rtp_aead_xchacha20_poly1305_rtpsize = decrypt_xchacha20_rtpsize  # type: ignore[assignment]
    decryptor.decrypt_rtp = decrypt_rtp  # type: ignore[assignment]


async def _keep_the_loop_awake() -> None:
    """Wake the event loop every few milliseconds.

    py-cord's socket reader thread hands each datagram to the loop with ``loop.create_task``
    from its own thread, which does not wake a sleeping loop: packets then wait for the next
    timer or WebSocket frame and arrive in bursts that overflow its 10-packet jitter buffer.
    A busy bot's loop is woken all the time; an idle test driver's must be woken on purpose.
    """
    while True:
        await asyncio.sleep(0.005)


async def _connect(events: dict[str, Any]) -> tuple[VoiceClient, _Client]:
    state = events["voice_state"]
    loop = asyncio.get_running_loop()
    client = _Client(int(state["user_id"]), loop)
    guild = _Guild(int(state["guild_id"]), client, events)
    channel = _Channel(int(state["channel_id"]), guild)
    voice = VoiceClient(client, channel)  # type: ignore[arg-type]
    guild.voice_client = voice
    await voice.connect(reconnect=True, timeout=20.0, self_deaf=False, self_mute=False)
    emit("ready", mode=voice.mode, ssrc=voice.ssrc, dave=voice._connection.dave_protocol_version)
    return voice, client


def _record(voice: VoiceClient, out: Path) -> Any:
    """Record every received Opus packet through py-cord's sinks; returns what stops it."""
    sink = PacketLogSink(out)
    # py-cord 2.8.1's start_recording no longer calls sink.init(vc) as earlier releases did,
    # and its packet router reads sink.client (that is, sink.vc) for every packet.
    sink.init(voice)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "reception is broken by DAVE"
        voice.start_recording(sink)
    emit("listening")

    def stop() -> None:
        # py-cord's packet router thread calls stop_recording() again as it ends, which
        # raises "You are not recording" on that thread: noise on stderr, nothing lost.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if voice.is_recording():
                voice.stop_recording()
        sink.cleanup()
        emit("received", packets=sink.count, opened=OPENED)

    return stop


async def _close(voice: VoiceClient, client: _Client) -> None:
    await voice.disconnect(force=True)
    if client.http.session is not None:
        await client.http.session.close()
    emit("closed")


async def _dave_ready(voice: VoiceClient) -> None:
    """On a DAVE call, wait until py-cord's group is ready before sending audio.

    py-cord sends whatever it plays at once, unencrypted until its davey session is ready,
    and members already in the group cannot open those first frames. A bot that cares
    about its first second waits, as ``js/client.mjs`` does for @discordjs/voice.
    """
    state = voice._connection
    if state.dave_protocol_version == 0:
        return
    async with asyncio.timeout(15):
        while state.dave_session is None or not state.dave_session.ready:
            await asyncio.sleep(0.01)
    emit("dave_ready", protocol_version=state.dave_protocol_version)


async def play(events: dict[str, Any], file: Path, out: Path | None, linger: float) -> None:
    awake = asyncio.create_task(_keep_the_loop_awake())
    voice, client = await _connect(events)
    stop_recording = _record(voice, out) if out else None
    await _dave_ready(voice)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    voice.play(OggOpusSource(file), after=lambda error: loop.call_soon_threadsafe(done.set))
    emit("playing")
    await done.wait()
    emit("played")
    await asyncio.sleep(linger)
    if stop_recording:
        stop_recording()
    await _close(voice, client)
    awake.cancel()


async def receive(events: dict[str, Any], seconds: float, out: Path | None) -> None:
    awake = asyncio.create_task(_keep_the_loop_awake())
    voice, client = await _connect(events)
    stop_recording = _record(voice, out) if out else None
    await asyncio.sleep(seconds)
    if stop_recording:
        stop_recording()
    await _close(voice, client)
    awake.cancel()


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
    _work_around_py_cord_receive()
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
