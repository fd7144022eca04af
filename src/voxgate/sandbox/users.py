"""Simulated users: people in the sandbox who write, join voice, speak and listen.

A :class:`SimulatedUser` is a sandbox member (made with ``Sandbox.create_user``) whose voice
is a real voxgate :class:`~voxgate.client.VoiceConnection`, joined with the
VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE that ``Sandbox.join_voice`` dispatches to the
bots and returns, exactly as Discord's gateway would hand them to a client. It speaks
files (Ogg/Opus passed through byte for byte, anything else through PyAV) or tones, and
records what it hears per speaker: the Opus packets exactly as they arrived (ordered by
RTP sequence), the decoded PCM as WAV, and a timeline of Speaking (op 5) changes and of
the bursts of packets actually received, so "the flag is set but nothing comes" shows.

Example::

    alice = SimulatedUser.create(sandbox, "alice")
    await alice.join()                         # the sandbox's default voice channel
    await alice.send("!join")                  # a bot reacts by joining her channel
    await alice.play("song.ogg")
    heard = await alice.wait_heard(bot_user_id, packets=100)
    heard.save_wav(tmp_path / "bot.wav")
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import ssl
import sys
import time
from collections.abc import AsyncIterable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxgate.client import (
    AudioPlayer,
    AudioReceiver,
    MemberSpeaking,
    PCMSource,
    VoiceConnection,
    VoiceEvent,
    open_source,
)
from voxgate.client.dave import DaveState
from voxgate.client.receiver import write_wav
from voxgate.errors import VoxgateError
from voxgate.protocol.rtp import SILENCE_FRAME

if TYPE_CHECKING:
    from voxgate.sandbox.app import Sandbox

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960
#: Packets of one speaker further apart than this start a new burst in the timeline.
BURST_GAP_S = 0.2


class SimulatedUserError(VoxgateError):
    """A simulated user was asked for something its state does not allow."""


def user_id_of(who: Any) -> str:
    """The user id of a user id, a :class:`SimulatedUser`, a bot process or a ``bots[i]``
    entry of sandbox.json: what ``heard(from_=...)`` accepts."""
    if isinstance(who, str | int):
        return str(who)
    if isinstance(who, dict) and "user_id" in who:
        return str(who["user_id"])
    user_id = getattr(who, "user_id", None) or getattr(who, "id", None)
    if user_id is None:
        raise TypeError(f"not a user: {who!r}")
    return str(user_id)


@dataclass(frozen=True)
class SpeakingChange:
    """A Speaking (op 5) the voice server relayed: ``flags`` 0 means stopped."""

    at: float  # seconds since the user was created
    user_id: str
    flags: int


@dataclass
class Burst:
    """Packets of one speaker that arrived with no gap over :data:`BURST_GAP_S`."""

    user_id: str
    start: float
    end: float
    packets: int


@dataclass
class Heard:
    """What one user heard from one speaker."""

    user_id: str
    opus: list[bytes]
    pcm: bytes = b""

    def __len__(self) -> int:
        return len(self.opus)

    @property
    def audio(self) -> list[bytes]:
        """The packets that carry sound: all but the 3-byte Opus silence frames, which
        senders put after each talk spurt (five) and @discordjs/voice also sends for each
        20 ms its stream had nothing ready (a "missed frame", under load)."""
        return [packet for packet in self.opus if packet != SILENCE_FRAME]

    @property
    def duration(self) -> float:
        """Seconds of decoded audio, from the first packet (pauses within kept)."""
        return len(self.pcm) / (SAMPLE_RATE * 4)

    def save_wav(self, path: Path) -> Path:
        """Write the decoded audio (48 kHz, stereo, s16) to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, self.pcm)
        return path


@dataclass
class _Capture:
    """One connection's raw packets, per ssrc, by extended RTP sequence number."""

    connection: VoiceConnection
    receiver: AudioReceiver
    packets: dict[int, dict[int, bytes]] = field(default_factory=dict)
    last_sequence: dict[int, int] = field(default_factory=dict)


