"""A node's data dir: the token secret, the admin key, TLS files and where the node listens.

Everything here is made on first run and reused after, so tokens minted before a restart
still verify and clients keep trusting the same CA. Secrets are written owner-only.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

SECRET_FILE = "secret"
ADMIN_KEY_FILE = "admin_key"
NODE_FILE = "node.json"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/voxgate``, i.e. ``~/.local/share/voxgate`` by default."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "voxgate"


def _read_or_create(path: Path, make: str) -> str:
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes starting on a fresh dir agree on one secret, not two.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(make + "\n")
    return make


def token_secret(data_dir: Path) -> bytes:
    """The HS256 secret tokens are signed with, made on first use."""
    return _read_or_create(data_dir / SECRET_FILE, secrets.token_hex(32)).encode()


def admin_key(data_dir: Path) -> str:
    """The bearer key of the admin listener, made on first use."""
    return _read_or_create(data_dir / ADMIN_KEY_FILE, secrets.token_urlsafe(32))


def write_admin_key(data_dir: Path, key: str) -> None:
    """Record the admin key given on the command line (a cluster's shared one)."""
    path = data_dir / ADMIN_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")


def write_node_file(
    data_dir: Path,
    endpoint: str,
    admin_url: str,
    workers: list[str] | None = None,
    *,
    cluster: str | None = None,
    dashboard_url: str | None = None,
) -> None:
    """Record where the running node listens, for ``voxgate token`` and the client CLI;
    ``workers``: the gateway endpoint of each worker process, when it runs several;
    ``cluster``: the node's id, when it is a node of a cluster; ``dashboard_url``: the
    console's one-time login URL."""
    path = data_dir / NODE_FILE
    temporary = path.with_suffix(".tmp")
    recorded: dict[str, object] = {"endpoint": endpoint, "admin_url": admin_url}
    if workers is not None:
        recorded["workers"] = workers
    if cluster is not None:
        recorded["cluster"] = cluster
    if dashboard_url is not None:
        # A one-time login URL of the console: it logs one browser in, once.
        recorded["dashboard_url"] = dashboard_url
    temporary.write_text(json.dumps(recorded) + "\n")
    temporary.replace(path)


def _node_file(data_dir: Path) -> dict[str, object] | None:
    try:
        recorded = json.loads((data_dir / NODE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def read_node_file(data_dir: Path) -> dict[str, str] | None:
    """What :func:`write_node_file` recorded (its text fields), or None when no node has
    run from this dir."""
    recorded = _node_file(data_dir)
    if recorded is None:
        return None
    return {str(key): str(value) for key, value in recorded.items() if not isinstance(value, list)}


def read_workers(data_dir: Path) -> list[str]:
    """The workers' endpoints :func:`write_node_file` recorded; empty for a single process."""
    workers = (_node_file(data_dir) or {}).get("workers")
    return [str(worker) for worker in workers] if isinstance(workers, list) else []
