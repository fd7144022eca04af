"""``voxgate serve --workers N``: one :class:`~voxgate.server.node.VoiceNode` per process.

A voice channel lives on exactly one worker, so fan-out never crosses processes (DESIGN.md,
"Scaling out"). The supervisor (the parent process) owns the admin listener and the
:class:`~voxgate.server.placement.Placement` of channels onto workers (the cluster's rules
over the memory backend); each worker is a full node with its own wss and UDP ports,
started with the ``spawn`` method (never ``fork`` under a running event loop),
and talks to the supervisor over one :func:`multiprocessing.Pipe`: it reports the ports it
bound once, then answers status requests (channels occupied, session counts, counters). The
supervisor reads the pipes with ``loop.add_reader`` so it never blocks, restarts a worker
that dies on the same ports, and keeps that worker's placements: tokens handed out name it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from voxgate.errors import VoxgateError
from voxgate.server.auth import TokenAuthority
from voxgate.server.config import ServerConfig
from voxgate.server.placement import (
    DOWN,
    SERVING,
    MemoryPlacementStore,
    NodeLoad,
    Placement,
    PlacementStore,
    describe_nodes,
)
from voxgate.server.stats import NodeStats
from voxgate.server.tls import TlsFiles

log = logging.getLogger(__name__)

ChannelKey = tuple[str, str]

MAX_WORKERS = 64
#: How often the supervisor asks every worker which channels it hosts.
POLL_PERIOD_S = 5.0
#: How long a status request may take before the last known status is used instead.
STATUS_TIMEOUT_S = 2.0
#: Status requests a worker may leave unanswered before it is no longer asked.
MAX_PENDING = 4
#: Spawning imports the server anew in each process; slow machines need a while.
START_TIMEOUT_S = 60.0
#: A worker that lived this long before dying is restarted at once, not after a back-off.
STABLE_AFTER_S = 30.0
RESTART_DELAY_MAX_S = 10.0
#: How often a worker checks that its supervisor still lives.
ORPHAN_CHECK_S = 1.0

STATUS = "status"
STOP = "stop"


# --- the pipe ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, picklable: SSL contexts are not, so the TLS file
    paths travel and each worker loads them itself."""

    index: int
    config: ServerConfig
    tls: TlsFiles | None
    secret: bytes
    token_ttl_s: float
    log_level: str
    supervisor_pid: int
    #: With ``--redis``: the cluster's Redis, and this worker's node id in it.
    redis: str | None = None
    node_id: str | None = None


@dataclass(frozen=True)
class WorkerStarted:
    endpoint: str
    port: int
    udp_port: int


@dataclass(frozen=True)
class WorkerFailed:
    reason: str


@dataclass(frozen=True)
class WorkerStatus:
    channels: tuple[ChannelKey, ...]
    sessions: int
    media_silent: int
    counters: dict[str, int]
    dropped: dict[str, int]


@dataclass(frozen=True)
class ConsoleCall:
    """An admin API call the supervisor's console relays to a worker (its channels and
    members, or an action on one of its calls); answered with a :class:`ConsoleAnswer`."""

    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class ConsoleAnswer:
    status: int
    body: dict[str, Any]


def _status_of(node: Any) -> WorkerStatus:
    stats: NodeStats = node.stats
    return WorkerStatus(
        channels=tuple(node.router.channels),
        sessions=node.session_count(),
        media_silent=node.media_silent_count(),
        counters=stats.counters(),
        dropped=dict(stats.dropped),
    )


