"""The sandbox's main gateway, driven by the real discord.py 2.7 client (login, guild, voice,
resume, op 7, op 9, disconnect, failover) and by raw WebSockets (close codes, intents,
zlib-stream, replay, a token logging in again)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import zlib
from collections.abc import Awaitable, Callable

import discord
import pytest

from tests.sandbox.conftest import DpyBot, RawGateway
from voxgate.sandbox.app import Sandbox

DpyBots = Callable[..., Awaitable[DpyBot]]
RawGateways = Callable[..., Awaitable[RawGateway]]

GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_VOICE_STATES = 1 << 7
GUILD_MESSAGES = 1 << 9
MESSAGE_CONTENT = 1 << 15


def token(sandbox: Sandbox, index: int = 0) -> str:
    return str(sandbox.info["bots"][index]["token"])


async def _join_voice(sandbox: Sandbox, bot: DpyBot) -> discord.VoiceClient:
    """``bot`` joins the sandbox's voice channel through discord.py's own connect."""
    channel = bot.client.get_channel(sandbox.voice_channel_id)
    assert isinstance(channel, discord.VoiceChannel)
    return await channel.connect(timeout=20)


async def test_discord_py_logs_in_sees_the_guild_and_joins_voice(
    sandbox: Sandbox, dpy_bots: DpyBots
) -> None:
    bot = await dpy_bots(0)
    client = bot.client
    assert client.user is not None
    assert str(client.user.id) == sandbox.info["bots"][0]["user_id"]
    guild = client.get_guild(sandbox.guild_id)
    assert guild is not None and guild.me is not None
    channel = guild.get_channel(sandbox.voice_channel_id)
    assert isinstance(channel, discord.VoiceChannel)
    assert channel.permissions_for(guild.me).connect
    assert guild.get_channel(sandbox.text_channel_id) is not None

    voice = await channel.connect(timeout=20)
    assert voice.is_connected()
    state = sandbox.model.voice_state(sandbox.guild_id, client.user.id)
    assert state is not None and state.channel_id == sandbox.voice_channel_id
    # The node holds the bot's voice session, minted for its gateway session.
    assert sandbox._voice_connected(state.session_id, sandbox.voice_channel_id)
    # By default the call is end-to-end encrypted, as on Discord.
    assert sandbox.info["dave"] == "required" and sandbox.node is not None
    assert sandbox.node.config.dave == "required"
    assert voice._connection.dave_protocol_version == 1

    await voice.disconnect()
    await sandbox.wait_for(
        lambda: sandbox.model.voice_state(sandbox.guild_id, client.user.id) is None
    )


async def test_discord_py_sees_a_user_join_voice_and_speak_in_text(
    sandbox: Sandbox, dpy_bots: DpyBots
) -> None:
    intents = discord.Intents.default()
    intents.message_content = True
    bot = await dpy_bots(0, intents)
    alice = sandbox.create_user("alice")
    voice_state, voice_server = await sandbox.join_voice(alice.id, sandbox.voice_channel_id)
    assert (
        voice_state["user_id"] == str(alice.id)
        and voice_server["endpoint"] == sandbox.voice_endpoint
    )

    await bot.wait(lambda: bot.count("voice_state_update"))
    await sandbox.send_message(alice.id, sandbox.text_channel_id, "!join")
    (message,) = await bot.wait(lambda: [args[0] for name, args in bot.events if name == "message"])
    assert message.content == "!join"
    # The author resolves to a member whose voice channel the bot can follow.
    assert message.author.voice is not None
    assert message.author.voice.channel.id == sandbox.voice_channel_id


async def test_discord_py_resumes_after_the_gateway_drops_and_gets_what_it_missed(
    sandbox: Sandbox, dpy_bots: DpyBots
) -> None:
    intents = discord.Intents.default()
    intents.message_content = True
    bot = await dpy_bots(0, intents)
    (session,) = sandbox.gateway.sessions_of(bot.client.user.id)
    alice = sandbox.create_user("alice")

    assert await sandbox.drop_gateway(bot.client.user.id, 4000) == 1
    # Dispatched once the socket is closing: never written to it, replayed on resume.
    await sandbox.send_message(alice.id, sandbox.text_channel_id, "while you were away")
    await bot.wait(lambda: bot.count("resumed"))
    assert sandbox.gateway.sessions_of(bot.client.user.id) == [session]
    (message,) = await bot.wait(lambda: [args[0] for name, args in bot.events if name == "message"])
    assert message.content == "while you were away"
    assert bot.count("ready") == 1


async def test_discord_py_resumes_on_op_7_and_identifies_again_on_op_9(
    sandbox: Sandbox, dpy_bots: DpyBots
) -> None:
    bot = await dpy_bots(0)
    user_id = bot.client.user.id
    assert await sandbox.send_reconnect(user_id) == 1
    await bot.wait(lambda: bot.count("resumed"))
    assert bot.count("ready") == 1

    (first,) = sandbox.gateway.sessions_of(user_id)
    assert await sandbox.invalidate_session(user_id, resumable=False) == 1
    # discord.py sleeps about 5 s before a non-initial Identify.
    await bot.wait(lambda: bot.count("ready") == 2, timeout=30)
    (second,) = sandbox.gateway.sessions_of(user_id)
    assert second is not first and first.ended


async def test_a_disconnected_discord_py_bot_leaves_voice(
    sandbox: Sandbox, dpy_bots: DpyBots
) -> None:
    bot = await dpy_bots(0)
    voice = await _join_voice(sandbox, bot)
    await sandbox.disconnect_member(bot.client.user.id, sandbox.guild_id)
    await bot.wait(lambda: not voice.is_connected())
    assert sandbox.model.voice_state(sandbox.guild_id, bot.client.user.id) is None
    assert sandbox.node is not None and sandbox.node.session_count() == 0


async def test_discord_py_rejoins_voice_after_a_voice_server_failover(
    sandbox: Sandbox, dpy_bots: DpyBots
) -> None:
    bot = await dpy_bots(0)
    voice = await _join_voice(sandbox, bot)
    assert sandbox.node is not None
    (before,) = sandbox.node.router.sessions.values()
    await sandbox.voice_server_failover(sandbox.guild_id)

    def rejoined() -> bool:
        sessions = list(sandbox.node.router.sessions.values()) if sandbox.node else []
        return bool(sessions) and sessions[0] is not before and sessions[0].described

    await sandbox.wait_for(rejoined, timeout=20)
    assert before.closed
    await bot.wait(lambda: voice.is_connected())
    # Media flows on the new session.
    received = sandbox.node.stats.packets_in
    for _ in range(5):
        voice.send_audio_packet(b"\xf8\xff\xfe", encode=False)
    await sandbox.wait_for(lambda: sandbox.node and sandbox.node.stats.packets_in >= received + 5)


# --- raw WebSockets ------------------------------------------------------------------------


async def test_hello_heartbeat_and_ready_fields(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    gateway = await raw_gateways()
    hello = await gateway.receive()
    assert hello == {"op": 10, "d": {"heartbeat_interval": 5000}, "s": None, "t": None}
    await gateway.send({"op": 1, "d": None})
    assert await gateway.receive() == {"op": 11, "d": None, "s": None, "t": None}
    await gateway.send(
        {
            "op": 2,
            "d": {
                "token": token(sandbox),
                "intents": GUILDS | GUILD_VOICE_STATES,
                "properties": {},
            },
        }
    )
    ready = await gateway.dispatch("READY")
    assert ready["s"] == 1
    data = ready["d"]
    assert data["user"]["id"] == sandbox.info["bots"][0]["user_id"]
    assert data["application"]["id"] == sandbox.info["bots"][0]["application_id"]
    assert data["guilds"] == [{"id": sandbox.info["guild_id"], "unavailable": True}]
    assert data["resume_gateway_url"] == sandbox.info["gateway"]
    guild = (await gateway.dispatch("GUILD_CREATE"))["d"]
    assert {c["id"] for c in guild["channels"]} == {
        sandbox.info["voice_channel_id"],
        sandbox.info["text_channel_id"],
    }
    everyone = next(role for role in guild["roles"] if role["id"] == guild["id"])
    assert (
        int(everyone["permissions"]) & (1 << 10 | 1 << 20 | 1 << 21) == 1 << 10 | 1 << 20 | 1 << 21
    )
    members = {member["user"]["id"] for member in guild["members"]}
    assert {bot["user_id"] for bot in sandbox.info["bots"]} <= members
    assert all("flags" in member for member in guild["members"])


async def test_op_4_answers_voice_state_then_voice_server(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    gateway = await raw_gateways()
    ready = await gateway.identify(token(sandbox), GUILDS | GUILD_VOICE_STATES)
    await gateway.send(
        {
            "op": 4,
            "d": {
                "guild_id": sandbox.info["guild_id"],
                "channel_id": sandbox.info["voice_channel_id"],
                "self_mute": False,
                "self_deaf": True,
            },
        }
    )
    state = await gateway.dispatch("VOICE_STATE_UPDATE")
    server = await gateway.dispatch("VOICE_SERVER_UPDATE")
    assert server["s"] == state["s"] + 1
    assert state["d"]["session_id"] == ready["session_id"]
    assert state["d"]["self_deaf"] is True
    assert state["d"]["member"]["user"]["id"] == ready["user"]["id"]
    assert server["d"]["endpoint"] == sandbox.voice_endpoint
    grant = sandbox.authority.verify(server["d"]["token"])
    assert (grant.guild_id, grant.channel_id, grant.user_id, grant.session_id) == (
        sandbox.info["guild_id"],
        sandbox.info["voice_channel_id"],
        ready["user"]["id"],
        ready["session_id"],
    )

    await gateway.send({"op": 4, "d": {"guild_id": sandbox.info["guild_id"], "channel_id": None}})
    left = await gateway.dispatch("VOICE_STATE_UPDATE")
    assert (
        left["d"]["channel_id"] is None and left["d"]["member"]["user"]["id"] == ready["user"]["id"]
    )


def _data_segments_in(sock: socket.socket) -> int:
    """Linux's tcpi_data_segs_in: the TCP segments with data that ``sock`` has received."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, 152)[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO as Linux lays it out")
