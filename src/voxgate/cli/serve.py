"""``voxgate serve`` and ``voxgate token``: run a voice server node and mint join events."""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from voxgate.protocol.opcodes import DEFAULT_MODES, EncryptionMode
from voxgate.server import datadir
from voxgate.server.auth import DEFAULT_TTL_S, TokenAuthority
from voxgate.server.config import DEFAULT_HEARTBEAT_INTERVAL_MS, DavePolicy, ServerConfig

if TYPE_CHECKING:
    from aiohttp import web

    from voxgate.recording import Recorder
    from voxgate.server.workers import WorkerSpec

log = logging.getLogger("voxgate.serve")

DEFAULT_PORT = 8443
DEFAULT_ADMIN_PORT = 8444
#: Kept in step with ``voxgate.server.workers.MAX_WORKERS`` (not imported: `voxgate token`
#: must stay light).
MAX_WORKERS = 64


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


async def _serve(
    config: ServerConfig,
    authority: TokenAuthority,
    data_dir: Path,
    admin_host: str,
    admin_port: int,
    ca_path: Path | None,
    admin_key: str,
    cluster: tuple[str, str] | None = None,
) -> None:
    """One node; ``cluster`` (Redis URL, node id) makes it a node of that cluster."""
    # Imported here so `voxgate token` and `--version` never pay for the server's imports.
    from voxgate.server.admin import CONSOLE, admin_app
    from voxgate.server.node import VoiceNode, freeze_startup_objects

    node = VoiceNode(config, authority)
    try:
        await node.start()
    except OSError as exc:
        raise _fail(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    endpoint = node.endpoint
    agent = None
    if cluster is not None:
        from voxgate.server.cluster import ClusterAgent, ClusterError
        from voxgate.server.redis_placement import RedisPlacementStore

        agent = ClusterAgent(node, RedisPlacementStore(cluster[0]), cluster[1], authority.ttl_s)
        try:
            await agent.start()
        except ClusterError as exc:
            await agent.close()
            await node.close()
            raise _fail(str(exc)) from None

    recorder = _recorder(authority, endpoint, data_dir, ca_path)

    async def close() -> None:
        await recorder.close()
        if agent is not None:
            await agent.close()
        await node.close()

    def ready(admin_url: str) -> str:
        dashboard_url = f"{admin_url}/login?once={app[CONSOLE].issue_login_token()}"
        datadir.write_node_file(
            data_dir,
            endpoint,
            admin_url,
            cluster=None if cluster is None else cluster[1],
            dashboard_url=dashboard_url,
        )
        if agent is not None:  # the other nodes' consoles read this node's channels there
            agent.admin_url = admin_url
        freeze_startup_objects()
        joined = "" if cluster is None else f" (node {cluster[1]} of the cluster on {cluster[0]})"
        line = _ready_line(config, ca_path, data_dir, endpoint, node.udp_port, joined, admin_url)
        return f"{line} dashboard: {dashboard_url}"

    app = admin_app(node, authority, admin_key, endpoint, cluster=agent, recordings=recorder)
    await _admin_until_signal(app, admin_host, admin_port, close, ready)


def _recorder(
    authority: TokenAuthority, endpoint: str, data_dir: Path, ca_path: Path | None
) -> Recorder:
    """The node's recorder: a voxgate client that joins this node's calls to record them,
    writing into the data dir's ``recordings/``."""
    import ssl

    from voxgate.recording import Recorder
    from voxgate.server.admin import join_events

    def mint(guild_id: str, channel_id: str, user_id: str) -> dict[str, Any]:
        token, grant = authority.mint(guild_id, channel_id, user_id)
        return join_events(token, grant, endpoint)

    context = ssl.create_default_context(cafile=str(ca_path)) if ca_path is not None else None
    return Recorder(data_dir / "recordings", mint, ssl_context=context)


async def _serve_workers(
    specs: list[WorkerSpec],
    config: ServerConfig,
    authority: TokenAuthority,
    data_dir: Path,
    admin_host: str,
    admin_port: int,
    ca_path: Path | None,
    admin_key: str,
    cluster: tuple[str, str] | None = None,
) -> None:
    """The supervisor of ``specs``; with ``cluster`` (Redis URL, node id) its workers are
    nodes ``<id>-<i>`` of that cluster and its joins place on the whole cluster."""
    from voxgate.server.admin import CONSOLE, admin_app
    from voxgate.server.workers import Supervisor, WorkerStartError

    supervisor = Supervisor(specs, authority, None if cluster is None else cluster[0])
    try:
        await supervisor.start()
    except WorkerStartError as exc:
        raise _fail(str(exc)) from None
    first = supervisor.handles[0]

    def ready(admin_url: str) -> str:
        endpoints = [handle.endpoint for handle in supervisor.handles]
        dashboard_url = f"{admin_url}/login?once={app[CONSOLE].issue_login_token()}"
        datadir.write_node_file(
            data_dir,
            first.endpoint,
            admin_url,
            endpoints,
            cluster=None if cluster is None else cluster[1],
            dashboard_url=dashboard_url,
        )
        listed = ", ".join(f"{h.endpoint} udp {h.udp_port}" for h in supervisor.handles)
        workers = f" (+{len(specs)} workers: {listed})"
        if cluster is not None:
            workers += f" (nodes {cluster[1]}-0..{len(specs) - 1} of the cluster on {cluster[0]})"
        line = _ready_line(
            config, ca_path, data_dir, first.endpoint, first.udp_port, workers, admin_url
        )
        return f"{line} dashboard: {dashboard_url}"

    app = admin_app(
        supervisor, authority, admin_key, first.endpoint, workers=supervisor
    )
    await _admin_until_signal(app, admin_host, admin_port, supervisor.close, ready)


async def _admin_until_signal(
    app: web.Application,
    admin_host: str,
    admin_port: int,
    close_node: Callable[[], Awaitable[None]],
    ready: Callable[[str], str],
) -> None:
    """Serve the admin API in front of a started node (or supervisor) until SIGINT or
    SIGTERM, then close both. ``ready(admin_url)`` records the node and says the ready line.
    """
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, admin_host, admin_port).start()
    except OSError as exc:
        await close_node()
        await runner.cleanup()
        raise _fail(f"cannot listen on {admin_host}:{admin_port}: {exc.strerror}") from None
    # Port 0 asks for any free port: report the one bound.
    bound = [address for address in runner.addresses if isinstance(address, tuple)]
    typer.echo(ready(f"http://{admin_host}:{bound[0][1] if bound else admin_port}"), color=False)
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await close_node()
        await runner.cleanup()


