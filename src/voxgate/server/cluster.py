"""One node's part in a cluster (``voxgate serve --redis URL --node-id NAME``).

:class:`ClusterAgent` keeps the node registered in the placement store (a liveness record
that expires, refreshed with the node's load every :data:`~voxgate.server.placement.HEARTBEAT_S`),
reconciles the node's claims with the channels it carries, and fences: a channel the node
carries that another live node now holds (the node was cut off from Redis long enough to be
declared dead, and a join placed the channel again) is ended here with 4022, "voice server
changed", so its members join again through the placement and meet the others on the new
node. The node's admin API places joins through it.

While Redis cannot be reached the node goes on serving the channels it holds (joins for
them are still minted, with this node's endpoint), a join for any other channel is refused
(:class:`~voxgate.server.placement.PlacementUnavailable`, a 503), and the heartbeat retries
with back-off; the first heartbeat that gets through registers the node again, and
re-claims what Redis forgot (a Redis restarted without persistence forgets everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from voxgate.errors import VoxgateError
from voxgate.protocol.opcodes import CloseCode
from voxgate.server.node import VoiceNode
from voxgate.server.placement import (
    HEARTBEAT_S,
    NODE_TTL_S,
    SERVING,
    ChannelKey,
    NodeLoad,
    Placement,
    PlacementUnavailable,
    Reconciled,
    describe_nodes,
)
from voxgate.server.redis_placement import RedisPlacementStore

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the placement latency histogram's buckets.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: How long a channel learnt to be another node's is refused without asking Redis again.
LOST_MEMORY_S = 2 * HEARTBEAT_S
#: Heartbeats between two writes of the node's admin URL to Redis.
ADMIN_URL_EVERY = 20
#: Placement latencies kept for the percentiles /healthz reports.
LATENCY_SAMPLES = 2048


class ClusterError(VoxgateError):
    """The node cannot join the cluster (its id is taken by another live node)."""


@dataclass(frozen=True)
class Placed:
    """Where a join goes: the hosting node's endpoint, id and claim epoch."""

    endpoint: str
    node_id: str
    epoch: int


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class ClusterAgent:
    """Registers ``node`` under ``node_id`` in ``store`` and keeps its claims honest."""

    def __init__(
        self,
        node: VoiceNode,
        store: RedisPlacementStore,
        node_id: str,
        token_ttl_s: float,
        *,
        ttl_s: float = NODE_TTL_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.node = node
        self.store = store
        self.node_id = node_id
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self.placement = Placement(store, token_ttl_s)
        #: Claims this node holds, by epoch.
        self.held: dict[ChannelKey, int] = {}
        #: Channels another node holds, as last learnt: owner and when (monotonic).
        self.lost: dict[ChannelKey, tuple[str, float]] = {}
        #: Tokens minted here while Redis was unreachable, by channel: until when valid.
        self._local_tokens: dict[ChannelKey, float] = {}
        self.connected = False
        self.down_since: float | None = None
        self.claims_lost = 0
        self.sessions_fenced = 0
        self.heartbeats = 0
        self.placements = 0
        self.placement_seconds: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.placement_seconds_sum = 0.0
        self.placement_buckets = [0] * len(LATENCY_BUCKETS)
        self.live_nodes = 0
        self.channels_placed = 0
        self._task: asyncio.Task[None] | None = None
        self._adopting: set[asyncio.Task[None]] = set()
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._cpu_share = 0.0
        #: This node's admin API (set once it listens): other nodes' consoles read it.
        self.admin_url = ""
        self._admin_url_set = ""
        node.router.admit_channel = self.admit

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Register (once, if Redis answers) and start heartbeating.

        Raises :class:`ClusterError` when a live node already has this id at another
        endpoint. A Redis that does not answer is no reason not to start: the node serves
        and registers as soon as Redis does.
        """
        try:
            for other in await self.store.live_nodes():
                if other.node_id == self.node_id and other.endpoint != self.node.endpoint:
                    raise ClusterError(
                        f"node id {self.node_id!r} is live at {other.endpoint}; "
                        "each node needs its own --node-id"
                    )
            await self._beat()
        except PlacementUnavailable as exc:
            self._went_down(exc)
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop heartbeating and drop the liveness record, so the node's channels are placed
        again on the next join instead of after the record expires."""
        for task in (self._task, *self._adopting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(PlacementUnavailable):
            await self.store.remove_node(self.node_id)
        await self.store.aclose()

    # --- heartbeat -----------------------------------------------------------------------

    def load(self) -> NodeLoad:
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._cpu_mark
        # Measured over a heartbeat or so: over the few milliseconds before the first one
        # (the node starting) any process is "100% busy".
        if now - then >= self.heartbeat_s / 2:
            self._cpu_share = (cpu - cpu_then) / (now - then)
            self._cpu_mark = (now, cpu)
        share = self._cpu_share
        return NodeLoad(
            node_id=self.node_id,
            endpoint=self.node.endpoint,
            state=SERVING,
            sessions=self.node.session_count(),
            channels=self.node.channel_count(),
            cpu=round(share, 3),
        )

    def _occupied(self, now: float) -> set[ChannelKey]:
        occupied = set(self.node.router.channels)
        for key, until in list(self._local_tokens.items()):
            if until > now:
                occupied.add(key)
            else:
                del self._local_tokens[key]
        return occupied

    async def _beat(self) -> None:
        now = time.time()
        reconciled = await self.store.heartbeat_and_reconcile(
            self.load(), self.ttl_s, self._occupied(now), dict(self.held), now
        )
        self.heartbeats += 1
        # Not at every heartbeat (one Redis round trip each is the budget): when it is new,
        # after Redis was away (it may have forgotten), and every ADMIN_URL_EVERY beats.
        if self.admin_url and (
            self._admin_url_set != self.admin_url
            or not self.connected
            or self.heartbeats % ADMIN_URL_EVERY == 0
        ):
            ttl_s = ADMIN_URL_EVERY * self.heartbeat_s + self.ttl_s
            await self.store.set_admin_url(self.node_id, self.admin_url, ttl_s)
            self._admin_url_set = self.admin_url
        if not self.connected:
            if self.down_since is not None:
                log.warning(
                    "Redis reachable again after %.1f s; node %s registered again",
                    time.monotonic() - self.down_since,
                    self.node_id,
                )
            else:
                log.info("node %s registered in %s", self.node_id, self.store.url)
            self.connected, self.down_since = True, None
        self._apply(reconciled, everything=reconciled.complete)

    def _went_down(self, exc: Exception) -> None:
        if self.connected or self.down_since is None:
            log.warning("placement store unreachable, serving the channels held: %s", exc)
            self.down_since = time.monotonic()
        self.connected = False

    async def _run(self) -> None:
        failures = 0
        while True:
            # Back-off from a quarter second, never slower than the heartbeat itself: the
            # node must register again soon after Redis is back, before joins place anew.
            delay = min(self.heartbeat_s, 0.25 * 2 ** (failures - 1) if failures else 99.0)
            await asyncio.sleep(delay)
            try:
                await self._beat()
                failures = 0
            except PlacementUnavailable as exc:
                self._went_down(exc)
                failures += 1
            except Exception:
                # A bug here must not stop the heartbeat: the node would be declared dead.
                log.exception("cluster heartbeat failed")
                failures += 1

    def _apply(self, reconciled: Reconciled, *, everything: bool) -> None:
        if everything:
            for key, epoch in self.held.items():
                if key in reconciled.held and reconciled.held[key] != epoch:
                    log.info(
                        "channel %s/%s claimed again (epoch %d -> %d)",
                        *key,
                        epoch,
                        reconciled.held[key],
                    )
            self.held = dict(reconciled.held)
        else:
            self.held.update(reconciled.held)
        for key in reconciled.released:
            self.held.pop(key, None)
            log.debug("channel %s/%s released", *key)
        now = time.monotonic()
        for key, owner in reconciled.lost.items():
            self.held.pop(key, None)
            self.lost[key] = (owner, now)
            self._fence(key, owner)
        for key in reconciled.held:
            self.lost.pop(key, None)

    def _fence(self, key: ChannelKey, owner: str) -> None:
        """End this node's sessions of a channel ``owner`` holds now."""
        channel = self.node.router.channels.get(key)
        if channel is None:
            return
        members = list(channel.members)
        self.claims_lost += 1
        self.sessions_fenced += len(members)
        log.warning(
            "channel %s/%s is held by node %s now: ending its %d sessions here",
            *key,
            owner,
            len(members),
        )
        for session in members:
            self.node.router.leave(
                session, f"channel moved to node {owner}", close=CloseCode.CALL_TERMINATED
            )

    # --- what the router asks -------------------------------------------------------------

    def admit(self, key: ChannelKey) -> str | None:
        """Whether a channel may open here: refused when another node is known to hold
        it; otherwise admitted at once and its claim checked (or taken) in the background,
        so a session is never kept waiting on Redis."""
        if key in self.held:
            return None
        lost = self.lost.get(key)
        if lost is not None and time.monotonic() - lost[1] < LOST_MEMORY_S:
            return f"call terminated: channel hosted by node {lost[0]}"
        task = asyncio.get_running_loop().create_task(self._adopt(key))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)
        return None

    async def _adopt(self, key: ChannelKey) -> None:
        try:
            reconciled = await self.store.reconcile(
                self.node_id, [key], {}, time.time(), everything=False
            )
        except PlacementUnavailable as exc:
            # Kept: the next heartbeat that gets through claims it or fences it.
            log.debug("could not check the claim of %s/%s: %s", *key, exc)
            return
        self._apply(reconciled, everything=False)

    # --- what the admin API asks ---------------------------------------------------------

    async def place(self, guild_id: str, channel_id: str, now: float) -> Placed:
        """Where a join for the channel goes, placing it when it has no live node.

        Raises :class:`PlacementUnavailable` when Redis cannot be reached and this node does
        not hold the channel, or no node is live.
        """
        key = (guild_id, channel_id)
        started = time.perf_counter()
        try:
            claim = await self.placement.place(key, now)
        except PlacementUnavailable:
            if key in self.held or key in self.node.router.channels:
                # Serving what it holds: its claim is kept for this token by the heartbeat.
                until = now + self.placement.token_ttl_s
                self._local_tokens[key] = max(self._local_tokens.get(key, 0.0), until)
                return Placed(self.node.endpoint, self.node_id, self.held.get(key, 0))
            raise
        elapsed = time.perf_counter() - started
        self.placements += 1
        self.placement_seconds.append(elapsed)
        self.placement_seconds_sum += elapsed
        for index, bound in enumerate(LATENCY_BUCKETS):
            if elapsed <= bound:
                self.placement_buckets[index] += 1
        if claim.node_id == self.node_id:
            self.held[key] = claim.epoch
            self.lost.pop(key, None)
        else:
            self.lost[key] = (claim.node_id, time.monotonic())
        return Placed(claim.endpoint, claim.node_id, claim.epoch)

    async def view(self) -> dict[str, Any]:
        """``GET /v1/cluster``: the live nodes, their load and the channels each holds.

        Raises :class:`PlacementUnavailable`.
        """
        listed = await describe_nodes(self.store)
        urls = await self.store.admin_urls([node["node_id"] for node in listed])
        for node, url in zip(listed, urls, strict=True):
            node["admin_url"] = url
        self.live_nodes = len(listed)
        self.channels_placed = sum(len(node["placed"]) for node in listed)
        return {"node_id": self.node_id, "nodes": listed}

    async def refresh_gauges(self) -> None:
        """Update the cluster-wide gauges (live nodes, channels placed) for a scrape."""
        with contextlib.suppress(PlacementUnavailable):
            nodes = await self.store.live_nodes()
            self.live_nodes = len(nodes)
            self.channels_placed = sum(node.placed for node in nodes)

    def health(self) -> dict[str, Any]:
        """The cluster part of ``/healthz``."""
        samples = list(self.placement_seconds)
        latency = (
            {
                "p50_ms": round(_percentile(samples, 0.50) * 1000, 3),
                "p99_ms": round(_percentile(samples, 0.99) * 1000, 3),
            }
            if samples
            else {}
        )
        return {
            "node_id": self.node_id,
            "redis": "ok" if self.connected else "unreachable",
            "held": len(self.held),
            "redis_errors": self.store.errors,
            "claims_lost": self.claims_lost,
            "heartbeats": self.heartbeats,
            "placements": self.placements,
            "placement_latency": latency,
        }
