"""The control API's routes for simulated users' voice: join, speak, and what they heard.

The users live in the sandbox process (each a :class:`~voxgate.sandbox.users.SimulatedUser`
with a real voice client), so a test suite in any language, or one that runs its bots as
subprocesses, acts through HTTP what the Python API does in-process:

- ``POST /v1/users/{id}/voice/join`` ``{"channel_id"?}``: join (or move to) a voice channel;
- ``POST /v1/users/{id}/voice/leave``;
- ``POST /v1/users/{id}/play`` ``{"path"}`` or ``{"tone": hz, "seconds"?}``, and
  ``"wait": false`` to return at once: speak a file or a tone; answers ``{"frames"}``;
- ``GET /v1/users/{id}/heard?from=ID``: ``{"user_id", "packets", "opus": [hex...],
  "duration"}`` (``audio_packets`` counts them without the trailing silence frames);
- ``GET /v1/users/{id}/timeline``: ``{"speakers", "speaking": [{at, user_id, flags}],
  "bursts": [{user_id, start, end, packets}]}``;
- ``POST /v1/users/{id}/recordings``: one WAV per speaker under
  ``D/recordings/<user id>/``; answers ``{speaker: path}``.

Users are made with the control API's ``POST /v1/users`` first.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from voxgate.sandbox.control import ControlError, body_of, reply, snowflake
from voxgate.sandbox.users import SimulatedUser, SimulatedUserError

if TYPE_CHECKING:
    from voxgate.sandbox.app import Sandbox


def add_user_routes(app: web.Application, sandbox: Sandbox) -> None:
    """Add the simulated users' voice routes to the control API's ``app``."""
    users: dict[int, SimulatedUser] = {}
    playing: set[asyncio.Task[int]] = set()

    def user_of(request: web.Request) -> SimulatedUser:
        user_id = snowflake(request.match_info["user_id"], "user_id")
        if user_id not in users:
            user = sandbox.model.user(user_id)  # 404 from the model when there is none
            if user.bot:
                raise ControlError(400, "bots join voice through their own gateway (op 4)")
            users[user_id] = SimulatedUser(sandbox, str(user_id), user.username)
        return users[user_id]

    async def join(request: web.Request) -> web.StreamResponse:
        user, body = user_of(request), await body_of(request)
        channel = body.get("channel_id")
        connection = await user.join(None if channel is None else snowflake(channel, "channel_id"))
        return reply(
            {"user_id": user.user_id, "channel_id": user.channel_id, "ssrc": connection.ssrc}
        )

    async def leave(request: web.Request) -> web.StreamResponse:
        await user_of(request).leave()
        return reply({"ok": True})

    async def play(request: web.Request) -> web.StreamResponse:
        user, body = user_of(request), await body_of(request)
        if isinstance(body.get("path"), str) and body["path"]:
            speaking = user.play(body["path"])
        elif isinstance(body.get("tone"), int | float) and body["tone"] > 0:
            seconds = body.get("seconds", 1.0)
            if not isinstance(seconds, int | float) or not 0 < seconds <= 600:
                raise ControlError(400, "seconds must be a number in (0, 600]")
            speaking = user.play_tone(float(body["tone"]), float(seconds))
        else:
            raise ControlError(400, 'give "path" (a file) or "tone" (Hz)')
        try:
            task = asyncio.ensure_future(speaking)
            if body.get("wait", True) is False:
                playing.add(task)
                task.add_done_callback(playing.discard)
                return reply({"playing": True}, 202)
            return reply({"frames": await task})
        except SimulatedUserError as exc:
            raise ControlError(409, str(exc)) from None

    async def heard(request: web.Request) -> web.StreamResponse:
        user = user_of(request)
        speaker = snowflake(request.query.get("from"), "from")
        what = user.heard(speaker)
        return reply(
            {
                "user_id": what.user_id,
                "packets": len(what),
                "audio_packets": len(what.audio),
                "opus": [packet.hex() for packet in what.opus],
                "duration": what.duration,
            }
        )

    async def timeline(request: web.Request) -> web.StreamResponse:
        user = user_of(request)
        return reply(
            {
                "speakers": user.speakers(),
                "speaking": [
                    {"at": c.at, "user_id": c.user_id, "flags": c.flags} for c in user.timeline()
                ],
                "bursts": [
                    {"user_id": b.user_id, "start": b.start, "end": b.end, "packets": b.packets}
                    for b in user.bursts()
                ],
            }
        )

    async def recordings(request: web.Request) -> web.StreamResponse:
        user = user_of(request)
        folder = sandbox.data_dir / "recordings" / user.user_id
        return reply({speaker: str(path) for speaker, path in user.save_wavs(folder).items()})

    async def close_users(app: web.Application) -> None:
        for task in list(playing):
            task.cancel()
        for user in users.values():
            await user.close()

    app.on_cleanup.append(close_users)
    add: Any = app.router.add_route
    add("POST", "/v1/users/{user_id}/voice/join", join)
    add("POST", "/v1/users/{user_id}/voice/leave", leave)
    add("POST", "/v1/users/{user_id}/play", play)
    add("GET", "/v1/users/{user_id}/heard", heard)
    add("GET", "/v1/users/{user_id}/timeline", timeline)
    add("POST", "/v1/users/{user_id}/recordings", recordings)
