"""Recording a call from the CLI: a recorder member every client sees, one WAV per speaker.

A live ``voxgate serve`` (DAVE on, as by default); @discordjs/voice and the voxgate client
each play their own tones; ``voxgate admin record`` has the node's recorder join the call
as one more DAVE member and write what it heard. Each speaker's Opus packets, as the
recorder opened them, must be the file's packets byte for byte, and the WAV must carry the
same tones.
"""

from __future__ import annotations

import array
import asyncio
import json
import sys
import wave
from pathlib import Path

import aiohttp
import pytest

from tests.console.conftest import Heard, channel_members, join_voxgate, until
from tests.support.audio import (
    SILENCE,
    dominant_tones,
    ogg_packets,
)
from tests.support.drivers import VoiceChannel
from tests.support.server import RunningServer
from voxgate.client.connection import MembersConnected
from voxgate.client.player import AudioPlayer
from voxgate.client.sources import OggOpusSource

pytestmark = pytest.mark.interop


def _contiguous_in(heard: list[bytes], sent: list[bytes]) -> int:
    """Where ``heard`` starts in ``sent`` as one unbroken run, intact and in order."""
    for start in range(len(sent) - len(heard) + 1):
        if sent[start : start + len(heard)] == heard:
            return start
    raise AssertionError(f"{len(heard)} packets heard are not a run of the {len(sent)} sent")


def _tones_of(wav: Path) -> list[float]:
    with wave.open(str(wav)) as file:
        assert (file.getframerate(), file.getnchannels()) == (48_000, 2)
        samples = array.array("h", file.readframes(file.getnframes()))
    mono = samples[0::2]
    first = next(i for i, sample in enumerate(mono) if abs(sample) > 500)
    return dominant_tones(mono[first:])


def _best_match(heard: list[float], sent: list[float]) -> float:
    """The share of windows whose tone is the one sent, at the best offset of a window."""
    best = 0.0
    for shift in range(-2, 3):
        pairs = [(heard[i + shift], tone) for i, tone in enumerate(sent)
                 if 0 <= i + shift < len(heard)]  # fmt: skip
        if pairs:
            best = max(best, sum(a == b for a, b in pairs) / len(sent))
    return best


async def test_cli_recording_of_two_real_clients_matches_what_each_sent(
    console_node: RunningServer, http: aiohttp.ClientSession, tmp_path, tones, ids
) -> None:
    guild, channel = ids(), ids()
    js_song, js_tones = tones(3.0, 11)
    our_song, our_tones = tones(3.0, 12)
    ours_id = ids()
    ours = Heard(await join_voxgate(console_node, guild, channel, ours_id))
    out = tmp_path / "recorded"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxgate",
        "admin", "record", "--guild", guild, "--channel", channel, "--seconds", "9",
        "--out", str(out), "--data-dir", str(console_node.data_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    communicated = asyncio.create_task(process.communicate())
    # The recorder is a member like any other: listed as such, and announced to everyone.
    async with asyncio.timeout(20):
        while True:
            members = await channel_members(console_node, http)
            recorders = [m for m in members.values() if m["recorder"]]
            if recorders and recorders[0]["dave_state"] == "member":
                break
            await asyncio.sleep(0.1)
    recorder_id = recorders[0]["user_id"]
    await until(lambda: any(recorder_id in e.user_ids for e in ours.of(MembersConnected)))
    async with VoiceChannel(console_node, tmp_path, guild, channel) as call:
        js = await call.start("js", "play", ids(), file=js_song, flags=["--e2ee"], linger=0.5)
        js_id = js.name.rsplit(":", 1)[1]
        await ours.connection.until_encrypted(10)
        await AudioPlayer(ours.connection, OggOpusSource(our_song)).play()
        await js.finish()
        assert any(
            recorder_id in (e.get("d") or {}).get("user_ids", [])
            for e in js.saw("ws", op=11)
        ), "discord.js was never told of the recorder"
    stdout, stderr = await communicated
    assert process.returncode == 0, stderr.decode()
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    assert summary["state"] == "done" and summary["user_id"] == recorder_id
    assert summary["privacy_code"], "the recorder was not in the call's DAVE group"
    assert "recording" in stderr.decode() and "packets lost" in stderr.decode()
    for user, song, sent_tones in ((js_id, js_song, js_tones), (ours_id, our_song, our_tones)):
        recorded = [
            bytes.fromhex(json.loads(line)["opus"])
            for line in (out / f"{user}.opus.jsonl").read_text().splitlines()
        ]
        heard = [p for p in recorded if p != SILENCE]
        sent = [p for p in ogg_packets(song) if p != SILENCE]
        _contiguous_in(heard, sent)
        assert len(heard) >= len(sent) - 2, (user, len(heard), len(sent))
        assert _best_match(_tones_of(out / f"{user}.wav"), sent_tones) >= 0.9, user
    assert (out / "mix.wav").stat().st_size > 2 * 48_000 * 4
    listed = {f for f in summary["files"]}
    assert {f"{js_id}.wav", f"{ours_id}.wav", "mix.wav", "recording.json"} <= listed
    # The node lists the recording and serves its files to the console.
    async with http.get(
        f"{console_node.admin_url}/v1/recordings/{summary['id']}/files/mix.wav",
        headers={"Authorization": f"Bearer {console_node.admin_key}"},
    ) as response:
        assert response.status == 200
        assert await response.read() == (out / "mix.wav").read_bytes()
    ours.stop()
    await ours.connection.close()
