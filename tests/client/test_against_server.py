"""The voxgate client against a real ``voxgate serve``, itself and the real third-party clients.

Checks are byte-exact on Opus payloads and, after decoding, on the dominant tone of every
100 ms window of the recording against the generated source.
"""

from __future__ import annotations

import array
import asyncio
import json
import ssl
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from tests.support.audio import SILENCE, dominant_tones, ogg_packets, read_packet_log
from tests.support.drivers import VoiceChannel
from tests.support.proxy import CuttableProxy
from voxgate.client import (
    ConnectionResumed,
    MembersConnected,
    VoiceConnection,
    VoiceConnectionError,
)
from voxgate.client.player import AudioPlayer
from voxgate.client.receiver import AudioReceiver
from voxgate.client.sources import FFmpegSource, OggOpusSource, PCMSource
from voxgate.protocol.opcodes import EncryptionMode

MODES = [mode.value for mode in EncryptionMode]


def _trust(server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_path))


async def _connect(server, guild: str, channel: str, user: str, **kwargs) -> VoiceConnection:
    events = server.join(guild, channel, user)
    return await VoiceConnection.connect(
        events["voice_state"], events["voice_server"], ssl=_trust(server), **kwargs
    )


def _windows_of_wav(path: Path) -> list[float]:
    """Dominant tone per 100 ms of a recording, from the first sound on."""
    with wave.open(str(path)) as wav:
        mono = array.array("h", wav.readframes(wav.getnframes()))[0::2]
    start = next(index for index, value in enumerate(mono) if abs(value) > 64)
    return dominant_tones(mono[start:])


def _matching(sent: list[float], heard: list[float]) -> int:
    return sum(a == b for a, b in zip(sent, heard, strict=False))


@pytest.mark.parametrize("mode", MODES)
async def test_voxgate_to_voxgate_in_every_mode(voxgate_server, ids, tones, mode) -> None:
    guild, channel, alice, bob = ids(), ids(), ids(), ids()
    file, _ = tones(1.0, 11)
    sender = await _connect(voxgate_server, guild, channel, alice, modes=[mode])
    receiver = await _connect(voxgate_server, guild, channel, bob, modes=[mode])
    assert (sender.mode, receiver.mode) == (mode, mode)
    recording = AudioReceiver(receiver, decode=False)
    await AudioPlayer(sender, OggOpusSource(file)).play()
    await asyncio.sleep(0.2)
    recording.close()
    sent = ogg_packets(file)
    assert recording.opus_of(alice) == [*sent, *[SILENCE] * 5]
    await sender.close()
    await receiver.close()


@pytest.mark.parametrize("kind", ["js", "dpy"])
async def test_third_party_sender_recorded_byte_exact_and_tone_exact(
    voxgate_server, tmp_path, ids, tones, kind
) -> None:
    guild, channel, listener, speaker = ids(), ids(), ids(), ids()
    file, windows = tones(2.0, 12)
    connection = await _connect(voxgate_server, guild, channel, listener)
    recording = AudioReceiver(connection)
    async with VoiceChannel(voxgate_server, tmp_path, guild, channel) as room:
        # --e2ee: the sender starts once the call's DAVE group has it, as the voxgate
        # player does; frames sent in the clear before that are dropped by the listener.
        await room.start(kind, "play", speaker, file=file, flags=["--e2ee"])
        await room.finish()
    await asyncio.sleep(0.2)
    recording.close()
    received = recording.opus_of(speaker)
    sent = ogg_packets(file)
    assert received[: len(sent)] == sent
    assert all(packet == SILENCE for packet in received[len(sent) :])
    written = recording.save_wav(tmp_path / "rec")
    heard = _windows_of_wav(written[speaker])
    assert _matching(windows, heard) == len(windows)
    await connection.close()


async def test_voxgate_sender_heard_byte_exact_by_discord_js_and_discord_py(
    voxgate_server, tmp_path, ids, tones
) -> None:
    guild, channel, speaker, js_id, dpy_id = ids(), ids(), ids(), ids(), ids()
    file, _ = tones(2.0, 13)
    async with VoiceChannel(voxgate_server, tmp_path, guild, channel) as room:
        listeners = [
            await room.start(kind, "receive", user, out=True, seconds=6)
            for kind, user in (("js", js_id), ("dpy", dpy_id))
        ]
        for listener in listeners:
            await listener.wait_for("listening")
        connection = await _connect(voxgate_server, guild, channel, speaker)
        await AudioPlayer(connection, OggOpusSource(file)).play()
        await connection.close()
        await room.finish()
    sent = ogg_packets(file)
    for listener in listeners:
        assert listener.out is not None
        heard = read_packet_log(listener.out)[speaker]
        assert heard[: len(sent)] == sent, listener.name
        assert all(packet == SILENCE for packet in heard[len(sent) :])


