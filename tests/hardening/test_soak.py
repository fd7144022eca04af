"""A short soak in the suite: sessions, tasks and descriptors all come back, RSS stays put.

``voxgate bench soak`` runs the long version (10,000 cycles by default).
"""

from __future__ import annotations

from voxgate.bench.node import start_node
from voxgate.bench.soak import soak


async def test_three_hundred_sessions_come_and_go_and_leave_nothing_behind(tmp_path) -> None:
    node = start_node(data_dir=tmp_path / "node")
    try:
        result = await soak(node, cycles=300, concurrency=20)
    finally:
        node.stop()
    assert result.failures == 0
    assert result.after.sessions == 0
    assert result.after.tasks <= result.before.tasks
    assert result.after.open_fds <= result.before.open_fds + 2
    # Allocator noise is a few MB; a per-session leak of even 50 KB would show as 15.
    assert result.after.rss_mb - result.before.rss_mb < 12
