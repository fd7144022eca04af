"""``voxgate admin …``: a running node's operator actions from the command line.

Each command is one call of the node's admin API (the same routes the dashboard uses),
with the admin key as a bearer token: read from the node's data dir (``node.json`` says
where its admin API listens, ``admin_key`` holds the key), or given with ``--url`` and
``--key``. Nothing here imports the server: the CLI is a client of the API.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

console = Console(stderr=True)
admin = typer.Typer(
    name="admin",
    help="Operate a running node: list calls, disconnect, mute, end calls, record.",
    no_args_is_help=True,
)

DATA_DIR = typer.Option(None, help="The node's data dir (default: ~/.local/share/voxgate).")
URL = typer.Option(None, help="The node's admin URL (default: from the data dir's node.json).")
KEY = typer.Option(None, envvar="VOXGATE_ADMIN_KEY", help="Admin key (default: the data dir's).")
GUILD = typer.Option(..., help="Guild id.")
CHANNEL = typer.Option(..., help="Voice channel id.")
USER = typer.Option(..., help="User id of the member.")


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]voxgate:[/red] {message}", highlight=False)
    return typer.Exit(1)


class _Api:
    def __init__(self, data_dir: Path | None, url: str | None, key: str | None) -> None:
        folder = (data_dir or _default_data_dir()).expanduser()
        if url is None:
            try:
                url = json.loads((folder / "node.json").read_text())["admin_url"]
            except (OSError, ValueError, KeyError):
                raise _fail(f"no running node recorded in {folder}: give --url") from None
        if key is None:
            try:
                key = (folder / "admin_key").read_text().strip()
            except OSError:
                raise _fail(f"no admin key in {folder}: give --key") from None
        self.url = str(url).rstrip("/")
        self.key = key

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                detail = json.load(exc).get("error", exc.reason)
            except ValueError:
                detail = exc.reason
            raise _fail(f"{method} {path}: {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise _fail(f"the node's admin API at {self.url} did not answer: {exc}") from None

    def download(self, path: str, target: Path) -> None:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.key}"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            target.write_bytes(response.read())


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "voxgate"


def _member_path(guild: str, channel: str, user: str | None = None) -> str:
    quote = urllib.parse.quote
    path = f"/v1/channels/{quote(guild, safe='')}/{quote(channel, safe='')}"
    return path if user is None else f"{path}/members/{quote(user, safe='')}"


@admin.command("channels")
def channels(
    data_dir: Path | None = DATA_DIR, url: str | None = URL, key: str | None = KEY
) -> None:
    """Print the node's calls and their members as JSON."""
    typer.echo(json.dumps(_Api(data_dir, url, key).request("GET", "/v1/channels"), indent=2))


@admin.command("disconnect")
def disconnect(
    guild: str = GUILD,
    channel: str = CHANNEL,
    user: str = USER,
    data_dir: Path | None = DATA_DIR,
    url: str | None = URL,
    key: str | None = KEY,
) -> None:
    """Disconnect a member: its voice WebSocket closes with 4014."""
    answer = _Api(data_dir, url, key).request(
        "POST", _member_path(guild, channel, user) + "/disconnect"
    )
    typer.echo(json.dumps(answer))


@admin.command("mute")
def mute(
    guild: str = GUILD,
    channel: str = CHANNEL,
    user: str = USER,
    unmute: bool = typer.Option(False, "--unmute", help="Lift the server-mute instead."),
    data_dir: Path | None = DATA_DIR,
    url: str | None = URL,
    key: str | None = KEY,
) -> None:
    """Server-mute a member: its audio is not forwarded, and every client is told."""
    answer = _Api(data_dir, url, key).request(
        "POST", _member_path(guild, channel, user) + "/mute", {"mute": not unmute}
    )
    typer.echo(json.dumps(answer))


