"""``voxgate sandbox``: a local Discord (REST, main gateway v10, a voice node, the control
API) in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import typer

from voxgate.server import datadir


def _fail(message: str) -> typer.Exit:
    typer.echo(f"voxgate: {message}", err=True)
    return typer.Exit(1)


async def _run(
    data_dir: Path,
    host: str,
    port: int,
    control_port: int,
    bots: int,
    dave: str,
    allow_privileged: str,
) -> None:
    from voxgate.sandbox.app import INFO_FILE, Sandbox

    try:
        sandbox = await Sandbox.start(
            data_dir,
            host=host,
            port=port,
            control_port=control_port,
            bots=bots,
            dave=dave,
            allow_privileged=allow_privileged,
        )
    except OSError as exc:
        raise _fail(f"cannot listen on {host}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _fail(str(exc)) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    info = sandbox.info
    typer.echo(
        f"voxgate sandbox ready api={info['api']} gateway={info['gateway']} "
        f"voice={info['voice_endpoint']} control={info['control']} bots={len(info['bots'])} "
        f"dave={info['dave']} info={data_dir / INFO_FILE}",
        color=False,
    )
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        logging.getLogger("voxgate.sandbox").info("shutting down")
        await sandbox.stop()


def sandbox(
    data_dir: Path | None = typer.Option(
        None, help="State, TLS files and sandbox.json (default: ~/.local/share/voxgate/sandbox)."
    ),
    host: str = typer.Option(
        "127.0.0.1", help="Address of every listener, URL and the certificate."
    ),
    port: int = typer.Option(0, help="REST and main gateway port (0: a free port)."),
    control_port: int = typer.Option(0, help="Control API port (0: a free port)."),
    bots: int = typer.Option(
        2, help="Bot accounts made (0-50), the same ids and tokens every run."
    ),
    dave: str = typer.Option(
        "required",
        help="DAVE (end-to-end encryption) policy of the voice node: required (as on Discord), "
        "preferred or off.",
    ),
    privileged_intents: str = typer.Option(
        "all",
        help="The privileged intents bots may use: all, none, or a comma-separated list of "
        "members, presences, message_content; identifying with another closes 4014.",
    ),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Run a local Discord for bot tests; its ready line names sandbox.json."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if dave not in ("off", "preferred", "required"):
        raise _fail(f"--dave must be off, preferred or required, not {dave!r}")
    from voxgate.sandbox.model import privileged_mask

    try:
        privileged_mask(privileged_intents)
    except ValueError as exc:
        raise _fail(f"--privileged-intents: {exc}") from None
    if not 0 <= bots <= 50:
        raise _fail("--bots must be between 0 and 50")
    data_dir = (data_dir or datadir.default_data_dir() / "sandbox").expanduser().absolute()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f"cannot create data dir {data_dir}: {exc.strerror}") from None
    from voxgate.loop import install_uvloop

    install_uvloop()
    asyncio.run(_run(data_dir, host, port, control_port, bots, dave, privileged_intents))


def register(app: typer.Typer) -> None:
    app.command()(sandbox)


__all__ = ["register"]
