"""``AudioPlayer``: sends a source's Opus frames every 20 ms, on time.

Frame ``n`` is due at ``start + n * 20 ms`` on the monotonic clock, so timer slack never
accumulates the way a chain of ``sleep(0.02)`` drifts. A frame that is late is sent at
once; when the player falls more than :data:`MAX_LAG_S` behind (the process was stalled)
it re-anchors the schedule instead of bursting to catch up, which a receiver's jitter
buffer could not absorb. Speaking goes out before the first packet (PROTOCOL.md §6) and,
after the last, five silence frames so receivers do not interpolate into the silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable

from voxgate.client.connection import VoiceConnection, VoiceConnectionError
from voxgate.protocol.rtp import SILENCE_FRAME

FRAME_S = 0.020
SILENCE_FRAMES = 5
MAX_LAG_S = 0.2


class PlayerState(enum.Enum):
    IDLE = "idle"
    PLAYING = "playing"
    PAUSED = "paused"
    STOPPED = "stopped"


class FrameClock:
    """When each frame is due: ``start + n * 20 ms``, re-anchored after a long stall."""

    def __init__(self, now: float) -> None:
        self.start = now
        self.frame = 0
        self.reanchored = 0

    def due(self) -> float:
        return self.start + self.frame * FRAME_S

    def sent(self, now: float) -> None:
        """Record that the current frame went out at ``now``."""
        if now - self.due() > MAX_LAG_S:
            self.start = now - self.frame * FRAME_S
            self.reanchored += 1
        self.frame += 1

    def resume(self, now: float) -> None:
        """Continue after a pause: the next frame is due now."""
        self.start = now - self.frame * FRAME_S


async def _aiter(source: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(source, AsyncIterable):
        async for frame in source:
            yield frame
    else:
        for frame in source:
            yield frame


class AudioPlayer:
    """Plays one source into a connection. ``await play()``, or ``start()`` and ``wait()``."""

    def __init__(
        self,
        connection: VoiceConnection,
        source: AsyncIterable[bytes] | Iterable[bytes],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connection = connection
        self.source = source
        self.state = PlayerState.IDLE
        self.frames_sent = 0
        #: How late each recent frame went out, seconds (the send jitter).
        self.lateness: deque[float] = deque(maxlen=10_000)
        self._clock = clock
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def volume(self) -> float:
        return float(getattr(self.source, "volume", 1.0))

    @volume.setter
    def volume(self, value: float) -> None:
        """Volume of re-encoded sources (FFmpeg, PCM); Ogg/Opus passthrough has none."""
        if not hasattr(self.source, "volume"):
            raise AttributeError("this source is passed through without re-encoding: no volume")
        self.source.volume = max(0.0, value)  # type: ignore[union-attr]

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self.play())
        return self._task

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    def pause(self) -> None:
        if self.state is PlayerState.PLAYING:
            self.state = PlayerState.PAUSED
            self._unpaused.clear()

    def resume(self) -> None:
        if self.state is PlayerState.PAUSED:
            self.state = PlayerState.PLAYING
            self._unpaused.set()

    def stop(self) -> None:
        self.state = PlayerState.STOPPED
        self._unpaused.set()

    async def play(self) -> None:
        """Play the source to its end (or until :meth:`stop`)."""
        connection = self.connection
        self.state = PlayerState.PLAYING
        await connection.set_speaking(True)
        # The first frame one period after Speaking, as discord.js and discord.py pace it:
        # receivers map ssrc -> user from the relayed Speaking and drop packets that beat it.
        clock = FrameClock(self._clock() + FRAME_S)
        try:
            async for frame in _aiter(self.source):
                if self.state is PlayerState.STOPPED:
                    break
                if not self._unpaused.is_set():
                    await self._pause_with_silence(clock)
                    if self.state is PlayerState.STOPPED:
                        break
                await self._send_at(clock, frame)
            for _ in range(SILENCE_FRAMES):
                await self._send_at(clock, SILENCE_FRAME)
        finally:
            if self.state is not PlayerState.STOPPED:
                self.state = PlayerState.IDLE
            if not connection.closed.is_set():
                with contextlib.suppress(VoiceConnectionError):
                    await connection.set_speaking(0)

    async def _send_at(self, clock: FrameClock, frame: bytes) -> None:
        delay = clock.due() - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        now = self._clock()
        self.lateness.append(now - clock.due())
        self.connection.send_opus(frame)
        self.frames_sent += 1
        clock.sent(now)

    async def _pause_with_silence(self, clock: FrameClock) -> None:
        for _ in range(SILENCE_FRAMES):
            await self._send_at(clock, SILENCE_FRAME)
        await self.connection.set_speaking(0)
        await self._unpaused.wait()
        if self.state is not PlayerState.STOPPED:
            await self.connection.set_speaking(True)
            clock.resume(self._clock())
