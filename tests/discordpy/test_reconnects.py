"""The bot's call survives what Discord does to calls, and keeps discord.py's own rules.

A bot plays a file with ``FFmpegOpusAudio`` (passed through, so every packet is known) while
voxgate clients listen; through a move to another channel, a node killed and restarted,
and the call failing over to another voice server, what they hear is the file's packets in
order, from before and after the event. ``connect()``'s timeout and its ``reconnect`` flag
behave as discord.py's own ``VoiceClient``'s.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import discord
import pytest

import voxgate.discordpy
from tests.discordpy.harness import start_bot, stop_bot, trust
from tests.support.audio import SILENCE, heard_positions, ogg_packets
from tests.support.proxy import CuttableProxy
from tests.support.server import start_server
from voxgate.client import AudioReceiver, VoiceConnection

pytestmark = pytest.mark.interop


def _heard(receiver: AudioReceiver, user: int) -> list[bytes]:
    return [packet for packet in receiver.opus_of(str(user)) if packet != SILENCE]


class Listener:
    """A voxgate client in the call, keeping the Opus it hears."""

    def __init__(self, connection: VoiceConnection) -> None:
        self.connection = connection
        self.receiver = AudioReceiver(connection, decode=False)

    @classmethod
    async def join(cls, server: Any, guild: int, channel: int, user: int, ca: Any) -> Listener:
        events = await asyncio.to_thread(server.join, str(guild), str(channel), str(user))
        connection = await VoiceConnection.connect(
            events["voice_state"], events["voice_server"], ssl=ca
        )
        return cls(connection)

    async def close(self) -> None:
        self.receiver.close()
        await self.connection.close()


async def _start_playing(vc: Any, file: Any) -> asyncio.Future[Exception | None]:
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[Exception | None] = loop.create_future()
    vc.play(
        discord.FFmpegOpusAudio(str(file), codec="copy"),
        after=lambda error: loop.call_soon_threadsafe(finished.set_result, error),
    )
    return finished


async def _until(predicate: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_move_to_another_channel_keeps_playing_there(voxgate_server, ids, tones) -> None:
    guild, first, second = int(ids()), int(ids()), int(ids())
    bot_id, here_id, there_id = int(ids()), int(ids()), int(ids())
    file, _ = tones(5.0, 31)
    sent = ogg_packets(file)
    ca = trust(voxgate_server.ca_path)
    client, discord_guild, _ = await start_bot(
        voxgate_server, guild, [first, second], user_id=bot_id
    )
    here = await Listener.join(voxgate_server, guild, first, here_id, ca)
    there = await Listener.join(voxgate_server, guild, second, there_id, ca)
    try:
        vc = await discord_guild.get_channel(first).connect(
            cls=partial(voxgate.discordpy.VoiceClient, ssl=ca)
        )
        finished = await _start_playing(vc, file)
        await asyncio.sleep(1.5)
        await vc.move_to(discord_guild.get_channel(second))
        assert vc.channel.id == second and vc.is_connected() and vc.is_playing()
        assert await asyncio.wait_for(finished, 30) is None
        await asyncio.sleep(0.3)
        await vc.disconnect()
    finally:
        await here.close()
        await there.close()
        await stop_bot(client)
    before, after = _heard(here.receiver, bot_id), _heard(there.receiver, bot_id)
    print(
        f"\nmove_to: {len(before)} packets in the first channel, {len(after)} in the second,"
        f" of {len(sent)}"
    )
    assert before and before == sent[: len(before)]
    assert after and after == sent[len(sent) - len(after) :]
    # The player held the source back through the switch (as discord.py's waits to be
    # connected again): at most the few frames in flight at the moment of it are missing.
    assert len(before) + len(after) >= len(sent) - 5
    assert vc.connections_made == 2


async def test_node_restart_the_call_resumes_and_audio_continues(tmp_path, ids, tones) -> None:
    server = await asyncio.to_thread(start_server, tmp_path / "node")
    guild, channel = int(ids()), int(ids())
    bot_id, listener_id = int(ids()), int(ids())
    file, _ = tones(7.0, 32)
    sent = ogg_packets(file)
    ca = trust(server.ca_path)
    client, discord_guild, _ = await start_bot(server, guild, [channel], user_id=bot_id)
    listener = await Listener.join(server, guild, channel, listener_id, ca)
    restarted = None
    try:
        vc = await discord_guild.get_channel(channel).connect(
            cls=partial(voxgate.discordpy.VoiceClient, ssl=ca)
        )
        finished = await _start_playing(vc, file)
        await asyncio.sleep(1.5)
        heard_before = len(_heard(listener.receiver, bot_id))
        connection = vc.connection
        server.kill()
        restarted = await asyncio.to_thread(start_server, server.data_dir, ports=server.ports)
        assert await asyncio.wait_for(finished, 30) is None
        await asyncio.sleep(0.3)
        assert vc.is_connected() and vc.connection is connection
        reconnects = connection.resumes + connection.reidentifies
        await vc.disconnect()
    finally:
        await listener.close()
        await stop_bot(client)
        (restarted or server).stop()
    heard = _heard(listener.receiver, bot_id)
    positions = heard_positions(sent, heard)
    print(
        f"\nnode restart: {heard_before} packets before the kill, {len(heard)} in all of"
        f" {len(sent)}; the connection came back {reconnects} time(s), never rejoined"
    )
    assert heard_before > 30
    # Heard again once the node was back, to the end of the file.
    assert positions[-1] == len(sent) - 1
    assert len(heard) > heard_before + 30
    assert reconnects >= 1 and vc.connections_made == 1


async def test_voice_server_failover_moves_the_call_and_audio_continues(
    start_voxgate, ids, tones
) -> None:
    old, new = start_voxgate(), start_voxgate()
    guild, channel = int(ids()), int(ids())
    bot_id, listener_id = int(ids()), int(ids())
    file, _ = tones(5.0, 33)
    sent = ogg_packets(file)
    ca = trust(old.ca_path, new.ca_path)
    client, discord_guild, gateway = await start_bot(old, guild, [channel], user_id=bot_id)
    listener = await Listener.join(new, guild, channel, listener_id, ca)
    try:
        vc = await discord_guild.get_channel(channel).connect(
            cls=partial(voxgate.discordpy.VoiceClient, ssl=ca)
        )
        assert vc.endpoint == old.endpoint
        finished = await _start_playing(vc, file)
        await asyncio.sleep(1.5)
        await gateway.fail_over(guild, channel, new)
        await _until(lambda: vc.endpoint == new.endpoint)
        old.stop()
        assert await asyncio.wait_for(finished, 30) is None
        await asyncio.sleep(0.3)
        await vc.disconnect()
    finally:
        await listener.close()
        await stop_bot(client)
    heard = _heard(listener.receiver, bot_id)
    print(f"\nfailover: the new voice server carried {len(heard)} of {len(sent)} packets")
    # From where the switch was to the end of the file, every packet, in order.
    first = sent.index(heard[0])
    assert heard == sent[first:] and first < len(sent) // 2
    assert vc.connections_made == 2


async def test_connect_times_out_as_discord_py_does(voxgate_server, ids) -> None:
    guild, channel, bot_id = int(ids()), int(ids()), int(ids())
    client, discord_guild, gateway = await start_bot(
        voxgate_server, guild, [channel], user_id=bot_id
    )
    gateway.answer = False  # the voice events never come
    try:
        with pytest.raises(asyncio.TimeoutError):
            await discord_guild.get_channel(channel).connect(
                timeout=1.0, cls=voxgate.discordpy.VoiceClient
            )
    finally:
        await stop_bot(client)
    # discord.py's connect() disconnected it: the guild has no voice client left, and the
    # bot told the gateway it left.
    assert discord_guild.voice_client is None
    assert gateway.requests == [(guild, channel), (guild, None)]


@pytest.mark.parametrize("reconnect", [True, False])
async def test_reconnect_flag_decides_what_a_lost_websocket_does(
    voxgate_server, ids, tones, reconnect
) -> None:
    proxy = CuttableProxy(voxgate_server.port)
    await proxy.start()
    guild, channel = int(ids()), int(ids())
    bot_id, listener_id = int(ids()), int(ids())
    file, _ = tones(5.0, 34)
    sent = ogg_packets(file)
    ca = trust(voxgate_server.ca_path)
    client, discord_guild, gateway = await start_bot(
        voxgate_server, guild, [channel], user_id=bot_id
    )
    gateway.endpoint = f"127.0.0.1:{proxy.port}"
    listener = await Listener.join(voxgate_server, guild, channel, listener_id, ca)
    try:
        vc = await discord_guild.get_channel(channel).connect(
            reconnect=reconnect, cls=partial(voxgate.discordpy.VoiceClient, ssl=ca)
        )
        finished = await _start_playing(vc, file)
        await asyncio.sleep(1.0)
        await proxy.cut(hold_s=0.5)
        if reconnect:
            assert await asyncio.wait_for(finished, 30) is None
            assert vc.is_connected() and vc.connection.resumes >= 1
            await vc.disconnect()
        else:
            # As discord.py with reconnect=False: the call ends, the client leaves.
            await _until(lambda: discord_guild.voice_client is None)
            assert not vc.is_connected()
            assert await asyncio.wait_for(finished, 10) is None
            assert gateway.requests[-1] == (guild, None)
    finally:
        await listener.close()
        await stop_bot(client)
        await proxy.close()
    heard = _heard(listener.receiver, bot_id)
    positions = heard_positions(sent, heard)
    if reconnect:
        assert positions[-1] == len(sent) - 1  # it played on to the end after the cut
    else:
        assert positions[-1] < len(sent) - 50  # it stopped at the cut
