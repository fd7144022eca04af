"""A real ``discord.Client`` whose main gateway is a stand-in that answers voice requests.

Everything of discord.py runs as it does for a bot logged into Discord: the ``Client``, its
``ConnectionState``, a ``Guild`` built from a GUILD_CREATE payload with its voice
channels and members, ``channel.connect(cls=...)``, and the dispatch of VOICE_STATE_UPDATE
and VOICE_SERVER_UPDATE through ``parse_voice_state_update`` /
``parse_voice_server_update`` to the voice protocol. Only the main gateway's WebSocket is
replaced: :class:`MainGateway` takes op 4 (``guild.change_voice_state``) and answers with
the two dispatches, minting the voice server's token through the node's admin API, as
``tests/interop`` feeds discord.py today (the sandbox, where it runs, does the same over a
real WebSocket).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import ssl
import urllib.request
from collections.abc import Sequence
from typing import Any

import discord

from tests.support.server import RunningServer


def mint(server: RunningServer, guild: int, channel: int, user: str, session_id: str) -> Any:
    """The two join events from ``server``'s admin API, for the bot's own session id: the
    main gateway's, which a voice session keeps across moves and servers, as on Discord."""
    body = {
        "guild_id": str(guild),
        "channel_id": str(channel),
        "user_id": user,
        "session_id": session_id,
    }
    request = urllib.request.Request(
        f"{server.admin_url}/v1/voice/join",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {server.admin_key}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _user(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": None,
        "bot": bot,
    }


class MainGateway:
    """Discord's main gateway for one bot, as far as voice goes.

    ``server`` is the voice node that op 4 joins are minted on; set another (or
    :meth:`fail_over`) to move the guild's call to another node. ``answer = False`` leaves
    op 4 unanswered, as a gateway that never sends the voice events.
    """

    def __init__(self, client: discord.Client, server: RunningServer) -> None:
        self.client = client
        self.server = server
        self.answer = True
        #: Where VOICE_SERVER_UPDATE points instead of the node (a proxy in front of it).
        self.endpoint: str | None = None
        self.open = True
        #: Every op 4 the bot sent: (guild id, channel id or None).
        self.requests: list[tuple[int, int | None]] = []
        self.session_id = secrets.token_hex(16)
        self._tasks: set[asyncio.Task[None]] = set()

    # What discord.py's Guild.change_voice_state calls.
    async def voice_state(
        self,
        guild_id: int,
        channel_id: int | None,
        self_mute: bool = False,
        self_deaf: bool = False,
    ) -> None:
        self.requests.append((guild_id, channel_id))
        if self.answer:
            # After the caller has gone on to wait for the events, as over a network.
            task = asyncio.get_running_loop().create_task(
                self._answer(guild_id, channel_id, self_mute, self_deaf)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(
        self, guild_id: int, channel_id: int | None, self_mute: bool, self_deaf: bool
    ) -> None:
        await asyncio.sleep(0.02)
        state = self.client._connection
        assert self.client.user is not None
        user_id = str(self.client.user.id)
        voice_state: dict[str, Any] = {
            "guild_id": str(guild_id),
            "channel_id": None,
            "user_id": user_id,
            "session_id": self.session_id,
            "deaf": False,
            "mute": False,
            "self_deaf": self_deaf,
            "self_mute": self_mute,
            "self_video": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }
        if channel_id is None:
            state.parse_voice_state_update(voice_state)  # type: ignore[arg-type]
            return
        join = await asyncio.to_thread(
            mint, self.server, guild_id, channel_id, user_id, self.session_id
        )
        voice_state.update(channel_id=str(channel_id))
        state.parse_voice_state_update(voice_state)  # type: ignore[arg-type]
        if self.endpoint is not None:
            join["voice_server"]["endpoint"] = self.endpoint
        state.parse_voice_server_update(join["voice_server"])

    async def fail_over(self, guild_id: int, channel_id: int, server: RunningServer) -> None:
        """Discord moving the guild's call to another voice server: a VOICE_SERVER_UPDATE
        without an endpoint, then one for ``server``."""
        state = self.client._connection
        assert self.client.user is not None
        state.parse_voice_server_update({"guild_id": str(guild_id), "token": "", "endpoint": None})  # type: ignore[typeddict-item]
        await asyncio.sleep(0.2)
        self.server = server
        user_id = str(self.client.user.id)
        join = await asyncio.to_thread(mint, server, guild_id, channel_id, user_id, self.session_id)
        state.parse_voice_server_update(join["voice_server"])

    async def close(self, code: int = 1000) -> None:
        self.open = False
        for task in list(self._tasks):
            task.cancel()


class RecordingClient(discord.Client):
    """A bot that notes the voice events discord.py dispatches to it (``on_<event>``)."""

    def __init__(self) -> None:
        intents = discord.Intents.default()
        intents.voice_states = True
        super().__init__(intents=intents)
        self.voice_events: list[tuple[str, tuple[Any, ...]]] = []

    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        if event.startswith("voice_member_"):
            self.voice_events.append((event, args))
        super().dispatch(event, *args, **kwargs)

    def saw(self, event: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.voice_events if name == event]


async def start_bot(
    server: RunningServer,
    guild_id: int,
    channel_ids: Sequence[int],
    *,
    user_id: int,
    members: Sequence[int] = (),
) -> tuple[RecordingClient, discord.Guild, MainGateway]:
    """A bot in ``guild_id`` with voice channels ``channel_ids`` and members ``members``
    (plus itself), as READY and GUILD_CREATE would have told it."""
    client = RecordingClient()
    await client._async_setup_hook()
    state = client._connection
    state.user = discord.ClientUser(state=state, data=_user(user_id, "bot", bot=True))  # type: ignore[arg-type]
    guild_payload = {
        "id": str(guild_id),
        "name": f"guild {guild_id}",
        "owner_id": str(user_id),
        "roles": [
            {
                "id": str(guild_id),
                "name": "@everyone",
                "permissions": str(discord.Permissions.all().value),
                "position": 0,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
            }
        ],
        "channels": [
            {
                "id": str(channel_id),
                "type": 2,
                "name": f"voice {channel_id}",
                "position": index,
                "guild_id": str(guild_id),
                "bitrate": 64000,
                "user_limit": 0,
                "permission_overwrites": [],
            }
            for index, channel_id in enumerate(channel_ids)
        ],
        "members": [
            {
                "user": _user(member, f"member-{member}", bot=member == user_id),
                "roles": [],
                "flags": 0,
                "joined_at": "2026-01-01T00:00:00+00:00",
                "deaf": False,
                "mute": False,
            }
            for member in (user_id, *members)
        ],
        "voice_states": [],
        "member_count": 1 + len(members),
        "features": [],
        "emojis": [],
        "stickers": [],
    }
    guild = discord.Guild(data=guild_payload, state=state)  # type: ignore[arg-type]
    state._add_guild(guild)
    gateway = MainGateway(client, server)
    client.ws = gateway  # type: ignore[assignment]
    return client, guild, gateway


async def stop_bot(client: discord.Client) -> None:
    with contextlib.suppress(Exception):
        await client.close()


def trust(*ca_paths: Any) -> ssl.SSLContext:
    """A TLS context trusting the nodes' own CAs."""
    context = ssl.create_default_context()
    for path in ca_paths:
        context.load_verify_locations(cafile=str(path))
    return context
