"""What one voice server node is told at start: where to listen, what to offer, how long to wait.

``voxgate serve`` builds a :class:`ServerConfig` from its flags; the node, the gateway and
the sessions only ever read it, so tests construct one directly with port 0.
"""

from __future__ import annotations

import enum
import ssl
from dataclasses import dataclass

from voxgate.protocol.opcodes import DEFAULT_MODES, EncryptionMode

# Discord's own voice servers say 13750 ms in Hello; discord.py caps what it uses at 5 s anyway.
DEFAULT_HEARTBEAT_INTERVAL_MS = 13750.0
# Beyond an Opus frame (20 ms) a tick bunches a sender's packets up for the receivers'
# jitter buffers to smooth out; past a second it is a mistake (seconds given for ms).
MAX_MEDIA_TICK_MS = 1000.0


class DavePolicy(enum.StrEnum):
    """Whether calls on the node are end-to-end encrypted (DAVE.md §1, §4.5)."""

    #: E2EE whenever every member of the call can do it; a downgrade transition otherwise.
    PREFERRED = "preferred"
    #: A client that cannot do DAVE is closed with 4017, as Discord does since March 2026.
    REQUIRED = "required"
    #: ``dave_protocol_version: 0`` for everyone: transport encryption only.
    OFF = "off"


@dataclass(frozen=True)
class ServerConfig:
    """One node's listening addresses and protocol parameters."""

    host: str = "127.0.0.1"
    port: int = 8443
    udp_port: int | None = None
    public_ip: str | None = None
    # The host name clients reach the gateway at, in the endpoint joins carry (a cluster
    # node behind a name or NAT); default: the public IP.
    public_host: str | None = None
    modes: tuple[EncryptionMode, ...] = DEFAULT_MODES
    heartbeat_interval_ms: float = DEFAULT_HEARTBEAT_INTERVAL_MS
    # None serves plain ws (``--insecure``); real clients insist on wss.
    ssl_context: ssl.SSLContext | None = None
    # How long a session whose WebSocket dropped keeps its ssrc, key and UDP flow for a Resume.
    resume_grace_s: float = 45.0
    # Packets a second one session may have forwarded: three times Opus's 50, so that a
    # client catching up after a stall is not cut, while a flood is.
    packet_rate_cap: float = 150.0
    # A described member that sends no datagram for this long is reported (log, metric).
    media_silence_s: float = 60.0
    # A connection that has not sent its WebSocket upgrade request by then is closed (the
    # TLS handshake before it is bounded by asyncio's own 60 s).
    handshake_timeout_s: float = 10.0
    dave: DavePolicy = DavePolicy.PREFERRED
    # The media path: "auto" runs voxgate._fastpath (C) when it is built, "python" the pure
    # Python one, "native" insists on C (server/fastpath.py).
    media_path: str = "auto"
    # While the C path is busy it reads its socket this often instead of at every datagram
    # (0: at every datagram). Woken for each datagram, a node spent a fifth of its CPU
    # switching to and from its thread; a packet waits at most this long more. LiveKit
    # batches its sends the same way (``batch_io.max_flush_interval``, 2 ms).
    media_tick_ms: float = 0.5

    def __post_init__(self) -> None:
        if not self.modes:
            raise ValueError("at least one encryption mode must be offered")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError("an encryption mode is listed twice")
        if self.heartbeat_interval_ms <= 0:
            raise ValueError("heartbeat interval must be positive")
        if self.media_path not in ("auto", "native", "python"):
            raise ValueError("media_path is auto, native or python")
        if not 0 <= self.media_tick_ms <= MAX_MEDIA_TICK_MS:
            raise ValueError(f"media tick must be 0 to {MAX_MEDIA_TICK_MS:g} ms")

    @property
    def effective_udp_port(self) -> int:
        """The UDP port: the WebSocket's port number unless told otherwise."""
        return self.port if self.udp_port is None else self.udp_port

    @property
    def effective_public_ip(self) -> str:
        """The address put in Ready for clients to send media to."""
        if self.public_ip:
            return self.public_ip
        # A wildcard bind is not an address a client can send to; loopback at least works
        # on this machine, and --public-ip says what to use beyond it.
        return "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host

    @property
    def endpoint(self) -> str:
        """``host:port`` of the WebSocket, as VOICE_SERVER_UPDATE carries it."""
        return f"{self.public_host or self.effective_public_ip}:{self.port}"
