"""One atheris fuzzer process: ``python fuzz/harness.py TARGET [libFuzzer flags...]``."""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports():
    import voxgate.protocol.crypto
    import voxgate.protocol.dave
    import voxgate.protocol.discovery
    import voxgate.protocol.messages
    import voxgate.protocol.mls
    import voxgate.protocol.rtp
    import voxgate.server.media
    import voxgate.server.router
    import voxgate.server.session  # noqa: F401

from targets import TARGETS


def main() -> None:
    name = sys.argv.pop(1)
    target = TARGETS[name]()
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
