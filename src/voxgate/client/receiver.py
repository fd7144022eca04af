"""Receiving: per-speaker reorder buffers, Opus decoding, and sinks (WAV per user, a mix).

Packets arrive opened by the connection: transport decryption, RTP padding removed, and in
a DAVE call the frame opened with its sender's key (ssrc -> user from op 5), so what is
kept and decoded here is always Opus, per user. Per ssrc, a :class:`ReorderBuffer` puts them back
in sequence order, holding a few packets to let late ones in; a packet that has not come
by then is declared lost. Each speaker's audio is placed on a timeline by its RTP
timestamps (so pauses stay pauses) and offset by when the speaker's first packet arrived
(so speakers line up with each other in the mix). Lost frames are filled with Opus's
packet loss concealment when the decoder provides it, else with silence.

ssrc -> user comes from the server's Speaking messages; packets of an ssrc nobody has
named yet are kept under the ssrc and moved to the user once it is named.
"""

from __future__ import annotations

import array
import asyncio
import sys
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import av

from voxgate.client.connection import VoiceConnection

SAMPLE_RATE = 48_000
CHANNELS = 2
FRAME_SAMPLES = 960
BYTES_PER_SAMPLE = CHANNELS * 2  # s16 stereo
#: Packets held for reordering: 3 x 20 ms of latency buys tolerance to loopback/LAN jitter.
DEFAULT_DEPTH = 3
#: A timestamp jump beyond this is a new talk spurt, not loss: filled with silence.
MAX_CONCEALED_FRAMES = 5


class ReorderBuffer:
    """Releases RTP payloads in sequence order; a gap becomes ``None`` once ``depth`` later
    packets have arrived (the missing one is then too late to matter)."""

    def __init__(self, depth: int = DEFAULT_DEPTH) -> None:
        self.depth = depth
        self._next: int | None = None
        self._held: dict[int, tuple[int, bytes]] = {}
        self.lost = 0
        self.late = 0

    def push(self, sequence: int, timestamp: int, payload: bytes) -> list[tuple[int, bytes | None]]:
        """Add one packet; returns ``(timestamp, payload or None if lost)`` now releasable."""
        if self._next is None:
            self._next = sequence
        behind = (self._next - sequence) & 0xFFFF
        if 0 < behind < 0x8000:
            self.late += 1  # already released past it (or a duplicate)
            return []
        self._held[sequence] = (timestamp, payload)
        return self._release(force=False)

    def flush(self) -> list[tuple[int, bytes | None]]:
        return self._release(force=True)

    def _release(self, *, force: bool) -> list[tuple[int, bytes | None]]:
        released: list[tuple[int, bytes | None]] = []
        assert self._next is not None or not self._held
        while self._held:
            assert self._next is not None
            if self._next in self._held:
                timestamp, payload = self._held.pop(self._next)
                released.append((timestamp, payload))
            elif force or len(self._held) > self.depth:
                self.lost += 1
                released.append((-1, None))
            else:
                break
            self._next = (self._next + 1) & 0xFFFF
        return released


def _s16(frame: av.AudioFrame) -> bytes:
    return bytes(frame.planes[0])[: frame.samples * BYTES_PER_SAMPLE]


@dataclass
class SpeakerTrack:
    """One speaker's received audio: raw Opus packets and decoded PCM on a timeline."""

    ssrc: int
    started_at: float
    opus: list[bytes] = field(default_factory=list)
    pcm: bytearray = field(default_factory=bytearray)
    packets: int = 0
    level: float = 0.0
    first_timestamp: int | None = None
    next_timestamp: int | None = None


