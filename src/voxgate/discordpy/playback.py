"""Playing discord.py ``AudioSource``s through voxgate's player.

discord.py reads an ``AudioSource`` in its own thread, 20 ms at a time: ``read()`` returns
one frame of s16le 48 kHz stereo PCM (3,840 bytes), or one Opus packet when ``is_opus()``,
and ``b""`` at the end. :class:`SourceFrames` does that reading in a thread too, a few frames
ahead, Opus-encodes PCM with PyAV's libopus (so no system libopus is needed, unlike
discord.py's own encoder), and hands the frames to :class:`voxgate.client.AudioPlayer`,
which paces them, sends Speaking and the closing silence, and (through the connection)
encrypts them with DAVE.

The player sends through an :class:`Uplink` rather than a connection: the discord.py
client replaces its connection when it moves to another channel or voice server, and the
uplink forwards each frame to whichever connection is current (dropping the few frames of
the switch), so playback carries on across it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import discord

from voxgate.client import AudioPlayer, VoiceConnection, VoiceConnectionError
from voxgate.client.dave import DaveMember, DaveState
from voxgate.client.player import E2EE_WAIT_S, PlayerState
from voxgate.client.sources import OpusEncoder
from voxgate.protocol.opcodes import SpeakingFlags

log = logging.getLogger(__name__)

#: Frames read ahead of the player: enough to ride out a slow read, few enough that a
#: ``PCMVolumeTransformer``'s new volume is heard within 100 ms.
READ_AHEAD = 5
#: discord.py's ``bandwidth`` names, as the low-pass cutoff (Hz) libopus takes in FFmpeg.
_CUTOFF = {"narrow": 4000, "medium": 6000, "wide": 8000, "superwide": 12000, "full": 20000}
_END = object()


def encoder_options(
    *,
    application: str = "audio",
    fec: bool = True,
    expected_packet_loss: float = 0.15,
    bandwidth: str = "full",
) -> dict[str, str]:
    """discord.py's ``play()`` encoder arguments as libopus options (``signal_type`` has no
    counterpart in FFmpeg's libopus wrapper and is left to the encoder)."""
    if application not in ("audio", "voip", "lowdelay"):
        raise ValueError(f"{application!r} is not a valid application setting")
    if bandwidth not in _CUTOFF:
        raise ValueError(f"{bandwidth!r} is not a valid bandwidth setting")
    if not 0.0 <= expected_packet_loss <= 1.0:
        raise ValueError(f"expected_packet_loss must be within 0 and 1: {expected_packet_loss}")
    return {
        "application": application,
        "fec": "1" if fec else "0",
        "packet_loss": str(round(expected_packet_loss * 100)),
        "cutoff": str(_CUTOFF[bandwidth]),
    }


