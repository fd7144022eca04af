"""The sandbox's REST API: the subset of Discord's ``/api/v9`` and ``/api/v10`` that bots
call from login to a voice join, and the routes they answer users through.

Every answer is rendered from the model and sent with the exact ``Content-Type:
application/json`` discord.py requires (SANDBOX.md §2). A missing or unknown bot token gets
401, a body that is not JSON or has wrong types 400 with Discord's error shape, a flood 429
with ``retry_after``; any route not served here gets a 404 JSON body and is logged and kept
as unhandled, so a test can see what its bot needed that the sandbox lacks.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from voxgate.sandbox.model import (
    ApplicationCommand,
    Bot,
    ChannelType,
    Interaction,
    Message,
    ModelError,
    Payload,
)

if TYPE_CHECKING:
    from voxgate.sandbox.app import Sandbox

log = logging.getLogger(__name__)

API_VERSIONS = (9, 10)
#: Discord's global limit: 50 requests a second per bot.
RATE_LIMIT_REQUESTS = 50
RATE_LIMIT_WINDOW_S = 1.0
MAX_CONTENT = 2000
MAX_EMBEDS = 10
MESSAGE_FLAG_EPHEMERAL = 1 << 6
MESSAGE_FLAG_LOADING = 1 << 7
_COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BotHandler = Callable[[web.Request, Bot], Awaitable[web.StreamResponse]]


def json_response(payload: Any, status: int = 200) -> web.Response:
    """JSON with ``Content-Type`` exactly ``application/json``: discord.py compares it
    exactly, and aiohttp's ``json_response`` appends ``; charset=utf-8``."""
    return web.Response(
        body=json.dumps(payload, separators=(",", ":")).encode(),
        status=status,
        headers={"Content-Type": "application/json"},
    )


def error(status: int, code: int, message: str, errors: Payload | None = None) -> web.Response:
    body: Payload = {"message": message, "code": code}
    if errors is not None:
        body["errors"] = errors
    return json_response(body, status)


def invalid_form(field: str, message: str) -> ModelError:
    return ModelError(400, 50035, f"Invalid Form Body: {field}: {message}")


def _snowflake(request: web.Request, name: str) -> int:
    value = request.match_info[name]
    if not value.isdigit() or len(value) > 20:
        raise ModelError(404, 0, f"404: Not Found ({name} is not a snowflake)")
    return int(value)


async def _json_body(request: web.Request, kind: type = dict) -> Any:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        raise ModelError(400, 50109, "The request body contains invalid JSON.") from None
    if not isinstance(body, kind):
        raise ModelError(400, 50109, f"The request body must be a JSON {kind.__name__}.")
    return body


async def _message_body(request: web.Request) -> tuple[Payload, list[Payload]]:
    """A message body, as JSON or as multipart (``payload_json`` plus ``files[n]``)."""
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        raw = form.get("payload_json")
        try:
            body = json.loads(raw) if isinstance(raw, str) else {}
        except ValueError:
            raise ModelError(400, 50109, "The request body contains invalid JSON.") from None
        if not isinstance(body, dict):
            raise ModelError(400, 50109, "payload_json must be a JSON object.")
        attachments = []
        for key, value in form.items():
            if key.startswith("files[") and isinstance(value, web.FileField):
                data = value.file.read()
                attachments.append(
                    {
                        "filename": value.filename,
                        "size": len(data),
                        "content_type": value.content_type,
                    }
                )
        return body, attachments
    return await _json_body(request), []


