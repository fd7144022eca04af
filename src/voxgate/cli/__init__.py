"""The ``voxgate`` command: ``serve``, ``token``, ``play``, ``record``, ``admin``, ``bench`` and
``sandbox``.

Each group of commands lives in its own module and registers itself on the one Typer
app; this module only assembles them, so the server's and the client's commands never
import each other.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import typer

from voxgate import __version__

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


#: The module each command lives in. A process imports only the one it runs: ``voxgate
#: serve`` is a long-lived node, and rich and the client's commands would stay resident in
#: it for nothing (a few MB of its RSS).
_COMMAND_MODULES = {
    "serve": "serve",
    "token": "serve",
    "play": "media",
    "record": "media",
    "bench": "bench",
    "sandbox": "sandbox",
    "admin": "admin",
}


def register(argv: Sequence[str]) -> None:
    """Add the commands ``argv`` runs to ``app``: all of them when it names none we know."""
    # The root's only option (--version) takes no value: the first other word is the command.
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    wanted = _COMMAND_MODULES.get(command or "")
    for name in [wanted] if wanted else dict.fromkeys(_COMMAND_MODULES.values()):
        importlib.import_module(f"voxgate.cli.{name}").register(app)


def main() -> None:
    register(sys.argv[1:])
    app()