async def test_cut_websocket_resumes_and_the_recording_has_no_gap(
    voxgate_server, ids, tones
) -> None:
    guild, channel, alice, bob = ids(), ids(), ids(), ids()
    proxy = CuttableProxy(voxgate_server.port)
    await proxy.start()
    file, _ = tones(3.0, 14)
    events = voxgate_server.join(guild, channel, bob)
    events["voice_server"]["endpoint"] = f"127.0.0.1:{proxy.port}"
    receiver = await VoiceConnection.connect(
        events["voice_state"], events["voice_server"], ssl=_trust(voxgate_server)
    )
    recording = AudioReceiver(receiver)
    sender = await _connect(voxgate_server, guild, channel, alice)
    player = AudioPlayer(sender, OggOpusSource(file))
    playing = player.start()
    await asyncio.sleep(0.8)
    await proxy.cut(hold_s=0.5)
    resumed = await receiver.next_event(ConnectionResumed, timeout=10)
    await playing
    await asyncio.sleep(0.2)
    recording.close()
    assert receiver.resumes == 1 and resumed.replayed >= 0
    sent = ogg_packets(file)
    assert recording.opus_of(alice) == [*sent, *[SILENCE] * 5]
    assert recording.lost == 0
    await sender.close()
    await receiver.close()
    await proxy.close()


async def test_resume_replays_what_the_server_sent_during_the_cut(voxgate_server, ids) -> None:
    guild, channel, alice, bob = ids(), ids(), ids(), ids()
    proxy = CuttableProxy(voxgate_server.port)
    await proxy.start()
    events = voxgate_server.join(guild, channel, alice)
    events["voice_server"]["endpoint"] = f"127.0.0.1:{proxy.port}"
    connection = await VoiceConnection.connect(
        events["voice_state"], events["voice_server"], ssl=_trust(voxgate_server)
    )
    cut = asyncio.create_task(proxy.cut(hold_s=1.0))
    await asyncio.sleep(0.2)
    joiner = await _connect(voxgate_server, guild, channel, bob)
    await cut
    joined = await connection.next_event(MembersConnected, timeout=10)
    assert joined.user_ids == (bob,)
    assert connection.resumes == 1
    await joiner.close()
    await connection.close()
    await proxy.close()


async def test_refused_token_raises_at_once_without_retrying(voxgate_server, ids) -> None:
    events = voxgate_server.join(ids(), ids(), ids())
    events["voice_server"]["token"] = events["voice_server"]["token"][:-4] + "AAAA"
    with pytest.raises(VoiceConnectionError) as refused:
        await VoiceConnection.connect(
            events["voice_state"], events["voice_server"], ssl=_trust(voxgate_server)
        )
    assert refused.value.close_code == 4004


async def test_any_file_ffmpeg_reads_and_raw_pcm_are_encoded_and_sent(
    voxgate_server, tmp_path, ids, tones
) -> None:
    guild, channel, alice, bob = ids(), ids(), ids(), ids()
    file, windows = tones(1.0, 15)
    sender = await _connect(voxgate_server, guild, channel, alice)
    receiver = await _connect(voxgate_server, guild, channel, bob)
    recording = AudioReceiver(receiver)
    # Re-encode the Ogg through FFmpeg (as any mp3/wav/url would be), then raw PCM.
    await AudioPlayer(sender, FFmpegSource(file)).play()
    pcm = b"".join(bytes(frame.planes[0])[: frame.samples * 4] for frame in _decode_to_s16(file))
    await AudioPlayer(sender, PCMSource([pcm])).play()
    await asyncio.sleep(0.2)
    recording.close()
    track = recording.by_user()[alice]
    assert track.packets >= 2 * len(windows) * 5
    written = recording.save_wav(tmp_path / "rec")
    heard = _windows_of_wav(written[alice])
    assert _matching(windows, heard[: len(windows)]) >= len(windows) - 1
    await sender.close()
    await receiver.close()


def _decode_to_s16(path: Path):
    import av

    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000)
        for frame in container.decode(audio=0):
            yield from resampler.resample(frame)


async def test_record_command_writes_a_wav_per_user_with_the_right_tones(
    voxgate_server, tmp_path, ids, tones
) -> None:
    guild, channel, listener, speaker = ids(), ids(), ids(), ids()
    file, windows = tones(2.0, 16)
    join_file = tmp_path / "join.json"
    join_file.write_text(json.dumps(voxgate_server.join(guild, channel, listener)))
    outdir = tmp_path / "out"
    record = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voxgate",
        "record",
        str(outdir),
        "--join",
        str(join_file),
        "--ca",
        str(voxgate_server.ca_path),
        "--seconds",
        "5",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    await asyncio.sleep(2.0)
    async with VoiceChannel(voxgate_server, tmp_path, guild, channel) as room:
        await room.start("js", "play", speaker, file=file)
        await room.finish()
    _, stderr = await asyncio.wait_for(record.communicate(), 30)
    assert record.returncode == 0, stderr.decode()
    assert f"{speaker}.wav" in stderr.decode()
    heard = _windows_of_wav(outdir / f"{speaker}.wav")
    assert _matching(windows, heard) == len(windows)
    assert (outdir / "mix.wav").exists()


async def test_bad_join_is_one_clear_line(tmp_path) -> None:
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voxgate",
        "play",
        "x.ogg",
        "--join",
        str(tmp_path / "missing.json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, stderr = await done.communicate()
    assert done.returncode == 1
    assert "Traceback" not in stderr.decode()
    assert "cannot read the join events" in stderr.decode()
