"""An unmodified discord.py bot in the sandbox (a local Discord), with DAVE required.

The bot is the sandbox suite's own music bot (``tests/sandbox/bots/music_bot.py``), written
for discord-ext-voice-recv, which on a DAVE call hands its sinks ciphertext (the sandbox
suite runs it with DAVE off for that reason). Here it runs with its voice-recv import
switched to ``voxgate.discordpy`` and nothing else changed: it logs into the sandbox's
gateway, joins with ``channel.connect(cls=voice_recv.VoiceRecvClient)``, plays a song with
``FFmpegOpusAudio.from_probe`` and records a simulated user with voice-recv's own
``BasicSink``; both ways byte for byte, through DAVE.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.audio import heard_positions
from voxgate.client import OggOpusSource

BOTS = Path(__file__).resolve().parents[1] / "sandbox" / "bots"
SONG = BOTS / "song.ogg"
IMPORT = "from discord.ext import commands, voice_recv\n"
SWITCHED = "from discord.ext import commands\nfrom voxgate.discordpy import voice_recv\n"

pytestmark = pytest.mark.interop


@pytest.mark.voxgate_sandbox(dave="required")
async def test_a_voice_recv_music_bot_switched_to_voxgate_plays_and_records_under_dave(
    voxgate_sandbox, tmp_path
) -> None:
    original = (BOTS / "music_bot.py").read_text()
    assert original.count(IMPORT) == 1
    bot_file = tmp_path / "music_bot.py"
    bot_file.write_text(original.replace(IMPORT, SWITCHED))
    recordings = tmp_path / "recordings"
    bot = await voxgate_sandbox.run_bot(bot_file, env={"RECORDINGS": str(recordings)}, cwd=BOTS)
    await bot.wait_for_output("^ready")
    alice = voxgate_sandbox.user("alice")
    await alice.join()

    async def say(text: str, reply: str) -> dict:
        sent = await alice.send(text)
        return await voxgate_sandbox.wait_for_message(reply, author=bot, after=sent, timeout=60)

    await say("!join", "^joined")
    song = list(OggOpusSource(SONG).frames())
    # The bot's call is end-to-end encrypted before anything is played.
    connection = alice._connected()
    await voxgate_sandbox.wait_for(
        lambda: connection.dave.ready and len(connection.dave.group_user_ids()) == 2, timeout=20
    )
    privacy_code = connection.dave.privacy_code
    await say(f"!play {SONG}", "^finished")
    heard = await alice.wait_heard(bot, packets=len(song), quiet=0.5)
    assert heard.audio == song  # no Ogg header packets sent as audio, then the song exactly
    await say("!listen", "^listening$")
    await alice.play(SONG)
    saved = await say("!save", "^saved")
    recorded = (recordings / f"{alice.user_id}.hex").read_text().split()
    packets = [bytes.fromhex(packet) for packet in recorded]
    print(
        f"\nsandbox, DAVE required (privacy code {privacy_code}): the switched voice-recv bot"
        f" played {len(song)} packets to alice byte-exact; it recorded alice:"
        f" {saved['content']!r}, byte-exact: {packets[: len(song)] == song}"
    )
    assert packets[: len(song)] == song
    assert connection.dave.frames_decrypted >= len(song)


async def _switched_bot(voxgate_sandbox, tmp_path):
    bot_file = tmp_path / "music_bot.py"
    bot_file.write_text((BOTS / "music_bot.py").read_text().replace(IMPORT, SWITCHED))
    bot = await voxgate_sandbox.run_bot(bot_file, env={"RECORDINGS": str(tmp_path)}, cwd=BOTS)
    await bot.wait_for_output("^ready")
    return bot


@pytest.mark.voxgate_sandbox(dave="required")
async def test_the_bot_follows_a_move_a_failover_and_a_moderator_disconnect(
    voxgate_sandbox, tmp_path
) -> None:
    from tests.support.audio import ogg_packets, tone_sequence, write_tones

    song = tmp_path / "long.ogg"
    write_tones(song, tone_sequence(5.0, seed=42))
    sent = ogg_packets(song)
    bot = await _switched_bot(voxgate_sandbox, tmp_path)
    alice = voxgate_sandbox.user("alice")
    await alice.join()

    async def say(text: str, reply: str, timeout: float = 60) -> dict:
        message = await alice.send(text)
        return await voxgate_sandbox.wait_for_message(
            reply, author=bot, after=message, timeout=timeout
        )

    await say("!join", "^joined")
    # Alice moves to another channel; !join moves the bot there (discord.py's move_to).
    elsewhere = voxgate_sandbox.create_voice_channel(voxgate_sandbox.guild_id, "elsewhere")
    await alice.join(elsewhere)
    await say("!join", f"^joined {elsewhere}")
    # Playing there while Discord moves the call to another voice server.
    playing = await alice.send(f"!play {song}")
    await voxgate_sandbox.wait_for_message("^playing", author=bot, after=playing, timeout=30)
    await alice.wait_heard(bot, packets=50)
    await voxgate_sandbox.voice_server_failover(voxgate_sandbox.guild_id)
    await voxgate_sandbox.wait_for_message("^finished", author=bot, after=playing, timeout=60)
    heard = (await alice.wait_heard(bot, packets=len(sent) - 50, quiet=0.5)).audio
    positions = heard_positions(sent, heard)
    print(
        f"\nsandbox: moved with alice to {elsewhere}; through a voice-server failover alice"
        f" heard {len(heard)} of {len(sent)} packets, in order, to the last"
    )
    assert positions[-1] == len(sent) - 1 and len(heard) >= len(sent) - 5
    # A moderator disconnects the bot: it leaves cleanly, and can be asked to join again.
    await voxgate_sandbox.disconnect_member(int(bot.user_id), voxgate_sandbox.guild_id)
    await voxgate_sandbox.wait_for(
        lambda: all(state["user_id"] != bot.user_id for state in voxgate_sandbox.voice_states()),
        timeout=20,
    )
    await say("!join", f"^joined {elsewhere}")
