"""Builds ``voxgate._fastpath`` (src/voxgate/_fastpath.c) at install time, when it can.

The extension is optional, as websockets' ``speedups`` and aiohttp's parsers are: without a
C compiler or the OpenSSL headers the install goes on, pure Python, and says why. The
environment decides, at build time as at run time:

- ``VOXGATE_NO_EXTENSIONS=1``: do not build it (and ``server/fastpath.py`` will not load one);
- ``VOXGATE_REQUIRE_EXTENSIONS=1`` (set in ``.ci/run``): a build that fails fails the install.

An editable install (``pip install -e .``, what ``make dev`` does) builds it in place next to
its source, where the import finds it; a wheel carries it and is tagged for this platform.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run by hand (python hatch_build.py), outside a build
    BuildHookInterface = object  # type: ignore[assignment,misc]

SOURCE = Path("src/voxgate/_fastpath.c")


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


class FastPathBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        if version == "editable":
            target = root / "src" / "voxgate" / f"_fastpath{suffix}"
        else:
            target = Path(self.directory) / "ext" / f"_fastpath{suffix}"
        if _flag("VOXGATE_NO_EXTENSIONS"):
            if version == "editable":
                target.unlink(missing_ok=True)  # no earlier build left to be imported
            self.app.display_info("voxgate._fastpath: not built (VOXGATE_NO_EXTENSIONS=1)")
            return
        why = _compile(root / SOURCE, target)
        if why:
            # Never leave an earlier build in place to be imported as if it were this one.
            target.unlink(missing_ok=True)
            if _flag("VOXGATE_REQUIRE_EXTENSIONS"):
                raise RuntimeError(f"voxgate._fastpath did not build: {why}")
            self.app.display_warning(
                f"voxgate._fastpath not built ({why}); the pure-Python media path will run"
            )
            return
        self.app.display_info(f"voxgate._fastpath built: {target}")
        if version != "editable":
            build_data["force_include"][str(target)] = f"voxgate/_fastpath{suffix}"
            build_data["pure_python"] = False
            build_data["infer_tag"] = True


def _compile(source: Path, target: Path) -> str:
    """Compile ``source`` into ``target``; "" on success, else why not."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (Debian: apt-get install gcc)"
    include = sysconfig.get_paths()["include"]
    if not Path(include, "Python.h").exists():
        return f"no Python.h in {include} (Debian: apt-get install python3-dev)"
    target.parent.mkdir(parents=True, exist_ok=True)
    command = [
        *compiler.split(),
        "-O2",
        "-shared",
        "-fPIC",
        "-Wall",
        f"-I{include}",
        str(source),
        "-o",
        str(target),
        "-lcrypto",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except OSError as exc:
        return f"{compiler}: {exc}"
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        if any("openssl/" in line for line in detail):
            return "OpenSSL headers missing (Debian: apt-get install libssl-dev)"
        return f"{compiler} failed: {' / '.join(detail[-3:])[:300]}"
    return ""


if __name__ == "__main__":  # pragma: no cover - by hand: python hatch_build.py
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    problem = _compile(SOURCE, Path("src/voxgate") / f"_fastpath{suffix}")
    print(problem or "built", file=sys.stderr)
    sys.exit(1 if problem else 0)
