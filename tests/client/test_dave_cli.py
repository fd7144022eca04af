"""``voxgate play`` and ``voxgate record`` in one DAVE call: both print the same privacy code."""

from __future__ import annotations

import asyncio
import json
import re
import sys

from tests.support.audio import ogg_packets

CODE = re.compile(r"privacy code \(epoch (\d+)\): ((?:\d{5} ){5}\d{5})")


async def _voxgate(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voxgate",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_play_and_record_print_the_same_privacy_code(
    voxgate_server, tmp_path, ids, tones
) -> None:
    guild, channel, recorder, player = ids(), ids(), ids(), ids()
    file, _ = tones(2.0, 31)
    joins = {}
    for user in (recorder, player):
        joins[user] = tmp_path / f"join-{user}.json"
        joins[user].write_text(json.dumps(voxgate_server.join(guild, channel, user)))
    ca = str(voxgate_server.ca_path)
    record = await _voxgate(
        "record", str(tmp_path / "rec"), "--join", str(joins[recorder]), "--ca", ca,
        "--seconds", "5", "--opus",
    )  # fmt: skip
    await asyncio.sleep(1.0)
    play = await _voxgate("play", str(file), "--join", str(joins[player]), "--ca", ca)
    _, play_err = await asyncio.wait_for(play.communicate(), 60)
    _, record_err = await asyncio.wait_for(record.communicate(), 60)
    assert play.returncode == 0 and record.returncode == 0, (play_err, record_err)
    played, recorded = play_err.decode(), record_err.decode()
    play_codes = {code for _, code in CODE.findall(played)}
    record_codes = {code for _, code in CODE.findall(recorded)}
    assert len(play_codes) == 1 and play_codes <= record_codes, (played, recorded)
    assert "E2EE epoch" in played
    # And the recording is what was played, opened from DAVE frames.
    lines = (tmp_path / "rec" / f"{player}.opus.jsonl").read_text().splitlines()
    heard = [bytes.fromhex(json.loads(line)["opus"]) for line in lines]
    assert [packet for packet in heard if packet != b"\xf8\xff\xfe"] == ogg_packets(file)


async def test_no_dave_says_so() -> None:
    process = await _voxgate("play", "--help")
    out, _ = await process.communicate()
    assert b"--no-dave" in out
