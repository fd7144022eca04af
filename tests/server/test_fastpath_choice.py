"""How the media path is chosen: the extension when built, Python when told or when absent."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from voxgate.server import fastpath

_SHOW = "from voxgate.server import fastpath; print(fastpath.IMPLEMENTATION)"
# An import of voxgate._fastpath that fails, as on a machine that could not build it.
_UNBUILT = "import sys; sys.modules['voxgate._fastpath'] = None; " + _SHOW


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env}
    )


def test_no_extensions_forces_the_python_path() -> None:
    done = _python(_SHOW, VOXGATE_NO_EXTENSIONS="1")
    assert done.stdout.strip() == "python"


def test_an_unbuilt_extension_falls_back_to_python_quietly() -> None:
    done = _python(_UNBUILT)
    assert (done.returncode, done.stdout.strip()) == (0, "python")


def test_require_extensions_makes_an_unbuilt_extension_fail_loudly() -> None:
    done = _python(_UNBUILT, VOXGATE_REQUIRE_EXTENSIONS="1")
    assert done.returncode != 0
    assert "VOXGATE_REQUIRE_EXTENSIONS=1" in done.stderr


def test_a_node_asking_for_native_without_it_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "native", None)
    assert fastpath.choose("auto")[0] == "python"
    assert fastpath.choose("python")[0] == "python"
    with pytest.raises(RuntimeError, match="native media path"):
        fastpath.choose("native")


@pytest.mark.skipif(fastpath.native is None, reason=fastpath.why_python)
def test_the_built_extension_is_the_default() -> None:
    assert _python(_SHOW).stdout.strip() == "native"
    assert fastpath.choose("auto")[0] == "native"
