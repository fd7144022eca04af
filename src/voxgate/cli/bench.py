"""``voxgate bench ...``: measurements of a real node in its own process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

from voxgate.loop import install_uvloop

bench_app = typer.Typer(
    help="Measure a voxgate node: soak (and more, see --help).", no_args_is_help=True
)


@bench_app.command()
def soak(
    cycles: int = typer.Option(10_000, help="connect / identify / stream / disconnect cycles."),
    concurrency: int = typer.Option(50, help="Members cycling at the same time."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Cycle members through whole sessions and compare the node's vitals before and after."""
    from voxgate.bench.node import start_node
    from voxgate.bench.soak import soak as run_soak

    node = start_node()
    try:
        install_uvloop()
        result = asyncio.run(run_soak(node, cycles, concurrency))
    finally:
        node.stop()
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    typer.echo(
        f"soak: {result.cycles} cycles, {result.concurrency} at once, {result.failures} failed, "
        f"{result.seconds} s"
    )
    for name in ("sessions", "tasks", "open_fds", "rss_mb"):
        before, after = getattr(result.before, name), getattr(result.after, name)
        typer.echo(f"  {name:9} before {before:>8}  after {after:>8}")


@bench_app.command()
def relay(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    seconds: float = typer.Option(3.0, help="Measured seconds per load step."),
    quick: bool = typer.Option(False, help="A few small steps only (a smoke run)."),
    ceiling: bool = typer.Option(True, help="Also measure the C ceiling relay."),
    bare: bool = typer.Option(
        False, help="Also measure bench/ceiling/bare_relay.py, the least Python that relays."
    ),
    rounds: int = typer.Option(3, min=1, help="Interleaved rounds (at least 3 for a figure)."),
    cost_rounds: int = typer.Option(
        16, min=1, help="Rounds of each pair at one load, compared by CPU per packet."
    ),
    cost_seconds: float = typer.Option(1.0, help="Measured seconds per step of those rounds."),
    dave: bool = typer.Option(
        False,
        "--dave",
        help="Instead: voxgate with DAVE members sending DAVE frames against plain members "
        "(--dave off), and their ratio. Each side keeps one node and its members joined for "
        "the whole run (DAVE joins are slow for the bench): a level of L channels streams on "
        "the first L, the others idle.",
    ),
) -> None:
    """Forwarded packets/s to saturation at fan-out 10, latency, CPU, and the C ceiling.

    voxgate and the C relay (and with --bare voxgate's Python path and the bare Python
    relay) are measured in turn, level by level, --rounds times; each ratio is the median of
    its rounds with their spread, and no figure at all when the spread exceeds +-0.05.
    Then each pair is measured at one load both hold, --cost-rounds times in four blocks,
    each block a fresh pair of processes with its members joined once, each round one run
    of the C generator in which their loads take turns of 40 ms; the cpu_
    ratios compare their CPU per forwarded packet, each the median of its blocks' medians,
    and no figure when those spread wider than +-0.05.
    The nodes run --dave off and their members join without DAVE (the figures are the
    transport relay's); --dave compares that with DAVE members instead, on one node per
    side whose members stay joined across levels (joining DAVE members afresh at every
    level would take the bench most of an hour).
    """
    from voxgate.bench.relay import build_loadgen, run

    loadgen, why = build_loadgen()
    if dave:
        _relay_dave(loadgen, why, seconds=seconds, quick=quick, rounds=rounds, as_json=as_json)
        return
    if loadgen is None:
        # This process generates the load then, and needs the faster loop; with the C
        # generator it only joins members, and the default loop can hand their sockets over.
        install_uvloop()
        why = f"{why}: the load comes from Python, whose queueing shows in the latencies"
    result = asyncio.run(
        run(
            seconds=seconds,
            quick=quick,
            ceiling=ceiling,
            loadgen=loadgen,
            loadgen_note=why,
            bare=bare,
            rounds=rounds,
            cost_rounds=cost_rounds,
            cost_seconds=cost_seconds,
        )
    )
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"machine: {result['machine']}, generator: {result['generator']}, "
        f"media path: {result['fast_path']}, {result['rounds']} interleaved rounds"
    )
    if result.get("generator_note"):
        typer.echo(f"note: {result['generator_note']}")
    for name, key in (
        ("voxgate", "fanout10"),
        ("ceiling", "ceiling"),
        ("xchacha", "xchacha"),
        ("python", "python_path"),
        ("bare", "bare_python"),
    ):
        for step in result.get(key, {}).get("steps", []):
            typer.echo(
                f"  round {step['round']} {name:7} {step['channels']:4d} channels x10: "
                f"{step['forwarded_pps']:8d} pps forwarded, loss {step['loss']:.4f}, "
                f"cpu {step['server_cpu']:.2f}, p99 {step['latency_p99_ms']} ms"
            )
    typer.echo(
        f"saturation (median of rounds): voxgate {result['forwarded_pps']} pps "
        f"{result['fanout10']['forwarded_pps_rounds']}, ceiling {result['ceiling_pps']} pps; "
        f"at half: p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms "
        f"(the C relay's at that load {result.get('ceiling_latency_p99_ms_at_half')} ms); "
        f"{result['cpu_ms_per_1000']} cpu-ms per 1000; "
        f"RSS per session {result['rss_per_session_kb']} KB"
    )
    for label, key in (
        (f"voxgate ({result['fast_path']}) / C relay", "ratio"),
        ("XChaCha20 / AES-GCM", "xchacha_to_aes"),
        ("voxgate (python) / bare Python relay", "ratio_to_bare_python"),
        ("native / python path", "native_to_python"),
        ("packets per CPU-second, voxgate / C relay", "cpu_ratio"),
        ("packets per CPU-second at half saturation, voxgate / C relay", "cpu_ratio_at_half"),
        ("packets per CPU-second, XChaCha20 / AES-GCM", "cpu_xchacha_to_aes"),
        ("packets per CPU-second, python path / bare Python relay", "cpu_ratio_to_bare_python"),
        ("packets per CPU-second, both modes / AES-GCM channels", "cpu_mixed_to_aes"),
        ("packets per CPU-second, fan-out 100, voxgate / C relay", "cpu_ratio_fanout100"),
    ):
        if f"{key}_rounds" in result:
            figure = result[key] if result[key] is not None else "no figure"
            typer.echo(
                f"{label}: {figure} (interval {result.get(f'{key}_interval')}, spread "
                f"{result[f'{key}_spread']}, rounds {result[f'{key}_rounds']})"
            )
            if result.get(f"{key}_note"):
                typer.echo(f"  {result[f'{key}_note']}")
    for name in ("fanout100", "mixed_modes"):
        step = result[name]
        typer.echo(
            f"{name}: {step['members']} members, {step['forwarded_pps']} pps, loss "
            f"{step['loss']}, p50 {step['latency_p50_ms']} ms, p99 {step['latency_p99_ms']} ms"
        )
    if result.get("ceiling_note"):
        typer.echo(f"note: {result['ceiling_note']}")


