"""``voxgate[discordpy]`` is optional: voxgate without it never imports discord.py."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires


def test_importing_voxgate_and_its_client_never_imports_discord_py() -> None:
    probe = (
        "import sys, voxgate, voxgate.client, voxgate.protocol;"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'discord'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_discordpy_extra_pins_the_discord_py_versions_it_is_tested_with() -> None:
    extra = [
        line.replace(" ", "").replace('"', "'")
        for line in requires("voxgate") or []
        if "discordpy" in line
    ]
    # (The name as the installed metadata normalises it.)
    assert extra == ["discord-py<2.8,>=2.7;extra=='discordpy'"]
