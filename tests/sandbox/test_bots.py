"""Unmodified discord.py and discord.js bots in the sandbox, with simulated users.

Each bot under ``bots/`` is a file that would run on Discord as it is: it is started with
``run_bot`` (the launcher module for discord.py, the ``node -r`` preload for discord.js),
driven the way its users drive it (``!join``, ``/join``, ``!play`` typed by a simulated
user), and checked by what a simulated user hears and by the Opus packets the bot itself
saved: the same bytes as the file played, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.audio import ogg_packets
from voxgate.client import MembersConnected
from voxgate.protocol.rtp import SILENCE_FRAME
from voxgate.testing import BotProcess, SandboxFixture

# discord-ext-voice-recv cannot decrypt DAVE, so bots that receive do so without it (the
# issue's rule until voxgate's discord.py backend lands); test_bots_dave.py runs them with it.
pytestmark = [pytest.mark.interop, pytest.mark.voxgate_sandbox(dave="off")]

BOTS = Path(__file__).parent / "bots"
LIBRARIES = [
    pytest.param("music_bot.py", id="discord.py"),
    pytest.param("music_bot.js", id="discord.js"),
]

Tones = Callable[[float, int], tuple[Path, list[float]]]


def recorded(folder: Path, user_id: str) -> list[bytes]:
    """The Opus packets a music bot saved for ``user_id`` (one hex packet per line)."""
    path = folder / f"{user_id}.hex"
    assert path.exists(), f"the bot saved nothing for {user_id}: {list(folder.glob('*'))}"
    return [bytes.fromhex(line) for line in path.read_text().split()]


def as_played(name: str, heard: list[bytes]) -> list[bytes]:
    """What a listener hears from the bot ``name`` playing a file, Ogg headers taken off.

    discord.py's ``FFmpegOpusAudio`` sends every packet of the Ogg stream FFmpeg writes,
    the OpusHead and OpusTags headers included, as its first two voice packets (on
    Discord too); the audio that follows is the file's, byte for byte.
    """
    if name.endswith(".py"):
        assert heard[0].startswith(b"OpusHead") and heard[1].startswith(b"OpusTags")
        return heard[2:]
    return heard


def difference(heard: list[bytes], sent: list[bytes]) -> str:
    """How ``heard`` differs from ``sent`` ("" when it does not): a packet lost, one
    repeated, two swapped, or where they part."""
    if heard == sent:
        return ""
    pairs = enumerate(zip(heard, sent, strict=False))
    at = next((i for i, (a, b) in pairs if a != b), min(len(heard), len(sent)))
    shape = f"{len(heard)} packets of {len(sent)}, first difference at {at}"
    if heard == sent[:at] + sent[at + 1 :]:
        return f"{shape}: packet {at} lost"
    if heard == sent[:at] + sent[at - 1 : at] + sent[at:]:
        return f"{shape}: packet {at - 1} repeated"
    if heard == sent[:at] + sent[at + 1 : at + 2] + sent[at : at + 1] + sent[at + 2 :]:
        return f"{shape}: packets {at} and {at + 1} swapped"
    return shape


def audio(packets: list[bytes]) -> list[bytes]:
    """The packets that carry sound (what ``Heard.audio`` is): without the silence frames
    senders end a talk spurt with, and that @discordjs/voice sends when its stream has
    nothing ready in time (the files played here have none of their own)."""
    return [packet for packet in packets if packet != SILENCE_FRAME]


async def start_bot(
    sandbox: SandboxFixture, name: str, tmp_path: Path, *, bot: int = 0
) -> tuple[BotProcess, Path]:
    recordings = tmp_path / f"recordings-{bot}"
    process = await sandbox.run_bot(BOTS / name, bot=bot, env={"RECORDINGS": str(recordings)})
    await process.wait_for_output(r"^ready as")
    return process, recordings


async def command(
    sandbox: SandboxFixture,
    user: object,
    text: str,
    reply: str,
    bot: BotProcess,
    *,
    timeout: float = 40,
) -> dict:
    """``user`` types ``text``; returns the bot's reply matching ``reply``."""
    sent = await user.send(text)  # type: ignore[attr-defined]
    return await sandbox.wait_for_message(reply, author=bot, after=sent, timeout=timeout)