async def test_op_4_answers_in_one_tcp_segment_which_a_client_reads_in_one_go(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    """discord.py 2.7 loses a VOICE_SERVER_UPDATE that it reads a few loop iterations after
    the VOICE_STATE_UPDATE (and times out connecting to voice): the two leave together."""
    gateway = await raw_gateways()
    await gateway.identify(token(sandbox), GUILDS | GUILD_VOICE_STATES)
    sock = gateway.ws.get_extra_info("socket")
    await gateway.dispatch("GUILD_CREATE")
    before = _data_segments_in(sock)
    await gateway.send(
        {
            "op": 4,
            "d": {
                "guild_id": sandbox.info["guild_id"],
                "channel_id": sandbox.info["voice_channel_id"],
                "self_mute": False,
                "self_deaf": False,
            },
        }
    )
    await gateway.dispatch("VOICE_STATE_UPDATE")
    await gateway.dispatch("VOICE_SERVER_UPDATE")
    assert _data_segments_in(sock) - before == 1


async def test_voice_states_are_gated_by_their_intent(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    alice = sandbox.create_user("alice")
    await sandbox.join_voice(alice.id, sandbox.voice_channel_id)
    without = await raw_gateways()
    await without.identify(token(sandbox, 0), GUILDS)
    guild = (await without.dispatch("GUILD_CREATE"))["d"]
    assert guild["voice_states"] == []
    with_intent = await raw_gateways()
    await with_intent.identify(token(sandbox, 1), GUILDS | GUILD_VOICE_STATES)
    guild = (await with_intent.dispatch("GUILD_CREATE"))["d"]
    assert [state["user_id"] for state in guild["voice_states"]] == [str(alice.id)]

    await sandbox.leave_voice(alice.id, sandbox.guild_id)
    update = await with_intent.dispatch("VOICE_STATE_UPDATE")
    assert update["d"]["user_id"] == str(alice.id) and update["d"]["channel_id"] is None
    # Op 4 without the intent: the voice server update only, which leaves discord.py's
    # connect() waiting for the state, as on Discord.
    await without.send(
        {
            "op": 4,
            "d": {
                "guild_id": sandbox.info["guild_id"],
                "channel_id": sandbox.info["voice_channel_id"],
            },
        }
    )
    server = await without.dispatch("VOICE_SERVER_UPDATE")
    assert server["d"]["endpoint"] == sandbox.voice_endpoint
    assert not [d for d in without.dispatches if d["t"] == "VOICE_STATE_UPDATE"]


async def test_message_content_needs_its_intent_or_a_mention(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    blind = await raw_gateways()
    ready = await blind.identify(token(sandbox, 0), GUILDS | GUILD_MESSAGES)
    reading = await raw_gateways()
    await reading.identify(token(sandbox, 1), GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT)
    alice = sandbox.create_user("alice")
    await sandbox.send_message(alice.id, sandbox.text_channel_id, "!play song")
    seen = (await blind.dispatch("MESSAGE_CREATE"))["d"]
    assert seen["content"] == "" and seen["author"]["id"] == str(alice.id)
    assert seen["member"]["roles"] == []
    assert (await reading.dispatch("MESSAGE_CREATE"))["d"]["content"] == "!play song"
    mention = f"<@{ready['user']['id']}> join"
    await sandbox.send_message(alice.id, sandbox.text_channel_id, mention)
    assert (await blind.dispatch("MESSAGE_CREATE"))["d"]["content"] == mention


async def test_zlib_stream_is_one_deflate_context_per_connection(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    gateway = await raw_gateways(compress="zlib-stream")
    message = await gateway.ws.receive()
    assert message.type.name == "BINARY" and message.data.endswith(b"\x00\x00\xff\xff")
    inflate = zlib.decompressobj()
    assert b'"heartbeat_interval"' in inflate.decompress(message.data)
    gateway._inflate = inflate
    await gateway.send(
        {"op": 2, "d": {"token": token(sandbox), "intents": GUILDS, "properties": {}}}
    )
    ready = await gateway.dispatch("READY")
    assert ready["d"]["user"]["id"] == sandbox.info["bots"][0]["user_id"]
    assert (await gateway.dispatch("GUILD_CREATE"))["d"]["id"] == sandbox.info["guild_id"]


async def test_resume_replays_after_seq_then_resumed(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    first = await raw_gateways()
    ready = await first.identify(token(sandbox), GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT)
    await first.dispatch("GUILD_CREATE")
    seq = first.seq
    alice = sandbox.create_user("alice")
    await sandbox.send_message(alice.id, sandbox.text_channel_id, "one")
    await first.dispatch("MESSAGE_CREATE")
    await first.close(4000)  # a code that keeps the session resumable
    await sandbox.send_message(alice.id, sandbox.text_channel_id, "two")

    second = await raw_gateways(compress="zlib-stream")
    await second.receive()
    await second.send(
        {"op": 6, "d": {"token": token(sandbox), "session_id": ready["session_id"], "seq": seq}}
    )
    replayed = [await second.receive() for _ in range(3)]
    assert [p["t"] for p in replayed] == ["MESSAGE_CREATE", "MESSAGE_CREATE", "RESUMED"]
    assert [p["d"].get("content") for p in replayed[:2]] == ["one", "two"]
    assert [p["s"] for p in replayed] == [seq + 1, seq + 2, seq + 3]


async def test_resume_of_an_unknown_session_is_invalid_session(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    gateway = await raw_gateways()
    await gateway.receive()
    await gateway.send({"op": 6, "d": {"token": token(sandbox), "session_id": "nope", "seq": 3}})
    assert await gateway.receive() == {"op": 9, "d": False, "s": None, "t": None}


async def test_a_token_logs_in_again_after_its_process_died_and_its_voice_state_is_cleared(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    watcher = await raw_gateways()
    await watcher.identify(token(sandbox, 1), GUILDS | GUILD_VOICE_STATES)
    await watcher.dispatch("GUILD_CREATE")
    dead = await raw_gateways()
    ready = await dead.identify(token(sandbox, 0), GUILDS | GUILD_VOICE_STATES)
    await dead.send(
        {
            "op": 4,
            "d": {
                "guild_id": sandbox.info["guild_id"],
                "channel_id": sandbox.info["voice_channel_id"],
            },
        }
    )
    await dead.dispatch("VOICE_SERVER_UPDATE")
    joined = await watcher.dispatch("VOICE_STATE_UPDATE")
    assert joined["d"]["channel_id"] == sandbox.info["voice_channel_id"]
    await dead.abort()
    await sandbox.wait_for(lambda: not sandbox.gateway.sessions[ready["session_id"]].socket)

    again = await raw_gateways()
    second = await again.identify(token(sandbox, 0), GUILDS | GUILD_VOICE_STATES)
    assert second["session_id"] != ready["session_id"]
    assert second["user"]["id"] == ready["user"]["id"]
    left = await watcher.dispatch("VOICE_STATE_UPDATE")
    assert left["d"]["user_id"] == ready["user"]["id"] and left["d"]["channel_id"] is None
    guild = (await again.dispatch("GUILD_CREATE"))["d"]
    assert guild["voice_states"] == []


async def test_a_disallowed_privileged_intent_closes_4014(tmp_path: object) -> None:
    from pathlib import Path

    sandbox = await Sandbox.start(Path(str(tmp_path)) / "strict", allow_privileged=False)
    try:
        gateway = await RawGateway.connect(sandbox.gateway_url)
        await gateway.receive()
        await gateway.send(
            {
                "op": 2,
                "d": {"token": token(sandbox), "intents": GUILDS | GUILD_MEMBERS, "properties": {}},
            }
        )
        code, reason = await gateway.closed()
        assert code == 4014 and "intent" in reason.lower()
        await gateway.close()
        # Unprivileged intents are fine.
        gateway = await RawGateway.connect(sandbox.gateway_url)
        await gateway.identify(token(sandbox), GUILDS | GUILD_VOICE_STATES)
        await gateway.close()
    finally:
        await sandbox.stop()


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [
        ({"op": 4, "d": {"guild_id": "1", "channel_id": None}}, None, 4003),
        ({"op": 2, "d": {"token": "not-a-token", "intents": 1, "properties": {}}}, None, 4004),
        ("IDENTIFY", {"op": 2, "d": {"token": "x", "intents": 1, "properties": {}}}, 4005),
        ("IDENTIFY", {"op": 6, "d": {"token": "x", "session_id": "x", "seq": 1}}, 4005),
        ({"op": 99, "d": None}, None, 4001),
        ({"op": 2, "d": {"token": "TOKEN", "intents": 1 << 40, "properties": {}}}, None, 4013),
        (
            {"op": 2, "d": {"token": "TOKEN", "intents": 1, "properties": {}, "shard": [2, 2]}},
            None,
            4010,
        ),
    ],
)
async def test_protocol_errors_close_with_discords_codes(
    sandbox: Sandbox,
    raw_gateways: RawGateways,
    first: object,
    second: object,
    code: int,
) -> None:
    gateway = await raw_gateways()
    await gateway.receive()
    for payload in (first, second):
        if payload is None:
            continue
        if payload == "IDENTIFY":
            await gateway.send(
                {"op": 2, "d": {"token": token(sandbox), "intents": 1, "properties": {}}}
            )
            await gateway.dispatch("READY")
            continue
        text = (
            str(payload).replace("'", '"').replace("None", "null").replace("TOKEN", token(sandbox))
        )
        await gateway.send(text)
    closed_code, reason = await gateway.closed()
    assert closed_code == code and reason


async def test_resume_with_a_seq_never_sent_closes_4007(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    first = await raw_gateways()
    ready = await first.identify(token(sandbox), GUILDS)
    await first.close(4000)
    second = await raw_gateways()
    await second.receive()
    await second.send(
        {"op": 6, "d": {"token": token(sandbox), "session_id": ready["session_id"], "seq": 999}}
    )
    assert (await second.closed())[0] == 4007


async def test_an_unserved_version_closes_4012(sandbox: Sandbox, raw_gateways: RawGateways) -> None:
    gateway = await raw_gateways(v="6")
    assert (await gateway.closed())[0] == 4012


async def test_two_bots_in_voice_see_each_other(sandbox: Sandbox, dpy_bots: DpyBots) -> None:
    first = await dpy_bots(0)
    second = await dpy_bots(1)
    voice = await _join_voice(sandbox, first)
    await second.wait(
        lambda: [
            args
            for name, args in second.events
            if name == "voice_state_update" and args[0].id == first.client.user.id
        ]
    )
    seen = second.client.get_channel(sandbox.voice_channel_id)
    assert isinstance(seen, discord.VoiceChannel)
    assert [member.id for member in seen.members] == [first.client.user.id]
    await voice.disconnect()
    await asyncio.sleep(0)


async def test_a_new_user_is_a_guild_member_add_for_the_members_intent(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    members = await raw_gateways()
    await members.identify(token(sandbox, 0), GUILDS | GUILD_MEMBERS)
    plain = await raw_gateways()
    await plain.identify(token(sandbox, 1), GUILDS | GUILD_MESSAGES)
    alice = sandbox.create_user("alice")
    added = (await members.dispatch("GUILD_MEMBER_ADD"))["d"]
    assert added["user"]["id"] == str(alice.id) and added["guild_id"] == sandbox.info["guild_id"]
    await sandbox.send_message(alice.id, sandbox.text_channel_id, "hi")
    # Everything dispatched to it before the message has arrived: no member add among it.
    await plain.dispatch("MESSAGE_CREATE")
    assert not [d for d in plain.dispatches if d["t"] == "GUILD_MEMBER_ADD"]


async def test_a_bot_moving_channels_gets_new_events_and_its_old_voice_socket_closes_4014(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    """What Discord does on a move (discord.py reconnects on that 4014)."""
    import ssl

    from voxgate.client import VoiceConnection

    lounge_id = sandbox.create_voice_channel(sandbox.guild_id, "Lounge")
    gateway = await raw_gateways()
    await gateway.identify(token(sandbox), GUILDS | GUILD_VOICE_STATES)
    trust = ssl.create_default_context(cafile=str(sandbox.ca))

    async def op_4(channel_id: int) -> VoiceConnection:
        await gateway.send(
            {"op": 4, "d": {"guild_id": sandbox.info["guild_id"], "channel_id": str(channel_id)}}
        )
        state = (await gateway.dispatch("VOICE_STATE_UPDATE"))["d"]
        server = (await gateway.dispatch("VOICE_SERVER_UPDATE"))["d"]
        assert state["channel_id"] == str(channel_id)
        assert sandbox.authority.verify(server["token"]).channel_id == str(channel_id)
        return await VoiceConnection.connect(state, server, ssl=trust, reconnect=False)

    general = await op_4(sandbox.voice_channel_id)
    try:
        lounge_events = asyncio.create_task(op_4(lounge_id))
        await asyncio.wait_for(general.closed.wait(), 10)
        lounge = await lounge_events
        assert sandbox.node is not None
        channels = [s.channel.key[1] for s in sandbox.node.router.sessions.values()]
        assert channels == [str(lounge_id)]
        assert "closing gateway: 4014 disconnected: moved to another channel" in sandbox.logs()
        await lounge.close()
    finally:
        await general.close()


async def test_discord_py_auto_sharded_client_asks_gateway_bot_and_logs_in(
    sandbox: Sandbox, dpy_bots: DpyBots
) -> None:
    bot = await dpy_bots(0, None, discord.AutoShardedClient)
    assert bot.client.shard_count == 1
    assert bot.client.get_guild(sandbox.guild_id) is not None
    assert "GET /api/v10/gateway/bot -> 200" in sandbox.logs()


async def test_identify_compress_without_transport_compression_zlibs_each_payload(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    gateway = await raw_gateways()
    await gateway.receive()
    await gateway.send(
        {
            "op": 2,
            "d": {"token": token(sandbox), "intents": GUILDS, "properties": {}, "compress": True},
        }
    )
    message = await gateway.ws.receive()
    assert message.type.name == "BINARY"
    ready = json.loads(zlib.decompress(message.data))
    assert ready["t"] == "READY"


async def test_discord_py_follows_a_moderator_dragging_it_to_another_channel(
    sandbox: Sandbox, dpy_bots: DpyBots
) -> None:
    bot = await dpy_bots(0)
    lounge_id = sandbox.create_voice_channel(sandbox.guild_id, "Lounge")
    await bot.wait(lambda: bot.client.get_channel(lounge_id))
    voice = await _join_voice(sandbox, bot)
    await sandbox.move_member(bot.client.user.id, lounge_id)
    assert sandbox.node is not None

    def in_lounge() -> bool:
        sessions = list(sandbox.node.router.sessions.values()) if sandbox.node else []
        return [s.channel.key[1] for s in sessions if s.described] == [str(lounge_id)]

    await sandbox.wait_for(in_lounge, timeout=20)
    await bot.wait(lambda: voice.is_connected() and voice.channel.id == lounge_id)


async def test_discord_py_move_to_another_channel_completes(
    sandbox: Sandbox, dpy_bots: DpyBots
) -> None:
    """discord.py's own move_to, right after connecting: its UDP reader is still waiting on
    the old socket, which the sandbox wakes once the bot identifies again."""
    bot = await dpy_bots(0)
    lounge_id = sandbox.create_voice_channel(sandbox.guild_id, "Lounge")
    await bot.wait(lambda: bot.client.get_channel(lounge_id))
    general = bot.client.get_channel(sandbox.voice_channel_id)
    lounge = bot.client.get_channel(lounge_id)
    assert isinstance(general, discord.VoiceChannel) and isinstance(lounge, discord.VoiceChannel)
    voice = await general.connect(timeout=20)
    await voice.move_to(lounge, timeout=15)
    assert voice.is_connected() and voice.channel.id == lounge_id
    assert sandbox.node is not None
    (session,) = sandbox.node.router.sessions.values()
    assert session.described and session.channel.key[1] == str(lounge_id)


async def test_a_new_guild_and_its_channels_reach_connected_bots(
    sandbox: Sandbox, raw_gateways: RawGateways
) -> None:
    gateway = await raw_gateways()
    await gateway.identify(token(sandbox), GUILDS | GUILD_VOICE_STATES)
    await gateway.dispatch("GUILD_CREATE")
    guild_id = sandbox.create_guild("second guild")
    created = (await gateway.dispatch("GUILD_CREATE"))["d"]
    assert created["id"] == str(guild_id) and created["channels"] == []
    assert [role["id"] for role in created["roles"]] == [str(guild_id)]
    assert sandbox.info["bots"][0]["user_id"] in {m["user"]["id"] for m in created["members"]}
    channel_id = sandbox.create_voice_channel(guild_id, "Stage left")
    channel = (await gateway.dispatch("CHANNEL_CREATE"))["d"]
    assert channel["id"] == str(channel_id) and channel["guild_id"] == str(guild_id)
    assert channel["type"] == 2 and channel["bitrate"] == 64000
    # The new guild is voice-ready: a user joins it and the bot sees that.
    alice = sandbox.create_user("alice")
    await sandbox.join_voice(alice.id, channel_id)
    state = (await gateway.dispatch("VOICE_STATE_UPDATE"))["d"]
    assert (state["guild_id"], state["channel_id"]) == (str(guild_id), str(channel_id))


async def test_only_the_privileged_intents_allowed_by_name_may_identify(tmp_path: object) -> None:
    from pathlib import Path

    sandbox = await Sandbox.start(
        Path(str(tmp_path)) / "named", allow_privileged=["message_content"]
    )
    try:
        allowed = await RawGateway.connect(sandbox.gateway_url)
        await allowed.identify(token(sandbox), GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT)
        await allowed.close()
        refused = await RawGateway.connect(sandbox.gateway_url)
        await refused.receive()
        await refused.send(
            {
                "op": 2,
                "d": {
                    "token": token(sandbox),
                    "intents": GUILDS | MESSAGE_CONTENT | GUILD_MEMBERS,
                    "properties": {},
                },
            }
        )
        assert (await refused.closed())[0] == 4014
        await refused.close()
    finally:
        await sandbox.stop()
    with pytest.raises(ValueError, match="unknown privileged intent 'voice'"):
        await Sandbox.start(Path(str(tmp_path)) / "bad", allow_privileged="voice")
