"""The operator's console: a live dashboard, admin actions and recordings on the admin listener.

``GET /`` serves the dashboard (static files of this package, no CDN, no build step) to a
browser holding a session cookie, and a login form to anyone else. The admin key typed
into the form, or a one-time login URL (``voxgate serve`` prints one and writes it to
``node.json`` as ``dashboard_url``), becomes an HttpOnly, SameSite=Strict cookie. The page
opens one server-sent event stream (``GET /v1/console/events``) and never polls: a
:class:`Sampler` reads the node's plain counters twice a second, turns them into rates and
keeps a few minutes of history, and every open stream gets each snapshot.

The actions (disconnect a member with 4014, end a call with 4022, server-mute, record)
are JSON routes under ``/v1/``. A program calls them with ``Authorization: Bearer
<admin key>``; the dashboard calls them with its cookie and the session's CSRF token in
``X-CSRF-Token``, which a page of another origin cannot read. Every response carries a
strict Content-Security-Policy: scripts and styles only from this listener, nothing inline.

Recording is a member of the call (the audio may be end-to-end encrypted): the server does
not record anything itself, it is handed a :class:`RecordingsView` (``voxgate serve``
passes ``voxgate.recording.Recorder``, which joins as a voxgate client) and lists and
serves the files it wrote.

A node shows every node of its cluster: while a page is open it reads the other nodes
from Redis (with the admin URL each registered) and their calls and members from their
own ``GET /v1/channels?local=1`` with the shared admin key, and an action on a member of
another node is forwarded to that node's admin API (the browser never holds the key). In
front of worker processes the supervisor asks each worker the same over its pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web

from voxgate.errors import VoxgateError

log = logging.getLogger(__name__)

COOKIE = "voxgate_console"
#: How often the sampler reads the counters and every open page gets a snapshot.
TICK_S = 0.5
#: History kept for the plots: five minutes.
HISTORY = int(300 / TICK_S)
#: A member counts as speaking while its Speaking flags are set and its packets arrived
#: within this long (the flags alone stay set through a pause in some clients).
SPEAKING_RECENT_S = 0.4
#: A cluster's other nodes are read from Redis every this many ticks.
PEERS_EVERY = 4
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 64
MAX_STREAMS = 32
#: How long another node's admin API (or a worker) may take to answer.
PEER_TIMEOUT_S = 2.0

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


class RecordingsView(Protocol):
    """What the console asks of the recorder it is given (``voxgate.recording.Recorder``);
    ``start`` raises a :class:`VoxgateError` saying why it cannot record."""

    def start(self, guild_id: str, channel_id: str, seconds: float | None) -> dict[str, Any]: ...

    def stop(self, recording_id: str) -> dict[str, Any] | None: ...

    def get(self, recording_id: str) -> dict[str, Any] | None: ...

    def list(self) -> list[dict[str, Any]]: ...

    def file(self, recording_id: str, name: str) -> Path | None: ...

    def recorder_users(self) -> set[str]: ...


@dataclass
class _Login:
    csrf: str
    expires: float


@dataclass
class _Rates:
    packets_in: int = 0
    packets_out: int = 0
    in_per_s: float = 0.0
    out_per_s: float = 0.0
    heard_at: float = -1e9


@dataclass
class Sampler:
    """Rates and history from the node's counters, read every :data:`TICK_S` seconds."""

    router: Any
    stats: Any
    session_count: Callable[[], int]
    name: str
    recordings: RecordingsView | None = None
    rates: dict[str, _Rates] = field(default_factory=dict)
    channel_history: dict[tuple[str, str], deque[float]] = field(default_factory=dict)
    cpu_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    session_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    #: The cluster's other nodes (or the workers) as :func:`_peer` shows them.
    peers: list[dict[str, Any]] = field(default_factory=list)
    _last_at: float | None = None
    _last_cpu: float = 0.0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: The last tick's time and CPU, and the snapshot of it once someone asked for it.
    _ticked: tuple[float, float] | None = None
    _built: dict[str, Any] | None = None

    @property
    def snapshot(self) -> dict[str, Any]:
        """The last tick as the page shows it ({} before the first tick). Made when first
        asked for, not at every tick: with nobody looking, describing every member twice a
        second cost a node with 2000 members a fifth of its CPU."""
        if self._built is None and self._ticked is not None:
            self._built = self._snapshot(*self._ticked)
        return self._built or {}

    def tick(self, now: float) -> None:
        elapsed = None if self._last_at is None else max(now - self._last_at, 1e-3)
        cpu = time.process_time()
        cpu_percent = 0.0 if elapsed is None else 100 * (cpu - self._last_cpu) / elapsed
        self._last_at, self._last_cpu = now, cpu
        if self.router is not None:
            # Both media paths hold the members' counters back for up to a quarter second:
            # rates over half a second would swing by half without this.
            self.router.sync_counters()
        sessions = {} if self.router is None else self.router.sessions
        for session_id, session in sessions.items():
            rates = self.rates.get(session_id)
            if rates is None:
                rates = self.rates[session_id] = _Rates(session.packets_in, session.packets_out)
                continue
            if elapsed is not None:
                rates.in_per_s = (session.packets_in - rates.packets_in) / elapsed
                rates.out_per_s = (session.packets_out - rates.packets_out) / elapsed
            if session.packets_in != rates.packets_in:
                rates.heard_at = now
            rates.packets_in, rates.packets_out = session.packets_in, session.packets_out
        for gone in self.rates.keys() - sessions.keys():
            del self.rates[gone]
        channels = {} if self.router is None else self.router.channels
        for key, channel in channels.items():
            history = self.channel_history.get(key)
            if history is None:
                history = self.channel_history[key] = deque([0.0] * HISTORY, maxlen=HISTORY)
            history.append(
                sum(self.rates[m.session_id].in_per_s for m in channel.members
                    if m.session_id in self.rates)
            )  # fmt: skip
        for gone_key in self.channel_history.keys() - channels.keys():
            del self.channel_history[gone_key]
        self.cpu_history.append(cpu_percent)
        self.session_history.append(float(self.session_count()))
        self._ticked, self._built = (now, cpu_percent), None
        self._changed.set()
        self._changed = asyncio.Event()

    async def next_snapshot(self) -> dict[str, Any]:
        await self._changed.wait()
        return self.snapshot

    def _snapshot(self, now: float, cpu_percent: float) -> dict[str, Any]:
        recorders = set() if self.recordings is None else self.recordings.recorder_users()
        channels = []
        router_channels = {} if self.router is None else self.router.channels
        for key, channel in sorted(router_channels.items()):
            group = channel.dave
            members = [self._member(m, group, now, recorders) for m in channel.members]
            channels.append(
                {
                    "guild_id": key[0],
                    "channel_id": key[1],
                    "dave": None if group is None else {
                        "state": group.state.value, "epoch": group.epoch,
                    },
                    "packets_in_per_s": round(sum(m["packets_in_per_s"] for m in members), 1),
                    "members": members,
                    "history": [round(v, 1) for v in self.channel_history.get(key, ())],
                }
            )  # fmt: skip
        stats = self.stats
        local = {
            "name": self.name,
            "remote": False,
            "sessions": self.session_count(),
            "cpu_percent": round(cpu_percent, 1),
            "packets_in": stats.packets_in,
            "packets_out": stats.packets_out,
            "dropped": {k: v for k, v in stats.dropped.items() if v},
            "cpu_history": [round(v, 1) for v in self.cpu_history],
            "session_history": list(self.session_history),
            "channels": channels,
        }
        return {
            "t": time.time(),
            "tick_s": TICK_S,
            "history_length": HISTORY,
            "recordings": [] if self.recordings is None else self.recordings.list(),
        } | {"nodes": [local, *self.peers]}

    def _member(
        self, session: Any, group: Any, now: float, recorders: set[str]
    ) -> dict[str, Any]:
        rates = self.rates.get(session.session_id) or _Rates()
        dave_member = None if group is None else group.members.get(session.user_id)
        return {
            "user_id": session.user_id,
            "ssrc": session.ssrc,
            "mode": None if session.mode is None else session.mode.value,
            "dave_protocol_version": session.dave_protocol_version,
            "dave_state": None if dave_member is None else dave_member.state.value,
            "speaking": bool(
                session.speaking and not session.muted and now - rates.heard_at
                <= SPEAKING_RECENT_S
            ),
            "speaking_flags": session.speaking,
            "muted": session.muted,
            "connected": session.connection is not None,
            "packets_in_per_s": round(rates.in_per_s, 1),
            "packets_out_per_s": round(rates.out_per_s, 1),
            "packets_in": session.packets_in,
            "packets_out": session.packets_out,
            "dropped": dict(session.dropped),
            "recorder": session.user_id in recorders,
        }