def _relay_dave(
    loadgen: Path | None, why: str, *, seconds: float, quick: bool, rounds: int, as_json: bool
) -> None:
    from voxgate.bench.relay import run_dave

    if loadgen is None:
        typer.echo(f"voxgate bench relay --dave needs the C load generator: {why}", err=True)
        raise typer.Exit(1)
    result = asyncio.run(run_dave(seconds=seconds, quick=quick, loadgen=loadgen, rounds=rounds))
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"machine: {result['machine']}, generator: c, {result['rounds']} interleaved rounds, "
        f"payloads of {result['payload_size']} bytes on both sides"
    )
    typer.echo(
        f"members kept across levels: {result['plain']['channels_joined']} plain and "
        f"{result['dave']['channels_joined']} DAVE channels joined once, the ones a level "
        "does not stream on idle"
    )
    for name in ("plain", "dave"):
        for step in result[name]["steps"]:
            typer.echo(
                f"  round {step['round']} {name:5} {step['channels']:4d} channels x10: "
                f"{step['forwarded_pps']:8d} pps forwarded, loss {step['loss']:.4f}, "
                f"{step['cpu_ms_per_1000']} cpu-ms per 1000, p50 {step['latency_p50_ms']} ms"
            )
    for name, label in (("plain", "plain (--dave off)"), ("dave", "DAVE (--dave preferred)")):
        figures = result[name]
        typer.echo(
            f"{label}: saturation {figures['saturation_channels']} channels, "
            f"{figures['forwarded_pps']} pps forwarded {figures['forwarded_pps_rounds']}, "
            f"{figures['cpu_ms_per_1000']} cpu-ms per 1000 forwarded"
        )
    figure = result["dave_to_plain"] if result["dave_to_plain"] is not None else "no figure"
    typer.echo(
        f"dave / plain saturation: {figure} (spread {result['dave_to_plain_spread']}, rounds "
        f"{result['dave_to_plain_rounds']})"
    )
    if result.get("dave_to_plain_note"):
        typer.echo(f"  {result['dave_to_plain_note']}")
    if "cpu_dave_to_plain" in result:
        typer.echo(
            f"dave / plain cpu-ms per 1000 at {result['cpu_compared_at_channels']} channels: "
            f"{result['cpu_dave_to_plain']}"
        )
    for name in ("dave_payloads", "plain_payloads"):
        check = result[name]
        typer.echo(
            f"{name}: {check['received']} received, {check['template_mismatch']} not as sent, "
            f"{check['dave_trailer']} ending FA FA: {'ok' if check['ok'] else 'FAILED'}"
        )