def _ready_line(
    config: ServerConfig,
    ca_path: Path | None,
    data_dir: Path,
    endpoint: str,
    udp_port: int,
    workers: str,
    admin_url: str,
) -> str:
    scheme = "ws" if config.ssl_context is None else "wss"
    if config.ssl_context is None:
        trust = "plain ws (--insecure)"
    else:
        trust = f"ca={ca_path}" if ca_path is not None else "ca=(your certificate's issuer)"
    join = (
        f"{_self_command()} token --data-dir {shlex.quote(str(data_dir))} "
        "--guild 1 --channel 1 --user 1"
    )
    return (
        f"voxgate ready {scheme}://{endpoint}/?v=8{workers} udp={udp_port} {trust} "
        f"admin={admin_url} join: {join}"
    )


def _admin_port(admin_port: int | None, port: int, workers: int) -> int:
    """The admin port asked, or its default: 8444, moved past the workers' gateway ports
    (``--port + workers``) when several workers would otherwise take it."""
    if admin_port is None:
        if workers == 1 or port == 0:
            return DEFAULT_ADMIN_PORT
        return port + workers
    if workers > 1 and port and port <= admin_port < port + workers:
        raise _fail(
            f"--admin-port {admin_port} is worker {admin_port - port}'s gateway port "
            f"(--port {port} + {admin_port - port}); set --admin-port outside "
            f"{port}-{port + workers - 1}"
        )
    return admin_port


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
    public_host: str | None = typer.Option(
        None,
        help="Host name clients reach this node's gateway at, in the endpoint joins carry "
        "(default: the public IP).",
    ),
    modes: str | None = typer.Option(
        None, help="Comma-separated encryption modes offered, in preference order."
    ),
    heartbeat_interval: float = typer.Option(
        DEFAULT_HEARTBEAT_INTERVAL_MS, help="Heartbeat interval sent in Hello, ms."
    ),
    media_tick: float = typer.Option(
        ServerConfig.media_tick_ms,
        "--media-tick-ms",
        help="While busy, the C media path reads its socket this often instead of at every "
        "datagram: less CPU, a packet waits up to this much longer (0: every datagram).",
    ),
    admin_host: str = typer.Option("127.0.0.1", help="Admin HTTP address."),
    admin_port: int | None = typer.Option(
        None,
        show_default=False,
        help=f"Admin HTTP port (default: {DEFAULT_ADMIN_PORT}; with --workers N > 1 and "
        "--port P: P + N, the first port after the workers' gateway ports).",
    ),
    workers: int = typer.Option(
        1,
        help=f"Worker processes (1-{MAX_WORKERS}), each a full node: worker i serves the "
        "gateway on --port + i and media on --udp-port + i (free ports when 0 is asked). "
        "Each voice channel is placed on one worker; joins minted by the admin API or "
        "`voxgate token` carry that worker's endpoint. With --redis, worker i is node "
        "<--node-id>-i of the cluster.",
    ),
    secret: str | None = typer.Option(
        None, envvar="VOXGATE_SECRET", show_envvar=True, help="Token signing secret."
    ),
    admin_key: str | None = typer.Option(
        None,
        envvar="VOXGATE_ADMIN_KEY",
        show_envvar=True,
        help="Bearer key of the admin API (default: the data dir's; a cluster shares one).",
    ),
    redis: str | None = typer.Option(
        None,
        envvar="VOXGATE_REDIS",
        show_envvar=True,
        help="Join the cluster kept in this Redis (redis://HOST:PORT/DB): channels are "
        "placed on its nodes, any node's joins name the hosting node.",
    ),
    node_id: str | None = typer.Option(
        None, help="This node's name in the cluster (with --redis; unique per node)."
    ),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
    dave: DavePolicy = typer.Option(
        DavePolicy.PREFERRED,
        case_sensitive=False,
        help="End-to-end encryption (DAVE): preferred = E2EE whenever every member of a "
        "call can do it, a downgrade otherwise; required = a client without DAVE is closed "
        "with 4017; off = transport encryption only (dave_protocol_version 0).",
    ),
) -> None:
    """Run one voice server node: the wss gateway, the UDP media plane and the admin API."""
    if not 1 <= workers <= MAX_WORKERS:
        raise _fail(f"--workers must be between 1 and {MAX_WORKERS}, not {workers}")
    if redis is not None:
        if not node_id:
            raise _fail("--redis needs --node-id NAME, unique in the cluster")
        if not redis.startswith(("redis://", "rediss://", "unix://")):
            raise _fail(f"--redis takes redis://HOST:PORT/DB, not {redis!r}")
    elif node_id is not None:
        raise _fail("--node-id names a node of a cluster: give --redis too")
    for name, first in (("--port", port), ("--udp-port", udp_port)):
        if first and first + workers - 1 > 65535:
            raise _fail(f"{name} {first} + {workers} workers goes past port 65535")
    resolved_admin_port = _admin_port(admin_port, port, workers)
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
    authority_secret = _secret(data_dir, secret)
    if admin_key is not None:
        if len(admin_key) < 16:
            raise _fail("--admin-key / VOXGATE_ADMIN_KEY must be at least 16 characters")
        # Recorded, so `voxgate token --data-dir` asks the admin API with the key it takes.
        datadir.write_admin_key(data_dir, admin_key)
    resolved_admin_key = admin_key or datadir.admin_key(data_dir)
    authority = TokenAuthority(authority_secret)

    ca_path: Path | None = None
    ssl_context = None
    # Kept for workers: an SSLContext cannot cross a process boundary, its files can.
    tls_files = None
    if insecure:
        if tls_cert or tls_key:
            raise _fail("--insecure and --tls-cert/--tls-key exclude each other")
    elif tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise _fail("--tls-cert and --tls-key go together")
        from voxgate.server.tls import TlsFiles

        tls_files = TlsFiles(tls_cert.absolute(), tls_key.absolute(), None)
        try:
            ssl_context = tls_files.server_context()
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot load --tls-cert/--tls-key: {exc}") from None
    else:
        from voxgate.server.tls import ensure_self_signed

        names = [
            name
            for name in (host, public_ip, public_host)
            if name and name not in ("0.0.0.0", "::")
        ]
        tls_files = ensure_self_signed(data_dir, names)
        ssl_context = tls_files.server_context()
        ca_path = tls_files.ca

    try:
        config = ServerConfig(
            host=host,
            port=port,
            udp_port=udp_port,
            public_ip=public_ip,
            public_host=public_host,
            modes=offered,
            heartbeat_interval_ms=heartbeat_interval,
            media_tick_ms=media_tick,
            ssl_context=ssl_context,
            dave=dave,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    from voxgate.loop import install_uvloop

    install_uvloop()
    cluster = None if redis is None or node_id is None else (redis, node_id)
    # What the node and the supervisor of workers both take after config and authority.
    node_args = (data_dir, admin_host, resolved_admin_port, ca_path, resolved_admin_key, cluster)
    if workers == 1:
        asyncio.run(_serve(config, authority, *node_args))
        return
    from voxgate.server.workers import worker_specs

    specs = worker_specs(
        workers, config, tls_files, authority_secret, authority.ttl_s, log_level, redis, node_id
    )
    asyncio.run(_serve_workers(specs, config, authority, *node_args))


def token(
    guild: str = typer.Option(..., help="Guild (server) id."),
    channel: str = typer.Option(..., help="Voice channel id."),
    user: str = typer.Option(..., help="User id joining."),
    session_id: str | None = typer.Option(None, help="Voice session id (default: random)."),
    data_dir: Path | None = typer.Option(
        None, help="The node's data dir (default: ~/.local/share/voxgate)."
    ),
    endpoint: str | None = typer.Option(
        None,
        help="host:port of the node (default: where the data dir's node last listened; "
        "a node running several workers, or a node of a cluster, is asked which node "
        "hosts the channel).",
    ),
    ttl: float = typer.Option(DEFAULT_TTL_S, help="Seconds the token may be used to Identify."),
    secret: str | None = typer.Option(None, envvar="VOXGATE_SECRET", show_envvar=True),
) -> None:
    """Print the VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE a client needs to join, as JSON."""
    from voxgate.server.admin import join_events

    data_dir = (data_dir or datadir.default_data_dir()).expanduser().absolute()
    if ttl <= 0:
        raise _fail("--ttl must be positive")
    if endpoint is None:
        recorded = datadir.read_node_file(data_dir) or {}
        workers = datadir.read_workers(data_dir)
        cluster = recorded.get("cluster")
        if len(workers) > 1 or cluster:
            # Only the supervisor, or the cluster's placement, knows which node hosts it.
            what = f"runs {len(workers)} workers" if len(workers) > 1 else f"is node {cluster}"
            if ttl != DEFAULT_TTL_S or secret is not None:
                raise _fail(
                    f"--ttl and --secret do not apply: the node in {data_dir} {what} "
                    "(its admin API mints); pass --endpoint to mint locally"
                )
            events = _join_from_supervisor(
                data_dir,
                recorded.get("admin_url", ""),
                what,
                guild,
                channel,
                user,
                session_id,
            )
            typer.echo(json.dumps(events))
            return
        endpoint = recorded.get("endpoint", f"127.0.0.1:{DEFAULT_PORT}")
    authority = TokenAuthority(_secret(data_dir, secret), ttl_s=ttl)
    try:
        minted, grant = authority.mint(guild, channel, user, session_id)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(join_events(minted, grant, endpoint)))


def _join_from_supervisor(
    data_dir: Path,
    admin_url: str,
    what: str,
    guild: str,
    channel: str,
    user: str,
    session_id: str | None,
) -> dict[str, object]:
    """The join events as the running supervisor's admin API places and mints them."""
    import urllib.error
    import urllib.request

    body = {"guild_id": guild, "channel_id": channel, "user_id": user}
    if session_id is not None:
        body["session_id"] = session_id
    request = urllib.request.Request(
        f"{admin_url}/v1/voice/join",
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {datadir.admin_key(data_dir)}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            events: dict[str, object] = json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        raise _fail(f"the node's admin API at {admin_url} refused the join: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _fail(
            f"the node in {data_dir} {what} and only its admin API "
            f"({admin_url or 'not recorded'}) can place a channel, but it did not answer: "
            f"{reason}"
        ) from None
    return events


def register(app: typer.Typer) -> None:
    """Add the server's commands to ``app``."""
    app.command()(serve)
    app.command()(token)
