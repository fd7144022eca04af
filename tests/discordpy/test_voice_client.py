"""A discord.py 2.7 bot with ``voxgate.discordpy.VoiceClient`` as its voice backend.

The bot is a real ``discord.Client`` (see ``harness.py``) connecting with
``channel.connect(cls=VoiceClient)`` to a real ``voxgate serve``; the others in the call
are a voxgate client in this process and @discordjs/voice in its own. What the bot records
is compared byte for byte with what was sent; what it plays is checked at the other end
byte for byte (Opus passed through) or by its tones (PCM re-encoded).
"""

from __future__ import annotations

import array
import asyncio
import wave
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import discord
import pytest

import voxgate.discordpy
from tests.discordpy.harness import start_bot, stop_bot, trust
from tests.support.audio import (
    SILENCE,
    decode_opus,
    dominant_tones,
    ogg_packets,
    read_packet_log,
    without_trailing_silence,
)
from tests.support.drivers import VoiceChannel
from voxgate.client import AudioPlayer, OggOpusSource, VoiceConnection
from voxgate.protocol.dave import is_dave_frame

pytestmark = pytest.mark.interop


class OpusRecorder(voxgate.discordpy.AudioSink):
    """Every Opus packet, per speaker id, in the order the sink got them."""

    def __init__(self) -> None:
        super().__init__()
        self.packets: dict[int, list[bytes]] = defaultdict(list)
        self.lost = 0

    def wants_opus(self) -> bool:
        return True

    def write(self, user: Any, data: voxgate.discordpy.VoiceData) -> None:
        if data.opus is None:
            self.lost += 1
            return
        self.packets[user.id].append(data.opus)


async def _voxgate_member(server: Any, guild: int, channel: int, user: int) -> VoiceConnection:
    join = await asyncio.to_thread(server.join, str(guild), str(channel), str(user))
    return await VoiceConnection.connect(
        join["voice_state"], join["voice_server"], ssl=trust(server.ca_path)
    )


