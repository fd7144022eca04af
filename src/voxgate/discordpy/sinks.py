"""Where received audio goes: sinks with discord-ext-voice-recv's interface.

A sink has ``wants_opus()`` (Opus packets, or decoded PCM) and ``write(user, data)``,
called once per 20 ms frame of each speaker with the speaker (a ``discord.Member``, a
``discord.User``, or a ``discord.Object`` carrying only the id when the client has neither
cached) and a :class:`VoiceData`: ``data.opus`` (None for a frame that never arrived),
``data.pcm`` (s16le 48 kHz stereo, silence for a lost frame) and ``data.packet`` (its RTP
sequence, timestamp and ssrc). Methods marked ``@AudioSink.listener()`` receive the voice
events by name (``on_voice_member_speaking_start(member)``, ...). This is the interface of
discord-ext-voice-recv 0.5, so a sink written for it, subclassing its ``AudioSink``, works
on :class:`voxgate.discordpy.VoiceClient` unchanged; the classes here are the same
interface without that package.

``write`` and the listeners run in one thread per ``listen()``, in arrival order, never on
the event loop: a sink may block (a file, a pipe, a speech recogniser) without stalling the
connection.
"""

from __future__ import annotations

import abc
import logging
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voxgate.discordpy.client import VoiceClient

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
CHANNELS = 2
SAMPLE_WIDTH = 2


class RtpPacket:
    """The RTP facts of one received frame (``decrypted_data``: its Opus, None if lost)."""

    __slots__ = ("decrypted_data", "sequence", "ssrc", "timestamp")

    def __init__(self, ssrc: int, sequence: int, timestamp: int, opus: bytes | None) -> None:
        self.ssrc = ssrc
        self.sequence = sequence
        self.timestamp = timestamp
        self.decrypted_data = opus

    def __bool__(self) -> bool:
        return self.decrypted_data is not None

    def __repr__(self) -> str:
        return f"<RtpPacket ssrc={self.ssrc} sequence={self.sequence} timestamp={self.timestamp}>"


class VoiceData:
    """One frame for a sink: ``packet``, ``source`` (the speaker), ``pcm`` and ``opus``."""

    __slots__ = ("packet", "pcm", "source")

    def __init__(self, packet: RtpPacket, source: Any, *, pcm: bytes | None = None) -> None:
        self.packet = packet
        self.source = source
        self.pcm = pcm or b""

    @property
    def opus(self) -> bytes | None:
        return self.packet.decrypted_data


class _SinkMeta(abc.ABCMeta):
    """Collects the ``@AudioSink.listener()`` methods of a class as ``__sink_listeners__``:
    (event name, method name) pairs, the attribute discord-ext-voice-recv's sinks carry."""

    __sink_listeners__: list[tuple[str, str]]

    def __new__(
        mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any], **kwargs: Any
    ) -> _SinkMeta:
        cls = super().__new__(mcs, name, bases, attrs, **kwargs)
        found: dict[str, Any] = {}
        for base in reversed(cls.__mro__):
            for attr, value in base.__dict__.items():
                found.pop(attr, None)
                function = value.__func__ if isinstance(value, staticmethod) else value
                if getattr(function, "__sink_listener__", False):
                    found[attr] = function
        cls.__sink_listeners__ = [
            (event, function.__name__)
            for function in found.values()
            for event in function.__sink_listener_names__
        ]
        return cls


