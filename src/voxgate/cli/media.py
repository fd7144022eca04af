"""``voxgate play`` and ``voxgate record``: the client library from the command line."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the client's commands to ``app``."""
