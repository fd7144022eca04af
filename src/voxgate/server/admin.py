"""The admin HTTP listener: health, Prometheus metrics, and joins minted for bots and tests.

``POST /v1/voice/join`` answers with the two events Discord's main gateway would dispatch
to a bot that joins a voice channel (VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE), so any
client that can be fed those events can join this node. It is bound to loopback by default
and guarded by the data dir's admin key, because whoever holds it can join any channel.
In front of several workers (``voxgate serve --workers N``) the same routes place the
channel on a worker first, mint a token bound to that worker's endpoint, and sum the
workers' reports.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Iterator
from typing import Any, Protocol

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from voxgate.errors import VoxgateError
from voxgate.server.auth import TokenAuthority, VoiceGrant
from voxgate.server.console import Console, RecordingsView

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 64
#: The operator's console of an admin app (the one-time login URL is issued through it).
CONSOLE = web.AppKey("console", Console)


class NodeView(Protocol):
    """What the admin listener reads from a running node."""

    @property
    def stats(self) -> Any: ...

    def session_count(self) -> int: ...

    def channel_count(self) -> int: ...

    def media_silent_count(self) -> int: ...


class WorkersView(NodeView, Protocol):
    """What the admin listener reads from a supervisor of worker processes."""

    async def refresh(self) -> None: ...

    async def place(self, guild_id: str, channel_id: str, now: float) -> str: ...

    async def view(self) -> dict[str, Any]: ...

    def workers(self) -> list[dict[str, Any]]: ...

    def workers_alive(self) -> int: ...


class PlacedView(Protocol):
    endpoint: str
    node_id: str
    epoch: int


class ClusterView(Protocol):
    """What the admin listener reads from a node's cluster agent (``--redis``); ``place``
    and ``view`` raise ``PlacementUnavailable`` (a VoxgateError) when Redis is out of reach."""

    node_id: str
    live_nodes: int
    channels_placed: int
    held: dict[tuple[str, str], int]
    claims_lost: int
    sessions_fenced: int
    placements: int
    placement_seconds_sum: float
    placement_buckets: list[int]

    @property
    def store(self) -> Any: ...

    async def place(self, guild_id: str, channel_id: str, now: float) -> PlacedView: ...

    async def view(self) -> dict[str, Any]: ...

    async def refresh_gauges(self) -> None: ...

    def health(self) -> dict[str, Any]: ...


class JoinRequest(msgspec.Struct, forbid_unknown_fields=True):
    guild_id: str
    channel_id: str
    user_id: str
    session_id: str | None = None


def join_events(token: str, grant: VoiceGrant, endpoint: str) -> dict[str, dict[str, str]]:
    """The VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE payloads a bot needs to join."""
    return {
        "voice_state": {
            "guild_id": grant.guild_id,
            "channel_id": grant.channel_id,
            "user_id": grant.user_id,
            "session_id": grant.session_id,
        },
        "voice_server": {"token": token, "guild_id": grant.guild_id, "endpoint": endpoint},
    }


class _NodeCollector(Collector):
    """Reads the node's plain integer counters at scrape time, so the hot path pays nothing."""

    def __init__(
        self, node: NodeView, workers: WorkersView | None = None, cluster: ClusterView | None = None
    ) -> None:
        self._node = node
        self._workers = workers
        self._cluster = cluster

    def collect(self) -> Iterator[Any]:
        stats = self._node.stats
        if self._cluster is not None:
            yield from _cluster_metrics(self._cluster)
        if self._workers is not None:
            yield GaugeMetricFamily(
                "voxgate_workers", "Worker processes up", self._workers.workers_alive()
            )
        yield GaugeMetricFamily(
            "voxgate_sessions", "Voice sessions alive on this node", self._node.session_count()
        )
        yield GaugeMetricFamily(
            "voxgate_channels",
            "Voice channels with members on this node",
            self._node.channel_count(),
        )
        path = getattr(getattr(self._node, "router", None), "media_path", None)
        if path is not None:
            # voxgate._fastpath (C) or pure Python, as `voxgate serve` logs it at start.
            media_path = GaugeMetricFamily(
                "voxgate_media_path", "The media path this node runs (1), not (0)", labels=["path"]
            )
            for name in ("native", "python"):
                media_path.add_metric([name], float(path == name))
            yield media_path
        yield GaugeMetricFamily(
            "voxgate_sessions_media_silent",
            "Described sessions that have sent no datagram for a while",
            self._node.media_silent_count(),
        )
        for name, help_text in (
            ("packets_in", "Datagrams received on the media socket"),
            ("packets_out", "RTP packets sent to members"),
            ("bytes_in", "Bytes received on the media socket"),
            ("bytes_out", "Bytes sent to members"),
            ("rtcp_in", "RTCP packets received (terminated, not forwarded)"),
            ("keepalives_in", "UDP keep-alives received"),
            ("discovery_answered", "IP discovery requests answered"),
            (
                "discovery_repeated",
                "IP discovery answers sent again while no Select Protocol came",
            ),
            ("send_errors", "Errors reported by the media socket"),
            (
                "dave_frames_withheld",
                "DAVE frames not relayed to a member without DAVE (a downgraded call)",
            ),
        ):
            yield CounterMetricFamily(f"voxgate_{name}", help_text, getattr(stats, name, 0))
        dropped = CounterMetricFamily(
            "voxgate_packets_dropped", "Datagrams dropped, by reason", labels=["reason"]
        )
        for reason, count in sorted(getattr(stats, "dropped", {}).items()):
            dropped.add_metric([str(reason)], count)
        yield dropped
        yield from _dave_metrics(self._node)