class AudioSink(metaclass=_SinkMeta):
    """A sink: subclass it and define ``wants_opus``, ``write`` and (optionally) ``cleanup``.

    Sinks chain as in discord-ext-voice-recv (``AudioSink(destination)``): the root is what
    ``listen()`` takes, and ``voice_client`` / ``client`` are the listening client's.
    """

    _voice_client: VoiceClient | None = None
    _parent: AudioSink | None = None
    _child: AudioSink | None = None

    def __init__(self, destination: AudioSink | None = None, /) -> None:
        if destination is not None:
            self._child = destination
            destination._parent = self

    @abc.abstractmethod
    def wants_opus(self) -> bool:
        """True for Opus packets in ``data.opus``; False for decoded PCM in ``data.pcm``."""

    @abc.abstractmethod
    def write(self, user: Any, data: VoiceData) -> None:
        """Called with each speaker's frames (see the module docstring)."""

    def cleanup(self) -> None:
        """Called once when listening stops."""

    @property
    def root(self) -> AudioSink:
        return self if self._parent is None else self._parent.root

    @property
    def parent(self) -> AudioSink | None:
        return self._parent

    @property
    def child(self) -> AudioSink | None:
        return self._child

    @property
    def children(self) -> list[AudioSink]:
        return [self._child] if self._child is not None else []

    def walk_children(self, *, with_self: bool = False) -> Iterator[AudioSink]:
        if with_self:
            yield self
        for child in self.children:
            yield child
            yield from child.walk_children()

    @property
    def voice_client(self) -> VoiceClient | None:
        return self._voice_client if self._parent is None else self._parent.voice_client

    @property
    def client(self) -> Any:
        voice_client = self.voice_client
        return None if voice_client is None else voice_client.client

    @classmethod
    def listener(cls, name: str | None = None) -> Callable[[Any], Any]:
        """Mark a (plain, not async) method as the listener of voice event ``name``
        (default: the method's name), e.g. ``on_voice_member_speaking_stop``."""

        def mark(function: Any) -> Any:
            actual = function.__func__ if isinstance(function, staticmethod) else function
            names = actual.__dict__.setdefault("__sink_listener_names__", [])
            names.append(name or actual.__name__)
            setattr(actual, "__sink_listener__", True)  # noqa: B010 - a function attribute
            return function

        return mark


class BasicSink(AudioSink):
    """Calls ``event(user, data)`` for every frame; ``decode=False`` for Opus."""

    def __init__(self, event: Callable[[Any, VoiceData], Any], *, decode: bool = True) -> None:
        super().__init__()
        self.event = event
        self.decode = decode

    def wants_opus(self) -> bool:
        return not self.decode

    def write(self, user: Any, data: VoiceData) -> None:
        self.event(user, data)


class WaveSink(AudioSink):
    """One WAV file per speaker, ``<user id>.wav`` in ``folder`` (48 kHz, s16, stereo).

    Each file is the speaker's own timeline: frames lost in transit are silence, and so
    are the pauses between what they said (from the RTP timestamps), so a file plays back
    as the speaker was heard. ``paths`` says which file is whose.
    """

    #: A pause longer than this (in samples, 10 minutes) is a new session, not a silence.
    MAX_GAP = SAMPLE_RATE * 600

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.paths: dict[int, Path] = {}
        self._files: dict[int, wave.Wave_write] = {}
        self._next_timestamp: dict[int, int] = {}

    def wants_opus(self) -> bool:
        return False

    def write(self, user: Any, data: VoiceData) -> None:
        user_id = getattr(user, "id", None)
        key = int(user_id) if user_id is not None else -data.packet.ssrc
        wav = self._files.get(key)
        if wav is None:
            name = str(key) if key >= 0 else f"ssrc-{-key}"
            path = self.paths[key] = self.folder / f"{name}.wav"
            wav = self._files[key] = wave.open(str(path), "wb")  # noqa: SIM115 - closed in cleanup
            wav.setnchannels(CHANNELS)
            wav.setsampwidth(SAMPLE_WIDTH)
            wav.setframerate(SAMPLE_RATE)
        expected = self._next_timestamp.get(key)
        timestamp = data.packet.timestamp
        if expected is not None and data.opus is not None:
            gap = (timestamp - expected) & 0xFFFF_FFFF
            if 0 < gap < self.MAX_GAP:
                wav.writeframes(bytes(gap * CHANNELS * SAMPLE_WIDTH))
        wav.writeframes(data.pcm)
        samples = len(data.pcm) // (CHANNELS * SAMPLE_WIDTH)
        if data.opus is not None or expected is None:
            self._next_timestamp[key] = (timestamp + samples) & 0xFFFF_FFFF
        else:
            self._next_timestamp[key] = (expected + samples) & 0xFFFF_FFFF

    def cleanup(self) -> None:
        for wav in self._files.values():
            try:
                wav.close()
            except Exception:
                log.warning("closing a WAV file failed", exc_info=True)
        self._files.clear()