def _validate_message(
    body: Payload, attachments: list[Payload], *, partial: bool = False
) -> Payload:
    fields: Payload = {}
    content = body.get("content")
    if content is not None:
        if not isinstance(content, str):
            raise invalid_form("content", "must be a string")
        if len(content) > MAX_CONTENT:
            raise invalid_form("content", f"must be {MAX_CONTENT} or fewer in length")
        fields["content"] = content
    for name, limit in (("embeds", MAX_EMBEDS), ("components", 5)):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise invalid_form(name, "must be a list of objects")
            if len(value) > limit:
                raise invalid_form(name, f"must be {limit} or fewer in length")
            fields[name] = value
    embed = body.get("embed")
    if isinstance(embed, dict):
        fields["embeds"] = [embed]
    flags = body.get("flags")
    if flags is not None:
        if not isinstance(flags, int) or isinstance(flags, bool):
            raise invalid_form("flags", "must be an integer")
        fields["flags"] = flags
    tts = body.get("tts")
    if tts is not None:
        if not isinstance(tts, bool):
            raise invalid_form("tts", "must be a boolean")
        fields["tts"] = tts
    nonce = body.get("nonce")
    if nonce is not None:
        if not isinstance(nonce, str | int) or isinstance(nonce, bool):
            raise invalid_form("nonce", "must be a string or an integer")
        fields["nonce"] = nonce
    if attachments:
        fields["attachments"] = [
            {"id": str(index), "url": "", "proxy_url": "", **attachment}
            for index, attachment in enumerate(attachments)
        ]
    if not partial and not (
        fields.get("content")
        or fields.get("embeds")
        or fields.get("components")
        or attachments
        or body.get("sticker_ids")
        or body.get("poll")
    ):
        raise ModelError(400, 50006, "Cannot send an empty message")
    return fields


def _validate_command(body: Any) -> Payload:
    if not isinstance(body, dict):
        raise invalid_form("command", "must be an object")
    name = body.get("name")
    kind = body.get("type", 1)
    if not isinstance(kind, int) or isinstance(kind, bool) or kind not in (1, 2, 3, 4):
        raise invalid_form("type", "must be 1, 2, 3 or 4")
    if not isinstance(name, str) or (kind == 1 and not _COMMAND_NAME.match(name)):
        raise invalid_form("name", "must be 1-32 characters of letters, digits, - and _")
    if kind != 1 and not 1 <= len(name) <= 32:
        raise invalid_form("name", "must be 1-32 characters")
    description = body.get("description", "")
    if not isinstance(description, str) or (kind == 1 and not 1 <= len(description) <= 100):
        raise invalid_form("description", "must be 1-100 characters")
    options = body.get("options") or []
    if not isinstance(options, list) or len(options) > 25:
        raise invalid_form("options", "must be a list of at most 25 options")
    for index, option in enumerate(options):
        if (
            not isinstance(option, dict)
            or not isinstance(option.get("name"), str)
            or not isinstance(option.get("type"), int)
        ):
            raise invalid_form(f"options.{index}", "needs a name and a type")
    permissions = body.get("default_member_permissions")
    if permissions is not None and not isinstance(permissions, str | int):
        raise invalid_form("default_member_permissions", "must be a string")
    known = {"name", "type", "description", "options", "default_member_permissions", "nsfw", "id"}
    return {
        "name": name,
        "type": kind,
        "description": description,
        "options": options,
        "default_member_permissions": None if permissions is None else str(permissions),
        "nsfw": bool(body.get("nsfw", False)),
        "extra": {key: value for key, value in body.items() if key not in known},
    }