def _dave_metrics(node: NodeView) -> Iterator[Any]:
    """The node's DAVE totals, and each channel's group (a node that has them: a worker's
    supervisor reports none)."""
    from voxgate.server.dave import GroupState

    counters = getattr(node, "dave_counters", None)
    if counters is not None:
        for name, help_text in (
            ("commits_accepted", "DAVE commits accepted (one per epoch)"),
            ("transitions", "DAVE transitions executed (op 22 sent)"),
            ("transition_timeouts", "DAVE transitions executed without every op 23"),
            ("recoveries", "DAVE op 31 recoveries (a member rejoins its group)"),
        ):
            yield CounterMetricFamily(f"voxgate_dave_{name}", help_text, getattr(counters, name))
        for name, help_text in (
            ("commits_rejected", "DAVE commits ignored, by the check they failed"),
            ("key_packages_rejected", "DAVE key packages refused (4002), by reason"),
            ("ignored", "DAVE messages ignored (not allowed in that state), by reason"),
        ):
            family = CounterMetricFamily(f"voxgate_dave_{name}", help_text, labels=["reason"])
            for reason, count in sorted(getattr(counters, name).items()):
                family.add_metric([reason], count)
            yield family
    dave_groups = getattr(node, "dave_groups", None)
    if dave_groups is None:
        return
    labels = ["guild", "channel"]
    state = GaugeMetricFamily(
        "voxgate_dave_channel_state", "Each channel's DAVE group state", labels=[*labels, "state"]
    )
    epoch = GaugeMetricFamily(
        "voxgate_dave_channel_epoch", "Each channel's MLS epoch", labels=labels
    )
    members = GaugeMetricFamily(
        "voxgate_dave_channel_members", "Members at a leaf of each channel's group", labels=labels
    )
    accepted = CounterMetricFamily(
        "voxgate_dave_channel_commits_accepted", "Commits accepted per channel", labels=labels
    )
    rejected = CounterMetricFamily(
        "voxgate_dave_channel_commits_rejected",
        "Commits ignored per channel, by reason",
        labels=[*labels, "reason"],
    )
    transitions = CounterMetricFamily(
        "voxgate_dave_channel_transitions", "Transitions executed per channel", labels=labels
    )
    recoveries = CounterMetricFamily(
        "voxgate_dave_channel_recoveries", "Op 31 recoveries per channel", labels=labels
    )
    for (guild_id, channel_id), group in dave_groups():
        key = [guild_id, channel_id]
        for value in GroupState:
            state.add_metric([*key, value.value], 1 if group.state is value else 0)
        epoch.add_metric(key, group.epoch)
        members.add_metric(key, sum(1 for user in group.leaves if user is not None))
        accepted.add_metric(key, group.counters.commits_accepted)
        for reason, count in sorted(group.counters.commits_rejected.items()):
            rejected.add_metric([*key, reason], count)
        transitions.add_metric(key, group.counters.transitions)
        recoveries.add_metric(key, group.counters.recoveries)
    yield from (state, epoch, members, accepted, rejected, transitions, recoveries)


def _cluster_metrics(cluster: ClusterView) -> Iterator[Any]:
    from voxgate.server.cluster import LATENCY_BUCKETS

    for name, help_text, value in (
        ("nodes_live", "Live nodes in the cluster, as Redis last said", cluster.live_nodes),
        ("channels_placed", "Channels placed on the cluster's nodes", cluster.channels_placed),
        ("channels_held", "Channels this node holds the claim of", len(cluster.held)),
    ):
        yield GaugeMetricFamily(f"voxgate_cluster_{name}", help_text, value)
    yield CounterMetricFamily(
        "voxgate_redis_errors", "Redis calls that failed (unreachable, timed out)",
        cluster.store.errors,
    )  # fmt: skip
    yield CounterMetricFamily(
        "voxgate_cluster_claims_lost", "Channels this node carried and found another node held",
        cluster.claims_lost,
    )  # fmt: skip
    yield CounterMetricFamily(
        "voxgate_cluster_sessions_fenced", "Sessions ended here because their channel moved",
        cluster.sessions_fenced,
    )  # fmt: skip
    cumulative, buckets = 0, []
    for bound, count in zip(LATENCY_BUCKETS, cluster.placement_buckets, strict=True):
        cumulative += count
        buckets.append((repr(bound), cumulative))
    buckets.append(("+Inf", cluster.placements))
    yield HistogramMetricFamily(
        "voxgate_placement_seconds",
        "Time to place a join (Redis round trips included)",
        buckets=buckets,
        sum_value=cluster.placement_seconds_sum,
    )


