"""The benchmarks run end to end at a low rate (figures are printed by ``voxgate bench``)."""

from __future__ import annotations

import pytest

from voxgate.bench.relay import Step, build_loadgen, holds, run, run_workers


@pytest.mark.parametrize("generator", ["c", "python"])
async def test_relay_bench_reports_its_figures_and_loses_nothing_at_low_rate(
    generator: str,
) -> None:
    loadgen = None
    if generator == "c":
        loadgen, why = build_loadgen()
        if loadgen is None:
            pytest.skip(why)
    result = await run(seconds=0.5, quick=True, ceiling=True, loadgen=loadgen)
    for key in ("forwarded_pps", "ceiling_pps", "ratio", "latency_p99_ms", "loss"):
        assert key in result
    assert result["generator"] == generator
    # Every packet the generator counts was opened with the receiver's own key, so a
    # generator or relay that got a mode's layout wrong shows here as loss.
    assert result["loss"] == 0.0
    assert result["forwarded_pps"] > 0
    assert result["fanout100"]["loss"] == 0.0
    assert result["mixed_modes"]["loss"] == 0.0
    assert result["mixed_modes"]["generator"] == generator
    if result["ceiling_pps"] is not None:
        assert result["ceiling"]["steps"][0]["loss"] == 0.0


async def test_workers_bench_drives_a_two_worker_node_and_loses_nothing_at_low_rate() -> None:
    loadgen, why = build_loadgen()
    if loadgen is None:
        pytest.skip(why)
    result = await run_workers((2,), seconds=0.5, quick=True, loadgen=loadgen)
    steps = result["workers_2"]["steps"]
    assert [step["loss"] for step in steps] == [0.0] * len(steps)
    assert result["workers_2"]["forwarded_pps"] == steps[-1]["forwarded_pps"] > 0


def _step(loss: float, p50_ms: float) -> Step:
    return Step(
        channels=1,
        members=10,
        offered_pps=900,
        forwarded_pps=900,
        loss=loss,
        latency_p50_ms=p50_ms,
        latency_p99_ms=p50_ms,
        server_cpu=0.1,
        cpu_ms_per_1000=5.0,
        rss_per_session_kb=50.0,
    )


def test_a_level_holds_only_without_loss_and_without_a_standing_queue() -> None:
    assert holds(_step(0.0, 0.1))
    assert holds(_step(0.0005, 4.9))
    assert not holds(_step(0.01, 0.1))  # lost packets
    assert not holds(_step(0.0, 60.0))  # kept up only by filling its socket buffer