@bench_app.command()
def workers(
    counts: str = typer.Option("1,2", help="Worker counts to compare, comma-separated."),
    seconds: float = typer.Option(3.0, help="Measured seconds per load step."),
    quick: bool = typer.Option(False, help="A few small steps only (a smoke run)."),
    rounds: int = typer.Option(3, min=1, help="Interleaved rounds (at least 3 for a figure)."),
) -> None:
    """Saturation of ``voxgate serve --workers N`` for each N, measured in turn level by
    level --rounds times, and the scaling between them (median, spread)."""
    from voxgate.bench.relay import build_loadgen, run_workers

    try:
        numbers = [int(part) for part in counts.split(",")]
    except ValueError:
        raise typer.BadParameter("--counts takes numbers such as 1,2") from None
    loadgen, _ = build_loadgen()
    if loadgen is None:
        install_uvloop()
    typer.echo(
        json.dumps(
            asyncio.run(
                run_workers(numbers, seconds=seconds, quick=quick, loadgen=loadgen, rounds=rounds)
            )
        )
    )


@bench_app.command()
def cluster(
    nodes: int = typer.Option(3, help="Nodes on the one Redis."),
    joins: int = typer.Option(2000, help="Joins through the admin APIs."),
    per_channel: int = typer.Option(4, help="Joins per channel (a new channel every N)."),
    parallel: int = typer.Option(16, help="Join requests in flight at once."),
    idle_seconds: float = typer.Option(6.0, help="Window in which only heartbeats run."),
    relay_channels: int = typer.Option(
        20, help="Fixed relay load (channels x 10 members) on a plain and a cluster node; 0: skip."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """N nodes on one Redis: joins/s, placement latency, Redis commands per join and per
    heartbeat, and the relay's throughput on a cluster node next to a plain one."""
    from voxgate.bench.cluster import run as run_cluster
    from voxgate.bench.relay import build_loadgen

    loadgen, _ = build_loadgen() if relay_channels else (None, "")
    if loadgen is None:
        install_uvloop()
    result = asyncio.run(
        run_cluster(
            nodes, joins, per_channel, parallel, idle_seconds, relay_channels, loadgen=loadgen
        )
    )
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"cluster: {result['nodes']} nodes, one Redis; {result['joins']} joins over "
        f"{result['channels']} channels, {result['parallel_requests']} in flight"
    )
    typer.echo(
        f"  joins/s {result['joins_per_s']}; join round trip p50 "
        f"{result['join_round_trip_p50_ms']} ms, p99 {result['join_round_trip_p99_ms']} ms"
    )
    typer.echo(
        f"  placement (as the nodes measure it) p50 {result['placement_p50_ms']} ms, "
        f"p99 {result['placement_p99_ms']} ms"
    )
    typer.echo(
        f"  Redis per join: {result['redis_calls_per_join']} calls, "
        f"{result['redis_commands_per_join']} commands run, "
        f"{result['redis_cpu_us_per_join']} µs of Redis CPU"
    )
    typer.echo(
        f"  Redis per heartbeat (every {result['heartbeat_s']} s per node): idle "
        f"{result['redis_calls_per_heartbeat']} calls, {result['redis_commands_per_heartbeat']} "
        f"commands; holding {result['claims_held_per_node']} claims "
        f"{result['redis_calls_per_heartbeat_holding']} calls, "
        f"{result['redis_commands_per_heartbeat_holding']} commands; Redis CPU "
        f"{result['redis_cpu_us_per_heartbeat']} / "
        f"{result['redis_cpu_us_per_heartbeat_holding']} µs"
    )
    typer.echo(f"  joins by node: {result['joins_by_node']}")
    for name, step in result.get("relay", {}).items():
        typer.echo(
            f"  relay on a {name} node, {step['channels']} channels x10: "
            f"{step['forwarded_pps']} pps forwarded, loss {step['loss']}, "
            f"{step['cpu_ms_per_1000']} cpu-ms per 1000, p99 {step['latency_p99_ms']} ms"
        )


@bench_app.command()
def idle(
    sessions: int = typer.Option(1000, help="Members joined and silent."),
    seconds: float = typer.Option(10.0, help="Measured window."),
) -> None:
    """Server CPU and RSS with many identified, heartbeating, silent sessions."""
    from voxgate.bench.idle import run

    install_uvloop()
    typer.echo(json.dumps(asyncio.run(run(sessions, seconds))))


@bench_app.command()
def client(
    players: int = typer.Option(500, help="Players in this one process."),
    seconds: float = typer.Option(10.0, help="Length of what each one plays."),
) -> None:
    """Send-interval jitter and CPU per stream of many passthrough players in one process."""
    from voxgate.bench.client import run

    install_uvloop()
    typer.echo(json.dumps(asyncio.run(run(players, seconds))))


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