class RestApi:
    """The route handlers, over one sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.model = sandbox.model
        self._windows: dict[str, tuple[float, int]] = {}

    # --- plumbing ------------------------------------------------------------------------

    def bot_of(self, request: web.Request) -> Bot | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bot "):
            return None
        return self.model.bot_for_token(header[4:].strip())

    def authed(self, handler: BotHandler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            bot = self.bot_of(request)
            if bot is None:
                return error(401, 0, "401: Unauthorized")
            return await handler(request, bot)

        return wrapped

    def _rate_limited(self, key: str) -> float | None:
        now = time.monotonic()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= RATE_LIMIT_WINDOW_S:
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        if count > RATE_LIMIT_REQUESTS:
            return max(RATE_LIMIT_WINDOW_S - (now - start), 0.01)
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api"):
            return await handler(request)
        bot = self.bot_of(request)
        who = bot.user.username if bot else "-"
        retry_after = self._rate_limited(who if bot else f"ip:{request.remote}")
        if retry_after is not None:
            log.warning("REST %s %s from %s: rate limited", request.method, request.path, who)
            limited = json_response(
                {
                    "message": "You are being rate limited.",
                    "retry_after": round(retry_after, 3),
                    "global": True,
                    "code": 0,
                },
                429,
            )
            limited.headers["Retry-After"] = f"{retry_after:.3f}"
            limited.headers["X-RateLimit-Global"] = "true"
            limited.headers["X-RateLimit-Scope"] = "global"
            return limited
        response: web.StreamResponse
        try:
            response = await handler(request)
        except ModelError as exc:
            response = error(exc.status, exc.code, exc.message)
        except web.HTTPRequestEntityTooLarge:
            response = error(413, 40005, "Request entity too large")
        except web.HTTPException:
            raise
        except Exception:  # one bad request never takes the sandbox down
            log.exception("REST %s %s: unexpected error", request.method, request.path)
            response = error(500, 0, "500: Internal Server Error")
        log.info(
            "REST %s %s -> %d (%s)", request.method, request.path_qs[:200], response.status, who
        )
        return response

    async def unhandled(self, request: web.Request) -> web.StreamResponse:
        route = f"{request.method} {request.path}"
        self.sandbox._unhandled.append(route)
        log.warning("REST unhandled route: %s (the sandbox does not serve it)", route)
        return error(404, 0, f"404: Not Found (the voxgate sandbox does not serve {route})")

    # --- login ---------------------------------------------------------------------------

    async def gateway(self, request: web.Request) -> web.StreamResponse:
        return json_response({"url": self.sandbox.gateway_url})

    async def gateway_bot(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        return json_response(
            {
                "url": self.sandbox.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def me(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        return json_response(self.model.me_payload(bot))

    async def my_guilds(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        guilds = self.model.guilds_of(bot.user.id)
        return json_response([self.model.partial_guild_payload(guild) for guild in guilds])

    async def application(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        return json_response(self.model.application_payload(bot))

    async def user(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        return json_response(self.model.user_payload(_snowflake(request, "user_id")))

    # --- guilds and channels -------------------------------------------------------------

    def _guild_of(self, request: web.Request, bot: Bot) -> Any:
        guild = self.model.guild(_snowflake(request, "guild_id"))
        if bot.user.id not in guild.members:
            raise ModelError(403, 50001, "Missing Access")
        return guild

    def _channel_of(self, request: web.Request, bot: Bot) -> Any:
        channel = self.model.channel(_snowflake(request, "channel_id"))
        if bot.user.id not in self.model.guild(channel.guild_id).members:
            raise ModelError(403, 50001, "Missing Access")
        return channel

    async def guild(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        return json_response(self.model.guild_payload(self._guild_of(request, bot)))

    async def guild_channels(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        guild = self._guild_of(request, bot)
        return json_response([self.model.channel_payload(c) for c in guild.channels.values()])

    async def guild_roles(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        guild = self._guild_of(request, bot)
        return json_response([self.model.role_payload(r) for r in guild.roles.values()])

    async def guild_members(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        guild = self._guild_of(request, bot)
        try:
            limit = int(request.query.get("limit", "1"))
            after = int(request.query.get("after", "0"))
        except ValueError:
            raise invalid_form("limit", "must be an integer") from None
        if not 1 <= limit <= 1000:
            raise invalid_form("limit", "must be 1-1000")
        ids = sorted(user_id for user_id in guild.members if user_id > after)[:limit]
        return json_response([self.model.member_payload(guild.id, user_id) for user_id in ids])

    async def guild_member(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        guild = self._guild_of(request, bot)
        return json_response(self.model.member_payload(guild.id, _snowflake(request, "user_id")))

    async def edit_member(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        """``PATCH /guilds/{g}/members/{u}``: a bot moves, disconnects, mutes or deafens a
        member in voice (``channel_id``, ``mute``, ``deaf``) or renames it (``nick``)."""
        guild = self._guild_of(request, bot)
        user_id = _snowflake(request, "user_id")
        member = guild.members.get(user_id)
        if member is None:
            raise ModelError(404, 10007, "Unknown Member")
        body = await _json_body(request)
        for name in ("mute", "deaf"):
            if name in body and not isinstance(body[name], bool):
                raise invalid_form(name, "must be a boolean")
        nick = body.get("nick")
        if nick is not None and (not isinstance(nick, str) or len(nick) > 32):
            raise invalid_form("nick", "must be a string of at most 32 characters")
        if "channel_id" in body:
            target = body["channel_id"]
            if target is None:
                await self.sandbox.disconnect_member(user_id, guild.id)
            elif isinstance(target, str | int) and str(target).isdigit():
                channel = self.model.channel(int(target))
                if channel.guild_id != guild.id:
                    raise invalid_form("channel_id", "is not a channel of this guild")
                await self.sandbox.move_member(user_id, channel.id)
            else:
                raise invalid_form("channel_id", "must be a snowflake or null")
        if "mute" in body or "deaf" in body:
            await self.sandbox.set_voice_flags(
                user_id, guild.id, mute=body.get("mute"), deaf=body.get("deaf")
            )
        if "nick" in body:
            member.nick = nick
        self.sandbox.notify()
        return json_response(self.model.member_payload(guild.id, user_id))

    async def guild_voice_state(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        guild = self._guild_of(request, bot)
        raw = request.match_info["user_id"]
        user_id = bot.user.id if raw == "@me" else _snowflake(request, "user_id")
        state = guild.voice_states.get(user_id)
        if state is None:
            raise ModelError(404, 10065, "Unknown Voice State")
        return json_response(self.model.voice_state_payload(state))

    async def channel(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        return json_response(self.model.channel_payload(self._channel_of(request, bot)))

    # --- messages ------------------------------------------------------------------------

    async def messages(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        channel = self._channel_of(request, bot)
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            raise invalid_form("limit", "must be an integer") from None
        if not 1 <= limit <= 100:
            raise invalid_form("limit", "must be 1-100")
        messages = list(reversed(self.model.messages.get(channel.id, [])))[:limit]
        return json_response([self.model.message_payload(message) for message in messages])

    async def message(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        channel = self._channel_of(request, bot)
        message = self.model.message(channel.id, _snowflake(request, "message_id"))
        return json_response(self.model.message_payload(message))

    async def create_message(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        channel = self._channel_of(request, bot)
        if channel.type not in (ChannelType.GUILD_TEXT, ChannelType.GUILD_VOICE):
            raise ModelError(400, 50008, "Cannot send messages in a non-text channel")
        body, attachments = await _message_body(request)
        fields = _validate_message(body, attachments)
        content = fields.pop("content", "")
        message = self.model.add_message(channel.id, bot.user.id, content, **fields)
        self.sandbox.dispatch_message_create(message.id, channel.id)
        return json_response(self.model.message_payload(message))

    def _edit(self, message: Message, fields: Payload) -> Payload:
        for name, value in fields.items():
            setattr(message, name, value)
        message.flags &= ~MESSAGE_FLAG_LOADING
        message.edited_at = time.time()
        payload = self.model.message_payload(message)
        if message.guild_id is not None and not message.flags & MESSAGE_FLAG_EPHEMERAL:
            self.sandbox.gateway.dispatch_guild(message.guild_id, "MESSAGE_UPDATE", payload, None)
        self.sandbox.notify()
        return payload

    async def edit_message(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        channel = self._channel_of(request, bot)
        message = self.model.message(channel.id, _snowflake(request, "message_id"))
        if message.author_id != bot.user.id:
            raise ModelError(403, 50005, "Cannot edit a message authored by another user")
        body, attachments = await _message_body(request)
        return json_response(
            self._edit(message, _validate_message(body, attachments, partial=True))
        )

    async def delete_message(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        channel = self._channel_of(request, bot)
        message = self.model.message(channel.id, _snowflake(request, "message_id"))
        self._delete(message)
        return web.Response(status=204)

    def _delete(self, message: Message) -> None:
        self.model.delete_message(message)
        if message.guild_id is not None:
            self.sandbox.gateway.dispatch_guild(
                message.guild_id,
                "MESSAGE_DELETE",
                {
                    "id": str(message.id),
                    "channel_id": str(message.channel_id),
                    "guild_id": str(message.guild_id),
                },
                None,
            )
        self.sandbox.notify()

    async def typing(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        self._channel_of(request, bot)
        return web.Response(status=204)

    # --- application commands ------------------------------------------------------------

    def _application(self, request: web.Request, bot: Bot) -> tuple[int, int | None]:
        application_id = _snowflake(request, "application_id")
        if application_id != bot.application_id:
            raise ModelError(403, 50001, "Missing Access (not this bot's application)")
        guild_id = None
        if "guild_id" in request.match_info:
            guild_id = self._guild_of(request, bot).id
        return application_id, guild_id

    def _store_command(
        self, application_id: int, guild_id: int | None, fields: Payload
    ) -> tuple[ApplicationCommand, bool]:
        for command in self.model.commands_of(application_id, guild_id):
            if command.name == fields["name"] and command.type == fields["type"]:
                for name, value in fields.items():
                    setattr(command, name, value)
                command.version = self.model.ids.new()
                return command, False
        command = ApplicationCommand(self.model.ids.new(), application_id, guild_id, **fields)
        command.version = command.id
        self.model.commands[command.id] = command
        return command, True

    async def list_commands(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        application_id, guild_id = self._application(request, bot)
        commands = self.model.commands_of(application_id, guild_id)
        return json_response([self.model.command_payload(command) for command in commands])

    async def overwrite_commands(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        application_id, guild_id = self._application(request, bot)
        body = await _json_body(request, list)
        if len(body) > (100 if guild_id else 200):
            raise invalid_form("commands", "too many commands")
        validated = [_validate_command(entry) for entry in body]
        keys = [(fields["name"], fields["type"]) for fields in validated]
        if len(set(keys)) != len(keys):
            raise ModelError(
                400, 50035, "Invalid Form Body: application command names must be unique"
            )
        kept = []
        for fields in validated:
            command, _ = self._store_command(application_id, guild_id, fields)
            kept.append(command)
        for command in self.model.commands_of(application_id, guild_id):
            if command not in kept:
                del self.model.commands[command.id]
        log.info(
            "%s registered %d %s commands: %s",
            bot.user.username,
            len(kept),
            "guild" if guild_id else "global",
            ", ".join(command.name for command in kept),
        )
        self.sandbox.notify()
        return json_response([self.model.command_payload(command) for command in kept])

    async def create_command(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        application_id, guild_id = self._application(request, bot)
        fields = _validate_command(await _json_body(request))
        command, created = self._store_command(application_id, guild_id, fields)
        self.sandbox.notify()
        return json_response(self.model.command_payload(command), 201 if created else 200)

    def _command(self, request: web.Request, bot: Bot) -> ApplicationCommand:
        application_id, guild_id = self._application(request, bot)
        command = self.model.commands.get(_snowflake(request, "command_id"))
        if command is None or (command.application_id, command.guild_id) != (
            application_id,
            guild_id,
        ):
            raise ModelError(404, 10063, "Unknown application command")
        return command

    async def get_command(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        return json_response(self.model.command_payload(self._command(request, bot)))

    async def edit_command(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        command = self._command(request, bot)
        body = await _json_body(request)
        merged = {**self.model.command_payload(command), **body}
        fields = _validate_command(merged)
        for name, value in fields.items():
            if name != "extra":
                setattr(command, name, value)
        return json_response(self.model.command_payload(command))

    async def delete_command(self, request: web.Request, bot: Bot) -> web.StreamResponse:
        command = self._command(request, bot)
        del self.model.commands[command.id]
        return web.Response(status=204)

    # --- interactions --------------------------------------------------------------------

    def _interaction(self, request: web.Request) -> Interaction:
        interaction = self.model.interactions.get(_snowflake(request, "interaction_id"))
        if interaction is None or interaction.token != request.match_info["token"]:
            raise ModelError(404, 10062, "Unknown interaction")
        return interaction

    def _reply_message(self, interaction: Interaction, fields: Payload, flags: int) -> Message:
        content = fields.pop("content", "")
        fields["flags"] = fields.get("flags", 0) | flags
        message = self.model.add_message(
            interaction.channel_id,
            interaction.application_id,
            content,
            webhook_id=interaction.application_id,
            interaction_id=interaction.id,
            type=20,
            **fields,
        )
        if not message.flags & MESSAGE_FLAG_EPHEMERAL:
            self.sandbox.dispatch_message_create(message.id, message.channel_id)
        return message

    async def interaction_callback(self, request: web.Request) -> web.StreamResponse:
        interaction = self._interaction(request)
        body, attachments = await _message_body(request)
        kind = body.get("type")
        if (
            not isinstance(kind, int)
            or isinstance(kind, bool)
            or kind not in (4, 5, 6, 7, 8, 9, 10, 12)
        ):
            raise invalid_form("type", "must be an interaction callback type")
        if interaction.acknowledged:
            raise ModelError(400, 40060, "Interaction has already been acknowledged.")
        data = body.get("data") or {}
        if not isinstance(data, dict):
            raise invalid_form("data", "must be an object")
        message: Message | None = None
        if kind == 4:
            message = self._reply_message(interaction, _validate_message(data, attachments), 0)
        elif kind == 5:
            flags = data.get("flags", 0) if isinstance(data.get("flags"), int) else 0
            message = self._reply_message(interaction, {"flags": flags}, MESSAGE_FLAG_LOADING)
        interaction.callbacks.append({"type": kind, "data": data})
        if message is not None:
            interaction.original_message_id = message.id
        log.info(
            "interaction %d (/%s) answered with callback type %d",
            interaction.id,
            interaction.command.name,
            kind,
        )
        self.sandbox.notify()
        if request.query.get("with_response", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        resource: Payload = {"type": kind}
        if message is not None:
            resource["message"] = self.model.message_payload(message)
        return json_response(
            {
                "interaction": {
                    "id": str(interaction.id),
                    "type": 2,
                    "response_message_id": None if message is None else str(message.id),
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool(
                        message is not None and message.flags & MESSAGE_FLAG_EPHEMERAL
                    ),
                },
                "resource": resource,
            }
        )

    def _webhook_interaction(self, request: web.Request) -> Interaction:
        interaction = self.model.interactions_by_token.get(request.match_info["token"])
        if interaction is None or interaction.application_id != _snowflake(
            request, "application_id"
        ):
            raise ModelError(404, 10015, "Unknown Webhook")
        return interaction

    def _webhook_message(self, request: web.Request, interaction: Interaction) -> Message:
        raw = request.match_info["message_id"]
        message_id = (
            interaction.original_message_id
            if raw == "@original"
            else (_snowflake(request, "message_id"))
        )
        allowed = {interaction.original_message_id, *interaction.followup_message_ids}
        message = None if message_id not in allowed else self.model.find_message(message_id or 0)
        if message is None:
            raise ModelError(404, 10008, "Unknown Message")
        return message

    async def followup(self, request: web.Request) -> web.StreamResponse:
        interaction = self._webhook_interaction(request)
        body, attachments = await _message_body(request)
        message = self._reply_message(interaction, _validate_message(body, attachments), 0)
        interaction.followup_message_ids.append(message.id)
        self.sandbox.notify()
        if request.query.get("wait", "").lower() in ("1", "true"):
            return json_response(self.model.message_payload(message))
        return web.Response(status=204)

    async def webhook_message(self, request: web.Request) -> web.StreamResponse:
        interaction = self._webhook_interaction(request)
        return json_response(
            self.model.message_payload(self._webhook_message(request, interaction))
        )

    async def edit_webhook_message(self, request: web.Request) -> web.StreamResponse:
        interaction = self._webhook_interaction(request)
        message = self._webhook_message(request, interaction)
        body, attachments = await _message_body(request)
        return json_response(
            self._edit(message, _validate_message(body, attachments, partial=True))
        )

    async def delete_webhook_message(self, request: web.Request) -> web.StreamResponse:
        interaction = self._webhook_interaction(request)
        self._delete(self._webhook_message(request, interaction))
        return web.Response(status=204)


def rest_routes(app: web.Application, sandbox: Sandbox) -> RestApi:
    """Add the REST API (both versions) and the unhandled-route catch-all to ``app``."""
    api = RestApi(sandbox)
    app.middlewares.append(api.middleware)
    a = api.authed
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/gateway", api.gateway),
        ("GET", "/gateway/bot", a(api.gateway_bot)),
        ("GET", "/users/@me", a(api.me)),
        ("GET", "/users/@me/guilds", a(api.my_guilds)),
        ("GET", "/users/{user_id}", a(api.user)),
        ("GET", "/oauth2/applications/@me", a(api.application)),
        ("GET", "/applications/@me", a(api.application)),
        ("GET", "/guilds/{guild_id}", a(api.guild)),
        ("GET", "/guilds/{guild_id}/channels", a(api.guild_channels)),
        ("GET", "/guilds/{guild_id}/roles", a(api.guild_roles)),
        ("GET", "/guilds/{guild_id}/members", a(api.guild_members)),
        ("GET", "/guilds/{guild_id}/members/{user_id}", a(api.guild_member)),
        ("PATCH", "/guilds/{guild_id}/members/{user_id}", a(api.edit_member)),
        ("GET", "/guilds/{guild_id}/voice-states/{user_id}", a(api.guild_voice_state)),
        ("GET", "/channels/{channel_id}", a(api.channel)),
        ("GET", "/channels/{channel_id}/messages", a(api.messages)),
        ("POST", "/channels/{channel_id}/messages", a(api.create_message)),
        ("GET", "/channels/{channel_id}/messages/{message_id}", a(api.message)),
        ("PATCH", "/channels/{channel_id}/messages/{message_id}", a(api.edit_message)),
        ("DELETE", "/channels/{channel_id}/messages/{message_id}", a(api.delete_message)),
        ("POST", "/channels/{channel_id}/typing", a(api.typing)),
        ("POST", "/interactions/{interaction_id}/{token}/callback", api.interaction_callback),
        ("POST", "/webhooks/{application_id}/{token}", api.followup),
        ("GET", "/webhooks/{application_id}/{token}/messages/{message_id}", api.webhook_message),
        (
            "PATCH",
            "/webhooks/{application_id}/{token}/messages/{message_id}",
            api.edit_webhook_message,
        ),
        (
            "DELETE",
            "/webhooks/{application_id}/{token}/messages/{message_id}",
            api.delete_webhook_message,
        ),
    ]
    for scope in ("", "/guilds/{guild_id}"):
        base = "/applications/{application_id}" + scope + "/commands"
        routes += [
            ("GET", base, a(api.list_commands)),
            ("PUT", base, a(api.overwrite_commands)),
            ("POST", base, a(api.create_command)),
            ("GET", base + "/{command_id}", a(api.get_command)),
            ("PATCH", base + "/{command_id}", a(api.edit_command)),
            ("DELETE", base + "/{command_id}", a(api.delete_command)),
        ]
    for version in API_VERSIONS:
        for method, path, handler in routes:
            app.router.add_route(method, f"/api/v{version}{path}", handler)
    app.router.add_route("*", "/{tail:.*}", api.unhandled)
    return api
