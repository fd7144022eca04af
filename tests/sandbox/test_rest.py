"""The sandbox's REST API over real HTTP: login routes with the exact Content-Type, reads
rendered from the model, messages kept, application commands, the interaction callback
and follow-up routes, 401/400/404 answers, and the control API's view of it all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import discord
import pytest

from tests.sandbox.conftest import DpyBot, RawGateway
from voxgate.sandbox.app import Sandbox

DpyBots = Callable[..., Awaitable[DpyBot]]
RawGateways = Callable[..., Awaitable[RawGateway]]


class Rest:
    def __init__(self, sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
        self.sandbox = sandbox
        self.http = http

    def auth(self, index: int = 0) -> dict[str, str]:
        return {"Authorization": f"Bot {self.sandbox.info['bots'][index]['token']}"}

    async def call(
        self, method: str, path: str, *, bot: int | None = 0, version: int = 10, **kwargs: Any
    ) -> tuple[int, str, Any]:
        headers = kwargs.pop("headers", {})
        if bot is not None:
            headers.update(self.auth(bot))
        url = f"{self.sandbox.api_url}/v{version}{path}"
        async with self.http.request(method, url, headers=headers, **kwargs) as response:
            body = await response.read()
            content_type = response.headers.get("Content-Type", "")
            parsed = None
            if body and content_type == "application/json":
                parsed = await response.json()
            return response.status, content_type, parsed

    async def control(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.sandbox.control_key}"}
        url = f"{self.sandbox.control_url}{path}"
        async with self.http.request(method, url, headers=headers, **kwargs) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()


@pytest.fixture
async def rest(sandbox: Sandbox) -> AsyncIterator[Rest]:
    async with aiohttp.ClientSession() as http:
        yield Rest(sandbox, http)


@pytest.mark.parametrize("version", [9, 10])
async def test_users_me_is_the_bot_of_the_token_with_exact_content_type(
    sandbox: Sandbox, rest: Rest, version: int
) -> None:
    for index, bot in enumerate(sandbox.info["bots"]):
        status, content_type, me = await rest.call("GET", "/users/@me", bot=index, version=version)
        assert (status, content_type) == (200, "application/json")
        assert me["id"] == bot["user_id"] and me["bot"] is True
        assert {"username", "discriminator", "avatar"} <= me.keys()


async def test_application_and_gateway_bot_carry_what_the_libraries_read(
    sandbox: Sandbox, rest: Rest
) -> None:
    status, _, app = await rest.call("GET", "/oauth2/applications/@me")
    assert status == 200 and app["id"] == sandbox.info["bots"][0]["application_id"]
    for name in (
        "name",
        "description",
        "icon",
        "bot_public",
        "bot_require_code_grant",
        "verify_key",
        "owner",
    ):
        assert name in app
    assert {"id", "username", "discriminator", "avatar"} <= app["owner"].keys()
    status, _, gateway = await rest.call("GET", "/gateway/bot")
    assert status == 200 and gateway["url"] == sandbox.info["gateway"]
    assert gateway["session_start_limit"]["remaining"] >= 1
    assert (await rest.call("GET", "/gateway", bot=None))[2] == {"url": sandbox.info["gateway"]}


@pytest.mark.parametrize("header", [None, "Bot nope", "Bearer x"])
async def test_a_bad_token_gets_401(rest: Rest, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    status, content_type, body = await rest.call("GET", "/users/@me", bot=None, headers=headers)
    assert (status, content_type) == (401, "application/json")
    assert body["code"] == 0 and "401" in body["message"]


async def test_guild_channel_and_member_reads_come_from_the_model(
    sandbox: Sandbox, rest: Rest
) -> None:
    guild_id = sandbox.info["guild_id"]
    status, _, guild = await rest.call("GET", f"/guilds/{guild_id}")
    assert status == 200 and guild["id"] == guild_id
    assert [role["id"] for role in guild["roles"]] == [guild_id]
    _, _, channels = await rest.call("GET", f"/guilds/{guild_id}/channels")
    kinds = {channel["id"]: channel["type"] for channel in channels}
    assert kinds == {sandbox.info["voice_channel_id"]: 2, sandbox.info["text_channel_id"]: 0}
    _, _, channel = await rest.call("GET", f"/channels/{sandbox.info['voice_channel_id']}")
    assert channel["bitrate"] and channel["guild_id"] == guild_id
    bot_id = sandbox.info["bots"][1]["user_id"]
    _, _, member = await rest.call("GET", f"/guilds/{guild_id}/members/{bot_id}")
    assert member["user"]["id"] == bot_id and member["flags"] == 0
    new = sandbox.create_voice_channel(sandbox.guild_id, "Music")
    _, _, channels = await rest.call("GET", f"/guilds/{guild_id}/channels")
    assert str(new) in {channel["id"] for channel in channels}
    status, _, missing = await rest.call("GET", "/guilds/123")
    assert status == 404 and missing["code"] == 10004


async def test_a_posted_message_is_kept_and_dispatched(
    sandbox: Sandbox, rest: Rest, raw_gateways: RawGateways
) -> None:
    other = await raw_gateways()
    await other.identify(sandbox.info["bots"][1]["token"], 1 | 1 << 9 | 1 << 15)
    channel_id = sandbox.info["text_channel_id"]
    status, _, message = await rest.call(
        "POST", f"/channels/{channel_id}/messages", json={"content": "now playing", "nonce": "7"}
    )
    assert status == 200 and message["content"] == "now playing"
    assert message["author"]["id"] == sandbox.info["bots"][0]["user_id"]
    created = (await other.dispatch("MESSAGE_CREATE"))["d"]
    assert created["id"] == message["id"] and created["content"] == "now playing"
    assert [m["content"] for m in sandbox.messages(int(channel_id))] == ["now playing"]
    status, listed = await rest.control("GET", f"/v1/channels/{channel_id}/messages")
    assert status == 200 and [m["id"] for m in listed] == [message["id"]]
    _, _, fetched = await rest.call("GET", f"/channels/{channel_id}/messages/{message['id']}")
    assert fetched["id"] == message["id"]


async def test_a_message_with_a_file_is_accepted_as_multipart(sandbox: Sandbox, rest: Rest) -> None:
    form = aiohttp.FormData()
    form.add_field("payload_json", '{"content": "here"}', content_type="application/json")
    form.add_field("files[0]", b"RIFF....", filename="clip.wav", content_type="audio/wav")
    status, _, message = await rest.call(
        "POST", f"/channels/{sandbox.info['text_channel_id']}/messages", data=form
    )
    assert status == 200
    assert [(a["filename"], a["size"]) for a in message["attachments"]] == [("clip.wav", 8)]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", 50109),
        (b'["a list"]', 50109),
        (b'{"content": 5}', 50035),
        (b'{"content": "' + b"x" * 2001 + b'"}', 50035),
        (b'{"embeds": "x"}', 50035),
        (b"{}", 50006),
    ],
)
async def test_bad_message_bodies_get_400_json(
    sandbox: Sandbox, rest: Rest, body: bytes, code: int
) -> None:
    status, content_type, error = await rest.call(
        "POST",
        f"/channels/{sandbox.info['text_channel_id']}/messages",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert (status, content_type, error["code"]) == (400, "application/json", code)
    assert sandbox.messages(sandbox.text_channel_id) == []


async def test_an_unserved_route_is_404_json_logged_and_reported(
    sandbox: Sandbox, rest: Rest
) -> None:
    status, content_type, body = await rest.call("GET", "/stickers/1")
    assert (status, content_type) == (404, "application/json")
    assert "/api/v10/stickers/1" in body["message"]
    assert sandbox.unhandled_routes == ["GET /api/v10/stickers/1"]
    assert "unhandled route: GET /api/v10/stickers/1" in sandbox.logs()
    assert (await rest.control("GET", "/v1/unhandled"))[1] == ["GET /api/v10/stickers/1"]


async def test_commands_are_registered_listed_and_replaced(sandbox: Sandbox, rest: Rest) -> None:
    app = sandbox.info["bots"][0]["application_id"]
    commands = [
        {"name": "join", "description": "Join your voice channel", "type": 1},
        {
            "name": "play",
            "description": "Play a song",
            "options": [{"type": 3, "name": "query", "description": "what", "required": True}],
        },
    ]
    status, _, registered = await rest.call("PUT", f"/applications/{app}/commands", json=commands)
    assert status == 200 and [c["name"] for c in registered] == ["join", "play"]
    assert all(c["application_id"] == app and c["id"].isdigit() for c in registered)
    _, _, listed = await rest.call("GET", f"/applications/{app}/commands")
    assert [c["id"] for c in listed] == [c["id"] for c in registered]

    # A bulk overwrite keeps the ids of commands that stay and drops the others.
    status, _, kept = await rest.call("PUT", f"/applications/{app}/commands", json=commands[:1])
    assert [c["id"] for c in kept] == [registered[0]["id"]]
    guild_path = f"/applications/{app}/guilds/{sandbox.info['guild_id']}/commands"
    status, _, one = await rest.call("POST", guild_path, json=commands[1])
    assert status == 201 and one["guild_id"] == sandbox.info["guild_id"]
    assert len(sandbox.model.commands) == 2

    other_app = sandbox.info["bots"][1]["application_id"]
    assert (await rest.call("GET", f"/applications/{other_app}/commands"))[0] == 403
    status, _, error = await rest.call(
        "PUT", f"/applications/{app}/commands", json=[{"name": "Bad Name!", "description": "x"}]
    )
    assert status == 400 and error["code"] == 50035


async def test_an_interaction_is_answered_through_callback_and_follow_up_routes(
    sandbox: Sandbox, rest: Rest, raw_gateways: RawGateways
) -> None:
    app = sandbox.info["bots"][0]["application_id"]
    await rest.call(
        "PUT",
        f"/applications/{app}/commands",
        json=[
            {
                "name": "join",
                "description": "Join",
                "options": [{"type": 7, "name": "channel", "description": "where"}],
            }
        ],
    )
    bot = await raw_gateways()
    await bot.identify(sandbox.info["bots"][0]["token"], 1)
    alice = sandbox.create_user("alice")
    interaction = await sandbox.invoke_command(
        alice.id, sandbox.text_channel_id, "join", {"channel": sandbox.voice_channel_id}
    )
    event = (await bot.dispatch("INTERACTION_CREATE"))["d"]
    assert event["id"] == str(interaction.id) and event["data"]["name"] == "join"
    assert event["data"]["options"] == [
        {"name": "channel", "type": 7, "value": str(sandbox.voice_channel_id)}
    ]
    assert event["member"]["user"]["id"] == str(alice.id)

    callback = f"/interactions/{event['id']}/{event['token']}/callback"
    status, _, answer = await rest.call(
        "POST", callback, bot=None, params={"with_response": "true"}, json={"type": 5}
    )
    assert status == 200 and answer["interaction"]["response_message_loading"] is True
    status, _, again = await rest.call("POST", callback, bot=None, json={"type": 4, "data": {}})
    assert status == 400 and again["code"] == 40060

    webhook = f"/webhooks/{app}/{event['token']}"
    status, _, edited = await rest.call(
        "PATCH", f"{webhook}/messages/@original", bot=None, json={"content": "Joined General"}
    )
    assert status == 200 and edited["content"] == "Joined General" and edited["flags"] == 0
    status, _, followup = await rest.call(
        "POST", webhook, bot=None, params={"wait": "true"}, json={"content": "Playing"}
    )
    assert status == 200
    assert interaction.callbacks == [{"type": 5, "data": {}}]
    assert interaction.followup_message_ids == [int(followup["id"])]
    contents = [
        (m["author"]["id"], m["content"]) for m in sandbox.messages(sandbox.text_channel_id)
    ]
    assert contents == [(app, "Joined General"), (app, "Playing")]

    status, seen = await rest.control("GET", f"/v1/interactions/{interaction.id}")
    assert status == 200 and seen["original_message"]["content"] == "Joined General"
    bad = await rest.call(
        "POST",
        f"/interactions/{event['id']}/wrong/callback",
        bot=None,
        json={"type": 4, "data": {"content": "x"}},
    )
    assert bad[0] == 404 and bad[2]["code"] == 10062


async def test_discord_py_registers_and_answers_a_slash_command(
    sandbox: Sandbox, dpy_bots: DpyBots
) -> None:
    """The real discord.py tree: sync on ready, defer, follow-up."""
    intents = discord.Intents.default()
    holder: dict[str, Any] = {}

    async def start() -> DpyBot:
        bot = await dpy_bots(0, intents)
        tree = discord.app_commands.CommandTree(bot.client)

        @tree.command(name="join", description="Join your voice channel")
        async def join(interaction: discord.Interaction) -> None:
            await interaction.response.defer()
            voice = getattr(interaction.user, "voice", None)
            await interaction.followup.send(f"joining {voice.channel.name if voice else None}")

        holder["synced"] = await tree.sync()
        return bot

    await start()
    assert [command.name for command in holder["synced"]] == ["join"]
    alice = sandbox.create_user("alice")
    await sandbox.join_voice(alice.id, sandbox.voice_channel_id)
    interaction = await sandbox.invoke_command(alice.id, sandbox.text_channel_id, "join")
    assert (await sandbox.wait_interaction_response(interaction))["type"] == 5
    await sandbox.wait_for(lambda: interaction.followup_message_ids)
    assert sandbox.messages(sandbox.text_channel_id)[-1]["content"] == "joining General"


async def test_control_api_needs_its_key_and_acts_as_users(sandbox: Sandbox, rest: Rest) -> None:
    async with rest.http.get(f"{sandbox.control_url}/v1/sandbox") as response:
        assert response.status == 401
    status, info = await rest.control("GET", "/v1/sandbox")
    assert status == 200 and info == sandbox.info
    status, user = await rest.control("POST", "/v1/users", json={"name": "bob"})
    assert status == 201 and user["id"].isdigit()
    status, events = await rest.control(
        "POST",
        "/v1/voice/join",
        json={"user_id": user["id"], "channel_id": info["voice_channel_id"]},
    )
    assert status == 200 and events["voice_state"]["user_id"] == user["id"]
    assert events["voice_server"]["endpoint"] == sandbox.voice_endpoint
    _, states = await rest.control("GET", f"/v1/guilds/{info['guild_id']}/voice-states")
    assert [state["user_id"] for state in states] == [user["id"]]
    status, message = await rest.control(
        "POST",
        f"/v1/channels/{info['text_channel_id']}/messages",
        json={"user_id": user["id"], "content": "!join"},
    )
    assert status == 201 and message["content"] == "!join"
    flags = {"user_id": user["id"], "deaf": True}
    assert (await rest.control("POST", "/v1/voice/flags", json=flags))[0] == 200
    assert sandbox.voice_states()[0]["deaf"] is True
    lounge = str(sandbox.create_voice_channel(sandbox.guild_id, "Lounge"))
    move = {"user_id": user["id"], "channel_id": lounge}
    assert (await rest.control("POST", "/v1/voice/move", json=move))[0] == 200
    assert sandbox.voice_states()[0]["channel_id"] == lounge
    assert sandbox.voice_states()[0]["deaf"] is True  # a server deafen outlives a move
    assert (await rest.control("POST", "/v1/voice/disconnect", json={"user_id": user["id"]}))[
        0
    ] == 200
    assert sandbox.voice_states() == []
    status, channel = await rest.control(
        "POST", f"/v1/guilds/{info['guild_id']}/channels", json={"name": "Lounge", "type": "voice"}
    )
    assert status == 201 and channel["type"] == 2
    status, guild = await rest.control("POST", "/v1/guilds", json={"name": "second"})
    assert status == 201 and guild["id"].isdigit()
    status, text = await rest.control(
        "POST", f"/v1/guilds/{guild['id']}/channels", json={"name": "chat", "type": "text"}
    )
    assert status == 201 and text["guild_id"] == guild["id"] and text["type"] == 0
    _, listed = await rest.control("GET", f"/v1/guilds/{guild['id']}/channels")
    assert [c["id"] for c in listed] == [text["id"]]
    assert (await rest.call("GET", f"/guilds/{guild['id']}"))[2]["name"] == "second"
    status, error = await rest.control("POST", "/v1/voice/join", json={"user_id": "x"})
    assert status == 400 and "user_id" in error["error"]
    status, logs = await rest.control("GET", "/v1/logs")
    assert status == 200 and "user bob" in logs


async def test_a_bot_moves_mutes_and_disconnects_members_through_rest(
    sandbox: Sandbox, rest: Rest, raw_gateways: RawGateways
) -> None:
    watcher = await raw_gateways()
    await watcher.identify(sandbox.info["bots"][1]["token"], 1 | 1 << 7)
    alice = sandbox.create_user("alice")
    await sandbox.join_voice(alice.id, sandbox.voice_channel_id)
    await watcher.dispatch("VOICE_STATE_UPDATE")
    followed: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
    sandbox.user_moved.append(
        lambda user_id, state, server: followed.append((user_id, state, server))
    )
    member = f"/guilds/{sandbox.info['guild_id']}/members/{alice.id}"

    status, _, body = await rest.call("PATCH", member, json={"mute": True})
    assert status == 200 and body["mute"] is True
    muted = (await watcher.dispatch("VOICE_STATE_UPDATE"))["d"]
    assert muted["mute"] is True and muted["channel_id"] == sandbox.info["voice_channel_id"]

    lounge = sandbox.create_voice_channel(sandbox.guild_id, "Lounge")
    status, _, _ = await rest.call("PATCH", member, json={"channel_id": str(lounge)})
    assert status == 200
    moved = (await watcher.dispatch("VOICE_STATE_UPDATE"))["d"]
    assert moved["channel_id"] == str(lounge)
    ((user_id, state, server),) = followed
    assert user_id == alice.id and state["channel_id"] == str(lounge)
    assert sandbox.authority.verify(server["token"]).channel_id == str(lounge)

    status, _, _ = await rest.call("PATCH", member, json={"channel_id": None})
    assert status == 200
    gone = (await watcher.dispatch("VOICE_STATE_UPDATE"))["d"]
    assert gone["channel_id"] is None and sandbox.voice_states() == []
    status, _, error = await rest.call("PATCH", member, json={"mute": "yes"})
    assert status == 400 and error["code"] == 50035
    status, _, error = await rest.call("PATCH", member, json={"mute": True})
    assert status == 400 and error["code"] == 40032


async def test_control_messages_long_poll_for_what_comes_after(
    sandbox: Sandbox, rest: Rest
) -> None:
    alice = sandbox.create_user("alice")
    first = await sandbox.send_message(alice.id, sandbox.text_channel_id, "one")
    path = f"/v1/channels/{sandbox.info['text_channel_id']}/messages"

    async def later() -> None:
        await asyncio.sleep(0.2)
        await sandbox.send_message(alice.id, sandbox.text_channel_id, "two")

    task = asyncio.create_task(later())
    status, newer = await rest.control("GET", path, params={"after": first["id"], "wait_s": "10"})
    await task
    assert status == 200 and [m["content"] for m in newer] == ["two"]
    status, _ = await rest.control("GET", path, params={"after": newer[0]["id"], "wait_s": "0.3"})
    assert status == 504
