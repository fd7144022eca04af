"""``voxgate bench cluster`` runs end to end, small: its figures are there and add up."""

from __future__ import annotations

from voxgate.bench.cluster import run


async def test_the_cluster_bench_reports_joins_placement_and_redis_costs() -> None:
    result = await run(nodes=2, joins=40, per_channel=4, parallel=4, idle_s=1.5, holding_s=1.5)
    assert result["channels"] == 10
    assert sum(result["joins_by_node"].values()) == 40
    assert len(result["joins_by_node"]) == 2  # the channels spread over both nodes
    assert result["joins_per_s"] > 0
    assert 0 < result["placement_p50_ms"] <= result["placement_p99_ms"]
    # One script call per join (give or take a reconnect); at least one per heartbeat (the
    # operator console's cluster listing lands in the heartbeats' share too).
    assert 0.9 <= result["redis_calls_per_join"] <= 1.5
    assert result["redis_calls_per_heartbeat"] >= 0.9
    assert result["redis_commands_per_join"] > result["redis_calls_per_join"]