class AudioReceiver:
    """Collects and decodes everything a connection receives, per user.

    ``decode=False`` keeps only the raw Opus packets (cheaper; enough to check bytes).
    ``frames()`` yields ``(user_id, pcm)`` with 20 ms of s16le stereo PCM as it is decoded.
    """

    def __init__(
        self, connection: VoiceConnection, *, decode: bool = True, depth: int = DEFAULT_DEPTH
    ) -> None:
        self.connection = connection
        self.decode = decode
        self.depth = depth
        self.started_at = time.monotonic()
        self.tracks: dict[int, SpeakerTrack] = {}
        self._buffers: dict[int, ReorderBuffer] = {}
        self._decoders: dict[int, av.AudioCodecContext] = {}
        self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
        self._queues: list[asyncio.Queue[tuple[str, bytes] | None]] = []
        self._names: dict[int, str] = {}
        connection.add_listener(self._on_packet)

    def close(self) -> None:
        """Stop receiving; flush what the reorder buffers still hold."""
        self.connection.remove_listener(self._on_packet)
        for ssrc, buffer in self._buffers.items():
            self._consume(ssrc, buffer.flush())
        for queue in self._queues:
            queue.put_nowait(None)

    def user_of(self, ssrc: int) -> str:
        # Remembered: the connection forgets an ssrc when its user leaves (op 13), but a
        # recording still needs to say whose audio it was.
        name = self._names.get(ssrc) or self.connection.user_of(ssrc)
        if name is None:
            return f"ssrc-{ssrc}"
        self._names[ssrc] = name
        return name

    def by_user(self) -> dict[str, SpeakerTrack]:
        return {self.user_of(ssrc): track for ssrc, track in self.tracks.items()}

    def opus_of(self, user_id: str) -> list[bytes]:
        """Every Opus packet received from ``user_id``, in sequence order."""
        return [
            packet
            for ssrc, track in self.tracks.items()
            if self.user_of(ssrc) == user_id
            for packet in track.opus
        ]

    @property
    def lost(self) -> int:
        return sum(buffer.lost for buffer in self._buffers.values())

    async def frames(self) -> AsyncIterator[tuple[str, bytes]]:
        """``(user_id, 20 ms of s16le 48 kHz stereo PCM)`` as each frame is decoded."""
        queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self._queues.append(queue)
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            self._queues.remove(queue)

    # --- the packet path -----------------------------------------------------------------

    def _on_packet(self, ssrc: int, header: bytes, payload: bytes) -> None:
        buffer = self._buffers.get(ssrc)
        if buffer is None:
            buffer = self._buffers[ssrc] = ReorderBuffer(self.depth)
            self.tracks[ssrc] = SpeakerTrack(ssrc, time.monotonic())
        if ssrc not in self._names:
            self.user_of(ssrc)
        sequence = int.from_bytes(header[2:4], "big")
        timestamp = int.from_bytes(header[4:8], "big")
        self._consume(ssrc, buffer.push(sequence, timestamp, payload))

    def _consume(self, ssrc: int, released: list[tuple[int, bytes | None]]) -> None:
        track = self.tracks[ssrc]
        for timestamp, payload in released:
            if payload is not None:
                track.opus.append(payload)
                track.packets += 1
            if self.decode:
                self._decode(track, timestamp, payload)

    def _decode(self, track: SpeakerTrack, timestamp: int, payload: bytes | None) -> None:
        decoder = self._decoders.get(track.ssrc)
        if decoder is None:
            decoder = self._decoders[track.ssrc] = av.CodecContext.create("libopus", "r")  # type: ignore[assignment]
            decoder.sample_rate = SAMPLE_RATE  # type: ignore[union-attr]
            decoder.layout = "stereo"  # type: ignore[union-attr]
            # The first packet lands where its arrival puts it relative to the recording.
            offset = int((track.started_at - self.started_at) * SAMPLE_RATE)
            track.pcm.extend(bytes(max(offset, 0) * BYTES_PER_SAMPLE))
        if payload is None:
            # Lost: conceal with silence of one frame (PyAV exposes no decode-with-NULL PLC).
            pcm = bytes(FRAME_SAMPLES * BYTES_PER_SAMPLE)
            self._append(track, pcm, advance=FRAME_SAMPLES)
            return
        if track.next_timestamp is not None:
            gap = (timestamp - track.next_timestamp) & 0xFFFF_FFFF
            if 0 < gap < 0x8000_0000:
                # A pause in the talk: keep it as silence so the timeline stays true.
                track.pcm.extend(bytes(min(gap, SAMPLE_RATE * 60) * BYTES_PER_SAMPLE))
        try:
            decoded = b"".join(
                _s16(converted)
                for frame in decoder.decode(av.Packet(payload))  # type: ignore[union-attr]
                for converted in self._resampler.resample(frame)
            )
        except av.FFmpegError:
            decoded = bytes(FRAME_SAMPLES * BYTES_PER_SAMPLE)
        track.next_timestamp = (timestamp + len(decoded) // BYTES_PER_SAMPLE) & 0xFFFF_FFFF
        self._append(track, decoded, advance=0)

    def _append(self, track: SpeakerTrack, pcm: bytes, *, advance: int) -> None:
        track.pcm.extend(pcm)
        if advance and track.next_timestamp is not None:
            track.next_timestamp = (track.next_timestamp + advance) & 0xFFFF_FFFF
        track.level = _peak(pcm)
        if self._queues:
            user = self.user_of(track.ssrc)
            for queue in self._queues:
                queue.put_nowait((user, pcm))

    # --- sinks ---------------------------------------------------------------------------

    def save_wav(self, folder: Path, *, mix: bool = True) -> dict[str, Path]:
        """One WAV per user (``<user_id>.wav``) and, with ``mix``, ``mix.wav`` of all of them."""
        folder.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        # A user whose session was replaced has one track per ssrc; each track is placed on
        # the recording's timeline from its start, so laying them over each other joins them.
        per_user: dict[str, list[bytes]] = {}
        for ssrc, track in self.tracks.items():
            per_user.setdefault(self.user_of(ssrc), []).append(bytes(track.pcm))
        for user, pcm in per_user.items():
            path = folder / f"{_safe(user)}.wav"
            write_wav(path, pcm[0] if len(pcm) == 1 else mix_pcm(pcm))
            written[user] = path
        if mix:
            path = folder / "mix.wav"
            write_wav(path, mix_pcm([bytes(track.pcm) for track in self.tracks.values()]))
            written["mix"] = path
        return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "unknown"


def _peak(pcm: bytes) -> float:
    samples = array.array("h", pcm[: len(pcm) - len(pcm) % 2])
    if not samples:
        return 0.0
    return max(max(samples), -min(samples)) / 32768


def mix_pcm(tracks: list[bytes]) -> bytes:
    """Sum s16le tracks sample by sample (shorter ones end in silence), clipped."""
    if not tracks:
        return b""
    length = max(len(track) for track in tracks) // 2
    total = array.array("i", bytes(length * 4))
    for track in tracks:
        samples = array.array("h", track[: len(track) - len(track) % 2])
        if sys.byteorder == "big":
            samples.byteswap()
        for index, value in enumerate(samples):
            total[index] += value
    out = array.array("h", (max(-32768, min(32767, value)) for value in total))
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(CHANNELS)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm)
