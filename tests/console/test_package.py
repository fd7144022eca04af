"""The console ships in the wheel: its page, script and sheet are package data, no build step."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_console_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("voxgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("index.html", "login.html", "console.js", "console.css"):
        assert f"voxgate/server/console/static/{name}" in names
    assert "voxgate/recording.py" in names
    # Nothing the page loads comes from elsewhere: no CDN, no external URL.
    for name in ("index.html", "login.html", "console.js", "console.css"):
        text = (ROOT / "src/voxgate/server/console/static" / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text