@admin.command("end")
def end(
    guild: str = GUILD,
    channel: str = CHANNEL,
    data_dir: Path | None = DATA_DIR,
    url: str | None = URL,
    key: str | None = KEY,
) -> None:
    """End a call: every member's voice WebSocket closes with 4022."""
    answer = _Api(data_dir, url, key).request("POST", _member_path(guild, channel) + "/end")
    typer.echo(json.dumps(answer))


@admin.command("recordings")
def recordings(
    data_dir: Path | None = DATA_DIR, url: str | None = URL, key: str | None = KEY
) -> None:
    """Print the node's recordings (running and done) as JSON."""
    typer.echo(json.dumps(_Api(data_dir, url, key).request("GET", "/v1/recordings"), indent=2))


@admin.command("record")
def record(
    guild: str = GUILD,
    channel: str = CHANNEL,
    seconds: float = typer.Option(10.0, help="How long to record."),
    out: Path | None = typer.Option(
        None, help="Also download the files into this folder (they stay on the node too)."
    ),
    data_dir: Path | None = DATA_DIR,
    url: str | None = URL,
    key: str | None = KEY,
) -> None:
    """Record a call: the node's recorder joins as a member every client sees, and
    writes one WAV per speaker and a mix."""
    api = _Api(data_dir, url, key)
    started = api.request("POST", "/v1/recordings", {
        "guild_id": guild, "channel_id": channel, "seconds": seconds,
    })  # fmt: skip
    recording_id = started["id"]
    console.print(
        f"recording [bold]{recording_id}[/bold]: recorder member {started['user_id']} "
        f"joins {guild}/{channel} for {seconds:g} s",
        highlight=False,
    )
    path = f"/v1/recordings/{urllib.parse.quote(recording_id, safe='')}"
    current = started
    try:
        progress = Live(_progress(current), console=console, refresh_per_second=8, transient=True)
        with progress as live:
            while current["state"] in ("starting", "recording"):
                time.sleep(0.25)
                current = api.request("GET", path)
                live.update(_progress(current))
    except KeyboardInterrupt:
        current = api.request("POST", path + "/stop")
        while current["state"] in ("starting", "recording"):
            time.sleep(0.25)
            current = api.request("GET", path)
    if current["state"] == "failed":
        raise _fail(f"recording {recording_id} failed: {current['error']}")
    console.print(
        f"recorded {current['elapsed']:.1f} s of {guild}/{channel} into {current['folder']} "
        f"(on the node); {_e2ee(current)}",
        highlight=False,
    )
    for user, track in sorted(current["tracks"].items()):
        console.print(
            f"  {user}.wav: {track['packets']} packets, {track['seconds']:.1f} s of audio",
            highlight=False,
        )
    console.print(f"  mix.wav; packets lost: {current['lost']}", highlight=False)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in current["files"]:
            api.download(f"{path}/files/{urllib.parse.quote(name, safe='')}", out / name)
        console.print(f"downloaded {len(current['files'])} files into {out}", highlight=False)
    typer.echo(json.dumps(current))


def _e2ee(recording: dict[str, Any]) -> str:
    code = recording.get("privacy_code")
    if code:
        grouped = " ".join(code[i : i + 5] for i in range(0, len(code), 5))
        return f"end-to-end encrypted, privacy code {grouped}"
    return f"E2EE {recording.get('e2ee')}"


def _progress(recording: dict[str, Any]) -> Table:
    total = recording.get("seconds")
    elapsed = recording.get("elapsed", 0.0)
    title = f"{recording['state']} {elapsed:5.1f}" + (f" / {total:g} s" if total else " s")
    view = Table(title=title, caption=_e2ee(recording))
    view.add_column("user")
    view.add_column("packets", justify="right")
    view.add_column("audio", justify="right")
    view.add_column("level")
    for user, track in sorted(recording["tracks"].items()):
        bar = "#" * int(track["level"] * 30)
        view.add_row(user, str(track["packets"]), f"{track['seconds']:.1f} s", f"{bar:<30}")
    return view


def register(app: typer.Typer) -> None:
    """Add ``voxgate admin`` to ``app``."""
    app.add_typer(admin)