async def _until(predicate: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def _in_group(connection: VoiceConnection, *users: int) -> str:
    """Until ``connection``'s DAVE group is exactly ``users`` and ready; its privacy code."""
    expected = {str(user) for user in users}
    await _until(
        lambda: connection.dave.ready and set(connection.dave.group_user_ids()) == expected
    )
    code = connection.dave.privacy_code
    assert code is not None
    return code


async def test_bot_records_a_voxgate_client_and_a_discordjs_client_byte_exact_under_dave(
    start_voxgate, tmp_path, ids, tones
) -> None:
    server = start_voxgate("--dave", "required")
    guild, channel = int(ids()), int(ids())
    bot_id, vox_id, js_id = int(ids()), int(ids()), int(ids())
    vox_file, vox_windows = tones(2.0, 21)
    js_file, _ = tones(2.0, 22)
    client, discord_guild, _ = await start_bot(
        server, guild, [channel], user_id=bot_id, members=[vox_id, js_id]
    )
    wire: dict[int, list[bytes]] = defaultdict(list)
    try:
        vc = await discord_guild.get_channel(channel).connect(
            cls=partial(voxgate.discordpy.VoiceClient, ssl=trust(server.ca_path))
        )
        assert isinstance(vc, voxgate.discordpy.VoiceClient)
        assert discord_guild.voice_client is vc and vc.is_connected()
        assert vc.connection is not None
        # What the relay handed the bot, before DAVE opened it.
        vc.connection.add_listener(
            lambda ssrc, header, payload: wire[ssrc].append(payload), opened=False
        )
        opus = OpusRecorder()
        vc.listen(opus)
        wav_folder = tmp_path / "wav"
        heard_pcm: dict[int, int] = defaultdict(int)

        async def count_pcm() -> None:
            async for member, pcm in vc.receive():
                heard_pcm[member.id] += len(pcm)

        counting = asyncio.create_task(count_pcm())
        member = await _voxgate_member(server, guild, channel, vox_id)
        await _in_group(vc.connection, bot_id, vox_id)
        async with VoiceChannel(server, tmp_path, str(guild), str(channel)) as drivers:
            # discord.js plays once the call is end-to-end encrypted for it.
            js = await drivers.start(
                "js", "play", str(js_id), file=js_file, linger=1.0, flags=["--e2ee"]
            )
            privacy_code = await _in_group(member, bot_id, vox_id, js_id)
            await _in_group(vc.connection, bot_id, vox_id, js_id)
            bot_code = vc.privacy_code
            # Verification codes are pairwise: the bot's for the member is the member's for it.
            verification = vc.verification_code(discord.Object(vox_id))
            assert verification and verification == member.dave.verification_code(str(bot_id))
            await AudioPlayer(member, OggOpusSource(vox_file)).play()
            await drivers.finish()
        await member.close()
        await asyncio.sleep(0.3)
        vc.stop_listening()
        # The WAV sink, on a second listen: one file per speaker, as heard.
        vc.listen(voxgate.discordpy.WaveSink(wav_folder))
        member = await _voxgate_member(server, guild, channel, vox_id)
        await _in_group(member, bot_id, vox_id)
        await _in_group(vc.connection, bot_id, vox_id)
        await AudioPlayer(member, OggOpusSource(vox_file)).play()
        await member.close()
        await asyncio.sleep(0.3)
        vc.stop_listening()
        await vc.disconnect()
        counting.cancel()
    finally:
        await stop_bot(client)
    assert js.saw("played")
    js_codes = {event["code"] for event in js.saw("privacy_code") if event["code"]}
    vox_sent, js_sent = ogg_packets(vox_file), ogg_packets(js_file)
    vox_heard, js_heard = (
        without_trailing_silence(opus.packets[vox_id]),
        without_trailing_silence(opus.packets[js_id]),
    )
    relayed = [frame for frames in wire.values() for frame in frames if frame != SILENCE]
    print(
        f"\nrecording bot under DAVE (privacy code {bot_code}):"
        f"\n  {vox_id} (voxgate client): {len(vox_heard)}/{len(vox_sent)} packets,"
        f" byte-exact after DAVE decryption: {vox_heard == vox_sent}"
        f"\n  {js_id} (discord.js): {len(js_heard)}/{len(js_sent)} packets,"
        f" byte-exact after DAVE decryption: {js_heard == js_sent}"
        f"\n  relayed to the bot: {len(relayed)} frames, all DAVE frames:"
        f" {all(is_dave_frame(frame) for frame in relayed)}; lost: {opus.lost};"
        f" verification code with {vox_id}: {verification}"
    )
    assert vox_heard == vox_sent
    assert js_heard == js_sent
    assert opus.lost == 0
    # What came over the wire was DAVE ciphertext: the bot's own davey opened it.
    assert len(relayed) >= len(vox_sent) + len(js_sent)
    assert all(is_dave_frame(frame) for frame in relayed)
    # One call, one privacy code, as every member shows it.
    assert bot_code == privacy_code and privacy_code in js_codes
    assert heard_pcm[vox_id] >= len(vox_sent) * 3840
    # The WAV sink's file sounds like the file played.
    wav = wav_folder / f"{vox_id}.wav"
    assert wav.exists()
    with wave.open(str(wav)) as reader:
        frames = reader.readframes(reader.getnframes())
    mono = array.array("h", frames)[0::2]
    assert dominant_tones(mono)[: len(vox_windows) - 1] == vox_windows[: len(vox_windows) - 1]
    # Speaking start and stop reached the bot, per speaker.
    started = {member.id for (member,) in client.saw("voice_member_speaking_start")}
    stopped = {member.id for (member,) in client.saw("voice_member_speaking_stop")}
    assert {vox_id, js_id} <= started
    assert {vox_id, js_id} <= stopped
    # And the server's Speaking (op 5), as voice-recv dispatches it.
    states = {(member.id, state) for member, _, state in client.saw("voice_member_speaking_state")}
    assert (vox_id, discord.SpeakingState.voice) in states
    assert discord_guild.voice_client is None


def _matching(sent: list[float], heard: list[float]) -> int:
    return sum(a == b for a, b in zip(sent, heard, strict=False))


def _tones_of(packets: list[bytes]) -> list[float]:
    """Dominant tone per 100 ms of decoded Opus, from the first sound on."""
    mono = decode_opus(packets)
    start = next(index for index, value in enumerate(mono) if abs(value) > 64)
    return dominant_tones(mono[start:])


async def _play(vc: voxgate.discordpy.VoiceClient, source: discord.AudioSource) -> None:
    """``vc.play(source)`` until ``after`` is called; fails on the error it is given."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[Exception | None] = loop.create_future()
    vc.play(source, after=lambda error: loop.call_soon_threadsafe(finished.set_result, error))
    assert vc.is_playing()
    error = await asyncio.wait_for(finished, 60)
    assert error is None
    assert not vc.is_playing()


async def test_bot_plays_ffmpeg_pcm_and_ffmpeg_opus_heard_by_discordjs_under_dave(
    start_voxgate, tmp_path, ids, tones
) -> None:
    voxgate_server = start_voxgate("--dave", "required")
    guild, channel = int(ids()), int(ids())
    bot_id, js_id = int(ids()), int(ids())
    pcm_file, pcm_windows = tones(2.0, 23)
    opus_file, _ = tones(2.0, 24)
    client, discord_guild, _ = await start_bot(voxgate_server, guild, [channel], user_id=bot_id)
    try:
        async with VoiceChannel(voxgate_server, tmp_path, str(guild), str(channel)) as drivers:
            listener = await drivers.start("js", "receive", str(js_id), out=True, seconds=9)
            await listener.wait_for("listening")
            vc = await discord_guild.get_channel(channel).connect(
                cls=partial(voxgate.discordpy.VoiceClient, ssl=trust(voxgate_server.ca_path))
            )
            assert vc.connection is not None
            await _in_group(vc.connection, bot_id, js_id)
            # A music bot's two usual sources, exactly as it makes them for discord.py.
            await _play(vc, discord.PCMVolumeTransformer(discord.FFmpegPCMAudio(str(pcm_file))))
            await _play(vc, discord.FFmpegOpusAudio(str(opus_file), codec="copy"))
            await vc.disconnect()
            await drivers.finish()
    finally:
        await stop_bot(client)
    assert listener.out is not None
    heard = read_packet_log(listener.out)[str(bot_id)]
    sent = ogg_packets(opus_file)
    # The Ogg/Opus file's packets, passed through: byte for byte, after the PCM part.
    start = heard.index(sent[0])
    assert without_trailing_silence(heard[start:]) == sent
    # The PCM part, re-encoded by the bot: the same tones, window by window.
    pcm_part = without_trailing_silence(heard[:start])
    assert len(pcm_part) >= len(pcm_windows) * 5 - 2
    matched = _matching(pcm_windows, _tones_of(pcm_part))
    print(
        f"\nFFmpegPCMAudio heard by discord.js: {matched}/{len(pcm_windows)} tone windows;"
        f" FFmpegOpusAudio(codec='copy'): {len(sent)} packets byte-exact"
    )
    assert matched >= len(pcm_windows) - 2


async def test_a_voice_recv_bot_records_after_its_one_line_switch_under_dave(
    start_voxgate, tmp_path, ids, tones, monkeypatch
) -> None:
    voxgate_server = start_voxgate("--dave", "required")
    original = (Path(__file__).parent / "bots" / "voice_recv_recorder.py").read_text()
    switched = original.replace(
        "from discord.ext import voice_recv\n", "from voxgate.discordpy import voice_recv\n"
    )
    changed = [
        (before, after)
        for before, after in zip(original.splitlines(), switched.splitlines(), strict=True)
        if before != after
    ]
    assert changed == [
        ("from discord.ext import voice_recv", "from voxgate.discordpy import voice_recv")
    ]
    bot_module: dict[str, Any] = {"__name__": "voice_recv_recorder_switched"}
    exec(compile(switched, "voice_recv_recorder.py (switched)", "exec"), bot_module)
    # The bot cannot be handed a CA: it trusts the node the way a deployed bot trusts its
    # own, through SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(voxgate_server.ca_path))
    guild, channel = int(ids()), int(ids())
    bot_id, vox_id = int(ids()), int(ids())
    file, windows = tones(2.0, 25)
    client, discord_guild, _ = await start_bot(
        voxgate_server, guild, [channel], user_id=bot_id, members=[vox_id]
    )
    try:
        done = asyncio.Event()
        recording = asyncio.create_task(
            bot_module["record"](discord_guild.get_channel(channel), done)
        )
        await _until(
            lambda: (
                discord_guild.voice_client is not None and discord_guild.voice_client.is_listening()
            )
        )
        assert isinstance(discord_guild.voice_client, voxgate.discordpy.VoiceClient)
        member = await _voxgate_member(voxgate_server, guild, channel, vox_id)
        privacy_code = await _in_group(member, bot_id, vox_id)
        assert discord_guild.voice_client.privacy_code == privacy_code
        await AudioPlayer(member, OggOpusSource(file)).play()
        await asyncio.sleep(0.4)
        done.set()
        sink = await recording
        await member.close()
    finally:
        await stop_bot(client)
    assert type(sink).__mro__[1].__module__ == "discord.ext.voice_recv.sinks"
    pcm = bytes(sink.pcm[vox_id])
    mono = array.array("h", pcm)[0::2]
    start = next(index for index, value in enumerate(mono) if abs(value) > 64)
    matched = _matching(windows, dominant_tones(mono[start:]))
    print(
        f"\nvoice-recv sink, unchanged, on voxgate under DAVE ({privacy_code}):"
        f" {len(pcm)} bytes of PCM from {vox_id},"
        f" {matched}/{len(windows)} tone windows; spurts: {sink.spurts}"
    )
    assert matched >= len(windows) - 1
    assert ("start", vox_id) in sink.spurts and ("stop", vox_id) in sink.spurts


async def test_discord_py_playing_api_and_heartbeat_latency(start_voxgate, ids, tones) -> None:
    server = start_voxgate("--heartbeat-interval", "200")
    guild, channel, bot_id = int(ids()), int(ids()), int(ids())
    file, _ = tones(3.0, 26)
    client, discord_guild, _ = await start_bot(server, guild, [channel], user_id=bot_id)
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[Exception | None] = loop.create_future()
    try:
        vc = await discord_guild.get_channel(channel).connect(
            cls=partial(voxgate.discordpy.VoiceClient, ssl=trust(server.ca_path))
        )
        with pytest.raises(TypeError):
            vc.play(b"not a source")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            vc.play(discord.FFmpegOpusAudio(str(file), codec="copy"), bandwidth="huge")
        vc.play(
            discord.FFmpegOpusAudio(str(file), codec="copy"),
            after=lambda error: loop.call_soon_threadsafe(ended.set_result, error),
        )
        with pytest.raises(discord.ClientException, match="Already playing"):
            vc.play(discord.FFmpegOpusAudio(str(file), codec="copy"))
        await asyncio.sleep(0.3)
        vc.pause()
        await _until(lambda: vc.is_paused() and not vc.is_playing())
        vc.resume()
        assert vc.is_playing() and not vc.is_paused()
        assert isinstance(vc.source, discord.FFmpegOpusAudio)
        vc.stop()
        assert await asyncio.wait_for(ended, 10) is None
        assert not vc.is_playing()
        await _until(lambda: vc.latency != float("inf"))
        assert 0 < vc.latency < 5 and 0 < vc.average_latency < 5
        await vc.disconnect()
        with pytest.raises(discord.ClientException, match="Not connected"):
            vc.play(discord.FFmpegOpusAudio(str(file), codec="copy"))
    finally:
        await stop_bot(client)