@pytest.mark.parametrize("name", LIBRARIES)
async def test_bot_sees_the_guild_joins_plays_and_hears_byte_exact(
    voxgate_sandbox: SandboxFixture, tmp_path: Path, tones: Tones, name: str
) -> None:
    sandbox = voxgate_sandbox
    bot, recordings = await start_bot(sandbox, name, tmp_path)
    ready = await bot.wait_for_output(r"ready as (\d+) in guild (\d+) voice channels (.*)")
    assert ready.group(1) == sandbox.bots[0]["user_id"]
    assert ready.group(2) == sandbox.guild_id
    assert sandbox.voice_channel_id in ready.group(3).split()

    alice = sandbox.user("alice")
    await alice.join()
    await command(sandbox, alice, "!join", rf"^joined {sandbox.voice_channel_id}$", bot)

    # The bot plays a file: alice hears its packets, byte for byte.
    song, _ = tones(2.0, 1)
    await command(sandbox, alice, f"!play {song}", r"^finished", bot)
    heard = await alice.wait_heard(bot, packets=len(ogg_packets(song)), quiet=0.5)
    assert as_played(name, heard.audio) == ogg_packets(song)
    assert heard.duration > 1.5
    # It said it was speaking, then that it stopped, around one burst of packets (op 5 and
    # the first packet may leave together: their order on arrival is the network's).
    speaking = alice.timeline(bot)
    assert [c.flags & 1 for c in speaking][-2:] == [1, 0]
    (burst,) = alice.bursts(bot)
    assert speaking[-2].at <= burst.start + 0.1 and burst.end <= speaking[-1].at + 0.2
    print(
        f"{name} played {song.name}: alice heard {len(heard)} packets, the file's "
        f"{len(ogg_packets(song))} byte for byte, {heard.duration:.2f} s decoded"
    )

    # Alice speaks: the bot hears her packets, byte for byte.
    await command(sandbox, alice, "!listen", r"^listening$", bot)
    speech, _ = tones(2.0, 2)
    await alice.play(speech)
    saved = await command(sandbox, alice, "!save", rf"packets from {alice.user_id}", bot)
    assert audio(recorded(recordings, alice.user_id)) == ogg_packets(speech)
    print(
        f"{name} heard alice play {speech.name}: it said {saved['content']!r}; its "
        f"{len(audio(recorded(recordings, alice.user_id)))} audio packets are the file's "
        f"{len(ogg_packets(speech))} byte for byte"
    )


@pytest.mark.parametrize("name", LIBRARIES)
async def test_bot_joins_on_a_slash_command(
    voxgate_sandbox: SandboxFixture, tmp_path: Path, tones: Tones, name: str
) -> None:
    sandbox = voxgate_sandbox
    bot, _ = await start_bot(sandbox, name, tmp_path)
    bob = sandbox.user("bob")
    await bob.join()
    await bob.command("join")
    await sandbox.wait_for_message(rf"^joined {sandbox.voice_channel_id}$", author=bot)
    song, _ = tones(1.0, 3)
    await command(sandbox, bob, f"!play {song}", r"^finished", bot)
    heard = await bob.wait_heard(bot, packets=50, quiet=0.5)
    assert as_played(name, heard.audio) == ogg_packets(song)


@pytest.mark.parametrize("name", LIBRARIES)
async def test_bot_follows_a_user_into_another_channel(
    voxgate_sandbox: SandboxFixture, tmp_path: Path, tones: Tones, name: str
) -> None:
    sandbox = voxgate_sandbox
    other = str(sandbox.create_voice_channel(sandbox.guild_id, "music"))
    bot, _ = await start_bot(sandbox, name, tmp_path)
    alice = sandbox.user("alice")
    await alice.join()
    await command(sandbox, alice, "!join", rf"^joined {sandbox.voice_channel_id}$", bot)
    await alice.move(other)
    await command(sandbox, alice, "!join", rf"^joined {other}$", bot)
    # (discord.js, connected already, answers before its op 4 has been answered: a move
    # keeps a voice connection Ready.)
    both_there = {alice.user_id: other, bot.user_id: other}
    await sandbox.wait_for(
        lambda: {s["user_id"]: s["channel_id"] for s in sandbox.voice_states()} == both_there
    )
    song, _ = tones(1.0, 16)
    await command(sandbox, alice, f"!play {song}", r"^finished", bot)
    heard = await alice.wait_heard(bot, packets=len(ogg_packets(song)), quiet=0.5)
    assert as_played(name, heard.audio) == ogg_packets(song)


@pytest.mark.parametrize("name", LIBRARIES)
async def test_bot_refuses_to_join_when_the_user_is_not_in_voice(
    voxgate_sandbox: SandboxFixture, tmp_path: Path, name: str
) -> None:
    bot, _ = await start_bot(voxgate_sandbox, name, tmp_path)
    carol = voxgate_sandbox.user("carol")
    await command(voxgate_sandbox, carol, "!join", r"^join a voice channel first$", bot)


