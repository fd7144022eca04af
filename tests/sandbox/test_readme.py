"""README's "Testing your voice bot" shows the example bots and their test as they are.

The examples themselves run in the suite: ``tests/sandbox/bots/test_music_bot.py`` is the
test README shows, run against both bots.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHOWN = re.compile(r"<!-- file: (?P<path>\S+) -->\n```\w*\n(?P<code>.*?)```\n", re.S)


def test_readme_shows_the_example_bots_and_their_test_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = {match["path"]: match["code"] for match in SHOWN.finditer(readme)}
    assert set(shown) == {
        "tests/sandbox/bots/music_bot.py",
        "tests/sandbox/bots/music_bot.js",
        "tests/sandbox/bots/test_music_bot.py",
    }
    for path, code in shown.items():
        assert code == (ROOT / path).read_text(), f"README shows an old {path}"
