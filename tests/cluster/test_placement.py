"""The placement rules, run over both backends: the ``--workers`` supervisor's memory and a
real Redis (``--redis``). Token time is passed in (``now``); node death is a lapse of the
liveness record (the memory clock stepped past it, or Redis's PX expiring for real).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from voxgate.server.placement import (
    DOWN,
    SERVING,
    MemoryPlacementStore,
    NodeLoad,
    Placement,
    PlacementStore,
    PlacementUnavailable,
)
from voxgate.server.redis_placement import RedisPlacementStore

TTL = 600.0
#: Liveness of the nodes in these tests: short, so a lapse in Redis takes a moment.
NODE_TTL = 0.4


@dataclass
class Cluster:
    """A placement store with a few registered nodes, and a way to let one lapse."""

    store: PlacementStore
    placement: Placement
    kind: str
    clock: list[float]

    async def register(self, *indexes: int, state: str = SERVING) -> None:
        for index in indexes:
            await self.store.heartbeat(NodeLoad(f"n-{index}", f"h:{index}", state), NODE_TTL)

    async def lapse(self) -> None:
        """Let every liveness record not refreshed since expire."""
        if self.kind == "memory":
            self.clock[0] += NODE_TTL + 0.01
        else:
            await asyncio.sleep(NODE_TTL + 0.1)

    async def place(self, channel: str, now: float = 0.0) -> int:
        claim = await self.placement.place(("g", channel), now)
        return int(claim.node_id.removeprefix("n-"))

    async def placed(self, *indexes: int) -> list[int]:
        return [len(await self.store.placed_on(f"n-{index}")) for index in indexes]


@pytest.fixture(params=["memory", "redis"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    clock = [1000.0]
    store: PlacementStore
    if request.param == "memory":
        store = MemoryPlacementStore(clock=lambda: clock[0])
    else:
        store = RedisPlacementStore(request.getfixturevalue("redis_url"), settle_s=0)
    yield Cluster(store, Placement(store, TTL), request.param, clock)
    await store.aclose()


async def test_a_new_channel_goes_to_the_least_loaded_node_lowest_id_first(cluster) -> None:
    await cluster.register(0, 1, 2)
    assert [await cluster.place(c) for c in "abcd"] == [0, 1, 2, 0]
    assert await cluster.placed(0, 1, 2) == [2, 1, 1]


async def test_a_placed_channel_sticks_to_its_node(cluster) -> None:
    await cluster.register(0, 1)
    assert await cluster.place("a") == 0
    assert await cluster.place("b") == 1
    assert [await cluster.place("a", now=t) for t in (1, 2, 3)] == [0, 0, 0]
    assert await cluster.placed(0, 1) == [1, 1]


async def test_a_new_channel_avoids_nodes_that_are_down_and_a_placed_one_does_not_move(
    cluster,
) -> None:
    await cluster.register(0, 1)
    assert await cluster.place("a") == 0
    await cluster.register(0, state=DOWN)
    assert await cluster.place("b") == 1
    assert await cluster.place("c") == 1
    assert await cluster.place("a") == 0


async def test_an_empty_channel_is_kept_while_a_token_minted_for_it_is_valid(cluster) -> None:
    await cluster.register(0, 1)
    await cluster.place("a", now=100)
    kept = await cluster.store.reconcile("n-0", [], {}, now=100 + TTL - 1)
    assert kept.held.keys() == {("g", "a")} and kept.released == []
    # The newest token counts: a second join pushes the release back.
    await cluster.place("a", now=200)
    assert (await cluster.store.reconcile("n-0", [], {}, now=100 + TTL)).released == []
    released = await cluster.store.reconcile("n-0", [], {}, now=200 + TTL)
    assert released.released == [("g", "a")]
    assert await cluster.placed(0, 1) == [0, 0]


async def test_an_occupied_channel_is_kept_after_its_tokens_expire(cluster) -> None:
    await cluster.register(0, 1)
    await cluster.place("a", now=0)
    # Detached sessions waiting to resume are in the node's report too.
    assert (await cluster.store.reconcile("n-0", [("g", "a")], {}, now=10 * TTL)).released == []
    assert await cluster.place("a", now=10 * TTL) == 0
    assert (await cluster.store.reconcile("n-0", [], {}, now=12 * TTL)).released == [("g", "a")]


async def test_a_reconcile_releases_only_its_own_nodes_channels(cluster) -> None:
    await cluster.register(0, 1)
    await cluster.place("a")
    await cluster.place("b")
    assert (await cluster.store.reconcile("n-1", [], {}, now=TTL)).released == [("g", "b")]
    assert await cluster.place("a", now=TTL) == 0


async def test_a_released_channel_is_placed_afresh_on_the_least_loaded_node(cluster) -> None:
    await cluster.register(0, 1)
    for channel in "abcd":
        await cluster.place(channel)
    released = await cluster.store.reconcile("n-1", [], {}, now=TTL)
    assert sorted(released.released) == [("g", "b"), ("g", "d")]
    assert await cluster.placed(0, 1) == [2, 0]
    assert await cluster.place("b", now=TTL) == 1
    assert await cluster.place("x", now=TTL) == 1


async def test_a_channel_joined_without_placement_is_adopted_where_it_is(cluster) -> None:
    # Members who joined with tokens naming no endpoint (voxgate token --endpoint ...).
    await cluster.register(0, 1)
    adopted = await cluster.store.reconcile("n-1", [("g", "x")], {}, now=5)
    assert adopted.held == {("g", "x"): 1}
    assert await cluster.place("x", now=6) == 1
    assert await cluster.placed(0, 1) == [0, 1]


async def test_a_dead_nodes_channel_is_placed_again_with_a_new_epoch_and_the_node_is_fenced(
    cluster,
) -> None:
    await cluster.register(0, 1)
    first = await cluster.placement.place(("g", "a"), 0)
    assert (first.node_id, first.epoch, first.endpoint) == ("n-0", 1, "h:0")
    await cluster.lapse()
    await cluster.register(1)  # n-1 heartbeats on; n-0 was cut off
    second = await cluster.placement.place(("g", "a"), 1)
    assert (second.node_id, second.epoch, second.endpoint) == ("n-1", 2, "h:1")
    # n-0 reaches the store again: it registers, and its reconcile says it lost the channel.
    await cluster.register(0)
    fenced = await cluster.store.reconcile("n-0", [("g", "a")], {("g", "a"): 1}, now=2)
    assert fenced.lost == {("g", "a"): "n-1"} and fenced.held == {}
    assert await cluster.place("a", now=3) == 1
    assert await cluster.placed(0, 1) == [0, 1]


async def test_a_channel_carried_by_a_node_that_came_back_first_is_claimed_by_it(cluster) -> None:
    # Both nodes lapsed (the store was unreachable for everyone): the first node back that
    # still carries the channel takes the claim again.
    await cluster.register(0, 1)
    await cluster.place("a")
    await cluster.lapse()
    await cluster.register(1)
    taken = await cluster.store.reconcile("n-1", [("g", "a")], {}, now=1)
    assert taken.held == {("g", "a"): 2}
    await cluster.register(0)
    assert (await cluster.store.reconcile("n-0", [("g", "a")], {}, now=1)).lost == {
        ("g", "a"): "n-1"
    }


async def test_no_live_node_means_placement_unavailable(cluster) -> None:
    with pytest.raises(PlacementUnavailable):
        await cluster.place("a")
    await cluster.register(0, state=DOWN)
    with pytest.raises(PlacementUnavailable):
        await cluster.place("a")


async def test_live_nodes_report_their_load(cluster) -> None:
    await cluster.store.heartbeat(NodeLoad("n-0", "h:0", SERVING, 5, 2, 0.25), NODE_TTL)
    await cluster.place("a")
    [node] = await cluster.store.live_nodes()
    assert node == NodeLoad("n-0", "h:0", SERVING, 5, 2, 0.25, placed=1)


async def test_an_empty_redis_places_no_unclaimed_channel_until_the_nodes_had_time_to_claim(
    redis_url: str,
) -> None:
    store = RedisPlacementStore(redis_url, settle_s=0.5)
    placement = Placement(store, TTL)
    try:
        await store.heartbeat_and_reconcile(NodeLoad("n-0", "h:0"), 5.0, [], {}, now=0)
        with pytest.raises(PlacementUnavailable, match="came back empty: new channels are"):
            await placement.place(("g", "a"), 0)
        # A node back with its members claims their channel meanwhile; joins then find it.
        await store.heartbeat_and_reconcile(
            NodeLoad("n-1", "h:1"), 5.0, [("g", "kept")], {}, now=0
        )
        assert (await placement.place(("g", "kept"), 0)).node_id == "n-1"
        await asyncio.sleep(0.6)
        assert (await placement.place(("g", "a"), 0)).node_id == "n-0"
    finally:
        await store.aclose()


async def test_redis_liveness_lapses_by_redis_clock(redis_url: str) -> None:
    store = RedisPlacementStore(redis_url)
    try:
        await store.heartbeat(NodeLoad("n-0", "h:0"), ttl_s=0.3)
        assert [n.node_id for n in await store.live_nodes()] == ["n-0"]
        await asyncio.sleep(0.5)
        assert await store.live_nodes() == []
    finally:
        await store.aclose()


async def test_an_unreachable_redis_is_placement_unavailable_and_counted() -> None:
    from voxgate.bench.node import free_port

    store = RedisPlacementStore(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(PlacementUnavailable, match="unreachable"):
            await store.live_nodes()
        assert store.errors == 1
    finally:
        await store.aclose()


async def test_a_redis_heartbeat_between_full_ones_reads_only_what_changed(
    redis_url: str,
) -> None:
    # Heartbeats look at every claim once in FULL_EVERY; in between, only at the claims
    # taken away from the node or placed on it, and yet report what a full one would.
    store = RedisPlacementStore(redis_url, settle_s=0)
    placement = Placement(store, TTL)
    n0, n1 = NodeLoad("n-0", "h:0"), NodeLoad("n-1", "h:1")
    try:
        first = await store.heartbeat_and_reconcile(n0, NODE_TTL, [], {}, now=0)
        assert first.complete and first.held == {}
        await store.heartbeat(n1, NODE_TTL)
        assert (await placement.place(("g", "a"), 0)).node_id == "n-0"
        placed = await store.heartbeat_and_reconcile(n0, NODE_TTL, [("g", "a")], {}, now=1)
        assert not placed.complete and placed.held == {("g", "a"): 1}
        quiet = await store.heartbeat_and_reconcile(
            n0, NODE_TTL, [("g", "a")], {("g", "a"): 1}, now=2
        )
        assert quiet.held == {} and quiet.lost == {} and quiet.released == []
        await asyncio.sleep(NODE_TTL + 0.1)  # n-0 is cut off; n-1 beats on
        await store.heartbeat(n1, NODE_TTL)
        assert (await placement.place(("g", "a"), 3)).node_id == "n-1"
        fenced = await store.heartbeat_and_reconcile(
            n0, NODE_TTL, [("g", "a")], {("g", "a"): 1}, now=4
        )
        assert not fenced.complete and fenced.lost == {("g", "a"): "n-1"}
    finally:
        await store.aclose()


async def test_a_redis_that_lost_the_node_gets_a_full_reconcile_at_once(redis_url: str) -> None:
    import redis.asyncio as aioredis

    store = RedisPlacementStore(redis_url, settle_s=0)
    try:
        await store.heartbeat_and_reconcile(NodeLoad("n-0", "h:0"), NODE_TTL, [], {}, now=0)
        wipe = aioredis.Redis.from_url(redis_url)
        await wipe.flushdb()
        await wipe.aclose()
        # The next heartbeat would be a partial one; the empty Redis makes it complete, and
        # the channel the node carries is claimed again.
        again = await store.heartbeat_and_reconcile(
            NodeLoad("n-0", "h:0"), NODE_TTL, [("g", "kept")], {("g", "kept"): 4}, now=1
        )
        assert again.complete and again.held == {("g", "kept"): 1}
    finally:
        await store.aclose()
