"""Hostile input on the sandbox's main gateway and REST: bad JSON, wrong types, ops out of
order, oversized frames and floods each get the main gateway's close code or a 400 JSON
error, and a real discord.py bot logged in beside them stays connected and keeps working."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
import pytest_asyncio
import yarl

from tests.sandbox.conftest import DpyBot, RawGateway, RawGateways, raw_gateway_opener
from voxgate.sandbox.app import Sandbox

IDENTIFY = "identify first"


# One sandbox and one bystander for the whole module (a discord.py login per case would
# be most of the time spent); each case uses connections of its own.
pytestmark = pytest.mark.asyncio(loop_scope="module")
_said = itertools.count()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    running = await Sandbox.start(tmp_path_factory.mktemp("hostile"), heartbeat_interval_ms=5000)
    try:
        yield running
    finally:
        await running.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bystander(sandbox: Sandbox) -> AsyncIterator[DpyBot]:
    """A real discord.py bot (the second one) that must not notice anything."""
    route_base = discord.http.Route.BASE
    default_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = sandbox.api_url + "/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sandbox.gateway_url)
    intents = discord.Intents.default()
    intents.message_content = True
    bot = DpyBot(sandbox, 1, intents)
    try:
        yield await bot.start()
    finally:
        await bot.close()
        discord.http.Route.BASE = route_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = default_gateway


@pytest_asyncio.fixture(loop_scope="module")
async def raw_gateways(sandbox: Sandbox) -> AsyncIterator[RawGateways]:
    async with raw_gateway_opener(sandbox) as open_:
        yield open_


async def still_working(sandbox: Sandbox, bot: DpyBot) -> None:
    """The bot's gateway never dropped, and it still gets dispatches and answers REST."""
    assert bot.count("ready") == 1 and bot.count("resumed") == 0
    assert bot.count("disconnect") == 0
    (session,) = sandbox.gateway.sessions_of(bot.client.user.id)
    assert session.socket is not None
    user = sandbox.create_user(f"u{len(sandbox.model.users)}")
    said = f"still there? {next(_said)}"
    await sandbox.send_message(user.id, sandbox.text_channel_id, said)
    await bot.wait(lambda: [a for n, a in bot.events if n == "message" and a[0].content == said])
    channel = bot.client.get_channel(sandbox.text_channel_id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("yes")
    assert sent.content == "yes"


def identify(bot_token: str, **changes: Any) -> dict[str, Any]:
    return {"op": 2, "d": {"token": bot_token, "intents": 1, "properties": {}, **changes}}


GATEWAY_CASES: list[tuple[str, list[Any], int]] = [
    ("not json", ["{op: 1"], 4002),
    ("json but not an object", ["[1, 2]"], 4002),
    ("op is a string", ['{"op": "2", "d": null}'], 4002),
    ("op is a boolean", ['{"op": true, "d": null}'], 4002),
    ("nesting too deep", ["[" * 2000 + "]" * 2000], 4002),
    ("binary frame", [b"\x83h\x02"], 4002),
    ("frame over 4 KiB", ['{"op": 1, "d": null, "x": "' + "a" * 8000 + '"}'], 4002),
    ("frame over 64 KiB", ["a" * 100_000], 1009),
    ("heartbeat d is text", ['{"op": 1, "d": "seven"}'], 4002),
    ("identify d is a list", ['{"op": 2, "d": []}'], 4002),
    ("identify token is a number", [identify("TOKEN", token=5)], 4002),
    ("identify intents is text", [identify("TOKEN", intents="513")], 4002),
    ("identify without properties", ['{"op": 2, "d": {"token": "x", "intents": 1}}'], 4002),
    ("voice state before identify", ['{"op": 4, "d": {"guild_id": "1"}}'], 4003),
    ("members request before identify", ['{"op": 8, "d": {"guild_id": "1"}}'], 4003),
    ("identify twice", [IDENTIFY, identify("TOKEN")], 4005),
    (
        "resume after identify",
        [IDENTIFY, '{"op": 6, "d": {"token": "x", "session_id": "y"}}'],
        4005,
    ),
    ("voice state with a bad guild id", [IDENTIFY, '{"op": 4, "d": {"guild_id": "abc"}}'], 4002),
    (
        "voice state self_mute is text",
        [IDENTIFY, '{"op": 4, "d": {"guild_id": "1", "channel_id": null, "self_mute": "yes"}}'],
        4002,
    ),
    ("voice state d is null", [IDENTIFY, '{"op": 4, "d": null}'], 4002),
    ("unknown op", [IDENTIFY, '{"op": 42, "d": {}}'], 4001),
    ("resume seq is text", ['{"op": 6, "d": {"token": "x", "session_id": "y", "seq": "1"}}'], 4002),
]


@pytest.mark.parametrize(
    ("frames", "code"),
    [(frames, code) for _, frames, code in GATEWAY_CASES],
    ids=[name for name, _, _ in GATEWAY_CASES],
)
async def test_hostile_gateway_input_gets_its_close_code_and_others_stay_connected(
    sandbox: Sandbox,
    raw_gateways: RawGateways,
    bystander: DpyBot,
    frames: list[Any],
    code: int,
) -> None:
    gateway = await raw_gateways()
    await gateway.receive()
    token = sandbox.info["bots"][0]["token"]
    for frame in frames:
        if frame == IDENTIFY:
            await gateway.send(identify(token))
            await gateway.dispatch("READY")
        elif isinstance(frame, bytes):
            await gateway.ws.send_bytes(frame)
        elif isinstance(frame, dict):
            await gateway.send(json.loads(json.dumps(frame).replace("TOKEN", token)))
        else:
            await gateway.send(frame.replace("TOKEN", token))
    closed, reason = await gateway.closed()
    assert closed == code
    if code != 1009:  # aiohttp's own cut-off closes without our reason
        assert reason
    await still_working(sandbox, bystander)


async def test_a_flood_closes_4008_and_others_stay_connected(
    sandbox: Sandbox, raw_gateways: RawGateways, bystander: DpyBot
) -> None:
    gateway = await raw_gateways()
    await gateway.receive()
    for _ in range(130):
        await gateway.send('{"op": 1, "d": null}')
    closed, reason = await gateway.closed()
    assert closed == 4008 and "120" in reason
    await still_working(sandbox, bystander)


async def test_a_silent_connection_is_timed_out_4009(tmp_path: Any) -> None:
    from pathlib import Path

    sandbox = await Sandbox.start(Path(str(tmp_path)) / "quick", heartbeat_interval_ms=100)
    try:
        gateway = await RawGateway.connect(sandbox.gateway_url)
        await gateway.receive()
        # 1.5 heartbeat intervals and 5 s of grace, then the sandbox gives up on it.
        assert (await gateway.closed(timeout=20))[0] == 4009
        await gateway.close()
    finally:
        await sandbox.stop()


async def test_many_connections_dropping_at_once_leave_the_rest_alone(
    sandbox: Sandbox, raw_gateways: RawGateways, bystander: DpyBot
) -> None:
    token = sandbox.info["bots"][0]["token"]
    gateways = [await raw_gateways() for _ in range(20)]
    for gateway in gateways:
        await gateway.identify(token, 1 | 1 << 7)
        await gateway.send(
            {
                "op": 4,
                "d": {
                    "guild_id": sandbox.info["guild_id"],
                    "channel_id": sandbox.info["voice_channel_id"],
                },
            }
        )
    await asyncio.gather(*(gateway.abort() for gateway in gateways))
    await sandbox.wait_for(
        lambda: all(
            session.socket is None
            for session in sandbox.gateway.sessions_of(int(sandbox.info["bots"][0]["user_id"]))
        )
    )
    await still_working(sandbox, bystander)


REST_CASES: list[tuple[str, str, str, Any, int, int]] = [
    ("bad json", "POST", "/channels/{text}/messages", b"{nope", 400, 50109),
    ("body is a string", "POST", "/channels/{text}/messages", b'"hi"', 400, 50109),
    ("content is a list", "POST", "/channels/{text}/messages", b'{"content": ["a"]}', 400, 50035),
    (
        "tts is text",
        "POST",
        "/channels/{text}/messages",
        b'{"content": "a", "tts": "y"}',
        400,
        50035,
    ),
    (
        "flags is a float",
        "POST",
        "/channels/{text}/messages",
        b'{"content": "a", "flags": 1.5}',
        400,
        50035,
    ),
    (
        "deep nesting",
        "POST",
        "/channels/{text}/messages",
        b"[" * 100_000 + b"]" * 100_000,
        400,
        50109,
    ),
    ("commands not a list", "PUT", "/applications/{app}/commands", b'{"name": "x"}', 400, 50109),
    (
        "command name a number",
        "PUT",
        "/applications/{app}/commands",
        b'[{"name": 5, "description": "x"}]',
        400,
        50035,
    ),
    (
        "command options not a list",
        "POST",
        "/applications/{app}/commands",
        b'{"name": "x", "description": "x", "options": 3}',
        400,
        50035,
    ),
    ("channel id not a snowflake", "GET", "/channels/abc", b"", 404, 0),
    ("unknown channel", "GET", "/channels/12345", b"", 404, 10003),
    ("callback of an unknown interaction", "POST", "/interactions/1/x/callback", b"{}", 404, 10062),
    ("body too large", "POST", "/channels/{text}/messages", b"x" * (9 * 1024 * 1024), 413, 40005),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [case[1:] for case in REST_CASES],
    ids=[case[0] for case in REST_CASES],
)
async def test_hostile_rest_input_gets_a_json_error_and_others_keep_working(
    sandbox: Sandbox,
    bystander: DpyBot,
    method: str,
    path: str,
    body: bytes,
    status: int,
    code: int,
) -> None:
    bot = sandbox.info["bots"][0]
    url = (
        sandbox.api_url
        + "/v10"
        + path.format(text=sandbox.info["text_channel_id"], app=bot["application_id"])
    )
    headers = {"Authorization": f"Bot {bot['token']}", "Content-Type": "application/json"}
    before = len(sandbox.messages(sandbox.text_channel_id))
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, data=body, headers=headers) as response,
    ):
        assert response.status == status
        assert response.headers["Content-Type"] == "application/json"
        error = await response.json()
    assert error["code"] == code and error["message"]
    assert len(sandbox.messages(sandbox.text_channel_id)) == before
    await still_working(sandbox, bystander)


