"""``AudioPlayer``: sends a source's Opus frames every 20 ms, on time.

Frame ``n`` is due at ``start + n * 20 ms`` on the monotonic clock, so timer slack never
accumulates the way a chain of ``sleep(0.02)`` drifts. A frame that is late is sent at
once; when the player falls more than :data:`MAX_LAG_S` behind (the process was stalled)
it re-anchors the schedule instead of bursting to catch up, which a receiver's jitter
buffer could not absorb. Speaking goes out before the first packet (PROTOCOL.md §6) and,
after the last, five silence frames so receivers do not interpolate into the silence. With
others in the call and its DAVE group still forming, the first frame waits (up to
:data:`E2EE_WAIT_S`) for the encryption, so none goes out in the clear to be dropped.

The players of one event loop share one :class:`_Pacer`: one timer for all of them, which
sends every frame that is due in a single wakeup, right at its deadline, instead of
hundreds of coroutines each resuming from its own sleep. New players start in the least
busy of :data:`PHASE_SLOTS` phases of the 20 ms period, so a process that starts many at
once does not send them all in the same millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable

from voxgate.client.connection import VoiceConnection, VoiceConnectionError
from voxgate.client.dave import DaveState
from voxgate.protocol.rtp import SILENCE_FRAME

FRAME_S = 0.020
SILENCE_FRAMES = 5
MAX_LAG_S = 0.2
#: How long a player waits for the call's end-to-end encryption before its first frame,
#: when others are in the call (a join's group forms in tens of milliseconds).
E2EE_WAIT_S = 2.0
#: Phases of the 20 ms period new players are spread over (1 ms apart): with every player's
#: frames due in the same instant the last of 500 sends leaves several ms late.
PHASE_SLOTS = 20
#: A deadline closer than this is met by checking again on the next loop iteration
#: rather than by a timer.
_SPIN_S = 0.0002


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


class _Due:
    """One frame waiting for its deadline in a :class:`_Pacer`."""

    __slots__ = ("clock", "done", "frame", "player")

    def __init__(
        self, player: AudioPlayer, clock: FrameClock, frame: bytes, done: asyncio.Future[None]
    ) -> None:
        self.player = player
        self.clock = clock
        self.frame = frame
        self.done = done


class _Pacer:
    """Sends the due frames of every player of one event loop (and one clock) from one timer.

    A timer is armed for the earliest deadline; when it fires every frame due by then goes
    out in that one callback, its lateness taken right before its own send.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float]) -> None:
        self.loop = loop
        self.clock = clock
        self.players = 0
        self._queue: list[tuple[float, int, _Due]] = []
        self._order = itertools.count()
        self._timer: asyncio.Handle | None = None
        self._timer_due = float("inf")
        self._slots = [0] * PHASE_SLOTS

    def join(self, first_due: float) -> tuple[float, int]:
        """A new player's first deadline and the phase slot it takes (give it back with
        :meth:`leave`): ``first_due`` moved up to one period later, into the least busy
        phase, and onto a whole millisecond. uvloop's timers count whole milliseconds of
        the monotonic clock, so a deadline on one is met by its timer without firing early.
        """
        width_ms = round(FRAME_S * 1000) // PHASE_SLOTS
        base_ms = math.ceil(first_due * 1000)
        natural = base_ms // width_ms % PHASE_SLOTS
        shift = min(range(PHASE_SLOTS), key=lambda k: self._slots[(natural + k) % PHASE_SLOTS])
        slot = (natural + shift) % PHASE_SLOTS
        self._slots[slot] += 1
        self.players += 1
        return (base_ms + shift * width_ms) / 1000, slot

    def leave(self, slot: int) -> None:
        self._slots[slot] -= 1
        self.players -= 1
        if self.players == 0:
            _pacers.pop((self.loop, self.clock), None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def send_at(self, player: AudioPlayer, clock: FrameClock, frame: bytes) -> asyncio.Future[None]:
        """Send ``frame`` when ``clock`` says it is due; the future completes once it is sent
        (or carries the :class:`VoiceConnectionError` ``send_opus`` raised)."""
        done: asyncio.Future[None] = self.loop.create_future()
        due = clock.due()
        heapq.heappush(self._queue, (due, next(self._order), _Due(player, clock, frame, done)))
        if due < self._timer_due:
            self._arm(due)
        return done

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = due - self.clock()
        self._timer_due = due
        if delay < _SPIN_S:
            self._timer = self.loop.call_soon(self._fire)
        elif self.clock is time.monotonic:
            # The loop's own clock (uvloop's is this one in whole milliseconds): a deadline
            # on a whole millisecond becomes exactly the timer's.
            self._timer = self.loop.call_at(due, self._fire)
        else:
            self._timer = self.loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_due = None, float("inf")
        queue, clock = self._queue, self.clock
        while queue:
            due = queue[0][0]
            now = clock()
            if due > now:
                self._arm(due)  # woken early (whole-millisecond timers), or the batch is done
                return
            entry = heapq.heappop(queue)[2]
            if entry.done.cancelled():
                continue
            player = entry.player
            player.lateness.append(now - due)
            try:
                player.connection.send_opus(entry.frame)
            except VoiceConnectionError as exc:
                entry.done.set_exception(exc)
                continue
            player.frames_sent += 1
            entry.clock.sent(now)
            entry.done.set_result(None)


_pacers: dict[tuple[asyncio.AbstractEventLoop, Callable[[], float]], _Pacer] = {}


def _pacer(clock: Callable[[], float]) -> _Pacer:
    loop = asyncio.get_running_loop()
    pacer = _pacers.get((loop, clock))
    if pacer is None:
        pacer = _pacers[(loop, clock)] = _Pacer(loop, clock)
    return pacer


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
        self._pacer: _Pacer | None = None

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
        dave = connection.dave
        if dave.connected_users and dave.state in (DaveState.PENDING, DaveState.AWAITING_RESPONSE):
            # The group that includes us is being made: a frame sent now would go out in the
            # clear and the others, already encrypted, would drop it.
            await connection.until_encrypted(E2EE_WAIT_S)
        await connection.set_speaking(True)
        # The first frame one period after Speaking, as discord.js and discord.py pace it:
        # receivers map ssrc -> user from the relayed Speaking and drop packets that beat it.
        # (The pacer may hold it up to one period more, to put it in a quiet phase.)
        pacer = _pacer(self._clock)
        first_due, slot = pacer.join(self._clock() + FRAME_S)
        self._pacer = pacer
        clock = FrameClock(first_due)
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
            pacer.leave(slot)
            self._pacer = None
            if self.state is not PlayerState.STOPPED:
                self.state = PlayerState.IDLE
            if not connection.closed.is_set():
                with contextlib.suppress(VoiceConnectionError):
                    await connection.set_speaking(0)

    async def _send_at(self, clock: FrameClock, frame: bytes) -> None:
        assert self._pacer is not None
        await self._pacer.send_at(self, clock, frame)

    async def _pause_with_silence(self, clock: FrameClock) -> None:
        for _ in range(SILENCE_FRAMES):
            await self._send_at(clock, SILENCE_FRAME)
        await self.connection.set_speaking(0)
        await self._unpaused.wait()
        if self.state is not PlayerState.STOPPED:
            await self.connection.set_speaking(True)
            clock.resume(self._clock())