def _peer(
    node: dict[str, Any], channels: list[dict[str, Any]] | None, unreachable: str | None
) -> dict[str, Any]:
    """Another node of the cluster (or a worker), as this node's dashboard shows it: its
    calls and members as its admin API said (``channels``), else the calls Redis places
    on it, without members, and why it did not answer."""
    if channels is None:
        channels = [
            {**placed, "members": [], "dave": None, "packets_in_per_s": 0.0}
            for placed in node.get("placed", [])
        ]
    return {
        "name": f"{node['node_id']} ({node['endpoint']})",
        "node_id": node["node_id"],
        "remote": True,
        "state": node.get("state"),
        "unreachable": unreachable,
        "sessions": node.get("sessions", 0),
        "cpu_percent": round(100 * float(node.get("cpu", 0.0)), 1),
        "channels": [
            {**{k: v for k, v in c.items() if k != "node"}, "history": [], "remote": True}
            for c in channels
        ],
    }


def answer_locally(
    sampler: Sampler, method: str, path: str, body: dict[str, Any] | None
) -> tuple[int, dict[str, Any]]:
    """A worker's answer to the admin API calls its supervisor's console relays over the
    pipe: ``GET /v1/channels?local=1`` and the member and call actions, on ``sampler``'s
    router (rates over the time since the previous call)."""
    router = sampler.router
    parts = [unquote(part) for part in path.partition("?")[0].strip("/").split("/")]
    if method == "GET" and parts == ["v1", "channels"]:
        sampler.tick(asyncio.get_running_loop().time())
        return 200, {"channels": sampler.snapshot["nodes"][0]["channels"]}
    if method != "POST" or len(parts) < 5 or parts[:2] != ["v1", "channels"]:
        return 404, {"error": f"no route {method} {path}"}
    key = (parts[2], parts[3])
    if parts[4:] == ["end"]:
        if key not in router.channels:
            return 404, {"error": f"no call in channel {key[0]}/{key[1]}"}
        return 200, {"ended": True, "members": router.end_call(key), "close_code": 4022}
    if len(parts) != 7 or parts[4] != "members" or parts[6] not in ("disconnect", "mute"):
        return 404, {"error": f"no route {method} {path}"}
    session = router.find_member(key, parts[5])
    if session is None:
        return 404, {"error": f"no member {parts[5]!r} in channel {key[0]}/{key[1]}"}
    if parts[6] == "disconnect":
        router.disconnect(session)
        log.info("console: disconnected user %s (4014)", session.user_id)
        return 200, {"disconnected": session.user_id, "close_code": 4014}
    router.mute(session, bool((body or {}).get("mute", True)))
    return 200, {"user_id": session.user_id, "muted": session.muted}


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class Console:
    """Logins, the sampler and the routes of the dashboard and the admin actions."""

    def __init__(
        self,
        node: Any,
        admin_key: str,
        *,
        name: str,
        recordings: RecordingsView | None = None,
        cluster: Any = None,
        workers: Any = None,
    ) -> None:
        self.node = node
        #: The supervisor of worker processes (``--workers N``): it asks each over its pipe.
        self.workers = workers
        self._http: aiohttp.ClientSession | None = None
        #: The node's cluster agent (``--redis``): its view lists the other nodes.
        self.cluster = cluster
        #: None in front of worker processes (their routers live in the workers).
        self.router: Any = getattr(node, "router", None)
        self.recordings = recordings
        self._expected = f"Bearer {admin_key}".encode()
        self._admin_key = admin_key.encode()
        self._logins: dict[str, _Login] = {}
        self._once: set[str] = set()
        self._streams: set[web.StreamResponse] = set()
        if cluster is not None:
            name = f"{cluster.node_id} ({name})"
        self.sampler = Sampler(self.router, node.stats, node.session_count, name, recordings)
        self._task: asyncio.Task[None] | None = None

    # --- logins --------------------------------------------------------------------------

    def issue_login_token(self) -> str:
        """A token for ``/login?once=TOKEN``: it logs in one browser, once."""
        token = secrets.token_urlsafe(24)
        self._once.add(token)
        return token

    def _new_login(self, response: web.StreamResponse) -> None:
        now = time.monotonic()
        for token, login in list(self._logins.items()):
            if login.expires <= now:
                del self._logins[token]
        while len(self._logins) >= MAX_SESSIONS:
            del self._logins[next(iter(self._logins))]
        token = secrets.token_urlsafe(32)
        self._logins[token] = _Login(secrets.token_urlsafe(32), now + SESSION_TTL_S)
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="Strict", path="/", max_age=SESSION_TTL_S
        )

    def _login_of(self, request: web.Request) -> _Login | None:
        token = request.cookies.get(COOKIE)
        login = None if token is None else self._logins.get(token)
        if login is None or login.expires <= time.monotonic():
            return None
        return login

    def authorize(self, request: web.Request, *, action: bool) -> web.Response | None:
        """None when ``request`` may go on, else the refusal: the admin key as a bearer
        token, or the console's cookie (for an action, with its CSRF token too)."""
        offered = request.headers.get("Authorization", "").encode()
        if offered and hmac.compare_digest(offered, self._expected):
            return None
        login = self._login_of(request)
        if login is None:
            return _json({"error": "log in first: missing or wrong admin key or cookie"}, 401)
        if action:
            token = request.headers.get("X-CSRF-Token", "")
            if not hmac.compare_digest(token.encode(), login.csrf.encode()):
                return _json({"error": "missing or wrong CSRF token"}, 403)
            if not _same_origin(request):
                return _json({"error": "cross-origin request refused"}, 403)
        return None

    # --- pages ---------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        login = self._login_of(request)
        if login is None:
            return self._login_page()
        page = _static("index.html").decode().replace("{{csrf}}", login.csrf)
        return _page(page.replace("{{name}}", _escape(self.sampler.name)))

    def _login_page(self, error: str = "", status: int = 200) -> web.Response:
        page = _static("login.html").decode()
        shown = f'<p class="error">{_escape(error)}</p>' if error else ""
        return _page(page.replace("{{error}}", shown), status=status)

    async def login(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            once = request.query.get("once", "")
            if once and once in self._once:
                self._once.discard(once)
                response = web.HTTPSeeOther("/", headers=SECURITY_HEADERS)
                self._new_login(response)
                log.info("console: logged in through the one-time login URL")
                return response
            return self._login_page("that login link was used already or is wrong", 401)
        if not _same_origin(request):
            return self._login_page("cross-origin login refused", 403)
        form = await request.post()
        key = str(form.get("key", "")).strip().encode()
        if not hmac.compare_digest(key, self._admin_key):
            return self._login_page("wrong admin key", 401)
        response = web.HTTPSeeOther("/", headers=SECURITY_HEADERS)
        self._new_login(response)
        log.info("console: logged in with the admin key")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        if (refused := self.authorize(request, action=True)) is not None:
            return refused
        self._logins.pop(request.cookies.get(COOKIE, ""), None)
        response = _json({"logged_out": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        suffix = Path(name).suffix
        if suffix not in STATIC_TYPES or "/" in name or name.startswith("."):
            raise web.HTTPNotFound()
        try:
            body = _static(name)
        except FileNotFoundError:
            raise web.HTTPNotFound() from None
        return web.Response(body=body, content_type=STATIC_TYPES[suffix], headers=SECURITY_HEADERS)

    async def events(self, request: web.Request) -> web.StreamResponse:
        if (refused := self.authorize(request, action=False)) is not None:
            return refused
        if len(self._streams) >= MAX_STREAMS:
            return _json({"error": "too many open dashboards"}, 503)
        response = web.StreamResponse(
            headers={**SECURITY_HEADERS, "Content-Type": "text/event-stream"}
        )
        await response.prepare(request)
        self._streams.add(response)
        try:
            snapshot = self.sampler.snapshot
            while True:
                if snapshot:
                    await response.write(f"data: {json.dumps(snapshot)}\n\n".encode())
                snapshot = await self.sampler.next_snapshot()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._streams.discard(response)
        return response

    # --- actions -------------------------------------------------------------------------

    async def channels(self, request: web.Request) -> web.Response:
        if (refused := self.authorize(request, action=False)) is not None:
            return refused
        # Membership as it is now (an action a moment ago shows), rates as last sampled;
        # ``local=1`` (what another node's console asks) leaves the other nodes out.
        local = request.query.get("local") == "1"
        if not local:
            await self._read_peers()
        now = asyncio.get_running_loop().time()
        nodes = self.sampler._snapshot(now, 0.0)["nodes"][: 1 if local else None]
        listed = [
            {**{k: v for k, v in channel.items() if k != "history"}, "node": node["name"]}
            for node in nodes
            for channel in node["channels"]
        ]
        return _json({"channels": listed})

    def _member_or_error(self, request: web.Request) -> tuple[Any, web.Response | None]:
        key = (request.match_info["guild"], request.match_info["channel"])
        session = None
        if self.router is not None:
            session = self.router.find_member(key, request.match_info["user"])
        if session is None:
            return None, _json({"error": f"no member {request.match_info['user']!r} "
                                f"in channel {key[0]}/{key[1]}"}, 404)  # fmt: skip
        return session, None

    async def disconnect(self, request: web.Request) -> web.Response:
        if (refused := self.authorize(request, action=True)) is not None:
            return refused
        session, error = self._member_or_error(request)
        if error is not None:
            return await self._forward(request, "disconnect", None) or error
        self.router.disconnect(session)
        log.info("console: disconnected user %s (4014)", session.user_id)
        return _json({"disconnected": session.user_id, "close_code": 4014})

    async def mute(self, request: web.Request) -> web.Response:
        if (refused := self.authorize(request, action=True)) is not None:
            return refused
        session, error = self._member_or_error(request)
        muted = True
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _json({"error": 'the body must be JSON: {"mute": true|false}'}, 400)
            if not isinstance(body, dict) or not isinstance(body.get("mute", True), bool):
                return _json({"error": 'the body must be {"mute": true|false}'}, 400)
            muted = body.get("mute", True)
        if error is not None:
            return await self._forward(request, "mute", {"mute": muted}) or error
        self.router.mute(session, muted)
        return _json({"user_id": session.user_id, "muted": session.muted})

    async def end_call(self, request: web.Request) -> web.Response:
        if (refused := self.authorize(request, action=True)) is not None:
            return refused
        key = (request.match_info["guild"], request.match_info["channel"])
        if self.router is None or key not in self.router.channels:
            error = _json({"error": f"no call in channel {key[0]}/{key[1]}"}, 404)
            return await self._forward(request, "end", None) or error
        ended = self.router.end_call(key)
        log.info("console: ended the call in %s/%s (%d members, 4022)", *key, ended)
        return _json({"ended": True, "members": ended, "close_code": 4022})

    async def record(self, request: web.Request) -> web.Response:
        if (refused := self.authorize(request, action=True)) is not None:
            return refused
        if self.recordings is None:
            return _json({"error": "this node records nothing (no recorder)"}, 404)
        try:
            body = await request.json()
        except ValueError:
            return _json({"error": "the body must be JSON"}, 400)
        guild, channel = body.get("guild_id"), body.get("channel_id")
        seconds = body.get("seconds")
        if not (isinstance(guild, str) and isinstance(channel, str) and guild and channel):
            return _json({"error": "guild_id and channel_id (strings) are required"}, 400)
        if seconds is not None and not (
            isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0
        ):
            return _json({"error": "seconds must be a positive number"}, 400)
        try:
            started = self.recordings.start(guild, channel, seconds)
        except VoxgateError as exc:
            return _json({"error": str(exc)}, 409)
        return _json(started, 201)

    async def recordings_list(self, request: web.Request) -> web.Response:
        if (refused := self.authorize(request, action=False)) is not None:
            return refused
        return _json({"recordings": [] if self.recordings is None else self.recordings.list()})

    async def recording(self, request: web.Request) -> web.Response:
        if (refused := self.authorize(request, action=False)) is not None:
            return refused
        found = None if self.recordings is None else self.recordings.get(request.match_info["id"])
        return _json({"error": "no such recording"}, 404) if found is None else _json(found)

    async def recording_stop(self, request: web.Request) -> web.Response:
        if (refused := self.authorize(request, action=True)) is not None:
            return refused
        found = None if self.recordings is None else self.recordings.stop(request.match_info["id"])
        return _json({"error": "no such recording"}, 404) if found is None else _json(found)

    async def recording_file(self, request: web.Request) -> web.StreamResponse:
        if (refused := self.authorize(request, action=False)) is not None:
            return refused
        path = None
        if self.recordings is not None:
            path = self.recordings.file(request.match_info["id"], request.match_info["name"])
        if path is None:
            return _json({"error": "no such file"}, 404)
        return web.FileResponse(
            path,
            headers={
                **SECURITY_HEADERS,
                "Content-Disposition": f'attachment; filename="{path.name}"',
            },
        )

    # --- wiring --------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        ticks = 0
        while True:
            # Only while a page is open: every node reading the whole cluster from Redis
            # every few seconds would cost Redis N * (4N + 2) commands with nobody looking.
            if self._streams and ticks % PEERS_EVERY == 0:
                try:
                    await self._read_peers()
                except Exception:  # an odd answer must not end the dashboard for good
                    log.exception("console: reading the other nodes failed")
            try:
                self.sampler.tick(loop.time())
            except Exception:  # a bug here must not end the dashboard for good
                log.exception("console: sampling failed")
            ticks += 1
            await asyncio.sleep(TICK_S)

    async def _peer_nodes(self) -> list[dict[str, Any]] | None:
        """The other nodes as ``GET /v1/cluster`` lists them (None: Redis out of reach)."""
        if self.workers is not None:
            view: dict[str, Any] = await self.workers.view()
            return list(view["nodes"])
        try:
            view = await self.cluster.view()
        except VoxgateError as exc:
            log.debug("console: no cluster view: %s", exc)
            return None
        return [node for node in view["nodes"] if node["node_id"] != self.cluster.node_id]

    async def _read_peers(self) -> None:
        """Every other node (or worker) with its calls and members, read from it now."""
        if self.cluster is None and self.workers is None:
            return
        nodes = await self._peer_nodes()
        if nodes is None:  # Redis out of reach: the last list stands
            return
        answers = await asyncio.gather(
            *(self._ask(node, "GET", "/v1/channels?local=1", None) for node in nodes)
        )
        peers = []
        for node, (status, body) in zip(nodes, answers, strict=True):
            if status == 200 and isinstance(body.get("channels"), list):
                peers.append(_peer(node, body["channels"], None))
            else:
                peers.append(_peer(node, None, str(body.get("error", f"HTTP {status}"))))
        self.sampler.peers = peers

    async def _ask(
        self, node: dict[str, Any], method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any]]:
        """``node``'s answer to an admin API call, as status and JSON body: a worker over
        its pipe, another node (one that registered its admin URL) over HTTP with the admin
        key; 0 when it did not answer."""
        if self.workers is not None and not node.get("admin_url"):
            try:
                status, answer = await self.workers.console(node["node_id"], method, path, body)
            except VoxgateError as exc:
                return 0, {"error": f"unreachable: {exc}"}
            return status, answer
        url = node.get("admin_url") or ""
        if not url:
            return 0, {"error": "unreachable: it registered no admin URL"}
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
            )
        headers = {"Authorization": self._expected.decode()}
        try:
            async with self._http.request(method, url + path, json=body, headers=headers) as got:
                answer = await got.json(content_type=None)
                if not isinstance(answer, dict):
                    return 0, {"error": "unreachable: not a JSON object"}
                return got.status, answer
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return 0, {"error": f"unreachable: {type(exc).__name__} {exc}".strip()}

    async def _forward(
        self, request: web.Request, action: str, body: dict[str, Any] | None
    ) -> web.Response | None:
        """An action on a call this node does not host, done by the node (or worker) that
        hosts it; None when none does."""
        if self.cluster is None and self.workers is None:
            return None
        key = (request.match_info["guild"], request.match_info["channel"])
        nodes = await self._peer_nodes() or []
        path = "/v1/channels/" + "/".join(quote(part, safe="") for part in key)
        if action == "end":
            path += "/end"
        else:
            path += f"/members/{quote(request.match_info['user'], safe='')}/{action}"
        # The node Redis places the call on first; then any other (a worker's channels
        # are known to the supervisor only as of its last status).
        placed = [{"guild_id": key[0], "channel_id": key[1]}]
        nodes.sort(key=lambda node: placed[0] not in node.get("placed", []))
        for node in nodes:
            status, answer = await self._ask(node, "POST", path, body)
            if status not in (0, 404):
                log.info("console: %s forwarded to %s: %d", action, node["node_id"], status)
                return _json({**answer, "node": node["node_id"]}, status)
        return None

    async def _started(self, app: web.Application) -> None:
        self.sampler._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _stopping(self, app: web.Application) -> None:
        if self._http is not None:
            await self._http.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Open event streams would hold the listener's shutdown for its whole timeout.
        for stream in list(self._streams):
            with contextlib.suppress(Exception):
                await stream.write_eof()
        self._streams.clear()

    def install(self, app: web.Application) -> None:
        member = "/v1/channels/{guild}/{channel}/members/{user}"
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("GET", "/", self.index),
            ("GET", "/login", self.login),
            ("POST", "/login", self.login),
            ("POST", "/logout", self.logout),
            ("GET", "/console/{name}", self.static),
            ("GET", "/v1/console/events", self.events),
            ("GET", "/v1/channels", self.channels),
            ("POST", member + "/disconnect", self.disconnect),
            ("POST", member + "/mute", self.mute),
            ("POST", "/v1/channels/{guild}/{channel}/end", self.end_call),
            ("GET", "/v1/recordings", self.recordings_list),
            ("POST", "/v1/recordings", self.record),
            ("GET", "/v1/recordings/{id}", self.recording),
            ("POST", "/v1/recordings/{id}/stop", self.recording_stop),
            ("GET", "/v1/recordings/{id}/files/{name}", self.recording_file),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        app.on_startup.append(self._started)
        app.on_shutdown.append(self._stopping)


def _same_origin(request: web.Request) -> bool:
    """Whether the browser says the request comes from a page of this listener (a request
    without Origin is not a browser's cross-site form or fetch)."""
    origin = request.headers.get("Origin")
    if origin is None or (origin == "null" and request.method == "GET"):
        return True
    return origin in (f"http://{request.host}", f"https://{request.host}")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers=SECURITY_HEADERS)


def _page(html: str, status: int = 200) -> web.Response:
    return web.Response(
        text=html, status=status, content_type="text/html", headers=SECURITY_HEADERS
    )


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )
