"""The two launchers run a bot file untouched with the sandbox's overrides: what each sets,
for discord.py (``python -m voxgate.sandbox.launch_dpy``) and for CommonJS and ES module
discord.js bots (``node -r preload.cjs``), and what they say when they cannot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voxgate.testing import PRELOAD, bot_command

BOTS = Path(__file__).parent / "bots"
INFO = {
    "api": "http://127.0.0.1:1/api",
    "gateway": "ws://127.0.0.1:1/gateway",
    "ca": "/nowhere/ca.pem",
    "ca_bundle": "/nowhere/ca-bundle.pem",
    "bots": [{"user_id": "1", "token": "token-one"}, {"user_id": "2", "token": "token-two"}],
}

DPY_PROBE = """
import json, os, sys
import discord.gateway, discord.http
print(json.dumps({
    "name": __name__, "argv": sys.argv[1:], "base": discord.http.Route.BASE,
    "gateway": str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY),
    "ssl_cert_file": os.environ.get("SSL_CERT_FILE"), "token": os.environ.get("DISCORD_TOKEN"),
    "path0": sys.path[0],
}))
"""

JS_PROBE = """
const { Client } = require('discord.js');
const client = new Client({ intents: [] });
console.log(JSON.stringify({ api: client.options.rest.api, token: process.env.DISCORD_TOKEN }));
"""

MJS_PROBE = """
import { Client } from 'discord.js';
const client = new Client({ intents: [] });
console.log(JSON.stringify({ api: client.options.rest.api, token: process.env.DISCORD_TOKEN }));
"""


def _run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    ours = ("SSL_CERT_FILE", "DISCORD_TOKEN", "VOXGATE_SANDBOX", "VOXGATE_BOT")
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    return subprocess.run(
        command, env={**clean, **env}, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def info_path(tmp_path: Path) -> Path:
    path = tmp_path / "sandbox.json"
    path.write_text(json.dumps(INFO))
    return path


def test_launch_dpy_sets_both_urls_and_the_ca_bundle_then_runs_the_file_as_main(
    tmp_path: Path, info_path: Path
) -> None:
    bot = tmp_path / "bot" / "probe.py"
    bot.parent.mkdir()
    bot.write_text(DPY_PROBE)
    command = [*bot_command(bot), "--flag", "value"]
    done = _run(command, {"VOXGATE_SANDBOX": str(info_path)}, tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {
        "name": "__main__",
        "argv": ["--flag", "value"],
        "base": "http://127.0.0.1:1/api/v10",
        "gateway": "ws://127.0.0.1:1/gateway",
        "ssl_cert_file": "/nowhere/ca-bundle.pem",
        "token": "token-one",
        "path0": str(bot.parent),
    }
    # --bot picks the token; a DISCORD_TOKEN already set is kept.
    picked = _run(
        [
            sys.executable,
            "-m",
            "voxgate.sandbox.launch_dpy",
            "--sandbox",
            str(info_path),
            "--bot",
            "1",
            str(bot),
        ],
        {},
        tmp_path,
    )
    assert json.loads(picked.stdout)["token"] == "token-two"
    kept = _run(command, {"VOXGATE_SANDBOX": str(info_path), "DISCORD_TOKEN": "mine"}, tmp_path)
    assert json.loads(kept.stdout)["token"] == "mine"


def test_launch_dpy_without_a_sandbox_says_how_to_give_one(tmp_path: Path) -> None:
    bot = tmp_path / "probe.py"
    bot.write_text(DPY_PROBE)
    done = _run(bot_command(bot), {}, tmp_path)
    assert done.returncode == 2
    assert "VOXGATE_SANDBOX" in done.stderr


@pytest.mark.parametrize("name,probe", [("probe.js", JS_PROBE), ("probe.mjs", MJS_PROBE)])
def test_preload_points_discord_js_rest_at_the_sandbox(
    tmp_path: Path, info_path: Path, name: str, probe: str
) -> None:
    # A bot of its own folder, with discord.js installed there (linked to the suite's copy).
    folder = tmp_path / "bot"
    folder.mkdir()
    (folder / "node_modules").symlink_to(BOTS / "node_modules")
    bot = folder / name
    bot.write_text(probe)
    done = _run(bot_command(bot), {"VOXGATE_SANDBOX": str(info_path)}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"api": "http://127.0.0.1:1/api", "token": "token-one"}
    chosen = _run(
        bot_command(bot), {"VOXGATE_SANDBOX": str(info_path), "VOXGATE_BOT": "1"}, tmp_path
    )
    assert json.loads(chosen.stdout)["token"] == "token-two"


def test_preload_says_what_is_missing(tmp_path: Path, info_path: Path) -> None:
    bot = tmp_path / "probe.js"
    bot.write_text(JS_PROBE)
    no_sandbox = _run(["node", "-r", str(PRELOAD), str(bot)], {}, tmp_path)
    assert no_sandbox.returncode == 2 and "VOXGATE_SANDBOX" in no_sandbox.stderr
    no_library = _run(bot_command(bot), {"VOXGATE_SANDBOX": str(info_path)}, tmp_path)
    assert no_library.returncode == 2 and "cannot find @discordjs/rest" in no_library.stderr
