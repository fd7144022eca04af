"""The bots under DAVE (``--dave required``), as Discord has run voice since March 2026.

discord.js (@discordjs/voice 0.19 with davey) and discord.py 2.7 (with davey) encrypt what
they send end to end, and simulated users decrypt it: byte-exact Opus once decrypted.
discord-ext-voice-recv 0.5.2a179 cannot decrypt DAVE, so a discord.py bot that records with
it gets the DAVE frames themselves (its issues #53 and #64): the sandbox shows the bot
author that failure instead of hiding it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.sandbox.test_bots import as_played, audio, command, recorded, start_bot
from tests.support.audio import ogg_packets
from voxgate.protocol.rtp import SILENCE_FRAME
from voxgate.testing import SandboxFixture

pytestmark = [pytest.mark.interop, pytest.mark.voxgate_sandbox(dave="required")]

Tones = Callable[[float, int], tuple[Path, list[float]]]
#: The last two bytes of every DAVE media frame (DAVE.md: the magic marker).
DAVE_MARKER = b"\xfa\xfa"


async def test_discord_js_bot_plays_and_hears_byte_exact_through_dave(
    voxgate_sandbox: SandboxFixture, tmp_path: Path, tones: Tones
) -> None:
    sandbox = voxgate_sandbox
    bot, recordings = await start_bot(sandbox, "music_bot.js", tmp_path)
    alice = sandbox.user("alice")
    await alice.join()
    await command(sandbox, alice, "!join", "^joined", bot)
    song, _ = tones(2.0, 12)
    await command(sandbox, alice, f"!play {song}", "^finished", bot)
    heard = await alice.wait_heard(bot, packets=len(ogg_packets(song)), quiet=0.5)
    assert heard.audio == ogg_packets(song)
    # They came end-to-end encrypted: alice opened each with the bot's DAVE key.
    assert alice.connection is not None and alice.connection.dave.ready
    assert alice.connection.dave.frames_decrypted >= len(ogg_packets(song))

    await command(sandbox, alice, "!listen", "^listening$", bot)
    speech, _ = tones(2.0, 13)
    await alice.play(speech)
    await command(sandbox, alice, "!save", rf"packets from {alice.user_id}", bot)
    assert audio(recorded(recordings, alice.user_id)) == ogg_packets(speech)
    print(
        f"under DAVE (privacy code {alice.connection.dave.privacy_code}) alice heard the "
        f"discord.js bot's {len(heard.audio)} packets and it heard her "
        f"{len(ogg_packets(speech))}, byte for byte after decryption"
    )


async def test_discord_py_bot_plays_through_dave_but_voice_recv_records_ciphertext(
    voxgate_sandbox: SandboxFixture, tmp_path: Path, tones: Tones
) -> None:
    sandbox = voxgate_sandbox
    bot, recordings = await start_bot(sandbox, "music_bot.py", tmp_path)
    alice = sandbox.user("alice")
    await alice.join()
    await command(sandbox, alice, "!join", "^joined", bot)

    # What discord.py sends, alice decrypts: the song, byte for byte.
    song, _ = tones(2.0, 14)
    await command(sandbox, alice, f"!play {song}", "^finished", bot)
    heard = await alice.wait_heard(bot, packets=len(ogg_packets(song)), quiet=0.5)
    assert as_played("music_bot.py", heard.audio) == ogg_packets(song)
    assert alice.connection is not None
    assert alice.connection.dave.frames_decrypted >= len(ogg_packets(song))

    # What alice says, the bot's recorder keeps encrypted: DAVE frames, not her Opus.
    await command(sandbox, alice, "!listen", "^listening$", bot)
    speech, _ = tones(2.0, 15)
    await alice.play(speech)
    await command(sandbox, alice, "!save", rf"packets from {alice.user_id}", bot)
    got = [packet for packet in recorded(recordings, alice.user_id) if packet != SILENCE_FRAME]
    sent = ogg_packets(speech)
    assert len(got) >= len(sent) - 5
    assert not set(got) & set(sent)
    assert all(packet.endswith(DAVE_MARKER) for packet in got)
    print(
        f"under DAVE the discord.py bot recorded {len(got)} DAVE frames from alice, none of "
        f"them one of the {len(sent)} Opus packets she spoke"
    )
