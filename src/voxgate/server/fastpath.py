"""Which media path a node runs: ``voxgate._fastpath`` (C) when it is built, else Python.

The C extension (``src/voxgate/_fastpath.c``) replaces, for the two modes real clients use
(``aead_aes256_gcm_rtpsize`` and ``aead_xchacha20_poly1305_rtpsize``), what runs per packet
in Python: the cipher's ``open_split``/``seal_split``, the replay window, the rate cap, and
:meth:`MediaEndpoint.datagram_received` + :meth:`Router.forward` for the common case, which
it does with one ``recvmmsg`` per batch and one ``sendmmsg`` for every receiver. It keeps
each sender's receivers (their ciphers and addresses) between packets, and reads them
again whenever ``Router.generation`` changes (``Router.routes_changed``). Nothing
exists only in C: each piece has its Python original, which runs when the extension is
absent, and which the tests hold it to byte for byte. Anything the C path does not do
itself (other datagrams, other modes, every drop, a DAVE-filtered call) it hands back to
:meth:`MediaEndpoint.datagram_received` untouched.

Chosen at import, as websockets chooses ``speedups``: ``VOXGATE_NO_EXTENSIONS=1`` forces
Python; ``VOXGATE_REQUIRE_EXTENSIONS=1`` (CI) turns a missing or broken build into an
ImportError instead of a quiet fallback. A node may still ask for Python
(``ServerConfig.media_path``), which is how the tests run every relay test on both paths.
The extension seals AES-256-GCM with AES-NI and PCLMULQDQ itself where the CPU has them;
``VOXGATE_AES_GCM=openssl`` makes it use OpenSSL's, as it does on other CPUs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from voxgate.protocol.crypto import Aes256GcmRtpsize, TransportCipher, XChaCha20Poly1305Rtpsize
from voxgate.protocol.opcodes import EncryptionMode

if TYPE_CHECKING:
    from voxgate.server.media import MediaEndpoint
    from voxgate.server.session import VoiceSession

log = logging.getLogger(__name__)


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _load() -> tuple[ModuleType | None, str]:
    if _flag("VOXGATE_NO_EXTENSIONS"):
        return None, "VOXGATE_NO_EXTENSIONS=1"
    try:
        from voxgate import _fastpath  # type: ignore[attr-defined]
    except ImportError as exc:
        if _flag("VOXGATE_REQUIRE_EXTENSIONS"):
            raise ImportError(
                f"VOXGATE_REQUIRE_EXTENSIONS=1 but voxgate._fastpath does not import ({exc}); "
                "reinstall with a C compiler and the OpenSSL headers (make dev)"
            ) from exc
        return None, f"voxgate._fastpath is not built ({exc})"
    return _fastpath, ""


def _choose_aes_gcm(module: ModuleType) -> None:
    wanted = os.environ.get("VOXGATE_AES_GCM", "")
    if wanted:
        try:
            module._aes_gcm(wanted)
        except ValueError as exc:
            raise ImportError(f"VOXGATE_AES_GCM={wanted}: {exc}") from exc


#: The extension module, or None.
native, why_python = _load()
if native is not None:
    _choose_aes_gcm(native)
#: What a node runs by default: "native" or "python".
IMPLEMENTATION = "native" if native is not None else "python"

#: The modes the C path opens and seals; the xsalsa20 ones stay in Python.
NATIVE_MODES = frozenset(
    {EncryptionMode.AEAD_AES256_GCM_RTPSIZE, EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE}
)

_CIPHERS: dict[EncryptionMode, type[Any]] = {}
if native is not None:
    _AES, _XCHACHA = native.AES256_GCM, native.XCHACHA20_POLY1305

    class NativeAes256GcmRtpsize(native.Cipher, Aes256GcmRtpsize):  # type: ignore[misc,name-defined]
        """:class:`Aes256GcmRtpsize` whose ``open_split``, ``seal_split`` and nonce are C's."""

        # Python's inline seal would bypass C's seal_split; call it for each receiver.
        seal_each = staticmethod(TransportCipher.seal_each)

        def __init__(self, secret_key: bytes, *, nonce: int = 0) -> None:
            super().__init__(secret_key, nonce=nonce)
            self._native_setup(_AES, self.secret_key)

    class NativeXChaCha20Poly1305Rtpsize(native.Cipher, XChaCha20Poly1305Rtpsize):  # type: ignore[misc,name-defined]
        """:class:`XChaCha20Poly1305Rtpsize` whose ``open_split``, ``seal_split`` and nonce
        are C's (HChaCha20 + OpenSSL's ChaCha20-Poly1305)."""

        seal_each = staticmethod(TransportCipher.seal_each)

        def __init__(self, secret_key: bytes, *, nonce: int = 0) -> None:
            super().__init__(secret_key, nonce=nonce)
            self._native_setup(_XCHACHA, self.secret_key)

    _CIPHERS = {
        EncryptionMode.AEAD_AES256_GCM_RTPSIZE: NativeAes256GcmRtpsize,
        EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE: NativeXChaCha20Poly1305Rtpsize,
    }


def choose(requested: str) -> tuple[str, str]:
    """The path a node asking for ``requested`` ("auto", "native" or "python") runs, and why.

    Raises :class:`RuntimeError` when "native" is asked and the extension is not there.
    """
    if requested == "python":
        return "python", "asked for"
    if native is None:
        if requested == "native":
            raise RuntimeError(f"the native media path was asked for: {why_python}")
        return "python", why_python
    aes_gcm = "AES-NI" if native._aes_gcm() == "x86" else "OpenSSL"
    chacha20 = "AVX-512VL" if native._chacha20() == "avx512" else "generic"
    return "native", (
        f"voxgate._fastpath: recvmmsg, sendmmsg, AES-256-GCM ({aes_gcm}) and XChaCha20"
        f" ({chacha20}) in C"
    )


