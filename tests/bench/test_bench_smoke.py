"""The benchmarks run end to end at a low rate (figures are printed by ``voxgate bench``)."""

from __future__ import annotations

from voxgate.bench.relay import run


async def test_relay_bench_reports_its_figures_and_loses_nothing_at_low_rate() -> None:
    result = await run(seconds=0.5, quick=True, ceiling=True)
    for key in ("forwarded_pps", "ceiling_pps", "ratio", "latency_p99_ms", "loss"):
        assert key in result
    assert result["loss"] == 0.0
    assert result["forwarded_pps"] > 0
    assert result["fanout100"]["loss"] == 0.0
    assert result["mixed_modes"]["loss"] == 0.0
    if result["ceiling_pps"] is not None:
        assert result["ceiling"]["steps"][0]["loss"] == 0.0
