"""``voxgate play`` and ``voxgate record``: the client library from the command line.

Both join with the two Discord events: ``--join FILE`` (or ``-`` for stdin) holding what
``voxgate token`` prints or what Discord's gateway gave a bot, or ``--guild/--channel/
--user`` to have a local node mint them through its admin API (reading the node's address
and admin key from its data dir, so the client never imports server code).

Both end-to-end encrypt with DAVE when the server offers it (``--no-dave``: never) and
print the call's privacy code each time it changes: the members of a call compare it (read
aloud, or side by side with what Discord's clients show) to know that nobody, the voice
server included, sits in the middle.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from voxgate.errors import VoxgateError

console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]voxgate:[/red] {message}", highlight=False)
    return typer.Exit(1)


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "voxgate"


def _mint(data_dir: Path, guild: str, channel: str, user: str) -> dict[str, Any]:
    try:
        node = json.loads((data_dir / "node.json").read_text())
        admin_key = (data_dir / "admin_key").read_text().strip()
    except (OSError, ValueError):
        raise _fail(
            f"no running node recorded in {data_dir} (start `voxgate serve` first)"
        ) from None
    request = urllib.request.Request(
        f"{node['admin_url']}/v1/voice/join",
        data=json.dumps({"guild_id": guild, "channel_id": channel, "user_id": user}).encode(),
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            events: dict[str, Any] = json.load(response)
    except (urllib.error.URLError, OSError) as exc:
        raise _fail(f"the node's admin API did not answer: {exc}") from None
    return events


def _join_events(
    join: str | None,
    data_dir: Path | None,
    guild: str | None,
    channel: str | None,
    user: str | None,
) -> tuple[dict[str, Any], Path | None]:
    """The two events, and the CA to trust when they came from a local node."""
    if join is not None:
        try:
            text = sys.stdin.read() if join == "-" else Path(join).read_text()
            events = json.loads(text)
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot read the join events from {join}: {exc}") from None
        if not isinstance(events, dict) or not {"voice_state", "voice_server"} <= events.keys():
            raise _fail("the join JSON needs voice_state and voice_server")
        ca = (data_dir / "tls" / "ca.pem") if data_dir else None
        return events, ca
    if not (guild and channel and user):
        raise _fail("give --join FILE, or --guild, --channel and --user to mint from a local node")
    folder = (data_dir or _default_data_dir()).expanduser()
    return _mint(folder, guild, channel, user), folder / "tls" / "ca.pem"


def _privacy_code(code: str) -> str:
    """Discord's clients show the 30 digits in groups of five."""
    return " ".join(code[i : i + 5] for i in range(0, len(code), 5))


def _e2ee(connection: Any) -> str:
    """One line on the call's end-to-end encryption, for a status display."""
    from voxgate.client.dave import DaveState

    dave = connection.dave
    state = dave.state
    if state is DaveState.ACTIVE and dave.privacy_code:
        return f"E2EE epoch {dave.epoch}, privacy code {_privacy_code(dave.privacy_code)}"
    if state is DaveState.DISABLED:
        return "not end-to-end encrypted (--no-dave)"
    if state is DaveState.INACTIVE:
        why = "downgraded for a member without DAVE" if dave.downgraded else "server without DAVE"
        return f"not end-to-end encrypted ({why})"
    return "E2EE pending (waiting for the group)"


