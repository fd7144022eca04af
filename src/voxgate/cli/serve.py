"""``voxgate serve`` and ``voxgate token``: run a voice server node and mint join events."""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import signal
import sys
from pathlib import Path

import typer

from voxgate.protocol.opcodes import DEFAULT_MODES, EncryptionMode
from voxgate.server import datadir
from voxgate.server.auth import DEFAULT_TTL_S, TokenAuthority
from voxgate.server.config import DEFAULT_HEARTBEAT_INTERVAL_MS, ServerConfig

log = logging.getLogger("voxgate.serve")

DEFAULT_PORT = 8443
DEFAULT_ADMIN_PORT = 8444


def _fail(message: str) -> typer.Exit:
    typer.echo(f"voxgate: {message}", err=True)
    return typer.Exit(1)


def _parse_modes(value: str | None) -> tuple[EncryptionMode, ...]:
    if not value:
        return DEFAULT_MODES
    modes = []
    for name in (part.strip() for part in value.split(",")):
        try:
            modes.append(EncryptionMode(name))
        except ValueError:
            known = ", ".join(mode.value for mode in EncryptionMode)
            raise _fail(f"unknown encryption mode {name!r} (known: {known})") from None
    if len(set(modes)) != len(modes):
        raise _fail("an encryption mode is listed twice in --modes")
    return tuple(modes)


def _secret(data_dir: Path, secret: str | None) -> bytes:
    if secret is None:
        return datadir.token_secret(data_dir)
    if len(secret.encode()) < 32:
        raise _fail("--secret / VOXGATE_SECRET must be at least 32 bytes")
    return secret.encode()


