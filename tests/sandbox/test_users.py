"""Simulated users: they join, move and leave voice, speak files and tones, and record what
they hear per speaker (Opus packets, WAV, a speaking timeline), through the real voice node."""

from __future__ import annotations

import array
import math
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.audio import dominant_tones, ogg_packets
from voxgate.client import MemberDisconnected, MembersConnected
from voxgate.protocol.rtp import SILENCE_FRAME
from voxgate.testing import SandboxFixture

Tones = Callable[[float, int], tuple[Path, list[float]]]

# Each test with and without end-to-end encryption (DAVE): users are voxgate clients, which
# speak it, and join() and play() wait for it to settle, so every frame arrives whole.
pytestmark = pytest.mark.parametrize(
    "dave",
    [
        pytest.param(policy, marks=pytest.mark.voxgate_sandbox(dave=policy), id=f"dave-{policy}")
        for policy in ("off", "required")
    ],
)


async def test_a_user_hears_another_byte_exact_with_a_speaking_timeline(
    voxgate_sandbox: SandboxFixture, tmp_path: Path, tones: Tones, dave: str
) -> None:
    alice, bob = voxgate_sandbox.user("alice"), voxgate_sandbox.user("bob")
    await bob.join()
    await alice.join()
    song, windows = tones(1.5, 7)
    sent = await alice.play(song)
    assert sent == len(ogg_packets(song))
    heard = await bob.wait_heard(alice, packets=sent, quiet=0.3)
    assert heard.audio == ogg_packets(song)
    assert heard.opus[len(heard.audio) :] == [SILENCE_FRAME] * (len(heard) - len(heard.audio))
    assert bob.speakers() == [alice.user_id]
    assert alice.connection is not None and bob.connection is not None
    assert alice.connection.dave.ready is bob.connection.dave.ready is (dave == "required")

    # Speaking went on before the audio and off after it; the packets came in one burst.
    flags = [change.flags for change in bob.timeline(alice)]
    assert flags[-2:] == [1, 0]
    (burst,) = bob.bursts(alice)
    assert burst.packets == len(heard)
    on, off = bob.timeline(alice)[-2:]
    assert on.at <= burst.start and burst.end <= off.at + 0.1

    # The WAV is the decoded audio: the tones of the file, window by window.
    path = heard.save_wav(tmp_path / "alice.wav")
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48_000, 2, 2)
        samples = array.array("h", wav.readframes(wav.getnframes()))
    tones_heard = dominant_tones(samples[0::2])
    assert sum(a == b for a, b in zip(tones_heard, windows, strict=False)) >= len(windows) - 2


async def test_a_user_speaks_a_tone(voxgate_sandbox: SandboxFixture, dave: str) -> None:
    alice, bob = voxgate_sandbox.user("alice"), voxgate_sandbox.user("bob")
    await bob.join()
    await alice.join()
    frames = await alice.play_tone(770.0, seconds=1.0)
    assert 50 <= frames <= 52  # 1 s of 20 ms frames, and what the encoder flushes
    heard = await bob.wait_heard(alice, packets=frames, quiet=0.3)
    mono = array.array("h", heard.pcm)[0::2]
    assert set(dominant_tones(mono[:48_000])) == {770.0}


async def test_a_user_speaks_any_file_ffmpeg_reads(
    voxgate_sandbox: SandboxFixture, tmp_path: Path, dave: str
) -> None:
    # A 44.1 kHz mono WAV: decoded, resampled to 48 kHz stereo and encoded by PyAV.
    wav_path = tmp_path / "tone.wav"
    with wave.open(str(wav_path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(44_100)
        step = 2 * math.pi * 990.0 / 44_100
        wav.writeframes(
            array.array("h", (int(9000 * math.sin(step * i)) for i in range(44_100))).tobytes()
        )
    alice, bob = voxgate_sandbox.user("alice"), voxgate_sandbox.user("bob")
    await bob.join()
    await alice.join()
    frames = await alice.play(wav_path)
    heard = await bob.wait_heard(alice, packets=frames, quiet=0.3)
    assert len(heard.audio) == frames
    mono = array.array("h", heard.pcm)[0::2]
    assert set(dominant_tones(mono[:43_200])) == {990.0}


async def test_users_move_and_leave(
    voxgate_sandbox: SandboxFixture, tones: Tones, dave: str
) -> None:
    sandbox = voxgate_sandbox
    other = sandbox.create_voice_channel(sandbox.guild_id, "other")
    alice, bob = sandbox.user("alice"), sandbox.user("bob")
    await alice.join()
    await bob.join()
    await alice.wait_event(MembersConnected, lambda event: bob.user_id in event.user_ids)

    # Bob moves away: alice's channel sees him go; what alice says there, he no longer hears.
    seen = len(alice.events)
    await bob.move(other)
    assert bob.channel_id == str(other)
    await alice.wait_event(MemberDisconnected, lambda e: e.user_id == bob.user_id, after=seen)
    states = {s["user_id"]: s["channel_id"] for s in sandbox.voice_states()}
    assert states == {alice.user_id: sandbox.voice_channel_id, bob.user_id: str(other)}
    await alice.play(tones(0.5, 8)[0])
    assert len(bob.heard(alice)) == 0

    await bob.leave()
    assert bob.connection is None
    assert {s["user_id"] for s in sandbox.voice_states()} == {alice.user_id}