class _PrivacyCodes:
    """Prints the privacy code each time it changes (a member joined or left)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.shown: str | None = None

    def check(self) -> None:
        code = self.connection.dave.privacy_code
        if code and code != self.shown:
            self.shown = code
            console.print(
                f"privacy code (epoch {self.connection.dave.epoch}): [bold]{_privacy_code(code)}"
                "[/bold]  compare it with the other members",
                highlight=False,
            )


def _ssl_context(ca: Path | None) -> ssl.SSLContext | None:
    if ca is None or not ca.exists():
        return None
    return ssl.create_default_context(cafile=str(ca))


def play(
    file: str = typer.Argument(
        ..., help="Audio file or URL: Ogg/Opus passes through, the rest via FFmpeg."
    ),
    join: str | None = typer.Option(None, help="JSON file of the two join events, or - for stdin."),
    guild: str | None = typer.Option(None, help="Mint a join from a local node: guild id."),
    channel: str | None = typer.Option(None, help="... channel id."),
    user: str | None = typer.Option(None, help="... user id."),
    data_dir: Path | None = typer.Option(None, help="The local node's data dir."),
    ca: Path | None = typer.Option(None, help="CA file to trust (default: the node's, if local)."),
    volume: float = typer.Option(1.0, help="Volume for re-encoded sources (1.0 = as is)."),
    dave: bool = typer.Option(True, help="End-to-end encrypt with DAVE when offered."),
) -> None:
    """Join a voice channel and play a file into it, paced at 20 ms a frame."""
    events, local_ca = _join_events(join, data_dir, guild, channel, user)
    try:
        asyncio.run(_play(file, events, _ssl_context(ca or local_ca), volume, dave))
    except VoxgateError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _play(
    file: str, events: dict[str, Any], context: ssl.SSLContext | None, volume: float, dave: bool
) -> None:
    from voxgate.client import VoiceConnection
    from voxgate.client.player import AudioPlayer
    from voxgate.client.sources import open_source

    source = open_source(file)
    connection = await VoiceConnection.connect(
        events["voice_state"], events["voice_server"], ssl=context, dave=dave
    )
    async with connection:
        codes = _PrivacyCodes(connection)
        player = AudioPlayer(connection, source)
        if volume != 1.0 and hasattr(source, "volume"):
            player.volume = volume
        started = time.monotonic()
        task = player.start()
        with Live(console=console, refresh_per_second=8, transient=True) as live:
            while not task.done():
                codes.check()
                live.update(
                    f"[bold]playing[/bold] {file}  {time.monotonic() - started:6.1f} s  "
                    f"{player.frames_sent} packets  mode {connection.mode}  {_e2ee(connection)}"
                )
                await asyncio.wait({task}, timeout=0.125)
        await task
        late = sorted(player.lateness)
        p99 = late[int(len(late) * 0.99) - 1] * 1000 if late else 0.0
        console.print(
            f"played {file}: {player.frames_sent} packets in {time.monotonic() - started:.1f} s, "
            f"send jitter p99 {p99:.2f} ms, ssrc {connection.ssrc}, mode {connection.mode}",
            highlight=False,
        )
        console.print(_e2ee(connection), highlight=False)


def record(
    outdir: Path = typer.Argument(..., help="Folder for <user_id>.wav per speaker and mix.wav."),
    seconds: float = typer.Option(10.0, help="How long to record."),
    join: str | None = typer.Option(None, help="JSON file of the two join events, or - for stdin."),
    guild: str | None = typer.Option(None, help="Mint a join from a local node: guild id."),
    channel: str | None = typer.Option(None, help="... channel id."),
    user: str | None = typer.Option(None, help="... user id."),
    data_dir: Path | None = typer.Option(None, help="The local node's data dir."),
    ca: Path | None = typer.Option(None, help="CA file to trust (default: the node's, if local)."),
    opus: bool = typer.Option(
        False, help="Also write each speaker's raw Opus packets (.opus.jsonl)."
    ),
    dave: bool = typer.Option(True, help="End-to-end encrypt with DAVE when offered."),
) -> None:
    """Join a voice channel and record everyone: one WAV per user and a mixed-down WAV."""
    events, local_ca = _join_events(join, data_dir, guild, channel, user)
    try:
        asyncio.run(_record(outdir, seconds, events, _ssl_context(ca or local_ca), opus, dave))
    except VoxgateError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _record(
    outdir: Path,
    seconds: float,
    events: dict[str, Any],
    context: ssl.SSLContext | None,
    opus: bool,
    dave: bool,
) -> None:
    from voxgate.client import VoiceConnection
    from voxgate.client.receiver import AudioReceiver

    connection = await VoiceConnection.connect(
        events["voice_state"], events["voice_server"], ssl=context, dave=dave
    )
    async with connection:
        codes = _PrivacyCodes(connection)
        receiver = AudioReceiver(connection)
        started = time.monotonic()

        def table() -> Table:
            codes.check()
            view = Table(
                title=f"recording {time.monotonic() - started:5.1f} / {seconds:g} s",
                caption=_e2ee(connection),
            )
            view.add_column("user")
            view.add_column("packets", justify="right")
            view.add_column("level")
            for user_id, track in receiver.by_user().items():
                bar = "#" * int(track.level * 30)
                view.add_row(user_id, str(track.packets), f"{bar:<30}")
            return view

        with Live(table(), console=console, refresh_per_second=8, transient=True) as live:
            while (elapsed := time.monotonic() - started) < seconds:
                await asyncio.sleep(min(0.125, seconds - elapsed))
                live.update(table())
        receiver.close()
        written = receiver.save_wav(outdir)
        if opus:
            for user_id in receiver.by_user():
                lines = [json.dumps({"opus": p.hex()}) for p in receiver.opus_of(user_id)]
                (outdir / f"{user_id}.opus.jsonl").write_text("\n".join(lines) + "\n")
        console.print(f"recorded {seconds:g} s into {outdir}:", highlight=False)
        for user_id, track in receiver.by_user().items():
            console.print(
                f"  {written[user_id].name}: {track.packets} packets, "
                f"{len(track.pcm) / 4 / 48000:.1f} s of audio",
                highlight=False,
            )
        console.print(f"  mix.wav; packets lost: {receiver.lost}", highlight=False)
        console.print(_e2ee(connection), highlight=False)


def register(app: typer.Typer) -> None:
    """Add the client's commands to ``app``."""
    app.command()(play)
    app.command()(record)