def describe(session: VoiceSession) -> None:
    """Give a just-described ``session`` the C state its mode has (cipher with its nonce,
    replay window, token bucket), so both paths share one counter, window and bucket."""
    assert native is not None
    cipher = session.cipher
    cls = _CIPHERS.get(cipher.mode) if cipher is not None else None
    if cipher is None or cls is None:
        return
    session.cipher = cls(cipher.secret_key, nonce=cipher.nonce)
    session.replay = native.ReplayWindow()
    rate = session.rate
    if not isinstance(rate, native.RateLimit):
        session.rate = native.RateLimit(rate.rate, rate.burst, rate._last, tokens=rate._tokens)


async def open_media(
    factory: Callable[[], MediaEndpoint],
    sock: socket.socket,
    requested: str,
    tick_s: float = 0.0,
) -> tuple[asyncio.DatagramTransport, MediaEndpoint]:
    """The node's media endpoint on the bound ``sock``, on the path ``requested`` gets
    (:func:`choose`): asyncio's datagram transport, or a :class:`NativeTransport` reading
    every ``tick_s`` while busy.

    Logs which path runs; ``router.media_path`` says it to ``/metrics``.
    """
    path, why = choose(requested)
    if path == "native" and sock.family != socket.AF_INET:
        if requested == "native":
            raise RuntimeError("the native media path reads IPv4 sockets only")
        path, why = "python", "the native media path reads IPv4 sockets only"
    loop = asyncio.get_running_loop()
    transport: asyncio.DatagramTransport
    if path == "python":
        transport, endpoint = await loop.create_datagram_endpoint(factory, sock=sock)
    else:
        endpoint = factory()
        endpoint.router.on_described = describe
        transport = NativeTransport(loop, sock, endpoint, tick_s)
        if tick_s:
            why += f"; while busy it reads every {tick_s * 1000:g} ms"
    endpoint.router.media_path = path
    log.info("media path: %s (%s)", path, why)
    return transport, endpoint


class NativeTransport(asyncio.DatagramTransport):
    """The media socket with ``voxgate._fastpath`` reading it.

    ``Relay.pump`` runs whenever the socket is readable (``add_reader``) and hands what it
    does not relay to the endpoint's ``datagram_received``; what Python sends (discovery
    answers, packets it relays) goes out through :meth:`sendto`. uvloop's UDP transport
    cannot pause its reading, hence a transport of our own rather than one beside it.

    With ``tick_s``, a pump that read something is followed by the next one ``tick_s``
    later, on the relay's timer, instead of at the next datagram; the first pump that finds
    nothing gives the socket back to ``add_reader``. A busy node is then woken once a tick
    for every datagram that came meanwhile, as a network card's driver polls under load
    (Linux's NAPI), rather than once a datagram: at 150 channels of 10 that took the C
    path's CPU per packet down by a sixth (0.5 ms). An idle node still relays its first
    datagram at once. The relay's timer is a timerfd because the event loop's timers round
    to the millisecond.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        endpoint: MediaEndpoint,
        tick_s: float = 0.0,
    ) -> None:
        from voxgate.server.router import Router

        super().__init__({"socket": sock, "sockname": sock.getsockname()})
        assert native is not None
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._endpoint = endpoint
        self._closing = False
        self._tick_s = tick_s
        router = endpoint.router
        self.relay: Any = native.Relay(sock.fileno(), router, endpoint.stats, Router.forward)
        router.sync_native = self.relay.sync
        endpoint.connection_made(self)
        loop.add_reader(sock.fileno(), self._readable)
        loop.add_reader(self.relay.timer_fd, self._tick)

    def _readable(self) -> None:
        if self._pump() and self._tick_s and not self._closing:
            self._loop.remove_reader(self._sock.fileno())
            self.relay.arm(self._tick_s)

    def _tick(self) -> None:
        if self._closing:
            return
        read = 0
        try:
            read = self._pump()
        finally:
            # Even after a pump that raised: a node that stopped reading would be lost.
            # Both arm()s also clear the timer that fired, as the loop's reader must see.
            if not self._closing:
                self.relay.arm(self._tick_s if read else 0)
                if not read:
                    self._loop.add_reader(self._sock.fileno(), self._readable)

    def _pump(self) -> int:
        """One ``Relay.pump``, what it hands back given to Python; the datagrams it read."""
        handed = self.relay.pump()
        if handed:
            received = self._endpoint.datagram_received
            for data, addr in handed:
                received(data, addr)
        return self.relay.read if self.relay is not None else 0

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        try:
            self._sock.sendto(data, addr)
        except OSError as exc:
            # A full socket buffer or an ICMP error pending: counted, as the C path counts.
            self._endpoint.error_received(exc)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._sock.fileno())
        self._loop.remove_reader(self.relay.timer_fd)
        # What the members' sessions have not been told yet (the C path adds their counters
        # every quarter second), then the relay: it holds the router, no cycle outlives it.
        try:
            self.relay.sync()
        except Exception:  # the counters are lost, the socket still closes
            log.exception("the C path's last counters could not be added")
        self.relay = None
        self._endpoint.router.sync_native = None
        self._sock.close()
        self._loop.call_soon(self._endpoint.connection_lost, None)

    def abort(self) -> None:
        self.close()
