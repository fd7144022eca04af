"""Audio sources: anything the player can turn into 20 ms Opus frames.

A source is an async iterator of Opus packets (48 kHz, stereo, 20 ms each). Ogg/Opus files
are passed through without re-encoding (what discord.js calls ``StreamType.OggOpus``);
everything else FFmpeg can read goes through PyAV, which ships FFmpeg and libopus in its
wheels, so no system ffmpeg is needed. Decoding and encoding run in a worker thread, so a
slow file never stalls the event loop that paces the frames.
"""

from __future__ import annotations

import array
import asyncio
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import av

from voxgate.errors import VoxgateError

SAMPLE_RATE = 48_000
CHANNELS = 2
FRAME_SAMPLES = 960
#: Bytes of one 20 ms frame of s16le stereo PCM.
FRAME_BYTES = FRAME_SAMPLES * CHANNELS * 2
DEFAULT_BITRATE = 96_000


class SourceError(VoxgateError):
    """A source that cannot be read: missing, not audio, or not what its type says."""


def ogg_packets(stream: BinaryIO) -> Iterator[bytes]:
    """The packets of an Ogg stream, in order (RFC 3533 pages and lacing)."""
    partial = b""
    while True:
        header = stream.read(27)
        if not header:
            return
        if len(header) < 27 or header[:4] != b"OggS":
            raise SourceError("not an Ogg stream (no OggS page)")
        lacing = stream.read(header[26])
        body = stream.read(sum(lacing))
        at = 0
        for size in lacing:
            partial += body[at : at + size]
            at += size
            if size < 255:
                yield partial
                partial = b""


class OggOpusSource:
    """An Ogg/Opus file or stream, passed through frame by frame without re-encoding."""

    def __init__(self, source: str | Path | BinaryIO) -> None:
        self._source = source

    def frames(self) -> Iterator[bytes]:
        stream = (
            open(self._source, "rb")  # noqa: SIM115 - closed in the finally below
            if isinstance(self._source, str | Path)
            else self._source
        )
        try:
            packets = ogg_packets(stream)
            head = next(packets, b"")
            if not head.startswith(b"OpusHead"):
                raise SourceError("not an Ogg/Opus stream (no OpusHead)")
            for packet in packets:
                if not packet.startswith(b"OpusTags"):
                    yield packet
        finally:
            if stream is not self._source:
                stream.close()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _threaded(self.frames())


class OpusEncoder:
    """s16le stereo 48 kHz PCM in, 20 ms Opus packets out, with an optional volume.

    ``options`` are libopus encoder options as FFmpeg names them (``application``,
    ``packet_loss``, ``fec``, ``vbr``, ...).
    """

    def __init__(
        self, bitrate: int = DEFAULT_BITRATE, *, options: dict[str, str] | None = None
    ) -> None:
        self._codec = av.CodecContext.create("libopus", "w")
        self._codec.sample_rate = SAMPLE_RATE
        self._codec.layout = "stereo"
        self._codec.format = "s16"
        self._codec.bit_rate = bitrate
        if options:
            self._codec.options = dict(options)
        self._pending = b""
        self._pts = 0
        self.volume = 1.0

    def encode(self, pcm: bytes) -> Iterator[bytes]:
        self._pending += pcm
        while len(self._pending) >= FRAME_BYTES:
            chunk, self._pending = self._pending[:FRAME_BYTES], self._pending[FRAME_BYTES:]
            yield from self._encode_frame(chunk)

    def flush(self) -> Iterator[bytes]:
        if self._pending:
            yield from self._encode_frame(self._pending.ljust(FRAME_BYTES, b"\x00"))
            self._pending = b""
        for packet in self._codec.encode(None):
            yield bytes(packet)

    def _encode_frame(self, chunk: bytes) -> Iterator[bytes]:
        if self.volume != 1.0:
            chunk = scale_pcm(chunk, self.volume)
        frame = av.AudioFrame(format="s16", layout="stereo", samples=FRAME_SAMPLES)
        frame.planes[0].update(chunk)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        for packet in self._codec.encode(frame):
            yield bytes(packet)


def scale_pcm(pcm: bytes, volume: float) -> bytes:
    """s16le samples multiplied by ``volume``, clipped."""
    samples = array.array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    for index, value in enumerate(samples):
        scaled = int(value * volume)
        samples[index] = 32767 if scaled > 32767 else -32768 if scaled < -32768 else scaled
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


class FFmpegSource:
    """Any file or URL FFmpeg reads, decoded, resampled to 48 kHz stereo, Opus-encoded.

    ``volume`` (1.0 = as is) can be changed while playing.
    """

    def __init__(self, source: str | Path, *, bitrate: int = DEFAULT_BITRATE) -> None:
        self._source = str(source)
        self._bitrate = bitrate
        self._encoder: OpusEncoder | None = None
        self.volume = 1.0

    def frames(self) -> Iterator[bytes]:
        try:
            container = av.open(self._source)
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open {self._source}: {exc}") from None
        with container:
            if not container.streams.audio:
                raise SourceError(f"{self._source} has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
            encoder = self._encoder = OpusEncoder(self._bitrate)
            for frame in container.decode(stream):
                for converted in resampler.resample(frame):
                    encoder.volume = self.volume
                    pcm = bytes(converted.planes[0])[: converted.samples * CHANNELS * 2]
                    yield from encoder.encode(pcm)
            for converted in resampler.resample(None):
                yield from encoder.encode(bytes(converted.planes[0])[: converted.samples * 4])
            yield from encoder.flush()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _threaded(self.frames())


class PCMSource:
    """Raw s16le, 48 kHz, stereo PCM (bytes chunks of any size, or a binary stream)."""

    def __init__(self, pcm: BinaryIO | Iterable[bytes], *, bitrate: int = DEFAULT_BITRATE) -> None:
        self._pcm = pcm
        self._bitrate = bitrate
        self.volume = 1.0

    def frames(self) -> Iterator[bytes]:
        encoder = OpusEncoder(self._bitrate)
        chunks: Iterable[bytes]
        if hasattr(self._pcm, "read"):
            stream = self._pcm
            chunks = iter(lambda: stream.read(FRAME_BYTES * 10), b"")  # type: ignore[union-attr]
        else:
            chunks = self._pcm  # type: ignore[assignment]
        for chunk in chunks:
            encoder.volume = self.volume
            yield from encoder.encode(chunk)
        yield from encoder.flush()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _threaded(self.frames())


def open_source(path: str | Path) -> OggOpusSource | FFmpegSource:
    """The best source for a file: passthrough for Ogg/Opus, FFmpeg for the rest."""
    try:
        with open(path, "rb") as file:
            start = file.read(64)
    except FileNotFoundError:
        if "://" in str(path):
            return FFmpegSource(path)
        raise SourceError(f"no such file: {path}") from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    if start.startswith(b"OggS") and b"OpusHead" in start:
        return OggOpusSource(path)
    return FFmpegSource(path)


async def _threaded(frames: Iterator[bytes], batch: int = 25) -> AsyncIterator[bytes]:
    """Pull ``frames`` in a worker thread, a batch at a time, and yield them here."""
    loop = asyncio.get_running_loop()

    def take() -> list[bytes]:
        taken = []
        for frame in frames:
            taken.append(frame)
            if len(taken) == batch:
                break
        return taken

    while True:
        taken = await loop.run_in_executor(None, take)
        if not taken:
            return
        for frame in taken:
            yield frame