def admin_app(
    node: NodeView,
    authority: TokenAuthority,
    admin_key: str,
    endpoint: str,
    *,
    workers: WorkersView | None = None,
    cluster: ClusterView | None = None,
    recordings: RecordingsView | None = None,
) -> web.Application:
    """The aiohttp application of the admin listener; ``workers`` in front of a supervisor
    (then ``node`` is the supervisor too, and ``endpoint`` is unused for joins); ``cluster``
    on a node of a cluster, whose joins go where the placement says. The operator's
    console (dashboard, actions, ``recordings``) is ``app[CONSOLE]``."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_NodeCollector(node, workers, cluster))
    expected = f"Bearer {admin_key}".encode()

    async def healthz(request: web.Request) -> web.Response:
        if workers is not None:
            await workers.refresh()
        health: dict[str, Any] = {
            "status": "ok",
            "sessions": node.session_count(),
            "channels": node.channel_count(),
            # For soak runs: a task that outlives its session is a leak.
            "tasks": len(asyncio.all_tasks()),
        }
        if workers is not None:
            health["workers"] = workers.workers()
            if not all(worker["alive"] for worker in health["workers"]):
                health["status"] = "degraded"
        if cluster is not None:
            health["cluster"] = cluster.health()
            if health["cluster"]["redis"] != "ok":
                health["status"] = "degraded"
        return web.json_response(health)

    async def metrics(request: web.Request) -> web.Response:
        if workers is not None:
            await workers.refresh()
        if cluster is not None:
            await cluster.refresh_gauges()
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def join(request: web.Request) -> web.Response:
        offered = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(offered, expected):
            return web.json_response({"error": "missing or wrong admin key"}, status=401)
        try:
            body = msgspec.json.decode(await request.read(), type=JoinRequest)
        except msgspec.DecodeError as exc:
            return web.json_response({"error": f"bad join request: {exc}"}, status=400)
        for name in ("guild_id", "channel_id", "user_id", "session_id"):
            value = getattr(body, name)
            if value is not None and not (0 < len(value) <= MAX_ID_LENGTH):
                return web.json_response(
                    {"error": f"{name} must be 1-{MAX_ID_LENGTH} characters"}, status=400
                )
        if cluster is not None:
            now = time.time()
            try:
                placed = await cluster.place(body.guild_id, body.channel_id, now)
            except VoxgateError as exc:
                log.warning("join for %s/%s not placed: %s", body.guild_id, body.channel_id, exc)
                return web.json_response(
                    {"error": f"channel not placed: {exc}", "retry": True},
                    status=503,
                    headers={"Retry-After": "1"},
                )
            token, grant = authority.mint(
                body.guild_id,
                body.channel_id,
                body.user_id,
                body.session_id,
                endpoint=placed.endpoint,
                now=now,
            )
            log.info(
                "minted a join: guild %s channel %s user %s on node %s (%s, epoch %d)",
                grant.guild_id,
                grant.channel_id,
                grant.user_id,
                placed.node_id,
                placed.endpoint,
                placed.epoch,
            )
            return web.json_response(join_events(token, grant, placed.endpoint))
        if workers is None:
            token, grant = authority.mint(
                body.guild_id, body.channel_id, body.user_id, body.session_id
            )
            log.info(
                "minted a join: guild %s channel %s user %s",
                grant.guild_id,
                grant.channel_id,
                grant.user_id,
            )
            return web.json_response(join_events(token, grant, endpoint))
        # Placed first, with the same clock reading the token's expiry is computed from,
        # so the placement outlives the token.
        now = time.time()
        try:
            placed = await workers.place(body.guild_id, body.channel_id, now)
        except VoxgateError as exc:  # a supervisor on --redis, while Redis is away
            return web.json_response(
                {"error": f"channel not placed: {exc}", "retry": True},
                status=503,
                headers={"Retry-After": "1"},
            )
        token, grant = authority.mint(
            body.guild_id, body.channel_id, body.user_id, body.session_id, endpoint=placed, now=now
        )
        log.info(
            "minted a join: guild %s channel %s user %s on %s",
            grant.guild_id,
            grant.channel_id,
            grant.user_id,
            placed,
        )
        return web.json_response(join_events(token, grant, placed))

    async def cluster_view(request: web.Request) -> web.Response:
        if cluster is None and workers is None:
            return web.json_response({"error": "this node is not part of a cluster"}, status=404)
        try:
            view = await cluster.view() if cluster is not None else await workers.view()  # type: ignore[union-attr]
        except VoxgateError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(view)

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/voice/join", join)
    app.router.add_get("/v1/cluster", cluster_view)
    console = Console(
        node, admin_key, name=endpoint, recordings=recordings, cluster=cluster, workers=workers
    )
    console.install(app)
    app[CONSOLE] = console
    return app