# --- the worker process ------------------------------------------------------------------


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a worker process (the target given to ``spawn``)."""
    logging.basicConfig(
        level=spec.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker-{spec.index} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Ctrl-C reaches the whole process group; the supervisor decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from voxgate.loop import install_uvloop

    install_uvloop()
    sys.exit(asyncio.run(_run_worker(spec, conn)))


async def _run_worker(spec: WorkerSpec, conn: Connection) -> int:
    from voxgate.server.node import VoiceNode, freeze_startup_objects

    config = spec.config
    if spec.tls is not None:
        try:
            config = dataclasses.replace(config, ssl_context=spec.tls.server_context())
        except (OSError, ValueError) as exc:
            conn.send(WorkerFailed(f"cannot load the TLS certificate: {exc}"))
            return 1
    node = VoiceNode(config, TokenAuthority(spec.secret, ttl_s=spec.token_ttl_s))
    try:
        await node.start()
    except OSError as exc:
        conn.send(
            WorkerFailed(
                f"cannot listen on {config.host}:{config.port} "
                f"(udp {config.effective_udp_port}): {exc.strerror}"
            )
        )
        return 1
    agent = None
    if spec.redis is not None and spec.node_id is not None:
        # A node of the cluster like any other: it registers, heartbeats and fences itself.
        from voxgate.server.cluster import ClusterAgent, ClusterError
        from voxgate.server.redis_placement import RedisPlacementStore

        agent = ClusterAgent(node, RedisPlacementStore(spec.redis), spec.node_id, spec.token_ttl_s)
        try:
            await agent.start()
        except ClusterError as exc:
            conn.send(WorkerFailed(str(exc)))
            await agent.close()
            await node.close()
            return 1
    freeze_startup_objects()
    conn.send(WorkerStarted(node.endpoint, node.port, node.udp_port))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    from voxgate.server.console import Sampler, answer_locally

    sampler = Sampler(node.router, node.stats, node.session_count, node.endpoint)

    def on_request() -> None:
        try:
            while conn.poll():
                request = conn.recv()
                if request == STATUS:
                    conn.send(_status_of(node))
                elif isinstance(request, ConsoleCall):
                    try:
                        answer = answer_locally(sampler, request.method, request.path, request.body)
                    except Exception as exc:  # a bug here must not end the worker
                        log.exception("console call %s %s failed", request.method, request.path)
                        answer = (500, {"error": f"the worker failed: {exc}"})
                    conn.send(ConsoleAnswer(*answer))
                elif request == STOP:
                    stop.set()
        except (EOFError, OSError):
            # The supervisor is gone: a worker never outlives it.
            log.warning("supervisor pipe closed; stopping")
            loop.remove_reader(conn.fileno())
            stop.set()

    async def watch_supervisor() -> None:
        while os.getppid() == spec.supervisor_pid:
            await asyncio.sleep(ORPHAN_CHECK_S)
        log.warning("supervisor %d died; stopping", spec.supervisor_pid)
        stop.set()

    loop.add_reader(conn.fileno(), on_request)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    watcher = asyncio.create_task(watch_supervisor())
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        if agent is not None:
            await agent.close()
        await node.close()
    return 0


# --- the supervisor ----------------------------------------------------------------------


class WorkerStartError(VoxgateError):
    """A worker could not start (its reason is the message)."""


class WorkerDown(VoxgateError):
    """A worker ended before answering a status request."""


def _settle(future: asyncio.Future[Any], error: Exception) -> None:
    """Fail ``future`` unless settled, marking the error seen: nobody may be awaiting it."""
    if not future.done():
        future.set_exception(error)
        future.exception()


class WorkerHandle:
    """The supervisor's side of one worker: its process, pipe and last report."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.index = spec.index
        self.process: Any = None  # multiprocessing's SpawnProcess
        self.conn: Connection | None = None
        self.started_at = 0.0
        self.alive = False
        self.endpoint = spec.config.endpoint
        self.port = spec.config.port
        self.udp_port = spec.config.effective_udp_port
        self.status: WorkerStatus | None = None
        self.pending: deque[asyncio.Future[WorkerStatus]] = deque()
        self.console_pending: deque[asyncio.Future[ConsoleAnswer]] = deque()
        self.starting: asyncio.Future[WorkerStarted] | None = None
        self.failures = 0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else int(self.process.pid)


