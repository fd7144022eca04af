"""``voxgate serve --redis``'s flags: refused in one line when they cannot work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from voxgate.bench.cluster import ClusterSecrets, start_cluster_node

VOXGATE = [sys.executable, "-m", "voxgate"]


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VOXGATE, "serve", "--data-dir", str(tmp_path), "--port", "0", "--admin-port", "0",
         "--log-level", "error", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--redis", "redis://127.0.0.1:1/0"], "voxgate: --redis needs --node-id NAME, unique "
         "in the cluster"),
        (["--node-id", "n0"], "voxgate: --node-id names a node of a cluster: give --redis too"),
        (["--redis", "127.0.0.1:6379", "--node-id", "n0"],
         "voxgate: --redis takes redis://HOST:PORT/DB, not '127.0.0.1:6379'"),
        (["--admin-key", "short"],
         "voxgate: --admin-key / VOXGATE_ADMIN_KEY must be at least 16 characters"),
    ],
)  # fmt: skip
def test_bad_cluster_settings_are_refused_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = _serve(tmp_path, *args)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [message]


def test_a_second_node_with_a_live_nodes_id_is_refused(tmp_path: Path, redis_url: str) -> None:
    secrets = ClusterSecrets.make()
    first = start_cluster_node(redis_url, "twin", tmp_path / "first", secrets)
    try:
        done = _serve(tmp_path / "second", "--redis", redis_url, "--node-id", "twin")
        assert done.returncode == 1
        [line] = done.stderr.strip().splitlines()
        assert line == (
            f"voxgate: node id 'twin' is live at 127.0.0.1:{first.port}; "
            "each node needs its own --node-id"
        )
    finally:
        first.stop()
