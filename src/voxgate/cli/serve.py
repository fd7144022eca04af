"""``voxgate serve`` and ``voxgate token``: run a voice server node and mint join events."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the server's commands to ``app``."""