async def test_a_rest_flood_is_429_with_retry_after_and_others_keep_working(
    sandbox: Sandbox, bystander: DpyBot
) -> None:
    headers = {"Authorization": f"Bot {sandbox.info['bots'][0]['token']}"}
    async with aiohttp.ClientSession() as http:

        async def get() -> tuple[int, Any]:
            async with http.get(f"{sandbox.api_url}/v10/users/@me", headers=headers) as response:
                return response.status, await response.json()

        answers = await asyncio.gather(*(get() for _ in range(80)))
    limited = [body for status, body in answers if status == 429]
    assert limited and all(body["retry_after"] > 0 and body["global"] for body in limited)
    # The bystander is another bot: its own budget is untouched.
    await still_working(sandbox, bystander)


async def test_a_socket_that_falls_too_far_behind_is_closed_4000_alone(
    sandbox: Sandbox, raw_gateways: RawGateways, bystander: DpyBot
) -> None:
    from voxgate.sandbox.gateway import OUTBOX_LIMIT

    gateway = await raw_gateways()
    ready = await gateway.identify(sandbox.info["bots"][0]["token"], 1)
    session = sandbox.gateway.sessions[ready["session_id"]]
    for index in range(OUTBOX_LIMIT + 1):
        session.dispatch("TYPING_START", {"n": index})
    code, reason = await gateway.closed()
    assert code == 4000 and "too slow" in reason
    # Its session is kept for a resume; the bystander never noticed.
    assert not session.ended
    await still_working(sandbox, bystander)


async def test_text_that_is_not_utf_8_is_closed_by_the_websocket_layer(
    sandbox: Sandbox, raw_gateways: RawGateways, bystander: DpyBot
) -> None:
    gateway = await raw_gateways()
    await gateway.receive()
    # A text frame whose payload is not UTF-8: aiohttp's client refuses to build one, so
    # the frame is written by hand (FIN, opcode 1, masked, length 2).
    writer = gateway.ws._writer
    writer.transport.write(b"\x81\x82\x00\x00\x00\x00\xff\xfe")
    code, _ = await gateway.closed()
    assert code == 1007
    await still_working(sandbox, bystander)