class Supervisor:
    """Starts, watches, queries and stops the workers; places channels on them.

    Implements what the admin listener reads from a node (``stats``, ``session_count``...)
    by summing the workers' last reports.
    """

    def __init__(
        self, specs: list[WorkerSpec], authority: TokenAuthority, redis: str | None = None
    ) -> None:
        self.authority = authority
        self.handles = [WorkerHandle(spec) for spec in specs]
        self.store: PlacementStore
        if redis is None:
            # The cluster's placement rules over the supervisor's memory: each worker is a
            # node that stays live while the supervisor runs (it restarts dead workers on
            # the same ports, so their channels wait for them) and takes new ones while up.
            self.store = MemoryPlacementStore()
        else:
            # With --redis each worker is a node of the cluster, registered by itself; the
            # supervisor only places joins, on any node of the cluster.
            from voxgate.server.redis_placement import RedisPlacementStore

            self.store = RedisPlacementStore(redis)
        self.clustered = redis is not None
        self.placement = Placement(self.store, authority.ttl_s)
        self._context = multiprocessing.get_context("spawn")
        self._running = False
        self._closing = False
        self._poller: asyncio.Task[None] | None = None
        self._restarts: set[asyncio.TimerHandle] = set()
        # Counters of worker lives that ended, so the summed counters never go backwards.
        self._retired = NodeStats()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each has bound its ports.

        Raises :class:`WorkerStartError` (after stopping the others) when one cannot start.
        """
        for handle in self.handles:
            self._spawn(handle)
        try:
            for handle in self.handles:
                assert handle.starting is not None
                try:
                    await asyncio.wait_for(asyncio.shield(handle.starting), START_TIMEOUT_S)
                except TimeoutError:
                    raise WorkerStartError(
                        f"worker {handle.index} did not start within {START_TIMEOUT_S:g} s"
                    ) from None
        except BaseException:
            await self.close()
            raise
        self._running = True
        self._poller = asyncio.create_task(self._poll())

    async def close(self) -> None:
        """Ask every worker to stop; those that do not within a few seconds are killed."""
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
        for timer in self._restarts:
            timer.cancel()
        for handle in self.handles:
            if handle.conn is not None:
                with contextlib.suppress(OSError):
                    handle.conn.send(STOP)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        for handle in self.handles:
            process = handle.process
            if process is None:
                continue
            while process.is_alive() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if process.is_alive():
                log.warning("worker %d did not stop in time; killing it", handle.index)
                process.kill()
            process.join(1.0)
            self._forget(handle)
        await self.store.aclose()

    def _spawn(self, handle: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_main,
            args=(handle.spec, child_end),
            name=f"voxgate-worker-{handle.index}",
            daemon=True,
        )
        process.start()
        child_end.close()
        handle.process, handle.conn = process, parent_end
        handle.started_at = time.monotonic()
        handle.starting = loop.create_future()
        loop.add_reader(parent_end.fileno(), self._on_readable, handle)
        loop.add_reader(process.sentinel, self._on_exit, handle)

    def _forget(self, handle: WorkerHandle) -> None:
        """Stop watching ``handle``'s pipe and process (it has ended)."""
        loop = asyncio.get_running_loop()
        if handle.conn is not None:
            loop.remove_reader(handle.conn.fileno())
            handle.conn.close()
            handle.conn = None
        if handle.process is not None:
            loop.remove_reader(handle.process.sentinel)
        handle.alive = False
        while handle.pending:
            _settle(handle.pending.popleft(), WorkerDown(f"worker {handle.index} is down"))
        while handle.console_pending:
            _settle(handle.console_pending.popleft(), WorkerDown(f"worker {handle.index} is down"))

    def _on_readable(self, handle: WorkerHandle) -> None:
        conn = handle.conn
        if conn is None:
            return
        try:
            while conn.poll():
                self._on_report(handle, conn.recv())
        except (EOFError, OSError):
            # The process is ending; its sentinel says when, and _on_exit cleans up.
            asyncio.get_running_loop().remove_reader(conn.fileno())

    def _on_report(self, handle: WorkerHandle, report: object) -> None:
        if isinstance(report, WorkerStatus):
            handle.status = report
            while handle.pending:
                future = handle.pending.popleft()
                if not future.done():
                    future.set_result(report)
                    break
        elif isinstance(report, ConsoleAnswer):
            while handle.console_pending:
                answered = handle.console_pending.popleft()
                if not answered.done():
                    answered.set_result(report)
                    break
        elif isinstance(report, WorkerStarted):
            handle.endpoint, handle.port, handle.udp_port = (
                report.endpoint,
                report.port,
                report.udp_port,
            )
            # A restart binds the same ports, also when port 0 was asked the first time.
            handle.spec = dataclasses.replace(
                handle.spec,
                config=dataclasses.replace(
                    handle.spec.config, port=report.port, udp_port=report.udp_port
                ),
            )
            handle.alive = True
            if handle.starting is not None and not handle.starting.done():
                handle.starting.set_result(report)
            if self._running:
                log.info(
                    "worker %d restarted (pid %d) on %s", handle.index, handle.pid, report.endpoint
                )
        elif isinstance(report, WorkerFailed):
            if handle.starting is not None:
                _settle(handle.starting, WorkerStartError(report.reason))
            if self._running:
                log.error("worker %d could not restart: %s", handle.index, report.reason)

    def _on_exit(self, handle: WorkerHandle) -> None:
        process = handle.process
        self._on_readable(handle)  # a last report may still be in the pipe
        process.join(0)
        code = process.exitcode
        if handle.status is not None:
            self._retired.add(handle.status.counters, handle.status.dropped)
            handle.status = None
        self._forget(handle)
        if handle.starting is not None:
            _settle(
                handle.starting,
                WorkerStartError(f"worker {handle.index} exited with code {code} while starting"),
            )
        if self._closing or not self._running:
            return
        lived = time.monotonic() - handle.started_at
        handle.failures = 0 if lived >= STABLE_AFTER_S else handle.failures + 1
        delay = 0.0 if handle.failures == 0 else min(RESTART_DELAY_MAX_S, 0.25 * 2**handle.failures)
        log.error(
            "worker %d (pid %s, %s) died with exit code %s after %.0f s; restarting in %.1f s",
            handle.index,
            process.pid,
            handle.endpoint,
            code,
            lived,
            delay,
        )
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def restart() -> None:
            self._restarts.discard(timer)
            if not self._closing:
                self._spawn(handle)

        timer = loop.call_later(delay, restart)
        self._restarts.add(timer)

    # --- status --------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_PERIOD_S)
            await self.refresh()

    async def refresh(self) -> None:
        """Ask every running worker for its status; release placements no longer needed.

        Workers that do not answer within :data:`STATUS_TIMEOUT_S` keep their last report.
        """
        loop = asyncio.get_running_loop()
        # Taken before asking: each report describes the worker at some time after it.
        now = time.time()
        asked: dict[asyncio.Future[WorkerStatus], WorkerHandle] = {}
        for handle in self.handles:
            # A worker that stopped answering is not asked again (its pipe would fill and
            # block this loop); its last report stands until it answers or dies.
            if not handle.alive or handle.conn is None or len(handle.pending) >= MAX_PENDING:
                continue
            try:
                handle.conn.send(STATUS)
            except OSError:
                continue
            future: asyncio.Future[WorkerStatus] = loop.create_future()
            handle.pending.append(future)
            asked[future] = handle
        if not asked:
            return
        done, _ = await asyncio.wait(asked, timeout=STATUS_TIMEOUT_S)
        if self.clustered:
            return  # each worker reconciles its own claims with the cluster
        await self._register()
        for future in done:
            if future.exception() is None:
                handle = asked[future]
                reconciled = await self.store.reconcile(
                    node_id(handle.index), future.result().channels, {}, now
                )
                for key in reconciled.released:
                    log.debug("channel %s/%s released from worker %d", *key, handle.index)
                for key, owner in reconciled.lost.items():
                    # Members with tokens naming no endpoint, on two workers: not fenced
                    # here (a worker is told nothing), later joins follow the claim.
                    log.info("channel %s/%s is on worker %d and %s", *key, handle.index, owner)

    async def _register(self) -> None:
        if self.clustered:
            return
        for handle in self.handles:
            await self.store.heartbeat(
                NodeLoad(
                    node_id=node_id(handle.index),
                    endpoint=handle.endpoint,
                    state=SERVING if handle.alive else DOWN,
                    sessions=handle.status.sessions if handle.status and handle.alive else 0,
                    channels=len(handle.status.channels) if handle.status and handle.alive else 0,
                ),
                ttl_s=None,
            )

    async def place(self, guild_id: str, channel_id: str, now: float) -> str:
        """The endpoint of the worker hosting the channel (placing it when new), for a
        token minted at ``now``."""
        if self.clustered:
            # Raises PlacementUnavailable (a 503) while Redis is out of reach.
            return (await self.placement.place((guild_id, channel_id), now)).endpoint
        await self._register()
        if not any(handle.alive for handle in self.handles):
            # Every worker is down: the channel waits on the first one, as it restarts.
            await self.store.heartbeat(
                NodeLoad(node_id(0), self.handles[0].endpoint, SERVING), ttl_s=None
            )
        claim = await self.placement.place((guild_id, channel_id), now)
        return self.handles[index_of(claim.node_id)].endpoint

    async def view(self) -> dict[str, Any]:
        """``GET /v1/cluster``: every worker as a node, and the channels placed on it."""
        await self._register()
        return {"node_id": "supervisor", "nodes": await describe_nodes(self.store)}

    async def console(
        self, worker: str, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any]]:
        """Worker ``worker``'s (a node id of :meth:`view`) answer to an admin API call.

        Raises :class:`WorkerDown` when it is not one of these workers, is down or does
        not answer within :data:`STATUS_TIMEOUT_S`."""
        found = [h for h in self.handles if worker in (node_id(h.index), h.spec.node_id)]
        handle = found[0] if found else None
        if handle is None or not handle.alive or handle.conn is None:
            raise WorkerDown(f"{worker} is not a running worker of this supervisor")
        if len(handle.console_pending) >= MAX_PENDING:
            raise WorkerDown(f"{worker} does not answer")
        future: asyncio.Future[ConsoleAnswer] = asyncio.get_running_loop().create_future()
        try:
            handle.conn.send(ConsoleCall(method, path, body))
        except OSError as exc:
            raise WorkerDown(f"{worker}: {exc}") from None
        handle.console_pending.append(future)
        try:
            answer = await asyncio.wait_for(asyncio.shield(future), STATUS_TIMEOUT_S)
        except TimeoutError:
            raise WorkerDown(f"{worker} did not answer within {STATUS_TIMEOUT_S:g} s") from None
        return answer.status, answer.body

    def workers(self) -> list[dict[str, Any]]:
        """One entry per worker, for ``/healthz``."""
        return [
            {
                "index": handle.index,
                "pid": handle.pid,
                "endpoint": handle.endpoint,
                "udp_port": handle.udp_port,
                "sessions": handle.status.sessions if handle.status and handle.alive else 0,
                "channels": len(handle.status.channels) if handle.status and handle.alive else 0,
                "alive": handle.alive,
            }
            for handle in self.handles
        ]

    # --- what the admin listener reads from a node ---------------------------------------

    @property
    def stats(self) -> NodeStats:
        total = NodeStats()
        total.add(self._retired.counters(), self._retired.dropped)
        for handle in self.handles:
            if handle.status is not None:
                total.add(handle.status.counters, handle.status.dropped)
        return total

    def _reports(self) -> list[WorkerStatus]:
        return [h.status for h in self.handles if h.alive and h.status is not None]

    def session_count(self) -> int:
        return sum(status.sessions for status in self._reports())

    def channel_count(self) -> int:
        return sum(len(status.channels) for status in self._reports())

    def media_silent_count(self) -> int:
        return sum(status.media_silent for status in self._reports())

    def workers_alive(self) -> int:
        return sum(1 for handle in self.handles if handle.alive)


def node_id(index: int) -> str:
    """The placement's name of worker ``index``."""
    return f"worker-{index}"


def index_of(worker: str) -> int:
    return int(worker.rpartition("-")[2])


def worker_specs(
    workers: int,
    config: ServerConfig,
    tls: TlsFiles | None,
    secret: bytes,
    token_ttl_s: float,
    log_level: str,
    redis: str | None = None,
    node_id: str | None = None,
) -> list[WorkerSpec]:
    """One spec per worker: worker i on gateway port ``port + i`` and UDP port
    ``udp_port + i`` (any free port for each when the port asked is 0); with ``redis``,
    worker i is node ``<node_id>-<i>`` of that cluster."""
    base_udp = config.effective_udp_port
    return [
        WorkerSpec(
            index=index,
            config=dataclasses.replace(
                config,
                port=config.port + index if config.port else 0,
                udp_port=base_udp + index if base_udp else 0,
                ssl_context=None,
            ),
            tls=tls,
            secret=secret,
            token_ttl_s=token_ttl_s,
            log_level=log_level,
            supervisor_pid=os.getpid(),
            redis=redis,
            node_id=None if node_id is None else f"{node_id}-{index}",
        )
        for index in range(workers)
    ]
