"""The self-signed CA and node certificate: trusted through the CA, kept across runs."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from voxgate.server.tls import ensure_self_signed


async def _handshake(server_context: ssl.SSLContext, ca: Path, server_hostname: str) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cafile=str(ca))
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname=server_hostname
        )
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_client_trusting_the_ca_completes_a_handshake(tmp_path: Path) -> None:
    files = ensure_self_signed(tmp_path, ["127.0.0.1"])
    assert files.ca is not None
    await _handshake(files.server_context(), files.ca, "127.0.0.1")
    await _handshake(files.server_context(), files.ca, "localhost")


async def test_client_without_the_ca_refuses_the_certificate(tmp_path: Path) -> None:
    files = ensure_self_signed(tmp_path, ["127.0.0.1"])
    other = ensure_self_signed(tmp_path / "other", ["127.0.0.1"])
    assert other.ca is not None
    try:
        await _handshake(files.server_context(), other.ca, "127.0.0.1")
    except ssl.SSLCertVerificationError:
        return
    raise AssertionError("a certificate from another CA was trusted")


def test_second_run_reuses_ca_and_certificate(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path, ["127.0.0.1"])
    ca, cert = first.ca.read_bytes(), first.cert.read_bytes()  # type: ignore[union-attr]
    second = ensure_self_signed(tmp_path, ["127.0.0.1"])
    assert second.ca.read_bytes() == ca  # type: ignore[union-attr]
    assert second.cert.read_bytes() == cert


async def test_new_name_reissues_the_certificate_under_the_same_ca(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path, ["127.0.0.1"])
    ca = first.ca.read_bytes()  # type: ignore[union-attr]
    cert = first.cert.read_bytes()
    second = ensure_self_signed(tmp_path, ["voice.example.test"])
    assert second.ca.read_bytes() == ca  # type: ignore[union-attr]
    assert second.cert.read_bytes() != cert
    await _handshake(second.server_context(), second.ca, "voice.example.test")  # type: ignore[arg-type]


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    files = ensure_self_signed(tmp_path, ["127.0.0.1"])
    assert files.key.stat().st_mode & 0o077 == 0
    assert (tmp_path / "tls" / "ca-key.pem").stat().st_mode & 0o077 == 0
