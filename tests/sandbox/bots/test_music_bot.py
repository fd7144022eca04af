from pathlib import Path

import pytest

from voxgate.client import OggOpusSource

HERE = Path(__file__).parent
SONG = HERE / "song.ogg"


@pytest.mark.voxgate_sandbox(dave="off")  # discord-ext-voice-recv cannot decrypt DAVE
@pytest.mark.parametrize("bot_file", ["music_bot.py", "music_bot.js"])
async def test_the_bot_plays_a_song_and_hears_alice(voxgate_sandbox, tmp_path, bot_file):
    bot = await voxgate_sandbox.run_bot(HERE / bot_file, env={"RECORDINGS": str(tmp_path)})
    await bot.wait_for_output("^ready")
    alice = voxgate_sandbox.user("alice")
    await alice.join()  # the sandbox's voice channel

    async def say(text, reply):
        sent = await alice.send(text)  # in the sandbox's text channel
        return await voxgate_sandbox.wait_for_message(reply, author=bot, after=sent)

    await say("!join", "^joined")
    await say(f"!play {SONG}", "^finished")
    song = list(OggOpusSource(SONG).frames())
    heard = await alice.wait_heard(bot, packets=len(song), quiet=0.5)
    # discord.py's FFmpegOpusAudio sends the Ogg headers FFmpeg writes (OpusHead, OpusTags)
    # as its first two packets, on Discord too. Then comes the song, byte for byte.
    audio = [packet for packet in heard.audio if not packet.startswith((b"OpusHead", b"OpusTags"))]
    assert audio == song

    await say("!listen", "^listening$")
    await alice.play(SONG)
    await say("!save", "^saved")
    saved = (tmp_path / f"{alice.user_id}.hex").read_text().split()
    assert [bytes.fromhex(packet) for packet in saved[: len(song)]] == song