def _self_command() -> str:
    """How the user who started this process would run voxgate again."""
    argv0 = sys.argv[0]
    if Path(argv0).name == "voxgate":
        return shlex.quote(argv0)
    return f"{shlex.quote(sys.executable)} -m voxgate"


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(
    config: ServerConfig,
    authority: TokenAuthority,
    data_dir: Path,
    admin_host: str,
    admin_port: int,
    ca_path: Path | None,
) -> None:
    # Imported here so `voxgate token` and `--version` never pay for the server's imports.
    from aiohttp import web

    from voxgate.server.admin import admin_app
    from voxgate.server.node import VoiceNode

    node = VoiceNode(config, authority)
    try:
        await node.start()
    except OSError as exc:
        raise _fail(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    endpoint = f"{config.effective_public_ip}:{node.port}"
    runner = web.AppRunner(
        admin_app(node, authority, datadir.admin_key(data_dir), endpoint), access_log=None
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, admin_host, admin_port).start()
    except OSError as exc:
        await node.close()
        await runner.cleanup()
        raise _fail(f"cannot listen on {admin_host}:{admin_port}: {exc.strerror}") from None
    # Port 0 asks for any free port: report the one bound.
    bound = [address for address in runner.addresses if isinstance(address, tuple)]
    admin_url = f"http://{admin_host}:{bound[0][1] if bound else admin_port}"
    datadir.write_node_file(data_dir, endpoint, admin_url)

    scheme = "ws" if config.ssl_context is None else "wss"
    join = (
        f"{_self_command()} token --data-dir {shlex.quote(str(data_dir))} "
        "--guild 1 --channel 1 --user 1"
    )
    trust = f"ca={ca_path}" if ca_path is not None else "ca=(your certificate's issuer)"
    if config.ssl_context is None:
        trust = "plain ws (--insecure)"
    typer.echo(
        f"voxgate ready {scheme}://{endpoint}/?v=8 udp={node.udp_port} {trust} "
        f"admin={admin_url} join: {join}",
        color=False,
    )
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await node.close()
        await runner.cleanup()


def serve(
    host: str = typer.Option("127.0.0.1", help="Address the gateway and media socket bind."),
    port: int = typer.Option(DEFAULT_PORT, help="WebSocket (wss) port."),
    udp_port: int | None = typer.Option(None, help="UDP media port (default: same as --port)."),
    data_dir: Path | None = typer.Option(
        None, help="Secret, admin key and TLS files (default: ~/.local/share/voxgate)."
    ),
    tls_cert: Path | None = typer.Option(None, help="PEM certificate chain (with --tls-key)."),
    tls_key: Path | None = typer.Option(None, help="PEM private key of --tls-cert."),
    insecure: bool = typer.Option(False, help="Serve plain ws://, for local debugging only."),
    public_ip: str | None = typer.Option(
        None, help="IP clients send media to, put in Ready (default: --host)."
    ),
    modes: str | None = typer.Option(
        None, help="Comma-separated encryption modes offered, in preference order."
    ),
    heartbeat_interval: float = typer.Option(
        DEFAULT_HEARTBEAT_INTERVAL_MS, help="Heartbeat interval sent in Hello, ms."
    ),
    admin_host: str = typer.Option("127.0.0.1", help="Admin HTTP address."),
    admin_port: int = typer.Option(DEFAULT_ADMIN_PORT, help="Admin HTTP port."),
    secret: str | None = typer.Option(
        None, envvar="VOXGATE_SECRET", show_envvar=True, help="Token signing secret."
    ),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Run one voice server node: the wss gateway, the UDP media plane and the admin API."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    data_dir = (data_dir or datadir.default_data_dir()).expanduser().absolute()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f"cannot create data dir {data_dir}: {exc.strerror}") from None
    offered = _parse_modes(modes)
    authority = TokenAuthority(_secret(data_dir, secret))

    ca_path: Path | None = None
    ssl_context = None
    if insecure:
        if tls_cert or tls_key:
            raise _fail("--insecure and --tls-cert/--tls-key exclude each other")
    elif tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise _fail("--tls-cert and --tls-key go together")
        from voxgate.server.tls import TlsFiles

        try:
            ssl_context = TlsFiles(tls_cert, tls_key, None).server_context()
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot load --tls-cert/--tls-key: {exc}") from None
    else:
        from voxgate.server.tls import ensure_self_signed

        names = [name for name in (host, public_ip) if name and name not in ("0.0.0.0", "::")]
        files = ensure_self_signed(data_dir, names)
        ssl_context = files.server_context()
        ca_path = files.ca

    try:
        config = ServerConfig(
            host=host,
            port=port,
            udp_port=udp_port,
            public_ip=public_ip,
            modes=offered,
            heartbeat_interval_ms=heartbeat_interval,
            ssl_context=ssl_context,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    _install_uvloop()
    asyncio.run(_serve(config, authority, data_dir, admin_host, admin_port, ca_path))


def token(
    guild: str = typer.Option(..., help="Guild (server) id."),
    channel: str = typer.Option(..., help="Voice channel id."),
    user: str = typer.Option(..., help="User id joining."),
    session_id: str | None = typer.Option(None, help="Voice session id (default: random)."),
    data_dir: Path | None = typer.Option(
        None, help="The node's data dir (default: ~/.local/share/voxgate)."
    ),
    endpoint: str | None = typer.Option(
        None, help="host:port of the node (default: where the data dir's node last listened)."
    ),
    ttl: float = typer.Option(DEFAULT_TTL_S, help="Seconds the token may be used to Identify."),
    secret: str | None = typer.Option(None, envvar="VOXGATE_SECRET", show_envvar=True),
) -> None:
    """Print the VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE a client needs to join, as JSON."""
    from voxgate.server.admin import join_events

    data_dir = (data_dir or datadir.default_data_dir()).expanduser().absolute()
    if endpoint is None:
        recorded = datadir.read_node_file(data_dir) or {}
        endpoint = recorded.get("endpoint", f"127.0.0.1:{DEFAULT_PORT}")
    if ttl <= 0:
        raise _fail("--ttl must be positive")
    authority = TokenAuthority(_secret(data_dir, secret), ttl_s=ttl)
    try:
        minted, grant = authority.mint(guild, channel, user, session_id)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(join_events(minted, grant, endpoint)))


def register(app: typer.Typer) -> None:
    """Add the server's commands to ``app``."""
    app.command()(serve)
    app.command()(token)
