"""The benchmarks run end to end at a low rate (figures are printed by ``voxgate bench``)."""

from __future__ import annotations

import pytest

from voxgate.bench.relay import build_loadgen, run, run_workers


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
