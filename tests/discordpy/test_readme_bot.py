"""README's recording bot, exactly as README prints it, in the sandbox with DAVE required.

The bot file is cut out of README's "discord.py bots" section and run as a process logged
into the sandbox (a local Discord); a simulated user asks it, in a text channel, to play a
file and to record, as a person would.
"""

from __future__ import annotations

import array
import re
import wave
from pathlib import Path

import pytest

from tests.support.audio import decode_opus, dominant_tones, tone_sequence, write_tones

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = pytest.mark.interop


def readme_bot() -> str:
    section = README.read_text().split("## discord.py bots", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    (bot,) = [block for block in blocks if "bot.run(" in block]
    return bot


def _matching(sent: list[float], heard: list[float]) -> int:
    return sum(a == b for a, b in zip(sent, heard, strict=False))


@pytest.mark.voxgate_sandbox(dave="required")
async def test_readme_recording_bot_plays_and_records_under_dave(voxgate_sandbox, tmp_path) -> None:
    bot_file = tmp_path / "recording_bot.py"
    bot_file.write_text(readme_bot())
    windows = tone_sequence(2.0, seed=41)
    song = tmp_path / "song.ogg"
    write_tones(song, windows)
    bot = await voxgate_sandbox.run_bot(bot_file, cwd=tmp_path)
    await bot.wait_for_output("^ready as")
    alice = voxgate_sandbox.user("alice")
    await alice.join()

    async def say(text: str, reply: str) -> dict:
        sent = await alice.send(text)
        return await voxgate_sandbox.wait_for_message(reply, author=bot, after=sent, timeout=60)

    # !play: FFmpegPCMAudio, re-encoded by the bot, heard by alice as the same tones.
    await alice.send(f"!play {song}")
    await bot.wait_for_output("^done", timeout=60)
    heard = await alice.wait_heard(bot, packets=90, quiet=0.5)
    mono = decode_opus(heard.audio)
    start = next(index for index, value in enumerate(mono) if abs(value) > 64)
    played = _matching(windows, dominant_tones(mono[start:]))
    # !record: alice speaks a tone; the bot writes what it decrypted to recordings/<id>.wav.
    started = await say("!record 3", "^Recording for 3 s")
    code = started["content"].rsplit(" ", 1)[1]
    assert code == alice.connection.dave.privacy_code and re.fullmatch(r"\d{30}", code)
    await alice.play_tone(770.0, 1.5)
    saved = await voxgate_sandbox.wait_for_message("^Saved", author=bot, after=started, timeout=30)
    wav = tmp_path / "recordings" / f"{alice.user_id}.wav"
    assert str(wav.relative_to(tmp_path)) in saved["content"]
    with wave.open(str(wav)) as reader:
        recorded = array.array("h", reader.readframes(reader.getnframes()))[0::2]
    start = next(index for index, value in enumerate(recorded) if abs(value) > 64)
    tones_heard = dominant_tones(recorded[start:])
    print(
        f"\nREADME bot in the sandbox, DAVE required (privacy code {code}): !play heard as"
        f" {played}/{len(windows)} tone windows; !record wrote {wav.name}:"
        f" {len(recorded) / 48_000:.2f} s, tones {sorted(set(tones_heard))}"
    )
    assert played >= len(windows) - 2
    assert len(tones_heard) >= 13 and tones_heard[:13] == [770.0] * 13