class SourceFrames:
    """A discord.py ``AudioSource`` as the async iterator of Opus frames a player takes.

    ``source`` may be replaced while playing (discord.py's ``vc.source = other``); the next
    frame read comes from the new one. An exception from ``read()`` ends the iteration with
    that exception; so does the error an ``FFmpegAudio`` records when its process fails.
    """

    def __init__(
        self, source: discord.AudioSource, *, bitrate_kbps: int, options: dict[str, str]
    ) -> None:
        self.source = source
        self._bitrate = max(16, min(bitrate_kbps, 512)) * 1000
        self._options = options
        self._encoder: OpusEncoder | None = None
        self._permits = threading.Semaphore(READ_AHEAD)
        self._stopped = threading.Event()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None

    def stop(self) -> None:
        """Stop reading: the iteration ends now, the thread at its next frame."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._permits.release()
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._queue.put_nowait, _END)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[bytes]:
        loop = self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._read_all, args=(loop,), daemon=True, name="voxgate-source-reader"
        )
        self._thread.start()
        try:
            while True:
                item = await self._queue.get()
                self._permits.release()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            self.stop()

    def _read_all(self, loop: asyncio.AbstractEventLoop) -> None:
        def post(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                loop.call_soon_threadsafe(self._queue.put_nowait, item)

        try:
            for frame in self._read_frames():
                self._permits.acquire()
                if self._stopped.is_set():
                    return
                post(frame)
            self._permits.acquire()
            post(_END)
        except Exception as exc:  # the source's own failure, handed to play()'s after
            self.error = exc
            post(exc)

    def _read_frames(self) -> Iterator[bytes]:
        while not self._stopped.is_set():
            source = self.source
            data = source.read()
            if not data:
                failure = getattr(source, "_current_error", None)
                if isinstance(failure, Exception):
                    raise failure
                break
            if source.is_opus():
                # discord.py's FFmpegOpusAudio reads Ogg with an OggStream that yields the
                # OpusHead and OpusTags header packets too, which discord.py then sends as
                # audio: they are not Opus frames, so they stay here.
                if not data.startswith((b"OpusHead", b"OpusTags")):
                    yield data
            else:
                if self._encoder is None:
                    self._encoder = OpusEncoder(self._bitrate, options=self._options)
                yield from self._encoder.encode(data)
        if self._encoder is not None and not self._stopped.is_set():
            yield from self._encoder.flush()


class Uplink:
    """What the player sends through: the current connection of a discord.py client.

    While there is none (during a move, or a rejoin) :class:`Playback` holds the source
    back, as discord.py's player waits to be connected again, so nothing of it is skipped;
    a frame sent then anyway is dropped and counted. The Speaking state is sent again to
    each new connection, because receivers map ssrc to user from it.
    """

    def __init__(self) -> None:
        self.connection: VoiceConnection | None = None
        self.attached = asyncio.Event()
        #: Set once the client has disconnected for good: the player stops.
        self.closed = asyncio.Event()
        self.frames_dropped = 0
        self._speaking = 0

    async def attach(self, connection: VoiceConnection | None) -> None:
        """Send through ``connection`` from now on (None: drop until the next one)."""
        self.connection = None
        self.attached.clear()
        if connection is not None:
            dave = connection.dave
            if dave.connected_users and dave.state in (
                DaveState.PENDING,
                DaveState.AWAITING_RESPONSE,
            ):
                # Joining a call whose others are already in a group: frames sent before
                # we are in it would go out in the clear and be dropped (AudioPlayer waits
                # the same way before its first frame).
                await connection.until_encrypted(E2EE_WAIT_S)
        if connection is not None and self._speaking:
            with contextlib.suppress(VoiceConnectionError):
                await connection.set_speaking(self._speaking)
        self.connection = connection
        if connection is not None:
            self.attached.set()

    async def wait_attached(self, timeout: float, *, unless: asyncio.Event) -> bool:
        """Until there is a connection again (True), or ``timeout`` seconds or ``unless``
        set (False)."""
        waits = {asyncio.ensure_future(self.attached.wait()), asyncio.ensure_future(unless.wait())}
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        return self.attached.is_set() and not unless.is_set()

    # What AudioPlayer reads of its connection besides sending: the current one's.

    @property
    def dave(self) -> DaveMember:
        connection = self.connection
        if connection is None:
            raise VoiceConnectionError("not connected")
        return connection.dave

    async def until_encrypted(self, timeout: float = 2.0) -> bool:
        connection = self.connection
        return False if connection is None else await connection.until_encrypted(timeout)

    def send_opus(self, opus: bytes, *, samples: int = 960) -> bool:
        connection = self.connection
        if connection is None or connection.closed.is_set():
            self.frames_dropped += 1
            return False
        try:
            return connection.send_opus(opus, samples=samples)
        except VoiceConnectionError:
            self.frames_dropped += 1
            return False

    async def set_speaking(self, speaking: bool | int = True) -> None:
        self._speaking = int(SpeakingFlags.MICROPHONE) if speaking is True else int(speaking)
        connection = self.connection
        if connection is not None and not connection.closed.is_set():
            with contextlib.suppress(VoiceConnectionError):
                await connection.set_speaking(self._speaking)


class Playback:
    """One ``play()``: the source, the voxgate player, and discord.py's ``after`` callback.

    ``after(error)`` runs in a worker thread once playing ends, as discord.py runs it in its
    player thread (so a callback that blocks on the event loop does not deadlock it), then
    the source's ``cleanup()`` (which ends an FFmpeg process).
    """

    def __init__(
        self,
        source: discord.AudioSource,
        uplink: Uplink,
        *,
        after: Callable[[Exception | None], Any] | None,
        bitrate_kbps: int,
        options: dict[str, str],
        timeout: float = 30.0,
    ) -> None:
        if after is not None and not callable(after):
            raise TypeError('Expected a callable for the "after" parameter.')
        self.frames = SourceFrames(source, bitrate_kbps=bitrate_kbps, options=options)
        self.uplink = uplink
        self.timeout = timeout
        self._stopped = asyncio.Event()
        self.player = AudioPlayer(uplink, self._held_back())  # type: ignore[arg-type]
        self.after = after
        self.task: asyncio.Task[None] | None = None
        self.finished = False

    async def _held_back(self) -> AsyncIterator[bytes]:
        """The source's frames, held while the client has no connection: up to ``timeout``
        seconds, then playing ends (discord.py's player aborts the same way)."""
        async for frame in self.frames:
            if self.uplink.connection is None and not await self.uplink.wait_attached(
                self.timeout, unless=self._stopped
            ):
                if not self._stopped.is_set():
                    log.info("not connected again within %g s: playing stops", self.timeout)
                return
            yield frame

    @property
    def source(self) -> discord.AudioSource:
        return self.frames.source

    @source.setter
    def source(self, source: discord.AudioSource) -> None:
        self.frames.source = source

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="voxgate-playback")

    async def _run(self) -> None:
        error: Exception | None = None
        try:
            await self.player.play()
        except Exception as exc:
            error = exc
        finally:
            self.frames.stop()
        if error is None and self.frames.error is not None:
            error = self.frames.error if isinstance(self.frames.error, Exception) else None
        self.finished = True  # before after(): there, is_playing() is already False
        await asyncio.get_running_loop().run_in_executor(None, self._finish, error)

    def _finish(self, error: Exception | None) -> None:
        if self.after is not None:
            try:
                self.after(error)
            except Exception as exc:
                exc.__context__ = error
                log.exception("Calling the after function failed.", exc_info=exc)
        elif error is not None:
            log.error("Exception while playing", exc_info=error)
        try:
            self.source.cleanup()
        except Exception:
            log.exception("cleanup() of %r failed", self.source)

    def is_playing(self) -> bool:
        """True from ``play()`` until the end, except while paused (discord.py's sense)."""
        return not self.is_done() and self.player.state in (PlayerState.IDLE, PlayerState.PLAYING)

    def is_paused(self) -> bool:
        return not self.is_done() and self.player.state is PlayerState.PAUSED

    def is_done(self) -> bool:
        return self.finished

    def pause(self) -> None:
        self.player.pause()

    def resume(self) -> None:
        self.player.resume()

    def stop(self) -> None:
        self._stopped.set()
        self.player.stop()
        self.frames.stop()
