"""``VoiceClient``: voxgate's client as the voice backend of a discord.py 2.7 bot.

discord.py's extension point for voice is :class:`discord.VoiceProtocol`: the library calls
``connect()``, then feeds the protocol the bot's own VOICE_STATE_UPDATE and
VOICE_SERVER_UPDATE (``on_voice_state_update`` / ``on_voice_server_update``), and calls
``disconnect()`` when the bot leaves or closes. This class answers that with a
:class:`voxgate.client.VoiceConnection`, which does the voice gateway, UDP, DAVE,
heartbeats, resuming and new sessions; the class itself keeps discord.py's API on top
(``play``, ``pause``, ``move_to``, ``latency``, ...) and adds receiving (``listen``,
``receive``) with discord-ext-voice-recv's sink interface.

A new VOICE_SERVER_UPDATE (a move to another channel, or Discord moving the call to another
voice server) closes the connection and makes a new one to the endpoint it names, as
discord.py does; playing and listening carry on over the switch (the frames of the switch
itself are dropped).

Example::

    vc = await channel.connect(cls=voxgate.discordpy.VoiceClient)
    vc.play(discord.FFmpegPCMAudio("song.mp3"))
    vc.listen(voxgate.discordpy.WaveSink("recordings"))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
import statistics
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import discord
from discord.enums import try_enum

from voxgate.client import (
    ConnectionClosed,
    MemberDisconnected,
    MembersConnected,
    MemberSpeaking,
    SessionRestarted,
    VoiceConnection,
    VoiceConnectionError,
)
from voxgate.client.sources import OpusEncoder
from voxgate.discordpy.playback import Playback, Uplink, encoder_options
from voxgate.discordpy.receive import ListenAfter, Receiver
from voxgate.errors import VoxgateError

log = logging.getLogger(__name__)

#: Close codes with which a voice server says this session is over for this channel: the
#: bot was moved (a VOICE_SERVER_UPDATE follows), kicked, or the channel is gone
#: (a VOICE_STATE_UPDATE without a channel follows). discord.py waits for either.
_DISCONNECTED = (4014, 4022)
#: How long ``disconnect()`` waits for Discord to confirm the bot left (discord.py waits
#: the whole connect timeout), so an immediate new ``connect()`` is not handed the
#: confirmation meant for this one.
_LEAVE_CONFIRMATION_S = 5.0


class ConnectionFailed(VoxgateError, discord.ClientException):
    """Connecting to voice failed in a way retrying did not fix (or ``reconnect=False``)."""


class VoiceClient(discord.VoiceProtocol):
    """A discord.py voice client whose voice connection is voxgate's.

    Use it as ``cls`` of ``connect()``; everything else is discord.py's API. Options go
    through :func:`functools.partial`::

        vc = await channel.connect(cls=partial(VoiceClient, dave=False, ssl=my_context))

    ``ssl`` is the context to trust the voice server with (default: the system's CAs, and
    ``SSL_CERT_FILE``); ``modes`` the transport encryption modes preferred, best first;
    ``dave=False`` joins without end-to-end encryption (a server that requires it refuses).
    """

    channel: Any

    def __init__(
        self,
        client: discord.Client,
        channel: discord.abc.Connectable,
        *,
        ssl: ssl_module.SSLContext | None = None,
        modes: Sequence[str] | None = None,
        dave: bool = True,
    ) -> None:
        super().__init__(client, channel)
        self.loop: asyncio.AbstractEventLoop = client.loop
        self.timeout = 30.0
        self.reconnect = True
        self._ssl = ssl
        self._modes = modes
        self._dave = dave
        self._self_deaf = False
        self._self_mute = False
        self._voice_state: dict[str, Any] | None = None
        self._voice_server: dict[str, Any] | None = None
        self._changed = asyncio.Event()
        self._joining = 0
        self._moving_to: int | None = None
        self._connection: VoiceConnection | None = None
        self._switch_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._uplink = Uplink()
        self._receiver = Receiver(self)
        self._playback: Playback | None = None
        self._encoder: OpusEncoder | None = None
        self._closing = False
        self._expecting_disconnect = False
        self._left = asyncio.Event()
        #: Connections made over this client's life: the first, then one per move,
        #: voice-server change and rejoin.
        self.connections_made = 0

    # --- what discord.py reads -----------------------------------------------------------

    @property
    def guild(self) -> discord.Guild:
        return self.channel.guild  # type: ignore[no-any-return]

    @property
    def user(self) -> discord.ClientUser:
        return self.client.user  # type: ignore[return-value]

    @property
    def connection(self) -> VoiceConnection | None:
        """The voxgate connection carrying the call now (a new one after each move)."""
        return self._connection

    @property
    def session_id(self) -> str | None:
        return None if self._voice_state is None else self._voice_state.get("session_id")

    @property
    def token(self) -> str | None:
        return None if self._voice_server is None else self._voice_server.get("token")

    @property
    def endpoint(self) -> str | None:
        return None if self._connection is None else self._connection.join.endpoint

    @property
    def ssrc(self) -> int | None:
        connection = self._connection
        return None if connection is None or connection.gateway.ready is None else connection.ssrc

    @property
    def mode(self) -> str | None:
        return None if self._connection is None else self._connection.mode

    @property
    def latency(self) -> float:
        """Seconds between the last heartbeat and its ACK (``inf`` before the first)."""
        latencies = self._latencies()
        return latencies[-1] if latencies else float("inf")

    @property
    def average_latency(self) -> float:
        """The mean of the last 20 heartbeat round trips, seconds (``inf`` before any)."""
        latencies = self._latencies()[-20:]
        return statistics.fmean(latencies) if latencies else float("inf")

    def _latencies(self) -> list[float]:
        connection = self._connection
        return [] if connection is None else list(connection.latencies)

    @property
    def privacy_code(self) -> str | None:
        """The call's DAVE voice privacy code (what Discord's clients show; the same for
        every member), or None while the call is not end-to-end encrypted."""
        return None if self._connection is None else self._connection.dave.privacy_code

    @property
    def voice_privacy_code(self) -> str | None:
        """discord.py 2.7's name for :attr:`privacy_code`."""
        return self.privacy_code

    def verification_code(self, user: discord.abc.Snowflake | int | str) -> str | None:
        """``user``'s DAVE verification code in this call (None if not in the group)."""
        if self._connection is None:
            return None
        return self._connection.dave.verification_code(str(getattr(user, "id", user)))

    def is_connected(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.closed.is_set() and not self._closing

    # --- joining, moving, leaving ---------------------------------------------------------

    async def connect(
        self, *, timeout: float, reconnect: bool, self_deaf: bool = False, self_mute: bool = False
    ) -> None:
        """Called by ``channel.connect()``. Raises ``asyncio.TimeoutError`` when not connected
        within ``timeout`` (discord.py then disconnects), :class:`ConnectionFailed` when the
        voice server refused and ``reconnect`` is False or five attempts failed."""
        self.timeout, self.reconnect = timeout, reconnect
        self._self_deaf, self._self_mute = self_deaf, self_mute
        try:
            async with asyncio.timeout(timeout):
                await self._join(attempts=5 if reconnect else 1)
        except BaseException:
            if not self._closing:
                with contextlib.suppress(Exception):
                    await self.disconnect(force=True)
            raise

    async def _join(self, *, attempts: int) -> None:
        """Ask the main gateway to join ``self.channel`` and connect with what it answers."""
        self._joining += 1
        try:
            for attempt in range(attempts):
                self._voice_server = None
                await self.guild.change_voice_state(
                    channel=self.channel, self_mute=self._self_mute, self_deaf=self._self_deaf
                )
                state, server = await self._both_updates(self.channel.id)
                try:
                    connection = await self._open(state, server)
                except VoiceConnectionError as exc:
                    if attempt + 1 == attempts:
                        raise ConnectionFailed(f"could not connect to voice: {exc}") from exc
                    log.warning("voice connection failed (%s); retrying", exc)
                    await asyncio.sleep(1 + attempt * 2.0)
                    continue
                await self._adopt(connection)
                return
        finally:
            self._joining -= 1

    async def _open(self, state: dict[str, Any], server: dict[str, Any]) -> VoiceConnection:
        connection = await VoiceConnection.connect(
            state,
            server,
            # Made now, not at import, so SSL_CERT_FILE set by then is honoured.
            ssl=self._ssl or ssl_module.create_default_context(),
            modes=self._modes,
            dave=self._dave,
            reconnect=self.reconnect,
            timeout=self.timeout,
        )
        self.connections_made += 1
        return connection

    async def _both_updates(self, channel_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The bot's voice state in ``channel_id`` and a voice server with an endpoint."""
        while True:
            state, server = self._voice_state, self._voice_server
            if (
                state is not None
                and str(state.get("channel_id")) == str(channel_id)
                and server is not None
                and server.get("endpoint")
                and server.get("token")
            ):
                return state, server
            await self._changed.wait()

    def _signal(self) -> None:
        self._changed.set()
        self._changed.clear()

    async def _adopt(self, connection: VoiceConnection) -> None:
        """Carry the call on ``connection`` from now on; close the one it replaces."""
        old, self._connection = self._connection, connection
        self._receiver.attach(connection)
        await self._uplink.attach(connection)
        self._spawn(self._pump(connection))
        self._signal()
        if old is not None:
            await old.close()
        log.info(
            "voice connected to %s (channel %s, ssrc %d)",
            connection.join.endpoint,
            connection.join.channel_id,
            connection.ssrc,
        )

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def on_voice_state_update(self, data: Any, /) -> None:
        if data.get("channel_id") is None:
            self._left.set()
            if self._expecting_disconnect:
                self._expecting_disconnect = False
            elif not self._closing:
                log.info("disconnected from voice by Discord")
                await self.disconnect(force=True)
            return
        self._voice_state = dict(data)
        channel_id = int(data["channel_id"])
        if channel_id != getattr(self.channel, "id", None):
            self.channel = self.guild.get_channel(channel_id) or self.channel
        self._signal()

    async def on_voice_server_update(self, data: Any, /) -> None:
        self._voice_server = dict(data)
        self._signal()
        if not data.get("endpoint") or not data.get("token"):
            log.warning("voice server update without an endpoint: waiting for the next one")
            return
        if self._joining or self._closing or self._connection is None:
            return
        join = self._connection.join
        endpoint = str(data["endpoint"]).removeprefix("wss://").rstrip("/")
        if data.get("token") == join.token and endpoint == join.endpoint:
            return  # the same server again (eventual consistency)
        if self._switch_task is not None and not self._switch_task.done():
            self._switch_task.cancel()
        self._switch_task = self._spawn(self._switch())

    async def _switch(self) -> None:
        """A new voice server (or channel): leave the old connection, connect there.

        The old one goes first, as discord.py closes its WebSocket before it connects
        again: the voice session keeps its id (the main gateway's session), and a server
        refuses a second connection of a session it still has (4004).
        """
        target = self._moving_to
        await self._drop_connection()
        try:
            async with asyncio.timeout(self.timeout):
                if target is not None:
                    state, server = await self._both_updates(target)
                else:
                    assert self._voice_state is not None and self._voice_server is not None
                    state, server = self._voice_state, self._voice_server
                connection = await self._open(state, server)
        except (VoiceConnectionError, TimeoutError) as exc:
            log.warning("could not connect to the new voice server: %s", exc)
            self._spawn(self._lost(None))
            return
        await self._adopt(connection)

    async def _drop_connection(self) -> None:
        """Close the current connection (if any) without treating it as lost."""
        old, self._connection = self._connection, None
        if old is not None:
            self._receiver.attach(None)
            await self._uplink.attach(None)
            await old.close()

    async def _pump(self, connection: VoiceConnection) -> None:
        """The connection's events, as discord-ext-voice-recv's dispatches, until it closes."""
        async for event in connection.events():
            match event:
                case MemberSpeaking():
                    self._receiver.users[event.ssrc] = event.user_id
                    self.dispatch(
                        "voice_member_speaking_state",
                        self._member(event.user_id),
                        event.ssrc,
                        try_enum(discord.SpeakingState, event.flags),
                    )
                case MembersConnected():
                    for user_id in event.user_ids:
                        self.dispatch("voice_member_connect", self._member(user_id))
                case MemberDisconnected():
                    ssrc = self._receiver.forget(event.user_id)
                    self.dispatch("voice_member_disconnect", self._member(event.user_id), ssrc)
                case SessionRestarted():
                    log.info(
                        "voice session replaced (ssrc %d -> %d)", event.old_ssrc, event.new_ssrc
                    )
                case ConnectionClosed():
                    if connection is self._connection and not self._closing:
                        await self._lost(event)

    async def _lost(self, closed: ConnectionClosed | None) -> None:
        """The current connection ended by itself (or a switch failed)."""
        self._connection = None
        self._receiver.attach(None)
        await self._uplink.attach(None)
        if closed is not None and closed.code in _DISCONNECTED:
            # Moved (a VOICE_SERVER_UPDATE is coming) or removed (a VOICE_STATE_UPDATE
            # without a channel is): wait for whichever, as discord.py does.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout):
                    while self._connection is None and not self._closing:
                        await self._changed.wait()
            if self._connection is None and not self._closing:
                log.info("voice closed with %s and no new server came: leaving", closed.code)
                await self.disconnect(force=True)
            return
        reason = "the switch failed" if closed is None else f"{closed.code} {closed.reason}"
        if not self.reconnect:
            log.info("voice connection lost (%s); reconnect=False: leaving", reason)
            await self.disconnect(force=True)
            return
        log.warning("voice connection lost (%s); joining again", reason)
        delay = 1.0
        while not self._closing and self._connection is None:
            try:
                async with asyncio.timeout(self.timeout):
                    await self._join(attempts=5)
            except (TimeoutError, ConnectionFailed) as exc:
                log.warning("could not join voice again (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def move_to(
        self, channel: discord.abc.Snowflake | None, *, timeout: float | None = 30.0
    ) -> None:
        """Move to another voice channel (None: disconnect). Returns once connected there,
        or after ``timeout`` with a warning (as discord.py does), the move perhaps ongoing."""
        if channel is None:
            await self.disconnect(force=True)
            return
        if channel.id == getattr(self.channel, "id", None) and self.is_connected():
            return
        self._moving_to = channel.id
        try:
            await self.guild.change_voice_state(channel=channel)
            async with asyncio.timeout(timeout):
                while not self._connected_to(channel.id):
                    await self._changed.wait()
        except TimeoutError:
            log.warning("timed out moving to channel %s in guild %s", channel.id, self.guild.id)
        finally:
            self._moving_to = None

    def _connected_to(self, channel_id: int) -> bool:
        connection = self._connection
        return connection is not None and connection.join.channel_id == str(channel_id)

    async def disconnect(self, *, force: bool = False) -> None:
        """Leave the channel: stop playing and listening, tell Discord, close the connection."""
        if self._closing or (not force and not self.is_connected()):
            return
        self._closing = True
        self._stop_playing()
        self._uplink.closed.set()
        self._expecting_disconnect = not self._left.is_set()
        was_in_channel = self._voice_state is not None and not self._left.is_set()
        with contextlib.suppress(Exception):
            await self.guild.change_voice_state(channel=None)
        connection, self._connection = self._connection, None
        runner = self._receiver.last_runner
        self._receiver.close()
        if connection is not None:
            await connection.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._signal()
        if runner is not None:
            # The sink has had everything and its cleanup() has run once this returns.
            await asyncio.to_thread(runner.join, _LEAVE_CONFIRMATION_S)
        if was_in_channel:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._left.wait(), timeout=min(self.timeout, _LEAVE_CONFIRMATION_S)
                )
        self.cleanup()

    # --- playing (discord.py's API) ------------------------------------------------------

    def play(
        self,
        source: discord.AudioSource,
        *,
        after: Callable[[Exception | None], Any] | None = None,
        application: str = "audio",
        bitrate: int = 128,
        fec: bool = True,
        expected_packet_loss: float = 0.15,
        bandwidth: str = "full",
        signal_type: str = "auto",
    ) -> None:
        """Play a discord.py ``AudioSource`` (``FFmpegPCMAudio``, ``FFmpegOpusAudio``,
        ``PCMVolumeTransformer``, your own); ``after(error)`` runs in a worker thread when
        it ends. PCM is encoded with PyAV's libopus: no ``discord.opus.load_opus`` needed.

        Raises ``discord.ClientException`` when not connected or already playing,
        ``TypeError`` for something that is not an ``AudioSource``, ``ValueError`` for a
        bad encoder argument.
        """
        if not self.is_connected():
            raise discord.ClientException("Not connected to voice.")
        if self.is_playing():
            raise discord.ClientException("Already playing audio.")
        if not isinstance(source, discord.AudioSource):
            raise TypeError(f"source must be an AudioSource not {source.__class__.__name__}")
        options = encoder_options(
            application=application,
            fec=fec,
            expected_packet_loss=expected_packet_loss,
            bandwidth=bandwidth,
        )
        self._stop_playing()
        self._playback = Playback(
            source,
            self._uplink,
            after=after,
            bitrate_kbps=bitrate,
            options=options,
            timeout=self.timeout,
        )
        self._playback.start()

    def is_playing(self) -> bool:
        return self._playback is not None and self._playback.is_playing()

    def is_paused(self) -> bool:
        return self._playback is not None and self._playback.is_paused()

    def pause(self) -> None:
        if self._playback is not None:
            self._playback.pause()

    def resume(self) -> None:
        if self._playback is not None:
            self._playback.resume()

    def stop(self) -> None:
        """Stop playing (discord.py's meaning; :meth:`stop_listening` ends receiving)."""
        self._stop_playing()

    stop_playing = stop

    def _stop_playing(self) -> None:
        playback, self._playback = self._playback, None
        if playback is not None:
            playback.stop()

    @property
    def source(self) -> discord.AudioSource | None:
        return None if self._playback is None else self._playback.source

    @source.setter
    def source(self, value: discord.AudioSource) -> None:
        if not isinstance(value, discord.AudioSource):
            raise TypeError(f"expected AudioSource not {value.__class__.__name__}.")
        if self._playback is None:
            raise ValueError("Not playing anything.")
        self._playback.source = value

    def send_audio_packet(self, data: bytes, *, encode: bool = True) -> None:
        """Send one 20 ms frame now: PCM (``encode=True``) or an Opus packet."""
        if not self.is_connected():
            raise discord.ClientException("Not connected to voice.")
        if not encode:
            self._uplink.send_opus(data)
            return
        if self._encoder is None:
            self._encoder = OpusEncoder(128_000)
        for packet in self._encoder.encode(data):
            self._uplink.send_opus(packet)

    # --- receiving -----------------------------------------------------------------------

    def listen(self, sink: Any, *, after: ListenAfter | None = None) -> None:
        """Receive into ``sink``: a :class:`voxgate.discordpy.AudioSink`, or a sink written
        for discord-ext-voice-recv (its ``AudioSink`` subclasses work unchanged).
        ``after(error)`` runs in the sink's thread once listening stops.

        Raises ``discord.ClientException`` when not connected or already listening.
        """
        if not self.is_connected():
            raise discord.ClientException("Not connected to voice.")
        if not all(callable(getattr(sink, name, None)) for name in ("write", "wants_opus")):
            raise TypeError(f"sink must be an AudioSink not {sink.__class__.__name__}")
        if self.is_listening():
            raise discord.ClientException("Already receiving audio.")
        self._receiver.listen(sink, after)

    def is_listening(self) -> bool:
        return self._receiver.runner is not None

    def stop_listening(self) -> None:
        self._receiver.stop_listening()

    @property
    def sink(self) -> Any:
        runner = self._receiver.runner
        return None if runner is None else runner.sink

    async def receive(self) -> AsyncIterator[tuple[Any, bytes]]:
        """``(member, pcm)`` for each 20 ms frame of each speaker (s16le 48 kHz stereo),
        until the client disconnects::

            async for member, pcm in vc.receive():
                ...
        """
        async for item in self._receiver.frames():
            yield item

    def get_speaking(self, member: discord.abc.Snowflake) -> bool | None:
        """Whether ``member`` is speaking now, from its packets (None: never heard)."""
        ssrc = self._receiver.ssrc_of(str(member.id))
        return None if ssrc is None else self._receiver.speaking.get(ssrc)

    def _get_id_from_ssrc(self, ssrc: int) -> int | None:
        user_id = self._receiver.user_id_of(ssrc)
        return None if user_id is None else int(user_id)

    def _get_ssrc_from_id(self, user_id: int) -> int | None:
        return self._receiver.ssrc_of(str(user_id))

    # --- events --------------------------------------------------------------------------

    def dispatch(self, event: str, /, *args: Any) -> None:
        """Send a voice event to the sink's listeners and to the bot (``on_<event>``)."""
        self._receiver.dispatch(event, args)
        self.client.dispatch(event, *args)

    def _member(self, user_id: str) -> Any:
        """The member behind a user id: cached member, cached user, or a bare Object."""
        snowflake = int(user_id)
        guild = self.guild
        member = guild.get_member(snowflake) if guild is not None else None
        return member or self.client.get_user(snowflake) or discord.Object(id=snowflake)
