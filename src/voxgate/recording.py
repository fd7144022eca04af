"""Recording a call as a member of it: what the console's Record button and API run.

The audio of a call may be end-to-end encrypted (DAVE), so no server can record it by
itself: a :class:`Recorder` joins the channel as one more member, a voxgate client
(``voxgate.client.VoiceConnection``, a DAVE member of the group like any other), that every
other client sees join, and writes what it hears: ``<user_id>.wav`` per speaker, ``mix.wav``,
each speaker's Opus packets as they arrived (``<user_id>.opus.jsonl``, one ``{"opus": hex}``
a line) and ``recording.json``. It sits above ``server/`` and ``client/`` and composes them
(like ``cli/`` and ``sandbox/``): ``voxgate serve`` hands one to the admin listener, which
only sees the :class:`~voxgate.server.console.RecordingsView` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxgate.errors import VoxgateError

log = logging.getLogger(__name__)

#: Discord's epoch (2015-01-01), for recorder user ids shaped as snowflakes (DAVE names
#: members by numeric ids).
DISCORD_EPOCH_MS = 1_420_070_400_000
MAX_SECONDS = 6 * 3600
MAX_ACTIVE = 8

#: (guild id, channel id, user id) -> the two join events, as ``POST /v1/voice/join`` gives.
MintJoin = Callable[[str, str, str], dict[str, Any]]


class RecordingError(VoxgateError):
    """A recording that cannot start (too many running, bad arguments)."""


def recorder_user_id(sequence: int, now_ms: int | None = None) -> str:
    """A fresh snowflake-shaped user id for a recorder member."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return str(((now_ms - DISCORD_EPOCH_MS) << 22) | (sequence & 0x3FFFFF))


@dataclass
class Recording:
    """One recording: its member, its progress and, once done, its files."""

    id: str
    guild_id: str
    channel_id: str
    user_id: str
    folder: Path
    seconds: float | None
    state: str = "starting"
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    tracks: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    privacy_code: str | None = None
    e2ee: str = "pending"
    lost: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def summary(self) -> dict[str, Any]:
        end = self.ended_at if self.ended_at is not None else time.time()
        return {
            "id": self.id,
            "guild_id": self.guild_id,
            "channel_id": self.channel_id,
            "user_id": self.user_id,
            "seconds": self.seconds,
            "state": self.state,
            "error": self.error,
            "started_at": self.started_at,
            "elapsed": round(end - self.started_at, 2),
            "tracks": self.tracks,
            "files": self.files,
            "privacy_code": self.privacy_code,
            "e2ee": self.e2ee,
            "lost": self.lost,
            "folder": str(self.folder),
        }