def tone_pcm(frequency: float, seconds: float, amplitude: float = 0.3) -> Iterator[bytes]:
    """s16le 48 kHz stereo PCM of a sine, 20 ms at a time."""
    peak = int(32767 * max(0.0, min(amplitude, 1.0)))
    step = 2 * math.pi * frequency / SAMPLE_RATE
    total = round(seconds * SAMPLE_RATE)
    for start in range(0, total, FRAME_SAMPLES):
        samples = array.array("h")
        for index in range(start, min(start + FRAME_SAMPLES, total)):
            value = int(peak * math.sin(step * index))
            samples.append(value)
            samples.append(value)
        if sys.byteorder == "big":
            samples.byteswap()
        yield samples.tobytes()


class SimulatedUser:
    """A human member of the sandbox's guild, with a real voice client."""

    def __init__(self, sandbox: Sandbox, user_id: str, name: str) -> None:
        self.sandbox = sandbox
        self.user_id = user_id
        self.name = name
        self.connection: VoiceConnection | None = None
        self.channel_id: str | None = None
        self.started_at = time.monotonic()
        #: Every voice event the user's connections reported, in order.
        self.events: list[VoiceEvent] = []
        self._timeline: list[SpeakingChange] = []
        self._bursts: list[tuple[_Capture, int, Burst]] = []
        self._open_bursts: dict[tuple[int, int], Burst] = {}
        self._captures: list[_Capture] = []
        self._watchers: list[asyncio.Task[None]] = []

    @classmethod
    def create(cls, sandbox: Sandbox, name: str) -> SimulatedUser:
        """A new user named ``name``, made a member of the sandbox's guild."""
        user = sandbox.create_user(name)
        return cls(sandbox, user_id_of(user), name)

    @property
    def guild_id(self) -> str:
        return str(self.sandbox.info["guild_id"])

    def __repr__(self) -> str:
        return f"<SimulatedUser {self.name} {self.user_id} in {self.channel_id}>"

    # --- text ----------------------------------------------------------------------------

    async def send(self, content: str, channel_id: str | int | None = None) -> dict[str, Any]:
        """Post ``content`` in a text channel (default: the sandbox's); bots get MESSAGE_CREATE."""
        channel = str(channel_id or self.sandbox.info["text_channel_id"])
        return await self.sandbox.send_message(int(self.user_id), int(channel), content)

    async def command(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        channel_id: str | int | None = None,
    ) -> Any:
        """Invoke the application command ``name`` (``/name``); bots get INTERACTION_CREATE."""
        channel = str(channel_id or self.sandbox.info["text_channel_id"])
        return await self.sandbox.invoke_command(int(self.user_id), int(channel), name, options)

    # --- voice ---------------------------------------------------------------------------

    def _trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.sandbox.info["ca"]))

    async def join(
        self, channel_id: str | int | None = None, *, timeout: float = 20.0
    ) -> VoiceConnection:
        """Join a voice channel (default: the sandbox's); from another channel, a move.

        Returns once media can flow. Bots in the guild see VOICE_STATE_UPDATE; bots in the
        channel see the voice server's Clients Connect and this user's Speaking.
        """
        channel = str(channel_id or self.sandbox.info["voice_channel_id"])
        if self.connection is not None:
            await self._hang_up()
        voice_state, voice_server = await self.sandbox.join_voice(int(self.user_id), int(channel))
        try:
            connection = await VoiceConnection.connect(
                voice_state, voice_server, ssl=self._trust(), timeout=timeout
            )
        except BaseException:
            # Not in voice after all: the bots see it leave again.
            with contextlib.suppress(Exception):
                await self.sandbox.leave_voice(int(self.user_id), int(self.guild_id))
            raise
        # Recording starts at once: what others say while encryption settles is kept too.
        capture = _Capture(connection, AudioReceiver(connection))
        connection.add_listener(
            lambda ssrc, header, payload: self._on_packet(capture, ssrc, header, payload)
        )
        self._captures.append(capture)
        self._watchers.append(asyncio.create_task(self._watch(connection)))
        self.connection, self.channel_id = connection, channel
        try:
            await self._dave_settled(connection, timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.leave()
            raise
        return connection

    async def _dave_settled(self, connection: VoiceConnection, timeout: float = 10.0) -> None:
        """Wait until this user's end-to-end encryption is in a steady state: in the group
        with every member the server named, no transition pending (or no DAVE at all).

        Discord's clients do not wait; a test harness does, so that what a user says right
        after joining (or right after someone else joined) reaches everyone whole instead
        of partly during a transition, which DAVE lets receivers drop."""
        dave = connection.dave
        deadline = time.monotonic() + timeout
        while True:
            state = dave.state
            others = dave.connected_users - {self.user_id}
            if state in (DaveState.DISABLED, DaveState.INACTIVE):
                settled = True
            elif state is DaveState.PENDING:
                settled = not others  # alone in the call: nobody to encrypt for yet
            else:
                settled = state is DaveState.ACTIVE and others <= set(dave.group_user_ids())
            if settled and not dave.pending_transitions:
                return
            if time.monotonic() > deadline or connection.closed.is_set():
                raise SimulatedUserError(
                    f"{self.name}'s end-to-end encryption did not settle in {timeout:g} s: "
                    f"{state.value}, group {dave.group_user_ids()}, others {sorted(others)}"
                )
            await asyncio.sleep(0.01)

    async def move(self, channel_id: str | int) -> VoiceConnection:
        """Move to another voice channel (what dragging yourself there does)."""
        return await self.join(channel_id)

    async def leave(self) -> None:
        """Leave voice: the voice WebSocket closes and bots see VOICE_STATE_UPDATE, no channel."""
        if self.connection is None:
            return
        await self._hang_up()
        await self.sandbox.leave_voice(int(self.user_id), int(self.guild_id))

    async def close(self) -> None:
        """Leave voice if in it and stop every task this user started."""
        with contextlib.suppress(Exception):
            await self.leave()
        for watcher in self._watchers:
            watcher.cancel()
        self._watchers.clear()

    async def _hang_up(self) -> None:
        connection, self.connection, self.channel_id = self.connection, None, None
        if connection is None:
            return
        for capture in self._captures:
            if capture.connection is connection:
                capture.receiver.close()
        await connection.close()

    def _connected(self) -> VoiceConnection:
        if self.connection is None or self.connection.closed.is_set():
            raise SimulatedUserError(f"{self.name} is not in a voice channel")
        return self.connection

    # --- speaking ------------------------------------------------------------------------

    async def play(self, source: str | Path | AsyncIterable[bytes]) -> int:
        """Speak a file (Ogg/Opus byte for byte, anything else through PyAV) or any async
        iterable of 20 ms Opus frames, paced in real time; returns the frames sent (the
        trailing five silence frames not counted)."""
        connection = self._connected()
        await self._dave_settled(connection)
        frames = open_source(source) if isinstance(source, str | Path) else source
        player = AudioPlayer(connection, frames)
        await player.play()
        return player.frames_sent - 5

    async def play_tone(
        self, frequency: float = 440.0, seconds: float = 1.0, *, amplitude: float = 0.3
    ) -> int:
        """Speak a sine of ``frequency`` Hz for ``seconds``; returns the frames sent."""
        return await self.play(PCMSource(tone_pcm(frequency, seconds, amplitude)))

    # --- listening -----------------------------------------------------------------------

    def _on_packet(self, capture: _Capture, ssrc: int, header: bytes, payload: bytes) -> None:
        sequence = int.from_bytes(header[2:4], "big")
        last = capture.last_sequence.get(ssrc)
        # Extended sequence numbers, so a wrap past 65535 keeps the order.
        extended = (
            sequence if last is None else last + ((sequence - last + 0x8000) & 0xFFFF) - 0x8000
        )
        if last is None or extended > last:
            capture.last_sequence[ssrc] = extended
        capture.packets.setdefault(ssrc, {}).setdefault(extended, payload)
        now = time.monotonic() - self.started_at
        key = (id(capture), ssrc)
        burst = self._open_bursts.get(key)
        if burst is None or now - burst.end > BURST_GAP_S:
            burst = self._open_bursts[key] = Burst("", now, now, 0)
            self._bursts.append((capture, ssrc, burst))
        burst.end = now
        burst.packets += 1

    async def _watch(self, connection: VoiceConnection) -> None:
        async for event in connection.events():
            self.events.append(event)
            if isinstance(event, MemberSpeaking):
                at = time.monotonic() - self.started_at
                self._timeline.append(SpeakingChange(at, event.user_id, event.flags))

    async def wait_event(
        self,
        kind: type[Any],
        predicate: Callable[[Any], bool] = lambda event: True,
        *,
        after: int = 0,
        timeout: float = 10.0,
    ) -> Any:
        """The first event of ``kind`` in :attr:`events` from index ``after`` on for which
        ``predicate`` holds, waiting for it. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[after:]:
                if isinstance(event, kind) and predicate(event):
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} got no {kind.__name__} in {timeout:g} s")
            await asyncio.sleep(0.02)

    def speakers(self) -> list[str]:
        """The users this user has received audio from."""
        found: list[str] = []
        for capture in self._captures:
            for ssrc in capture.packets:
                user = capture.receiver.user_of(ssrc)
                if user not in found:
                    found.append(user)
        return found

    def heard(self, from_: Any) -> Heard:
        """Everything heard from ``from_`` (a user id, a user, a bot) across every channel
        this user was in: Opus packets exactly as received, in RTP sequence order, and the
        decoded audio."""
        speaker = user_id_of(from_)
        opus: list[bytes] = []
        pcm: list[bytes] = []
        for capture in self._captures:
            for ssrc, packets in capture.packets.items():
                if capture.receiver.user_of(ssrc) == speaker:
                    opus.extend(packets[sequence] for sequence in sorted(packets))
            track = capture.receiver.by_user().get(speaker)
            if track is not None:
                # From the speaker's first packet: the receiver places a track at its
                # arrival time in the recording, which says nothing about this speaker.
                lead = max(int((track.started_at - capture.receiver.started_at) * SAMPLE_RATE), 0)
                pcm.append(bytes(track.pcm[lead * 4 :]))
        return Heard(speaker, opus, b"".join(pcm))

    async def wait_heard(
        self, from_: Any, *, packets: int = 1, quiet: float = 0.0, timeout: float = 30.0
    ) -> Heard:
        """Wait until ``packets`` packets came from ``from_`` and then, with ``quiet``,
        until nothing more came for ``quiet`` seconds (the speaker finished). Raises
        TimeoutError with what was heard so far."""
        speaker = user_id_of(from_)
        deadline = time.monotonic() + timeout
        while True:
            heard = self.heard(speaker)
            if len(heard) >= packets and (quiet <= 0 or self._quiet_for(speaker) >= quiet):
                return heard
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} heard {len(heard)} packets from {speaker} in {timeout:g} s "
                    f"(wanted {packets}); heard from: {self.speakers()}"
                )
            await asyncio.sleep(0.02)

    def _quiet_for(self, speaker: str) -> float:
        bursts = self.bursts(speaker)
        if not bursts:
            return 0.0
        return time.monotonic() - self.started_at - bursts[-1].end

    def bursts(self, from_: Any = None) -> list[Burst]:
        """When packets actually arrived, per speaker (all speakers when ``from_`` is None)."""
        speaker = None if from_ is None else user_id_of(from_)
        found = []
        for capture, ssrc, burst in self._bursts:
            burst.user_id = capture.receiver.user_of(ssrc)
            if speaker is None or burst.user_id == speaker:
                found.append(burst)
        return found

    def timeline(self, from_: Any = None) -> list[SpeakingChange]:
        """The Speaking changes relayed to this user (all speakers when ``from_`` is None)."""
        speaker = None if from_ is None else user_id_of(from_)
        return [c for c in self._timeline if speaker is None or c.user_id == speaker]

    def save_wavs(self, folder: Path) -> dict[str, Path]:
        """One WAV per speaker heard, ``<user id>.wav``."""
        return {
            speaker: self.heard(speaker).save_wav(folder / f"{speaker}.wav")
            for speaker in self.speakers()
        }
