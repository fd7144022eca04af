"""The receive side of :class:`voxgate.discordpy.VoiceClient`: per speaker, in order, decoded.

The connection hands over each packet already opened (transport decryption, then DAVE with
the sender's key). Per ssrc a :class:`~voxgate.client.receiver.ReorderBuffer` puts the
packets back in sequence order; each frame then goes, as Opus or decoded to PCM, to the
sink of ``listen()`` (in the sink's own thread) and to every ``receive()`` iterator. Nothing
is kept once delivered, so a bot can listen for days. Speaking start and stop are told from
the packets themselves, as discord-ext-voice-recv does: a speaker starts with its first
packet after 200 ms of quiet and stops after 200 ms without one.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import av
import discord

from voxgate.client import VoiceConnection
from voxgate.client.receiver import ReorderBuffer
from voxgate.discordpy.sinks import RtpPacket, VoiceData

if TYPE_CHECKING:
    from voxgate.discordpy.client import VoiceClient

log = logging.getLogger(__name__)

FRAME_SAMPLES = 960
FRAME_BYTES = FRAME_SAMPLES * 4  # s16 stereo
SILENCE_PCM = bytes(FRAME_BYTES)
#: Quiet that ends a speaker's talk spurt (discord-ext-voice-recv's 0.2 s).
SPEAKING_TIMEOUT_S = 0.2
_SPEAKING_CHECK_S = 0.05

ListenAfter = Callable[[Exception | None], Any]


class _Decoder:
    """One speaker's Opus decoder (PyAV's libopus) to s16le 48 kHz stereo."""

    def __init__(self) -> None:
        self._codec: Any = av.CodecContext.create("libopus", "r")
        self._codec.sample_rate = 48_000
        self._codec.layout = "stereo"
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=48_000)

    def decode(self, opus: bytes | None) -> bytes:
        if opus is None:
            return SILENCE_PCM  # PyAV exposes no decode-with-NULL concealment
        try:
            return b"".join(
                bytes(converted.planes[0])[: converted.samples * 4]
                for frame in self._codec.decode(av.Packet(opus))
                for converted in self._resampler.resample(frame)
            )
        except av.FFmpegError:
            return SILENCE_PCM


class _Stream:
    """One ssrc: its reorder buffer, decoder, and where its sequence and timestamp are."""

    def __init__(self, ssrc: int, depth: int) -> None:
        self.ssrc = ssrc
        self.buffer = ReorderBuffer(depth)
        self.decoder: _Decoder | None = None
        self.sequence: int | None = None
        self.timestamp = 0


class SinkRunner(threading.Thread):
    """Runs one sink: its ``write`` calls and its listeners, in order, in this thread."""

    def __init__(self, voice_client: VoiceClient, sink: Any, after: ListenAfter | None) -> None:
        super().__init__(daemon=True, name=f"voxgate-sink:{type(sink).__name__}")
        self.voice_client = voice_client
        self.sink = sink
        self.after = after
        self.wants_opus = bool(sink.wants_opus())
        self.error: Exception | None = None
        self._items: queue.SimpleQueue[tuple[str, Any, Any] | None] = queue.SimpleQueue()
        self._listeners: dict[str, list[Callable[..., Any]]] = {}
        sink._voice_client = voice_client  # what a sink's ``voice_client`` property reads
        walk = getattr(sink, "walk_children", None)
        members = list(walk(with_self=True)) if walk is not None else [sink]
        for member in members:
            for event, method in getattr(member, "__sink_listeners__", ()):
                self._listeners.setdefault(event, []).append(getattr(member, method))

    def write(self, user: Any, data: VoiceData) -> None:
        self._items.put(("write", user, data))

    def event(self, event: str, args: tuple[Any, ...]) -> None:
        if f"on_{event}" in self._listeners:
            self._items.put(("event", event, args))

    def stop(self) -> None:
        self._items.put(None)

    def run(self) -> None:
        try:
            while (item := self._items.get()) is not None:
                kind, first, second = item
                if kind == "write":
                    self.sink.write(first, second)
                    continue
                for listener in self._listeners.get(f"on_{first}", ()):
                    try:
                        listener(*second)
                    except Exception:
                        log.exception("sink listener for %s failed", first)
        except Exception as exc:
            log.exception("%s.write failed; listening stops", type(self.sink).__name__)
            self.error = exc
            self.voice_client.loop.call_soon_threadsafe(self.voice_client.stop_listening)
        finally:
            try:
                self.sink.cleanup()
            except Exception:
                log.exception("%s.cleanup failed", type(self.sink).__name__)
            if self.after is not None:
                try:
                    self.after(self.error)
                except Exception:
                    log.exception("the listen() after callback failed")


class Receiver:
    """Everything a :class:`~voxgate.discordpy.VoiceClient` receives, for its consumers."""

    def __init__(self, voice_client: VoiceClient, *, depth: int = 3) -> None:
        self.voice_client = voice_client
        self.depth = depth
        self.connection: VoiceConnection | None = None
        self.runner: SinkRunner | None = None
        #: The sink of the last ``listen()``, stopped or not (``disconnect`` waits for it).
        self.last_runner: SinkRunner | None = None
        self._queues: list[asyncio.Queue[tuple[Any, bytes] | None]] = []
        self._streams: dict[int, _Stream] = {}
        #: ssrc -> user id, remembered past the member leaving (op 13 forgets it).
        self.users: dict[int, str] = {}
        self._members: dict[str, Any] = {}
        self._last_packet: dict[int, float] = {}
        self.speaking: dict[int, bool] = {}
        self._speaking_task: asyncio.Task[None] | None = None

    # --- which connection ----------------------------------------------------------------

    def attach(self, connection: VoiceConnection | None) -> None:
        """Receive from ``connection`` from now on (None: nothing until the next one)."""
        if self.connection is not None:
            self.connection.remove_listener(self._on_packet)
            for ssrc in list(self._streams):
                self._flush(ssrc)
            self._streams.clear()
        self.connection = connection
        if connection is not None:
            connection.add_listener(self._on_packet)

    def close(self) -> None:
        self.attach(None)
        self.stop_listening()
        for waiting in self._queues:
            waiting.put_nowait(None)
        if self._speaking_task is not None:
            self._speaking_task.cancel()

    # --- consumers -----------------------------------------------------------------------

    def listen(self, sink: Any, after: ListenAfter | None) -> None:
        self.runner = self.last_runner = SinkRunner(self.voice_client, sink, after)
        self.runner.start()

    def stop_listening(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.stop()

    async def frames(self) -> AsyncIterator[tuple[Any, bytes]]:
        waiting: asyncio.Queue[tuple[Any, bytes] | None] = asyncio.Queue()
        self._queues.append(waiting)
        try:
            while (item := await waiting.get()) is not None:
                yield item
        finally:
            self._queues.remove(waiting)

    def dispatch(self, event: str, args: tuple[Any, ...]) -> None:
        if self.runner is not None:
            self.runner.event(event, args)

    # --- who is who ----------------------------------------------------------------------

    def user_id_of(self, ssrc: int) -> str | None:
        user_id = self.users.get(ssrc)
        if user_id is None and self.connection is not None:
            user_id = self.connection.user_of(ssrc)
            if user_id is not None:
                self.users[ssrc] = user_id
        return user_id

    def ssrc_of(self, user_id: str) -> int | None:
        for ssrc, user in self.users.items():
            if user == user_id:
                return ssrc
        return None

    def member_of(self, ssrc: int) -> Any:
        user_id = self.user_id_of(ssrc)
        if user_id is None:
            return None
        member = self._members.get(user_id)
        if member is None:
            member = self.voice_client._member(user_id)
            if not _is_placeholder(member):
                self._members[user_id] = member
        return member

    # --- the packet path -----------------------------------------------------------------

    def _on_packet(self, ssrc: int, header: bytes, payload: bytes) -> None:
        if self.runner is None and not self._queues:
            return
        self._heard(ssrc)
        stream = self._streams.get(ssrc)
        if stream is None:
            stream = self._streams[ssrc] = _Stream(ssrc, self.depth)
        sequence = int.from_bytes(header[2:4], "big")
        timestamp = int.from_bytes(header[4:8], "big")
        if stream.sequence is None:
            stream.sequence, stream.timestamp = sequence, timestamp
        self._deliver(stream, stream.buffer.push(sequence, timestamp, payload))

    def _flush(self, ssrc: int) -> None:
        stream = self._streams.get(ssrc)
        if stream is not None and stream.sequence is not None:
            self._deliver(stream, stream.buffer.flush())

    def _deliver(self, stream: _Stream, released: list[tuple[int, bytes | None]]) -> None:
        if not released:
            return
        runner, queues = self.runner, self._queues
        wants_pcm = bool(queues) or (runner is not None and not runner.wants_opus)
        member = self.member_of(stream.ssrc)
        for timestamp, opus in released:
            assert stream.sequence is not None
            if opus is None:
                timestamp = stream.timestamp  # lost: where it would have been
            packet = RtpPacket(stream.ssrc, stream.sequence, timestamp, opus)
            stream.sequence = (stream.sequence + 1) & 0xFFFF
            stream.timestamp = (timestamp + FRAME_SAMPLES) & 0xFFFF_FFFF
            pcm = b""
            if wants_pcm:
                if stream.decoder is None:
                    stream.decoder = _Decoder()
                pcm = stream.decoder.decode(opus)
            if runner is not None:
                runner.write(member, VoiceData(packet, member, pcm=pcm))
            for waiting in queues:
                waiting.put_nowait((member, pcm))

    # --- speaking start and stop ---------------------------------------------------------

    def _heard(self, ssrc: int) -> None:
        now = time.monotonic()
        last = self._last_packet.get(ssrc)
        self._last_packet[ssrc] = now
        if last is None or now - last > SPEAKING_TIMEOUT_S or not self.speaking.get(ssrc):
            self.speaking[ssrc] = True
            member = self.member_of(ssrc)
            if member is not None:
                self.voice_client.dispatch("voice_member_speaking_start", member)
            if self._speaking_task is None or self._speaking_task.done():
                self._speaking_task = asyncio.get_running_loop().create_task(self._watch_quiet())

    async def _watch_quiet(self) -> None:
        while any(self.speaking.values()):
            await asyncio.sleep(_SPEAKING_CHECK_S)
            now = time.monotonic()
            for ssrc, talking in list(self.speaking.items()):
                if talking and now - self._last_packet.get(ssrc, now) > SPEAKING_TIMEOUT_S:
                    self.speaking[ssrc] = False
                    member = self.member_of(ssrc)
                    if member is not None:
                        self.voice_client.dispatch("voice_member_speaking_stop", member)

    def forget(self, user_id: str) -> int | None:
        """A member left (op 13): end its talk spurt; returns the ssrc it had."""
        ssrc = self.ssrc_of(user_id)
        if ssrc is not None:
            self._flush(ssrc)
            self._streams.pop(ssrc, None)
            if self.speaking.pop(ssrc, False):
                member = self.member_of(ssrc)
                if member is not None:
                    self.voice_client.dispatch("voice_member_speaking_stop", member)
            self._last_packet.pop(ssrc, None)
        return ssrc


def _is_placeholder(member: Any) -> bool:
    # A bare discord.Object stands in for a member the client has not cached yet: look
    # again next time rather than keep it.
    return type(member) is discord.Object
