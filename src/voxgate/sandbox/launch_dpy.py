"""Run an unmodified discord.py bot file against a voxgate sandbox.

    VOXGATE_SANDBOX=D/sandbox.json python -m voxgate.sandbox.launch_dpy bot.py [args...]

discord.py has no base-URL option, so this sets the two class attributes it reads
(SANDBOX.md §1): ``discord.http.Route.BASE`` (every REST route is built from it) and
``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (the main gateway; resumes use
READY's ``resume_gateway_url``), then runs the bot file as ``__main__``, untouched.
``SSL_CERT_FILE`` is pointed at the sandbox's ``ca_bundle`` (system CAs plus the sandbox's)
before discord.py is imported, because aiohttp builds its default SSL context at import
time; a ``DISCORD_TOKEN`` not already set is taken from ``bots[--bot]``.

Nothing here imports aiohttp or discord before the environment is set.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path


def apply_overrides(info: dict[str, object]) -> None:
    """Point discord.py at the sandbox described by ``info`` (what sandbox.json holds)."""
    import discord.gateway
    import discord.http
    import yarl

    discord.http.Route.BASE = f"{info['api']}/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(str(info["gateway"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m voxgate.sandbox.launch_dpy",
        description="Run a discord.py bot file against a voxgate sandbox, unmodified.",
    )
    parser.add_argument(
        "--sandbox",
        type=Path,
        default=os.environ.get("VOXGATE_SANDBOX"),
        help="the sandbox's sandbox.json (default: $VOXGATE_SANDBOX)",
    )
    parser.add_argument(
        "--bot",
        type=int,
        default=0,
        help="which of sandbox.json's bots to log in as, when DISCORD_TOKEN is not set (default 0)",
    )
    parser.add_argument("path", type=Path, help="the bot's file, run as __main__")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the bot's own arguments")
    options = parser.parse_args(argv)
    if options.sandbox is None:
        parser.error("no sandbox: pass --sandbox D/sandbox.json or set VOXGATE_SANDBOX")
    info = json.loads(Path(options.sandbox).read_text())
    os.environ.setdefault("SSL_CERT_FILE", str(info["ca_bundle"]))
    os.environ.setdefault("DISCORD_TOKEN", str(info["bots"][options.bot]["token"]))
    apply_overrides(info)
    path = options.path.resolve()
    sys.argv = [str(path), *options.args]
    # As `python bot.py` would: the bot's folder first on the path, for its own imports.
    sys.path.insert(0, str(path.parent))
    runpy.run_path(str(path), run_name="__main__")


if __name__ == "__main__":
    main()
