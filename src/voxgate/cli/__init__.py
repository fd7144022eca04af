"""The ``voxgate`` command: ``serve``, ``token``, ``play``, ``record`` and ``bench``.

Each group of commands lives in its own module and registers itself on the one Typer
app; this module only assembles them, so the server's and the client's commands never
import each other.
"""

from __future__ import annotations

import typer

from voxgate import __version__
from voxgate.cli import bench, media, serve

app = typer.Typer(
    name="voxgate",
    help="A Discord-compatible voice server and client.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"voxgate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """A Discord-compatible voice server and client."""


serve.register(app)
media.register(app)
bench.register(app)


def main() -> None:
    app()
