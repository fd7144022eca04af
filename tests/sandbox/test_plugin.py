"""The pytest plugin as another project's suite sees it: loaded by its entry point, in a
pytest run of its own (pytester, in a subprocess), with nothing of voxgate's conftest."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

BOT = Path(__file__).parent / "bots" / "music_bot.py"

SUITE = """
import json
from pathlib import Path

import aiohttp

OUT = Path({out!r})


async def test_on_purpose_failing(voxgate_sandbox):
    bot = await voxgate_sandbox.run_bot({bot!r})
    await bot.wait_for_output("^ready")
    OUT.write_text(json.dumps({{"info": voxgate_sandbox.info, "pid": bot.process.pid}}))
    async with aiohttp.ClientSession() as http:
        async with http.get(voxgate_sandbox.info["api"] + "/v10/not-a-route") as response:
            assert response.status == 404
    assert False, "fails on purpose"
"""


def _accepts(url: str) -> bool:
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, int(port))) == 0


def test_a_failing_test_gets_the_logs_and_unhandled_routes_warn_and_all_is_stopped(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    out = tmp_path / "seen.json"
    pytester.makepyfile(test_suite=SUITE.format(out=str(out), bot=str(BOT)))
    result = pytester.runpytest_subprocess("-o", "asyncio_mode=auto", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    # The report holds the sandbox's log and the bot's output ...
    assert "voxgate sandbox" in text
    assert "sandbox ready: api" in text
    assert "--- music_bot.py" in text and "ready as" in text
    # ... the route nobody serves is named in a warning ...
    assert "UnhandledRouteWarning" in text and "GET /api/v10/not-a-route" in text
    # ... and the sandbox and the bot are gone.
    seen = json.loads(out.read_text())
    assert not _accepts(seen["info"]["api"])
    assert not _accepts(seen["info"]["control"])
    with pytest.raises(ProcessLookupError):
        os.kill(seen["pid"], 0)
