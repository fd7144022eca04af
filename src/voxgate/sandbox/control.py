"""The control API: HTTP on its own port, for test suites in any language (and for the
pytest plugin's subprocess bots) to arrange the sandbox and act as its users.

Every route but ``/healthz`` needs ``Authorization: Bearer <control_key>`` (``sandbox.json``
has the key). Bodies and answers are JSON, ids are decimal strings (numbers are accepted),
errors are ``{"error": "..."}`` with a 4xx status. README's "voxgate sandbox" section lists
the routes.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from voxgate.sandbox.model import ModelError

if TYPE_CHECKING:
    from voxgate.sandbox.app import Sandbox

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def reply(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(),
        status=status,
        headers={"Content-Type": "application/json"},
    )


async def body_of(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ControlError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ControlError(400, "the body must be a JSON object")
    return body


def snowflake(value: Any, name: str) -> int:
    """An id from a body, a path or a query: a decimal string or a non-negative integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        return int(value)
    raise ControlError(400, f"{name} must be a snowflake (a decimal string)")


def text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ControlError(400, f"{name} must be a non-empty string")
    return value


def control_app(sandbox: Sandbox, control_key: str) -> web.Application:
    """The control API's application over ``sandbox``; ``control_key`` guards it."""
    expected = f"Bearer {control_key}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/healthz":
            offered = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(offered, expected):
                return reply({"error": "missing or wrong control key"}, 401)
        try:
            return await handler(request)
        except ControlError as exc:
            return reply({"error": exc.message}, exc.status)
        except ModelError as exc:
            return reply({"error": exc.message, "code": exc.code}, exc.status)
        except TimeoutError:
            return reply({"error": "timed out"}, 504)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("control %s %s: unexpected error", request.method, request.path)
            return reply({"error": "internal error"}, 500)

    model = sandbox.model

    def user_payload(user_id: int) -> dict[str, Any]:
        return model.user_payload(user_id)

    async def healthz(request: web.Request) -> web.StreamResponse:
        return reply({"status": "ok"})

    async def info(request: web.Request) -> web.StreamResponse:
        return reply(sandbox.info)

    async def create_user(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        return reply(user_payload(sandbox.create_user(text(body, "name")).id), 201)

    async def list_users(request: web.Request) -> web.StreamResponse:
        return reply([user_payload(user_id) for user_id in model.users])

    async def create_guild(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        guild_id = sandbox.create_guild(text(body, "name"))
        return reply(model.guild_payload(model.guild(guild_id)), 201)

    async def create_channel(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        guild_id = snowflake(request.match_info["guild_id"], "guild_id")
        kind = body.get("type", "voice")
        if kind in ("voice", 2):
            channel_id = sandbox.create_voice_channel(guild_id, text(body, "name"))
        elif kind in ("text", 0):
            channel_id = sandbox.create_text_channel(guild_id, text(body, "name"))
        else:
            raise ControlError(400, 'type must be "voice" or "text"')
        return reply(model.channel_payload(model.channel(channel_id)), 201)

    async def guild_channels(request: web.Request) -> web.StreamResponse:
        guild = model.guild(snowflake(request.match_info["guild_id"], "guild_id"))
        return reply([model.channel_payload(channel) for channel in guild.channels.values()])

    async def join_voice(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        voice_state, voice_server = await sandbox.join_voice(
            snowflake(body.get("user_id"), "user_id"),
            snowflake(body.get("channel_id"), "channel_id"),
        )
        return reply({"voice_state": voice_state, "voice_server": voice_server})

    def _member_target(body: dict[str, Any]) -> tuple[int, int]:
        guild = body.get("guild_id", str(sandbox.guild_id))
        return snowflake(body.get("user_id"), "user_id"), snowflake(guild, "guild_id")

    async def leave_voice(request: web.Request) -> web.StreamResponse:
        user_id, guild_id = _member_target(await body_of(request))
        await sandbox.leave_voice(user_id, guild_id)
        return reply({"ok": True})

    async def disconnect(request: web.Request) -> web.StreamResponse:
        user_id, guild_id = _member_target(await body_of(request))
        await sandbox.disconnect_member(user_id, guild_id)
        return reply({"ok": True})

    async def failover(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        await sandbox.voice_server_failover(
            snowflake(body.get("guild_id", str(sandbox.guild_id)), "guild_id")
        )
        return reply({"ok": True})

    async def move(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        await sandbox.move_member(
            snowflake(body.get("user_id"), "user_id"),
            snowflake(body.get("channel_id"), "channel_id"),
        )
        return reply({"ok": True})

    async def flags(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        user_id, guild_id = _member_target(body)
        changes = {name: body[name] for name in ("mute", "deaf") if name in body}
        if not changes or not all(isinstance(value, bool) for value in changes.values()):
            raise ControlError(400, "mute and/or deaf must be given as booleans")
        await sandbox.set_voice_flags(user_id, guild_id, **changes)
        return reply({"ok": True})

    async def voice_states(request: web.Request) -> web.StreamResponse:
        guild_id = snowflake(request.match_info["guild_id"], "guild_id")
        return reply(sandbox.voice_states(guild_id))

    async def send_message(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        channel_id = snowflake(request.match_info["channel_id"], "channel_id")
        message = await sandbox.send_message(
            snowflake(body.get("user_id"), "user_id"), channel_id, text(body, "content")
        )
        return reply(message, 201)

    async def messages(request: web.Request) -> web.StreamResponse:
        """Messages of a channel, oldest first; ``?after=ID`` only newer ones, and with
        ``&wait_s=S`` (at most 60) held until there is one (a long poll, for suites in other
        languages), 504 when none came."""
        channel_id = snowflake(request.match_info["channel_id"], "channel_id")
        after = snowflake(request.query.get("after", "0"), "after")
        try:
            wait_s = min(float(request.query.get("wait_s", "0")), 60.0)
        except ValueError:
            raise ControlError(400, "wait_s must be a number of seconds") from None

        def newer() -> list[dict[str, Any]]:
            return [m for m in sandbox.messages(channel_id) if int(m["id"]) > after]

        if wait_s > 0:
            return reply(await sandbox.wait_for(newer, wait_s))
        return reply(newer())

    def interaction_payload(interaction: Any) -> dict[str, Any]:
        original = (
            None
            if interaction.original_message_id is None
            else model.find_message(interaction.original_message_id)
        )
        followups = [model.find_message(mid) for mid in interaction.followup_message_ids]
        return {
            "id": str(interaction.id),
            "token": interaction.token,
            "application_id": str(interaction.application_id),
            "name": interaction.command.name,
            "user_id": str(interaction.user_id),
            "channel_id": str(interaction.channel_id),
            "callbacks": interaction.callbacks,
            "original_message": None if original is None else model.message_payload(original),
            "followups": [model.message_payload(m) for m in followups if m is not None],
        }

    async def invoke(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        options = body.get("options")
        if options is not None and not isinstance(options, dict | list):
            raise ControlError(400, "options must be an object or a list")
        application_id = body.get("application_id")
        interaction = await sandbox.invoke_command(
            snowflake(body.get("user_id"), "user_id"),
            snowflake(body.get("channel_id"), "channel_id"),
            text(body, "name"),
            options,
            application_id=None
            if application_id is None
            else snowflake(application_id, "application_id"),
        )
        wait = body.get("wait_s", 0)
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0:
            await sandbox.wait_interaction_response(interaction, min(float(wait), 60.0))
        return reply(interaction_payload(interaction), 201)

    async def interaction(request: web.Request) -> web.StreamResponse:
        found = model.interactions.get(snowflake(request.match_info["interaction_id"], "id"))
        if found is None:
            raise ControlError(404, "no such interaction")
        return reply(interaction_payload(found))

    async def commands(request: web.Request) -> web.StreamResponse:
        return reply([model.command_payload(command) for command in model.commands.values()])

    def _bot(body: dict[str, Any]) -> int | None:
        user_id = body.get("user_id")
        return None if user_id is None else snowflake(user_id, "user_id")

    async def gateway_close(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        code = body.get("code", 4000)
        if not isinstance(code, int) or not (code in (1000, 1001) or 4000 <= code <= 4999):
            raise ControlError(400, "code must be 1000, 1001 or 4000-4999")
        return reply({"closed": await sandbox.drop_gateway(_bot(body), code)})

    async def gateway_reconnect(request: web.Request) -> web.StreamResponse:
        return reply({"sent": await sandbox.send_reconnect(_bot(await body_of(request)))})

    async def gateway_invalidate(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        resumable = body.get("resumable", False)
        if not isinstance(resumable, bool):
            raise ControlError(400, "resumable must be a boolean")
        return reply({"sent": await sandbox.invalidate_session(_bot(body), resumable)})

    async def gateway_sessions(request: web.Request) -> web.StreamResponse:
        return reply(sandbox.gateway_sessions())

    async def logs(request: web.Request) -> web.StreamResponse:
        return web.Response(text=sandbox.logs() + "\n", content_type="text/plain")

    async def unhandled(request: web.Request) -> web.StreamResponse:
        return reply(sandbox.unhandled_routes)

    app = web.Application(middlewares=[guard], client_max_size=1024 * 1024)
    add = app.router.add_route
    add("GET", "/healthz", healthz)
    add("GET", "/v1/sandbox", info)
    add("GET", "/v1/users", list_users)
    add("POST", "/v1/users", create_user)
    add("POST", "/v1/guilds", create_guild)
    add("GET", "/v1/guilds/{guild_id}/channels", guild_channels)
    add("POST", "/v1/guilds/{guild_id}/channels", create_channel)
    add("GET", "/v1/guilds/{guild_id}/voice-states", voice_states)
    add("POST", "/v1/voice/join", join_voice)
    add("POST", "/v1/voice/leave", leave_voice)
    add("POST", "/v1/voice/disconnect", disconnect)
    add("POST", "/v1/voice/failover", failover)
    add("POST", "/v1/voice/move", move)
    add("POST", "/v1/voice/flags", flags)
    add("GET", "/v1/channels/{channel_id}/messages", messages)
    add("POST", "/v1/channels/{channel_id}/messages", send_message)
    add("GET", "/v1/commands", commands)
    add("POST", "/v1/interactions", invoke)
    add("GET", "/v1/interactions/{interaction_id}", interaction)
    add("GET", "/v1/gateway/sessions", gateway_sessions)
    add("POST", "/v1/gateway/close", gateway_close)
    add("POST", "/v1/gateway/reconnect", gateway_reconnect)
    add("POST", "/v1/gateway/invalidate", gateway_invalidate)
    add("GET", "/v1/logs", logs)
    add("GET", "/v1/unhandled", unhandled)
    # Simulated users' voice (join, speak, what they heard): sandbox/user_routes.py.
    from voxgate.sandbox.user_routes import add_user_routes

    add_user_routes(app, sandbox)
    return app