async def test_a_discord_py_bot_and_a_discord_js_bot_hear_each_other(
    voxgate_sandbox: SandboxFixture, tmp_path: Path, tones: Tones
) -> None:
    sandbox = voxgate_sandbox
    dpy, dpy_recordings = await start_bot(sandbox, "music_bot.py", tmp_path, bot=0)
    js, js_recordings = await start_bot(sandbox, "music_bot.js", tmp_path, bot=1)
    alice = sandbox.user("alice")
    await alice.join()
    for text, reply in (("!join", "^joined"), ("!listen", "^listening$")):
        sent = await alice.send(text)
        for bot in (dpy, js):
            await sandbox.wait_for_message(reply, author=bot, after=sent, timeout=40)
    # Both play the same file at once; each records the other.
    song, _ = tones(2.0, 4)
    sent = await alice.send(f"!play {song}")
    for bot in (dpy, js):
        await sandbox.wait_for_message("^finished", author=bot, after=sent, timeout=40)
    await alice.wait_heard(dpy, packets=len(ogg_packets(song)), quiet=0.5)
    await alice.wait_heard(js, packets=len(ogg_packets(song)), quiet=0.5)
    sent = await alice.send("!save")
    for bot in (dpy, js):
        await sandbox.wait_for_message("^saved", author=bot, after=sent)
    # Each bot recorded the other, and alice, in the same channel, heard both: all four
    # checked before any fails, so a failure says whose copy went wrong, and how.
    expected = ogg_packets(song)
    heard = {
        "discord.py bot, of the discord.js bot": audio(recorded(dpy_recordings, js.user_id)),
        "discord.js bot, of the discord.py bot": as_played(
            ".py", audio(recorded(js_recordings, dpy.user_id))
        ),
        "alice, of the discord.py bot": as_played(".py", alice.heard(dpy).audio),
        "alice, of the discord.js bot": alice.heard(js).audio,
    }
    wrong = {who: what for who, packets in heard.items() if (what := difference(packets, expected))}
    assert not wrong, wrong
    print(
        f"both played {song.name} at once: discord.py heard discord.js's "
        f"{len(audio(recorded(dpy_recordings, js.user_id)))} audio packets and discord.js "
        f"heard discord.py's {len(audio(recorded(js_recordings, dpy.user_id)))} (2 Ogg "
        f"headers + {len(ogg_packets(song))}), byte for byte"
    )


@pytest.mark.parametrize("name", LIBRARIES)
async def test_bot_resumes_after_the_gateway_drops_and_rejoins_after_a_voice_failover(
    voxgate_sandbox: SandboxFixture, tmp_path: Path, tones: Tones, name: str
) -> None:
    sandbox = voxgate_sandbox
    bot, _ = await start_bot(sandbox, name, tmp_path)
    alice = sandbox.user("alice")
    await alice.join()
    await command(sandbox, alice, "!join", "^joined", bot)

    assert await sandbox.drop_gateway(bot.user_id) == 1
    await bot.wait_for_output(r"^resumed$")
    first, _ = tones(1.0, 5)
    await command(sandbox, alice, f"!play {first}", r"^finished", bot)
    await alice.wait_heard(bot, packets=len(ogg_packets(first)), quiet=0.5)
    assert as_played(name, alice.heard(bot).audio) == ogg_packets(first)

    seen = len(alice.events)
    await sandbox.voice_server_failover(sandbox.guild_id)
    # The bot comes back on the new voice server: a new session joins alice's channel.
    await alice.wait_event(MembersConnected, lambda e: bot.user_id in e.user_ids, after=seen)
    # Clients Connect comes at the new session's Identify; discord.py's voice client is
    # connected only once its Session Description has been sent, and a `!play` before that
    # is "Not connected to voice".
    await sandbox.wait_for(lambda: _voice_described(sandbox, bot.user_id), timeout=20)
    before = len(alice.heard(bot))
    second, _ = tones(1.0, 6)
    await command(sandbox, alice, f"!play {second}", r"^finished", bot)
    heard = await alice.wait_heard(bot, packets=before + len(ogg_packets(second)), quiet=0.5)
    assert as_played(name, audio(heard.opus[before:])) == ogg_packets(second)


def _voice_described(sandbox: SandboxFixture, user_id: object) -> bool:
    """Whether ``user_id`` has a voice session whose Session Description has gone out."""
    assert sandbox.node is not None
    return any(
        session.user_id == str(user_id) and session.described and not session.deferred
        for session in sandbox.node.router.sessions.values()
    )


async def test_discord_py_connect_times_out_without_the_voice_states_intent(
    voxgate_sandbox: SandboxFixture,
) -> None:
    bot = await voxgate_sandbox.run_bot(BOTS / "no_voice_states_bot.py")
    await bot.wait_for_output(r"^connect timed out$", timeout=40)


@pytest.mark.filterwarnings("ignore::voxgate.testing.UnhandledRouteWarning")  # expected here
async def test_a_route_the_sandbox_does_not_serve_is_reported(
    voxgate_sandbox: SandboxFixture,
) -> None:
    bot = await voxgate_sandbox.run_bot(BOTS / "sticker_bot.py")
    await bot.wait_for_output(r"^not found")
    assert any("/sticker-packs" in route for route in voxgate_sandbox.unhandled_routes)
    assert "/sticker-packs" in voxgate_sandbox.logs()
