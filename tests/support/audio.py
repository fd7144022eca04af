"""Test audio: Ogg/Opus files of known tones, their packets, and what a listener hears.

A source is a sequence of pure tones, one per 100 ms window, from a small set of
frequencies. After Opus, the relay and a decoder, each window's strongest frequency among
that set must still be the one sent: the check the interop tests use for "sounds the same".
"""

from __future__ import annotations

import array
import asyncio
import math
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import av

if TYPE_CHECKING:
    from voxgate.client import VoiceConnection

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms
WINDOW_SAMPLES = 4_800  # 100 ms
TONES = (330.0, 550.0, 770.0, 990.0, 1210.0, 1430.0, 1650.0, 1870.0)


def tone_sequence(seconds: float, seed: int = 1) -> list[float]:
    """One tone per 100 ms window, never the same twice in a row."""
    rng = random.Random(seed)
    windows: list[float] = []
    for _ in range(round(seconds * 10)):
        choices = [tone for tone in TONES if not windows or tone != windows[-1]]
        windows.append(rng.choice(choices))
    return windows


def write_tones(path: Path, windows: Sequence[float], amplitude: int = 12_000) -> None:
    """Encode ``windows`` (Hz per 100 ms) as 48 kHz stereo Ogg/Opus in 20 ms frames."""
    container = av.open(str(path), "w", format="ogg")
    stream = container.add_stream("libopus", rate=SAMPLE_RATE)
    stream.layout = "stereo"
    stream.bit_rate = 96_000
    phase = 0.0
    pts = 0
    for frequency in windows:
        step = 2 * math.pi * frequency / SAMPLE_RATE
        for _ in range(WINDOW_SAMPLES // FRAME_SAMPLES):
            samples = array.array("h")
            for _ in range(FRAME_SAMPLES):
                value = int(amplitude * math.sin(phase))
                samples.append(value)
                samples.append(value)
                phase += step
            frame = av.AudioFrame(format="s16", layout="stereo", samples=FRAME_SAMPLES)
            frame.planes[0].update(samples.tobytes())
            frame.sample_rate = SAMPLE_RATE
            frame.pts = pts
            pts += FRAME_SAMPLES
            for packet in stream.encode(frame):
                container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()


def ogg_packets(path: Path) -> list[bytes]:
    """The Opus packets of an Ogg/Opus file, without the OpusHead and OpusTags headers."""
    data = path.read_bytes()
    packets: list[bytes] = []
    partial = b""
    at = 0
    while at < len(data):
        if data[at : at + 4] != b"OggS":
            raise ValueError(f"no Ogg page at byte {at}")
        segments = data[at + 26]
        lacing = data[at + 27 : at + 27 + segments]
        body = at + 27 + segments
        for size in lacing:
            partial += data[body : body + size]
            body += size
            if size < 255:
                packets.append(partial)
                partial = b""
        at = body
    return [packet for packet in packets if not packet.startswith((b"OpusHead", b"OpusTags"))]


def decode_opus(packets: Iterable[bytes]) -> array.array[int]:
    """Mono (left channel) s16 samples of Opus packets decoded in order."""
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = SAMPLE_RATE
    decoder.layout = "stereo"
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
    mono: array.array[int] = array.array("h")
    for payload in packets:
        for frame in decoder.decode(av.Packet(payload)):
            for converted in resampler.resample(frame):
                interleaved = array.array("h", bytes(converted.planes[0])[: converted.samples * 4])
                mono.extend(interleaved[0::2])
    return mono


def _power(samples: Sequence[int], frequency: float) -> float:
    """Goertzel: the power of one frequency in ``samples``."""
    coefficient = 2 * math.cos(2 * math.pi * frequency / SAMPLE_RATE)
    previous = before = 0.0
    for sample in samples:
        previous, before = sample + coefficient * previous - before, previous
    return previous * previous + before * before - coefficient * previous * before


def dominant_tones(mono: Sequence[int], candidates: Sequence[float] = TONES) -> list[float]:
    """The strongest candidate frequency of each 100 ms window.

    Only the middle 60 ms of a window are measured, so the decoder's delay (a few ms) and
    the transition between tones do not blur the answer.
    """
    result = []
    margin = WINDOW_SAMPLES // 5
    for start in range(0, len(mono) - WINDOW_SAMPLES + 1, WINDOW_SAMPLES):
        middle = mono[start + margin : start + WINDOW_SAMPLES - margin]
        result.append(max(candidates, key=lambda frequency: _power(middle, frequency)))
    return result


def read_packet_log(path: Path) -> dict[str | None, list[bytes]]:
    """A driver's received packets (JSON lines ``{"user_id", "opus"}``), per user, in order."""
    import json

    per_user: dict[str | None, list[bytes]] = {}
    if not path.exists():
        return per_user
    for line in path.read_text().splitlines():
        record = json.loads(line)
        per_user.setdefault(record["user_id"], []).append(bytes.fromhex(record["opus"]))
    return per_user


SILENCE = b"\xf8\xff\xfe"


def without_trailing_silence(packets: list[bytes]) -> list[bytes]:
    """``packets`` without the Opus silence frames a sender ends its stream with."""
    while packets and packets[-1] == SILENCE:
        packets = packets[:-1]
    return packets


def heard_positions(sent: list[bytes], heard: list[bytes]) -> list[int]:
    """Where each heard packet is in ``sent``, matched in order; fails if one is not there
    (out of order, altered, or never sent)."""
    found, at = [], 0
    for packet in heard:
        while at < len(sent) and sent[at] != packet:
            at += 1
        assert at < len(sent), "a packet heard that was not sent, or out of order"
        found.append(at)
        at += 1
    return found


async def audio_arrives_byte_exact(
    speaker: VoiceConnection, listener: VoiceConnection, timeout: float = 10.0
) -> None:
    """``speaker`` sends 40 random Opus payloads; ``listener`` must hear each as sent, in
    order, within ``timeout`` seconds."""
    heard: list[bytes] = []
    ssrc = speaker.ssrc

    def on_packet(sender: int, header: bytes, payload: bytes) -> None:
        if sender == ssrc:
            heard.append(payload)

    listener.add_listener(on_packet)
    await speaker.set_speaking(True)
    sent = [os.urandom(60 + n) for n in range(40)]
    for payload in sent:
        assert speaker.send_opus(payload)
        await asyncio.sleep(0.005)
    async with asyncio.timeout(timeout):
        while len(heard) < len(sent):
            await asyncio.sleep(0.02)
    listener.remove_listener(on_packet)
    assert heard == sent
