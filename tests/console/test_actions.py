"""The operator's actions through the admin API and ``voxgate admin``, on real clients.

A live ``voxgate serve``; @discordjs/voice (a process, ``tests/interop/js/client.mjs``) and
voxgate clients (in-process) in its calls; the actions taken over HTTP with the admin key
and through the CLI, as an operator would.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.console.conftest import (
    Heard,
    bearer,
    channel_members,
    join_voxgate,
    trust,
    until,
    voxgate_cli,
)
from tests.support.drivers import VoiceChannel
from tests.support.server import RunningServer
from voxgate.client import VoiceConnection, VoiceConnectionError
from voxgate.client.connection import ConnectionClosed, MemberSpeaking
from voxgate.client.player import AudioPlayer
from voxgate.client.sources import OggOpusSource

pytestmark = pytest.mark.interop


async def test_api_disconnect_closes_that_client_with_4014_and_the_others_keep_streaming(
    console_node: RunningServer, http: aiohttp.ClientSession, tmp_path, tones, ids
) -> None:
    guild, channel = ids(), ids()
    song, _ = tones(12.0)
    listener = Heard(await join_voxgate(console_node, guild, channel, ids()))
    async with VoiceChannel(console_node, tmp_path, guild, channel) as call:
        speaker = await call.start("js", "play", ids(), file=song, flags=["--e2ee"])
        kicked = await call.start("js", "receive", ids(), seconds=30)
        await kicked.wait_for("listening")
        await speaker.wait_for("playing")
        speaker_id = speaker.name.rsplit(":", 1)[1]
        kicked_id = kicked.name.rsplit(":", 1)[1]
        await listener.packets_grow(speaker_id)
        path = f"/v1/channels/{guild}/{channel}/members/{kicked_id}/disconnect"
        async with http.post(console_node.admin_url + path, headers=bearer(console_node)) as r:
            assert r.status == 200
            assert (await r.json())["close_code"] == 4014
        await until(lambda: kicked.saw("state", to="disconnected", close_code=4014))
        # The others stream on: the speaker's audio still reaches the listener.
        await listener.packets_grow(speaker_id, by=25)
        members = await channel_members(console_node, http)
        assert kicked_id not in members and speaker_id in members
        # Asked again: that member is gone.
        async with http.post(console_node.admin_url + path, headers=bearer(console_node)) as r:
            assert r.status == 404
    listener.stop()
    await listener.connection.close()


async def test_cli_end_closes_every_member_with_4022(
    console_node: RunningServer, ids
) -> None:
    guild, channel = ids(), ids()
    members = [Heard(await join_voxgate(console_node, guild, channel, ids())) for _ in range(2)]
    events = await asyncio.to_thread(console_node.join, guild, channel, ids())
    again = await VoiceConnection.connect(
        events["voice_state"], events["voice_server"], ssl=trust(console_node)
    )
    members.append(Heard(again))
    code, out, err = await voxgate_cli(
        "admin", "end", "--guild", guild, "--channel", channel,
        "--data-dir", str(console_node.data_dir),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {"ended": True, "members": 3, "close_code": 4022}
    for member in members:
        await until(lambda m=member: m.of(ConnectionClosed))
        assert member.of(ConnectionClosed)[0].code == 4022
        member.stop()
    # Its token is still valid, but the session an operator ended stays out.
    with pytest.raises(VoiceConnectionError) as refused:
        await VoiceConnection.connect(
            events["voice_state"], events["voice_server"], ssl=trust(console_node)
        )
    assert refused.value.close_code == 4014
    code, out, _ = await voxgate_cli(
        "admin", "channels", "--data-dir", str(console_node.data_dir)
    )
    assert code == 0 and json.loads(out) == {"channels": []}
    code, _, err = await voxgate_cli(
        "admin", "end", "--guild", guild, "--channel", channel,
        "--data-dir", str(console_node.data_dir),
    )  # fmt: skip
    assert code == 1 and "no call" in err


async def test_server_mute_stops_the_audio_and_tells_every_client_through_speaking(
    console_node: RunningServer, http: aiohttp.ClientSession, tones, ids
) -> None:
    guild, channel = ids(), ids()
    song, _ = tones(20.0, 3)
    speaker_id = ids()
    speaker = Heard(await join_voxgate(console_node, guild, channel, speaker_id))
    listener = Heard(await join_voxgate(console_node, guild, channel, ids()))
    player = AudioPlayer(speaker.connection, OggOpusSource(song))
    playing = player.start()
    await listener.packets_grow(speaker_id)
    await until(lambda: listener.of(MemberSpeaking, user_id=speaker_id, flags=1))
    dir_args = ("--data-dir", str(console_node.data_dir))
    member = ("--guild", guild, "--channel", channel, "--user", speaker_id)
    code, out, err = await voxgate_cli("admin", "mute", *member, *dir_args)
    assert code == 0, err
    assert json.loads(out) == {"user_id": speaker_id, "muted": True}
    # Both clients are told it does not speak: the listener, and the muted client itself.
    await until(lambda: listener.of(MemberSpeaking, user_id=speaker_id, flags=0))
    await until(lambda: speaker.of(MemberSpeaking, user_id=speaker_id, flags=0))
    await asyncio.sleep(0.3)  # what was already on its way
    heard = listener.packets[speaker_id]
    await asyncio.sleep(1.5)  # 75 frames played meanwhile: none forwarded
    assert listener.packets[speaker_id] == heard
    assert not playing.done()
    listed = await channel_members(console_node, http)
    assert listed[speaker_id]["muted"] is True
    assert listed[speaker_id]["dropped"]["server_muted"] > 50
    # Through the API: unmuted, its audio flows again and the listener sees it speak.
    path = f"/v1/channels/{guild}/{channel}/members/{speaker_id}/mute"
    async with http.post(
        console_node.admin_url + path, json={"mute": False}, headers=bearer(console_node)
    ) as response:
        assert response.status == 200 and (await response.json())["muted"] is False
    await listener.packets_grow(speaker_id, by=25)
    assert len(listener.of(MemberSpeaking, user_id=speaker_id, flags=1)) >= 2
    player.stop()
    for client in (speaker, listener):
        client.stop()
        await client.connection.close()


async def test_cli_channels_lists_the_members_of_a_call_as_json(
    console_node: RunningServer, tmp_path, ids
) -> None:
    guild, channel = ids(), ids()
    ours_id = ids()
    ours = await join_voxgate(console_node, guild, channel, ours_id)
    async with VoiceChannel(console_node, tmp_path, guild, channel) as call:
        theirs = await call.start("js", "receive", ids(), seconds=20)
        await theirs.wait_for("listening")
        theirs_id = theirs.name.rsplit(":", 1)[1]

        async def listed() -> dict:
            code, out, err = await voxgate_cli(
                "admin", "channels", "--data-dir", str(console_node.data_dir)
            )
            assert code == 0, err
            return json.loads(out)

        async with asyncio.timeout(20):
            while True:
                channels = (await listed())["channels"]
                members = {m["user_id"]: m for c in channels for m in c["members"]}
                if members.keys() == {ours_id, theirs_id} and all(
                    m["dave_state"] == "member" for m in members.values()
                ):
                    break
                await asyncio.sleep(0.2)
        (call_listed,) = channels
        assert (call_listed["guild_id"], call_listed["channel_id"]) == (guild, channel)
        assert call_listed["dave"]["state"] == "established"
        for member in members.values():
            assert member["mode"].startswith("aead_")
            assert member["dave_protocol_version"] == 1
            assert member["muted"] is False
    await ours.close()
