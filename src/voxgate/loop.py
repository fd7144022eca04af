"""The event loop every voxgate process runs on: asyncio, on uvloop where it is installed.

Shared by the server (``voxgate serve`` and its workers) and by the benchmarks' load
generators, which must not be the slower side of a measurement; it sits beside the layers
so that neither the server nor the client owns it.
"""

from __future__ import annotations

import asyncio


def install_uvloop() -> None:
    """Make asyncio's new loops uvloop's, when uvloop is installed (a dependency on Linux)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