class Recorder:
    """Recordings of this node's calls, each by a member that joins through ``mint``."""

    def __init__(
        self, folder: Path, mint: MintJoin, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.folder = folder
        self.mint = mint
        self.ssl_context = ssl_context
        self.recordings: dict[str, Recording] = {}
        self._sequence = 0

    def start(self, guild_id: str, channel_id: str, seconds: float | None) -> dict[str, Any]:
        """Start recording channel ``guild_id``/``channel_id`` (for ``seconds``, or until
        :meth:`stop`); returns the recording's summary at once, the member joins after."""
        active = [r for r in self.recordings.values() if r.state in ("starting", "recording")]
        if len(active) >= MAX_ACTIVE:
            raise RecordingError(f"{MAX_ACTIVE} recordings are running already")
        if any((r.guild_id, r.channel_id) == (guild_id, channel_id) for r in active):
            raise RecordingError(f"channel {guild_id}/{channel_id} is being recorded already")
        if seconds is not None and not 0 < seconds <= MAX_SECONDS:
            raise RecordingError(f"seconds must be between 0 and {MAX_SECONDS}")
        self._sequence += 1
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        recording_id = f"{stamp}-{self._sequence}"
        recording = Recording(
            recording_id,
            guild_id,
            channel_id,
            recorder_user_id(self._sequence),
            self.folder / recording_id,
            seconds,
        )
        self.recordings[recording_id] = recording
        recording.task = asyncio.create_task(self._run(recording))
        log.info(
            "recording %s of %s/%s started (recorder user %s)",
            recording_id, guild_id, channel_id, recording.user_id,
        )  # fmt: skip
        return recording.summary()

    def stop(self, recording_id: str) -> dict[str, Any] | None:
        recording = self.recordings.get(recording_id)
        if recording is None:
            return None
        recording.stop.set()
        return recording.summary()

    def get(self, recording_id: str) -> dict[str, Any] | None:
        recording = self.recordings.get(recording_id)
        return None if recording is None else recording.summary()

    def list(self) -> list[dict[str, Any]]:
        return [recording.summary() for recording in self.recordings.values()]

    def file(self, recording_id: str, name: str) -> Path | None:
        """The path of a file the recording wrote, only one it listed (no other name)."""
        recording = self.recordings.get(recording_id)
        if recording is None or name not in recording.files:
            return None
        return recording.folder / name

    def recorder_users(self) -> set[str]:
        return {
            r.user_id for r in self.recordings.values() if r.state in ("starting", "recording")
        }

    async def close(self) -> None:
        """Stop every recording and wait for their files."""
        for recording in self.recordings.values():
            recording.stop.set()
        tasks = [r.task for r in self.recordings.values() if r.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, recording: Recording) -> None:
        # Imported here: a node that never records never loads the client and PyAV's codecs.
        from voxgate.client import VoiceConnection
        from voxgate.client.receiver import AudioReceiver

        try:
            events = self.mint(recording.guild_id, recording.channel_id, recording.user_id)
            connection = await VoiceConnection.connect(
                events["voice_state"], events["voice_server"], ssl=self.ssl_context
            )
        except Exception as exc:  # any failure to join ends this recording, not the node
            recording.state, recording.error = "failed", str(exc)[:200]
            recording.ended_at = time.time()
            log.warning("recording %s could not join: %s", recording.id, exc)
            return
        receiver = AudioReceiver(connection)
        recording.state = "recording"
        try:
            deadline = None if recording.seconds is None else time.monotonic() + recording.seconds
            while not recording.stop.is_set():
                self._progress(recording, connection, receiver)
                left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(recording.stop.wait(), left)
                if connection.closed.is_set():
                    recording.error = "the recorder's connection closed"
                    break
        finally:
            receiver.close()
            await connection.close()
            self._progress(recording, connection, receiver)
            await asyncio.to_thread(self._save, recording, receiver)
            recording.state = "done" if recording.error is None else "ended"
            recording.ended_at = time.time()
            log.info(
                "recording %s done: %s", recording.id, ", ".join(recording.files) or "no files"
            )

    @staticmethod
    def _progress(recording: Recording, connection: Any, receiver: Any) -> None:
        recording.tracks = {
            user: {
                "packets": track.packets,
                "seconds": round(len(track.pcm) / 4 / 48000, 2),
                "level": round(track.level, 3),
            }
            for user, track in receiver.by_user().items()
        }
        recording.lost = receiver.lost
        dave = connection.dave
        recording.privacy_code = dave.privacy_code or recording.privacy_code
        recording.e2ee = str(getattr(dave.state, "value", dave.state))

    @staticmethod
    def _save(recording: Recording, receiver: Any) -> None:
        folder = recording.folder
        written = receiver.save_wav(folder)
        names = [path.name for user, path in written.items() if user != "mix"]
        for user in receiver.by_user():
            path = written[user].with_suffix(".opus.jsonl")
            lines = [json.dumps({"opus": packet.hex()}) for packet in receiver.opus_of(user)]
            path.write_text("".join(line + "\n" for line in lines))
            names.append(path.name)
        names.append("mix.wav")
        summary = recording.summary()
        summary.update(state="done", files=[*sorted(names), "recording.json"])
        (folder / "recording.json").write_text(json.dumps(summary, indent=2) + "\n")
        recording.files = [*sorted(names), "recording.json"]
