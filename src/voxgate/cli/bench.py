"""``voxgate bench ...``: measurements of a real node in its own process."""

from __future__ import annotations

import asyncio
import json

import typer

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


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
