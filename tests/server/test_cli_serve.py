"""``voxgate token`` and the refusals of ``voxgate serve``, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from voxgate.server import datadir
from voxgate.server.auth import TokenAuthority


def _voxgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxgate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_token_prints_both_join_events_signed_with_the_data_dir_secret(tmp_path: Path) -> None:
    done = _voxgate(
        "token", "--data-dir", str(tmp_path), "--guild", "g1", "--channel", "c1", "--user", "u1"
    )
    assert done.returncode == 0, done.stderr
    events = json.loads(done.stdout)
    state, server = events["voice_state"], events["voice_server"]
    assert state["guild_id"] == server["guild_id"] == "g1"
    assert (state["channel_id"], state["user_id"]) == ("c1", "u1")
    assert server["endpoint"] == "127.0.0.1:8443"
    grant = TokenAuthority(datadir.token_secret(tmp_path)).verify(server["token"])
    assert grant.session_id == state["session_id"]
    assert grant.channel_id == "c1"


def test_token_uses_the_endpoint_the_node_last_listened_on(tmp_path: Path) -> None:
    datadir.write_node_file(tmp_path, "10.0.0.7:9443", "http://127.0.0.1:9444")
    done = _voxgate(
        "token", "--data-dir", str(tmp_path), "--guild", "g", "--channel", "c", "--user", "u"
    )
    assert json.loads(done.stdout)["voice_server"]["endpoint"] == "10.0.0.7:9443"


def test_token_refuses_a_short_secret_in_one_line(tmp_path: Path) -> None:
    done = _voxgate(
        "token",
        "--data-dir",
        str(tmp_path),
        "--guild",
        "g",
        "--channel",
        "c",
        "--user",
        "u",
        "--secret",
        "short",
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "voxgate: --secret / VOXGATE_SECRET must be at least 32 bytes"
    ]


def test_serve_refuses_an_unknown_mode_without_a_traceback(tmp_path: Path) -> None:
    done = _voxgate(
        "serve", "--data-dir", str(tmp_path), "--modes", "aead_aes256_gcm_rtpsize,rot13"
    )
    assert done.returncode == 1
    assert "unknown encryption mode 'rot13'" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_half_a_certificate(tmp_path: Path) -> None:
    done = _voxgate("serve", "--data-dir", str(tmp_path), "--tls-cert", str(tmp_path / "c.pem"))
    assert done.returncode == 1
    assert "--tls-cert and --tls-key go together" in done.stderr


def test_secrets_are_made_once_and_kept(tmp_path: Path) -> None:
    secret = datadir.token_secret(tmp_path)
    key = datadir.admin_key(tmp_path)
    assert len(secret) == 64 and len(key) >= 32
    assert datadir.token_secret(tmp_path) == secret
    assert datadir.admin_key(tmp_path) == key
    assert (tmp_path / "secret").stat().st_mode & 0o077 == 0
