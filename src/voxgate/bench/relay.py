"""``voxgate bench relay``: how many packets a node forwards, side by side with a C relay.

The node runs in its own process (pinned to one core when the machine allows); the load
generator runs on another core. Members join the node through the real handshake (the
voxgate client, in this process); then ``bench/loadgen/loadgen.c`` takes their sockets and
keys and does the media half: speakers send 50 packets a second each of Opus-sized
payloads carrying their send time, and every member opens every packet it receives with
its own key and counts it. (Without a C compiler this process does the media half too, and
its own queueing then shows in the latencies.) Load grows by adding channels until a level
does not :func:`hold`; the last level that holds is the saturation point.
``bench/ceiling/relay.c``, a minimal C relay doing the same AES-256-GCM open and
per-receiver seal, and ``bench/ceiling/bare_relay.py``, the least Python that does it, are
driven by the same generator."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import json
import math
import os
import random
import shutil
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from voxgate.bench.node import BenchNode, free_port, start_node
from voxgate.client import VoiceConnection
from voxgate.protocol import discovery
from voxgate.protocol.crypto import TransportCipher, transport_cipher
from voxgate.protocol.dave import DaveFrame, build_dave_frame, is_dave_frame
from voxgate.protocol.errors import PacketError
from voxgate.protocol.rtp import RtpHeader
from voxgate.server.config import ServerConfig

BENCH_SOURCES = Path(__file__).resolve().parents[3] / "bench"
CEILING_SOURCE = BENCH_SOURCES / "ceiling" / "relay.c"
BARE_RELAY = BENCH_SOURCES / "ceiling" / "bare_relay.py"
LOADGEN_SOURCE = BENCH_SOURCES / "loadgen" / "loadgen.c"
#: Seconds of sending before the measured window, so addresses and caches are warm.
WARMUP_S = 0.5
_STAMP = struct.Struct(">QI")  # send time (ns), sender index
FRAME_S = 0.020
AES = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
#: The modes bench/loadgen/loadgen.c speaks, and the letter its members file names them by.
LOADGEN_MODES = {AES: "a", XCHACHA: "x"}
#: The Opus frame ``voxgate bench relay --dave`` encrypts into its DAVE payload (a 20 ms
#: voice frame at about 40 kb/s), and the size of the DAVE frame that makes: the frame, its
#: 8-byte tag, a one-byte nonce, the supplemental size and the magic. The plain side of that
#: comparison sends payloads of exactly this size too, so only the payload's kind differs.
DAVE_OPUS_SIZE = 100
DAVE_PAYLOAD_SIZE = len(build_dave_frame(DaveFrame.create(bytes(DAVE_OPUS_SIZE), bytes(8), 1)))
#: Seconds a channel's DAVE members get to establish their group before the bench gives up.
DAVE_READY_S = 30.0


@dataclass
class Tally:
    """What the receivers saw during one measured step."""

    received: int = 0
    latencies_ns: list[int] = field(default_factory=list)

    def on_packet(self, payload: bytes) -> None:
        self.received += 1
        if self.received % 7 == 0:  # a sample is plenty for percentiles
            sent_ns, _ = _STAMP.unpack_from(payload)
            self.latencies_ns.append(time.monotonic_ns() - sent_ns)


class Member(abc.ABC):
    """One bench member: sends when it is a speaker, counts what it receives."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    @abc.abstractmethod
    def send(self, payload: bytes) -> None: ...

    @abc.abstractmethod
    def hand_over(self) -> tuple[int, int, str, bytes]:
        """Stop reading media here; (socket fd, ssrc, mode, secret_key) for the C generator."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def _paused_fd(transport: asyncio.DatagramTransport | None) -> int:
    if transport is None:
        raise RuntimeError("the member has no media socket")
    # The C generator reads the socket from here on; two readers would split the packets.
    # A member kept across steps (Pool) is handed over again, already paused.
    if transport.is_reading():
        transport.pause_reading()
    sock = transport.get_extra_info("socket")
    return int(sock.fileno())


class VoxgateMember(Member):
    def __init__(self, connection: VoiceConnection, tally: Tally) -> None:
        super().__init__(tally)
        self.connection = connection
        connection.add_listener(lambda ssrc, header, payload: self.tally.on_packet(payload))

    def send(self, payload: bytes) -> None:
        self.connection.send_opus(payload)

    def hand_over(self) -> tuple[int, int, str, bytes]:
        description = self.connection.gateway.description
        if description is None or description.mode not in LOADGEN_MODES:
            raise RuntimeError(f"the C generator does not speak {self.connection.mode}")
        fd = _paused_fd(self.connection.media_transport)
        return fd, self.connection.ssrc, description.mode, bytes(description.secret_key)

    async def close(self) -> None:
        await self.connection.close()


class _RawSocket(asyncio.DatagramProtocol):
    def __init__(self, member: RawMember) -> None:
        self.member = member
        self.transport: asyncio.DatagramTransport | None = None
        self.discovered = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) == discovery.SIZE:
            if not self.discovered.done():
                self.discovered.set_result(True)
            return
        try:
            _, payload = self.member.cipher.open(data)
        except PacketError:
            return
        self.member.tally.on_packet(payload)


class RawMember(Member):
    """A member of the C relay: keys from the members file, no gateway."""

    def __init__(self, ssrc: int, key: bytes, tally: Tally) -> None:
        super().__init__(tally)
        self.ssrc = ssrc
        self.key = key
        self.cipher: TransportCipher = transport_cipher(AES, key)
        self.sequence = 0
        self.socket: _RawSocket | None = None

    async def join(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        _, self.socket = await loop.create_datagram_endpoint(
            lambda: _RawSocket(self), remote_addr=("127.0.0.1", port)
        )
        assert self.socket.transport is not None
        for _ in range(20):
            self.socket.transport.sendto(discovery.build_request(self.ssrc))
            try:
                await asyncio.wait_for(asyncio.shield(self.socket.discovered), 0.25)
                return
            except TimeoutError:
                continue
        raise RuntimeError("the ceiling relay did not answer discovery")

    def send(self, payload: bytes) -> None:
        header = RtpHeader(
            sequence=self.sequence, timestamp=self.sequence * 960, ssrc=self.ssrc
        ).build()
        self.sequence = (self.sequence + 1) & 0xFFFF
        assert self.socket is not None and self.socket.transport is not None
        self.socket.transport.sendto(self.cipher.seal(header, payload))

    def hand_over(self) -> tuple[int, int, str, bytes]:
        assert self.socket is not None
        return _paused_fd(self.socket.transport), self.ssrc, AES, self.key

    async def close(self) -> None:
        if self.socket is not None and self.socket.transport is not None:
            self.socket.transport.close()


async def leave(members: list[list[Member]]) -> None:
    """Every member leaves, a channel at a time."""
    for channel in members:
        await asyncio.gather(*(member.close() for member in channel), return_exceptions=True)


@dataclass
class Step:
    channels: int
    members: int
    offered_pps: float
    forwarded_pps: float
    loss: float
    latency_p50_ms: float
    latency_p99_ms: float
    server_cpu: float  # cores busy
    cpu_ms_per_1000: float
    rss_per_session_kb: float
    generator: str = "python"
    #: With a payload template: received payloads that were not the template sent (by the
    #: C generator's byte comparison), and those ending in the DAVE magic 0xFA 0xFA.
    payloads_checked: int | None = None
    template_mismatch: int | None = None
    dave_trailer: int | None = None
    #: The C generator's share of the step that it was sending or receiving rather than
    #: polling idle; near 1 it, not the relay, may be what held the level back.
    generator_busy: float | None = None
    #: The block of :func:`compare_costs` rounds it was measured in: one pair of the
    #: relays' processes.
    block: int | None = None
    #: How many times its round of :func:`compare_costs` was measured, this the last.
    attempts: int | None = None


#: Channels whose members join at once. A join is mostly round trips (HTTP, WebSocket,
#: IP discovery): one channel at a time, a level of 300 channels took half a minute to
#: join, several times its measurement.
JOINS_IN_FLIGHT = 8


class Relay(abc.ABC):
    """A relay under test: a voxgate node or the C ceiling, and how to join it."""

    name = "relay"
    pid = 0
    #: Whether a process of this relay runs on the generator's core: the C generator then
    #: sleeps while it waits for packets instead of polling (which would take the core).
    generator_shares_core = False
    #: Whether the members join as DAVE members and send DAVE frames.
    dave = False

    @abc.abstractmethod
    async def join(self, channel: int, index: int, mode: str, tally: Tally) -> Member: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    async def join_channel(
        self, channel: int, per_channel: int, modes: Sequence[str], tally: Tally
    ) -> list[Member]:
        """``per_channel`` members of ``channel``, joined at once (all or none)."""
        results = await asyncio.gather(
            *(
                self.join(channel, index, modes[index % len(modes)], tally)
                for index in range(per_channel)
            ),
            return_exceptions=True,
        )
        joined = [result for result in results if isinstance(result, Member)]
        for result in results:
            if isinstance(result, BaseException):
                await asyncio.gather(*(member.close() for member in joined))
                raise result
        return joined

    async def join_channels(
        self, channels: int, per_channel: int, modes: Sequence[str], tally: Tally
    ) -> list[list[Member]]:
        """The members of channels 0 to ``channels - 1`` for one step, counting into
        ``tally``: here joined afresh, and closed by :meth:`release` after the step."""
        return await self.join_range(range(channels), per_channel, modes, tally)

    async def join_range(
        self, channels: range, per_channel: int, modes: Sequence[str], tally: Tally
    ) -> list[list[Member]]:
        """The members of ``channels``, :data:`JOINS_IN_FLIGHT` channels at a time (all or
        none)."""
        results: list[list[Member] | BaseException] = []
        for start in range(0, len(channels), JOINS_IN_FLIGHT):
            batch = channels[start : start + JOINS_IN_FLIGHT]
            results += await asyncio.gather(
                *(self.join_channel(channel, per_channel, modes, tally) for channel in batch),
                return_exceptions=True,
            )
            if any(isinstance(result, BaseException) for result in results):
                break
        members = [result for result in results if not isinstance(result, BaseException)]
        for result in results:
            if isinstance(result, BaseException):
                await leave(members)
                raise result
        return members

    async def release(self, members: list[list[Member]]) -> None:
        """After a step: its members leave."""
        await leave(members)

    def rss_per_session_kb(self, before: int, members: list[list[Member]]) -> float:
        """The relay's RSS per session, from its RSS ``before`` :meth:`join_channels`."""
        return (self.rss_bytes() - before) / 1024 / max(1, sum(map(len, members)))

    def nonce_base(self) -> int | None:
        """Where the C generator starts this step's members' nonce counters; None: at 0,
        as members joined for this step alone may."""
        return None

    async def payload_template(self, members: list[list[Member]]) -> bytes | None:
        """The payload every speaker sends (its first 12 bytes replaced by the send stamp),
        once the members are ready for load; None: Opus-sized filler of 60-160 bytes."""
        return None

    def processes(self) -> list[int]:
        """The relay's processes, whose CPU and RSS are its own."""
        return [self.pid]

    def cpu_seconds(self) -> float:
        return sum(map(cpu_seconds, self.processes()))

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.processes():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total


def cpu_seconds(pid: int) -> float:
    """The CPU time a process's threads have run, to the nanosecond where Linux keeps it.

    ``/proc/PID/stat``'s user and system times are, on kernels with tick accounting (this
    machine's, at 250 Hz), the ticks that found the process running: a sample, whose error
    over a 3-second step at 70% of a core is about 2.4%, as much as the differences the
    bench compares. The scheduler's own sum of each thread's run time, the first field of
    ``schedstat``, has none.
    """
    threads = list(Path(f"/proc/{pid}/task").glob("*/schedstat"))
    if not threads:  # a kernel without schedstat
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total = 0
    for path in threads:
        # A thread that ended meanwhile is left out, not the whole process measured the
        # other way: a step's two readings must be of one kind.
        with contextlib.suppress(OSError):
            total += int(path.read_text().split()[0])
    return total / 1e9


class VoxgateRelay(Relay):
    """A voxgate node. Unless ``dave``, the node runs ``--dave off`` and its members join
    with ``dave=False``: the comparisons with the C relay are about relaying transport
    packets, and an MLS group to build per join would only slow the joins (the relay's
    per-packet work is the same either way, which ``bench relay --dave`` shows). With
    ``dave`` the node runs ``--dave preferred``, its members join as DAVE members, and they
    send a real DAVE frame as payload once every channel's group is established.
    ``sized_like_dave``: plain members send payloads of :data:`DAVE_PAYLOAD_SIZE`."""

    name = "voxgate"

    def __init__(self, node: BenchNode, *, dave: bool = False, sized_like_dave: bool = False):
        self.node = node
        self.pid = node.process.pid
        self.trust = ssl.create_default_context(cafile=str(node.ca_path))
        self.dave = dave
        self.sized_like_dave = sized_like_dave

    @classmethod
    def pinned(
        cls,
        cpu: int | None,
        *,
        python_path: bool = False,
        dave: bool = False,
        sized_like_dave: bool = False,
    ) -> Self:
        """A single-process node pinned to ``cpu``; ``python_path`` runs it without
        voxgate._fastpath (``VOXGATE_NO_EXTENSIONS=1``)."""
        env = {"VOXGATE_NO_EXTENSIONS": "1"} if python_path else None
        policy = "preferred" if dave else "off"
        return cls(
            start_node("--dave", policy, cpu=cpu, env=env),
            dave=dave,
            sized_like_dave=sized_like_dave,
        )

    async def join(self, channel: int, index: int, mode: str, tally: Tally) -> Member:
        loop = asyncio.get_running_loop()
        events = await loop.run_in_executor(
            # Snowflakes: a DAVE identity is the user id as 8 bytes, a group the channel's.
            None,
            self.node.join,
            "1",
            str(100_000 + channel),
            str(1_000_000 + 1000 * channel + index),
        )
        connection = await VoiceConnection.connect(
            events["voice_state"],
            events["voice_server"],
            ssl=self.trust,
            modes=[mode],
            dave=self.dave,
        )
        return VoxgateMember(connection, tally)

    async def payload_template(self, members: list[list[Member]]) -> bytes | None:
        if not self.dave:
            return b"\x55" * DAVE_PAYLOAD_SIZE if self.sized_like_dave else None
        await wait_for_dave_groups(members, DAVE_READY_S + 0.05 * sum(map(len, members)))
        first = members[0][0]
        assert isinstance(first, VoxgateMember)
        # A real frame of the group: Opus-like bytes (a CELT 20 ms TOC, then noise).
        opus = b"\xfc" + random.Random(5).randbytes(DAVE_OPUS_SIZE - 1)
        frame = first.connection.dave.encrypt(opus)
        if frame is None or not is_dave_frame(frame) or len(frame) != DAVE_PAYLOAD_SIZE:
            raise RuntimeError(f"davey made no {DAVE_PAYLOAD_SIZE}-byte DAVE frame: {frame!r}")
        # A frame of this group: another member opens it. (The generator's send stamp over
        # its first 12 bytes then breaks the tag, which the relay never checks.)
        second = members[0][-1]
        assert isinstance(second, VoxgateMember) and second is not first
        if second.connection.dave.decrypt(first.connection.user_id, frame) != opus:
            raise RuntimeError("a member of the group could not open the bench's DAVE frame")
        return frame

    def stop(self) -> None:
        self.node.stop()


class Pool(Relay):
    """A relay kept up for several steps, its members with it: the steps of
    :func:`compare_costs` and of ``bench relay --dave``.

    Joining members is slow for the bench itself: a plain member's join is round trips
    and a tenth of a second of this process's CPU, and a DAVE member's is five times
    that, since every member of a channel commits every proposal batch in davey. Joining
    every step's members afresh takes a step more time than its measuring, and with DAVE
    the search most of an hour. Here each channel's members join once, at the first step
    that needs them, and stay: a step of L channels streams on channels 0 to L-1 while the
    members of higher channels stay joined and idle (only their heartbeats and keep-alives
    reach the relay). :meth:`stop` between steps leaves everything up; :meth:`close` ends
    it. Both sides of a comparison are pooled alike, so their ratio stays a like-for-like
    one.

    A member sends again in every step, so each step's generator starts the nonce counters
    at a new :meth:`nonce_base`, above all a member sent before: a voxgate node's replay
    window would drop repeated counters as replays."""

    #: Where step n's nonce counters start: n << NONCE_STEP_BITS, far more than the packets
    #: a member sends in one step (50 a second); the counter wraps mod 2**32 as clients' do.
    NONCE_STEP_BITS = 22

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.name = relay.name
        self.pid = relay.pid
        self.dave = relay.dave
        self.generator_shares_core = relay.generator_shares_core
        self.joined: list[list[Member]] = []
        self.steps = 0
        self._shape: tuple[int, tuple[str, ...]] | None = None
        self._rss_at_start = self.rss_bytes()

    async def join(self, channel: int, index: int, mode: str, tally: Tally) -> Member:
        return await self.relay.join(channel, index, mode, tally)

    async def join_channels(
        self, channels: int, per_channel: int, modes: Sequence[str], tally: Tally
    ) -> list[list[Member]]:
        shape = (per_channel, tuple(modes))
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"a pool of channels of {self._shape} cannot serve {shape}")
        self._shape = shape
        for channel in self.joined:
            for member in channel:
                member.tally = tally
        self.joined += await self.join_range(
            range(len(self.joined), channels), per_channel, modes, tally
        )
        return self.joined[:channels]

    async def release(self, members: list[list[Member]]) -> None:
        """The members stay; the relay drains what a step past saturation left queued,
        which the next step (of either contender: they share a core) must not inherit."""
        await self._settle()

    async def _settle(self, limit_s: float = 10.0, interval_s: float = 0.2) -> None:
        """Until the relay uses under a tenth of a core over ``interval_s``, or ``limit_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        before = self.cpu_seconds()
        while loop.time() < deadline:
            await asyncio.sleep(interval_s)
            now = self.cpu_seconds()
            if now - before < 0.1 * interval_s:
                return
            before = now

    def rss_per_session_kb(self, before: int, members: list[list[Member]]) -> float:
        # Over every member the relay holds, since the pool began: the pool's members
        # joined over several steps.
        held = sum(map(len, self.joined))
        return (self.rss_bytes() - self._rss_at_start) / 1024 / max(1, held)

    def nonce_base(self) -> int:
        self.steps += 1
        return (self.steps << self.NONCE_STEP_BITS) & 0xFFFF_FFFF

    async def payload_template(self, members: list[list[Member]]) -> bytes | None:
        return await self.relay.payload_template(members)

    def processes(self) -> list[int]:
        return self.relay.processes()

    def stop(self) -> None:
        """Nothing: the relay and its members serve the next step too (see :meth:`close`)."""

    async def close(self) -> None:
        """The members leave and the relay stops, for good."""
        try:
            await leave(self.joined)
        finally:
            self.joined = []
            self.relay.stop()


class WorkersRelay(VoxgateRelay):
    """``voxgate serve --workers N``: worker i pinned to core i (mod the machine's cores)."""

    def __init__(self, workers: int) -> None:
        # Port 0: worker i would take --port + i, which nobody checked is free.
        # --dave off, as VoxgateRelay: the figure is the transport relay's.
        super().__init__(
            start_node("--workers", str(workers), "--dave", "off", ports=(0, 0, free_port()))
        )
        # One worker is the plain single-process node, which lists no workers.
        listed = self.node.health().get("workers", [])
        self.worker_pids = [int(worker["pid"]) for worker in listed]
        cores = os.cpu_count() or 1
        # The generator is on core 1: worker 1 is there too.
        self.generator_shares_core = len(self.worker_pids) > 1
        if hasattr(os, "sched_setaffinity"):
            for index, pid in enumerate(self.worker_pids or [self.pid]):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(pid, {index % cores})

    def processes(self) -> list[int]:
        return [self.pid, *self.worker_pids]


async def wait_for_dave_groups(members: list[list[Member]], timeout: float) -> None:
    """Until every channel's members are all ready in one group (same epoch, every member
    in it, no transition pending); RuntimeError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def established(channel: list[Member]) -> bool:
        daves = [member.connection.dave for member in channel if isinstance(member, VoxgateMember)]
        return (
            all(dave.ready and dave.awaiting_execute is None for dave in daves)
            and len({dave.epoch for dave in daves}) == 1
            and all(len(dave.group_user_ids()) == len(channel) for dave in daves)
        )

    while not all(established(channel) for channel in members):
        if loop.time() > deadline:
            waiting = sum(not established(channel) for channel in members)
            raise RuntimeError(f"{waiting} channels' DAVE groups not established in {timeout} s")
        await asyncio.sleep(0.05)


class CeilingRelay(Relay):
    """relay.c, or anything run as ``command PORT MEMBERS_FILE`` that does its job."""

    name = "ceiling"

    def __init__(
        self, command: Sequence[str], channels: int, per_channel: int, cpu: int | None
    ) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        folder = Path(tempfile.mkdtemp(prefix="voxgate-ceiling-"))
        self.keys: dict[tuple[int, int], tuple[int, bytes]] = {}
        lines = []
        for channel in range(channels):
            for index in range(per_channel):
                ssrc = channel * 1000 + index + 1
                key = os.urandom(32)
                self.keys[channel, index] = (ssrc, key)
                lines.append(f"{channel} {ssrc} {key.hex()}")
        members_file = folder / "members"
        members_file.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(
            [*command, str(self.port), str(members_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()  # "ready N members"
        self.pid = self.process.pid
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.pid, {cpu})

    async def join(self, channel: int, index: int, mode: str, tally: Tally) -> Member:
        ssrc, key = self.keys[channel, index]
        member = RawMember(ssrc, key, tally)
        await member.join(self.port)
        return member

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _build(source: Path, what: str) -> tuple[Path | None, str]:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None, "no C compiler found"
    if not Path("/usr/include/openssl/evp.h").exists():
        return None, "OpenSSL headers missing (Debian: apt-get install libssl-dev)"
    binary = Path(tempfile.mkdtemp(prefix="voxgate-bench-")) / source.stem
    done = subprocess.run(
        [compiler, "-O2", "-o", str(binary), str(source), "-lcrypto"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return None, f"the {what} did not build: {done.stderr.strip()[:200]}"
    return binary, ""


def build_ceiling() -> tuple[Path | None, str]:
    """Compile the C relay; (binary, "") or (None, why not)."""
    return _build(CEILING_SOURCE, "C relay")


def build_loadgen() -> tuple[Path | None, str]:
    """Compile the C generator's media half; (binary, "") or (None, why not)."""
    return _build(LOADGEN_SOURCE, "C load generator")


async def measure(
    relay: Relay,
    channels: int,
    per_channel: int,
    speakers: int,
    modes: Sequence[str],
    seconds: float,
    payload_sizes: tuple[int, int] = (60, 160),
    loadgen: Path | None = None,
) -> Step:
    """Stream for ``seconds`` on ``channels`` x ``per_channel`` members, count.

    The members are the relay's :meth:`Relay.join_channels` (joined for this step, or with
    a :class:`Pool` kept from earlier steps). With ``loadgen`` (and modes it speaks)
    the C generator sends and receives for them; otherwise this process does, as a Python
    generator.
    """
    tally = Tally()
    rss_before = relay.rss_bytes()
    members = await relay.join_channels(channels, per_channel, modes, tally)
    try:
        rss_per_session = relay.rss_per_session_kb(rss_before, members)
        template = await relay.payload_template(members)
        if loadgen is not None and set(modes) <= LOADGEN_MODES.keys():
            return await _drive_with_loadgen(
                loadgen,
                relay,
                members,
                speakers,
                seconds,
                rss_per_session,
                template,
                nonce_base=relay.nonce_base(),
            )
        if relay.dave:
            # Members' own send_opus would DAVE-encrypt the frame again.
            raise RuntimeError("DAVE payloads need the C load generator")
        return await _drive_in_python(
            relay, members, tally, speakers, seconds, payload_sizes, rss_per_session, template
        )
    finally:
        await relay.release(members)


async def _drive_in_python(
    relay: Relay,
    members: list[list[Member]],
    tally: Tally,
    speakers: int,
    seconds: float,
    payload_sizes: tuple[int, int],
    rss_per_session: float,
    template: bytes | None,
) -> Step:
    talkers = [member for channel in members for member in channel[:speakers]]
    rng = random.Random(7)
    sizes = [rng.randint(*payload_sizes) for _ in range(256)]
    loop = asyncio.get_running_loop()

    async def stream(duration: float) -> int:
        sent = 0
        start = loop.time()
        frame = 0
        while loop.time() - start < duration:
            stamp = time.monotonic_ns()
            for index, member in enumerate(talkers):
                size = sizes[(frame + index) & 255]
                if template is not None:
                    member.send(_STAMP.pack(stamp, index) + template[_STAMP.size :])
                else:
                    member.send(_STAMP.pack(stamp, index).ljust(size, b"\x55"))
                sent += 1
            frame += 1
            await asyncio.sleep(max(0.0, start + frame * FRAME_S - loop.time()))
        return sent

    await stream(WARMUP_S)  # warm-up: addresses learnt, caches filled
    await asyncio.sleep(0.3)
    tally.received = 0
    tally.latencies_ns.clear()
    cpu_before = relay.cpu_seconds()
    started = time.monotonic()
    sent = await stream(seconds)
    took = time.monotonic() - started
    await asyncio.sleep(0.3)  # let the last packets land
    cpu = relay.cpu_seconds() - cpu_before
    per_channel = len(members[0]) if members else 0
    expected = sent * (per_channel - 1)
    received = tally.received
    latencies = sorted(tally.latencies_ns) or [0]
    return Step(
        channels=len(members),
        members=sum(map(len, members)),
        offered_pps=round(expected / took),
        forwarded_pps=round(received / took),
        loss=round(max(0.0, 1 - received / expected), 5) if expected else 0.0,
        latency_p50_ms=round(statistics.median(latencies) / 1e6, 3),
        latency_p99_ms=round(
            latencies[int(len(latencies) * 0.99) - 1 if len(latencies) > 1 else 0] / 1e6, 3
        ),
        server_cpu=round(cpu / took, 3),
        cpu_ms_per_1000=round(cpu * 1000 / max(received / 1000, 1e-9), 3),
        rss_per_session_kb=round(rss_per_session, 1),
    )


async def _drive_with_loadgen(
    loadgen: Path,
    relay: Relay,
    members: list[list[Member]],
    speakers: int,
    seconds: float,
    rss_per_session: float,
    template: bytes | None = None,
    *,
    nonce_base: int | None = None,
) -> Step:
    """``nonce_base``: where every member's nonce counter (and RTP sequence) starts, the
    members file's optional seventh column; None: at 0."""
    load = _Load(relay, members, speakers, rss_per_session, nonce_base)
    figures, cpu, window = await _run_loadgen(loadgen, [load], seconds, template)
    return _step(figures, load, cpu, window, template)


@dataclass
class _Load:
    """One relay's share of a run of the C generator: its members and their speakers."""

    relay: Relay
    members: list[list[Member]]
    speakers: int
    rss_per_session: float
    nonce_base: int | None = None


#: The turns of :func:`_drive_in_turns`: each relay's load runs this long, then the next's
#: (whole frames, or a speaker early in the frame sends once more per slice than one late
#: in it; two frames, since what moves this machine's CPU per packet changes within 100 ms).
SLICE_MS = 40.0


async def _drive_in_turns(
    loadgen: Path, loads: list[_Load], seconds: float, template: bytes | None
) -> list[Step]:
    """One run of the C generator for several relays on one core, their loads taking turns
    of :data:`SLICE_MS` for ``seconds`` each: a :class:`Step` per relay, its CPU read by the
    generator over its own turns (each with the drain after it) and its rates over them.

    Relays measured one after the other see different seconds of a shared machine, and on
    this kind of machine a second differs from the next by a fifth in CPU per packet;
    measured at once they share a core and each other's cache misses, which costs the
    larger process more. In turns of two frames, both see the same seconds, one at a time."""
    figures, _, _ = await _run_loadgen(loadgen, loads, seconds * len(loads), template)
    steps = []
    for load, group in zip(loads, figures["groups"], strict=True):
        if group["cpu_seconds"] < 0:
            raise RuntimeError("the C load generator could not read a relay's CPU")
        steps.append(
            _step(group | {"busy": figures["busy"]}, load, group["cpu_seconds"],
                  group["active_seconds"], template)
        )  # fmt: skip
    return steps


async def _run_loadgen(
    loadgen: Path, loads: list[_Load], seconds: float, template: bytes | None
) -> tuple[dict[str, Any], float, float]:
    """Run the C generator once for ``loads`` (in turns when there are several): its JSON
    figures, the CPU seconds of the only relay over the measured window (0 with several:
    the generator reads each one's) and that window's seconds."""
    lines = []
    fds = []
    in_turns = len(loads) > 1
    channel_base = 0
    for group, load in enumerate(loads):
        counter = ""
        if load.nonce_base is not None or in_turns:
            counter = f" {(load.nonce_base or 0) & 0xFFFF_FFFF}"
        suffix = f"{counter} {group}" if in_turns else counter
        for channel, joined in enumerate(load.members):
            for index, member in enumerate(joined):
                fd, ssrc, mode, key = member.hand_over()
                fds.append(fd)
                speaker = int(index < load.speakers)
                lines.append(
                    f"{fd} {channel_base + channel} {ssrc} {speaker} {LOADGEN_MODES[mode]} "
                    f"{key.hex()}{suffix}"
                )
        channel_base += len(load.members)
    shares_core = any(load.relay.generator_shares_core for load in loads)
    environment = dict(os.environ)
    if shares_core or (os.cpu_count() or 1) < 2:
        environment["LOADGEN_WAIT"] = "sleep"
    if in_turns:
        environment["LOADGEN_SLICE_MS"] = str(SLICE_MS)
        environment["LOADGEN_GROUP_PIDS"] = "/".join(
            ",".join(map(str, load.relay.processes())) for load in loads
        )
    members_file = Path(tempfile.mkdtemp(prefix="voxgate-loadgen-")) / "members"
    members_file.write_text("\n".join(lines) + "\n")
    process = await asyncio.create_subprocess_exec(
        str(loadgen),
        str(members_file),
        str(WARMUP_S),
        str(seconds),
        *([template.hex()] if template is not None else []),
        pass_fds=fds,
        stdout=asyncio.subprocess.PIPE,
        env=environment,
    )
    assert process.stdout is not None
    cpu_before = cpu_after = 0.0
    figures: dict[str, Any] = {}
    async for raw in process.stdout:
        line = raw.decode().strip()
        if line == "measure" and not in_turns:
            cpu_before = loads[0].relay.cpu_seconds()
        elif line == "end" and not in_turns:
            cpu_after = loads[0].relay.cpu_seconds()
        elif line.startswith("{"):
            figures = json.loads(line)
    if await process.wait() != 0 or not figures:
        raise RuntimeError(f"the C load generator failed ({process.returncode})")
    return figures, cpu_after - cpu_before, float(figures["seconds"])


def _step(
    figures: dict[str, Any], load: _Load, cpu: float, took: float, template: bytes | None
) -> Step:
    """A :class:`Step` of the generator's figures for one relay: ``cpu`` seconds of it, its
    packets over ``took`` seconds."""
    received, expected = int(figures["received"]), int(figures["expected"])
    return Step(
        channels=len(load.members),
        members=sum(len(joined) for joined in load.members),
        offered_pps=round(expected / took),
        forwarded_pps=round(received / took),
        loss=round(max(0.0, 1 - received / expected), 5) if expected else 0.0,
        latency_p50_ms=figures["latency_p50_ms"],
        latency_p99_ms=figures["latency_p99_ms"],
        server_cpu=round(cpu / max(took, 1e-9), 3),
        cpu_ms_per_1000=round(cpu * 1000 / max(received / 1000, 1e-9), 3),
        rss_per_session_kb=round(load.rss_per_session, 1),
        generator="c",
        payloads_checked=received if template is not None else None,
        template_mismatch=figures["template_mismatch"] if template is not None else None,
        dave_trailer=figures["dave_trailer"] if template is not None else None,
        generator_busy=figures["busy"],
    )


#: Packets a level may lose and still hold.
LOSS_THRESHOLD = 0.001
#: The median latency above which a relay has a standing queue.
STANDING_QUEUE_MS = 5.0
SATURATION_RULE = f"loss <= {LOSS_THRESHOLD:.1%} and median latency <= {STANDING_QUEUE_MS:g} ms"


def holds(step: Step) -> bool:
    """Whether a relay kept up with a level of load.

    Loss alone is not enough: the relay's 4 MB socket buffer absorbs seconds of a load it
    cannot carry, so within a step's few seconds a relay past its capacity first shows as
    a queue that grows, in every packet's latency, and as loss only later. A median
    latency of milliseconds is that queue: forwarding itself takes microseconds.
    """
    return step.loss <= LOSS_THRESHOLD and step.latency_p50_ms <= STANDING_QUEUE_MS


#: Rounds of the interleaved search: each gives every relay one saturation point, so each
#: ratio one value per round.
ROUNDS = 3
#: The widest interval of a ratio's median (:func:`median_interval`) that still gives a
#: figure: ±0.05 around it. Wider, the machine was too noisy to tell.
NOISE_LIMIT = 0.10
#: The confidence the interval of a median is taken at, once there are enough rounds.
CONFIDENCE = 0.95


@dataclass
class Contender:
    """A relay under test in the interleaved search, and the load it gets."""

    make: Callable[[int], Relay]
    modes: Sequence[str] = (AES,)
    per_channel: int = 10
    speakers: int = 2

    async def step(self, level: int, seconds: float, loadgen: Path | None) -> Step:
        """One :func:`measure` of a relay made for ``level`` channels, stopped after."""
        relay = self.make(level)
        try:
            return await self.measure(relay, level, seconds, loadgen)
        finally:
            relay.stop()

    async def measure(self, relay: Relay, level: int, seconds: float, loadgen: Path | None) -> Step:
        return await measure(
            relay, level, self.per_channel, self.speakers, self.modes, seconds, loadgen=loadgen
        )


async def measure_in_turns(
    pools: Sequence[Pool], contenders: Sequence[Contender], level: int, seconds: float,
    loadgen: Path,
) -> list[Step]:
    """:meth:`Contender.measure` of each pool at ``level``, all in one run of the C
    generator, their loads taking turns (:func:`_drive_in_turns`)."""
    loads = []
    templates = set()
    try:
        for pool, contender in zip(pools, contenders, strict=True):
            if not set(contender.modes) <= LOADGEN_MODES.keys():
                raise ValueError(f"the C generator does not speak all of {contender.modes}")
            rss_before = pool.rss_bytes()
            members = await pool.join_channels(
                level, contender.per_channel, contender.modes, Tally()
            )
            templates.add(await pool.payload_template(members))
            loads.append(
                _Load(pool, members, contender.speakers,
                      pool.rss_per_session_kb(rss_before, members), pool.nonce_base())
            )  # fmt: skip
        if len(templates) != 1:
            raise ValueError("relays measured in turns send one payload template")
        return await _drive_in_turns(loadgen, loads, seconds, templates.pop())
    finally:
        for load in loads:
            await load.relay.release(load.members)


@dataclass
class _Search:
    """One relay's saturation search in one round: double until a level does not
    :func:`hold` (or halve until one does), then bisect to within ``resolution``."""

    level: int | None
    limit: int
    resolution: float
    best: Step | None = None
    failed_at: int | None = None
    #: The level that failed once and is being measured again.
    retried: int | None = None

    def record(self, step: Step) -> None:
        if holds(step):
            self.best = step
        elif self.retried != step.channels:
            # A level that fails gets a second try before the search goes below it: a
            # second's disturbance (another process, the hypervisor) fails a level that a
            # relay holds far more often than luck holds one it cannot, where the queue
            # grows for the whole step.
            self.retried = step.channels
            return
        else:
            self.failed_at = step.channels
        self.level = self._next()

    def _next(self) -> int | None:
        if self.failed_at is None:
            assert self.best is not None
            level = self.best.channels * 2
            return level if level <= self.limit else None
        if self.best is None:
            lower = self.failed_at // 2
            return lower if lower >= 1 else None
        gap = self.failed_at - self.best.channels
        if gap > max(1, self.resolution * self.best.channels):
            return (self.best.channels + self.failed_at) // 2
        return None


async def interleave(
    contenders: dict[str, Contender],
    seconds: float,
    start: int,
    limit: int,
    loadgen: Path | None = None,
    *,
    rounds: int = ROUNDS,
    resolution: float = 0.05,
) -> tuple[dict[str, list[Step | None]], dict[str, list[dict[str, Any]]]]:
    """Saturate every contender ``rounds`` times, level by level in turn (A B A B ...).

    A relay measured minutes after another on a shared machine sees another machine: the
    run of one relay to its saturation, then the other's, turns every change of background
    load into a change of ratio. Taken in turn, a level of one and a level of the other,
    both see the same weather; and round after round, how far apart the ratios fall says
    how much weather there was. Round 1 starts at ``start`` channels; later rounds start
    at half the contender's previous saturation. Returns each contender's saturation step
    per round (None where no level held) and every step measured, with its round.
    """
    best: dict[str, list[Step | None]] = {name: [] for name in contenders}
    steps: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    for round_number in range(rounds):
        searches = {}
        for name in contenders:
            previous = best[name][-1] if best[name] else None
            first = max(1, previous.channels // 2) if previous is not None else start
            searches[name] = _Search(first, limit, resolution)
        while any(search.level is not None for search in searches.values()):
            for name, contender in contenders.items():
                search = searches[name]
                if search.level is None:
                    continue
                step = await contender.step(search.level, seconds, loadgen)
                steps[name].append({**asdict(step), "round": round_number + 1})
                search.record(step)
        for name, search in searches.items():
            best[name].append(search.best)
    return best, steps


def median_pps(rounds: Sequence[Step | None]) -> int:
    """The median saturation of a contender's rounds (0 for a round where none held)."""
    return round(statistics.median([step.forwarded_pps if step else 0 for step in rounds]))


def ratio(numerator: Sequence[Step | None], denominator: Sequence[Step | None]) -> dict[str, Any]:
    """The median ratio of two contenders' saturations over the rounds, and its spread.

    ``median`` is None (and ``note`` says why) when a round gave no figure or the ratios
    spread wider than :data:`NOISE_LIMIT`: a figure from such a run would not be one.
    """
    return _summary(
        [
            a.forwarded_pps / b.forwarded_pps
            for a, b in zip(numerator, denominator, strict=True)
            if a is not None and b is not None and b.forwarded_pps
        ],
        len(numerator),
        "a round had no level that held",
    )


def cpu_ratio(numerator: Sequence[Step], denominator: Sequence[Step]) -> dict[str, Any]:
    """The denominator's CPU per forwarded packet over the numerator's, round by round (the
    steps of :func:`compare_costs`): how many packets one core of the numerator forwards
    for each the denominator's does.

    Rounds measured in blocks are summarized as :func:`ratio` summarizes rounds, a block's
    median standing for its rounds: the rounds of a block share one pair of processes and
    that pair's luck, so sixteen rounds of four blocks are four samples of it, not sixteen.
    ``rounds`` keeps every round's ratio. No figure either when more than an eighth of the
    rounds did not hold for both.
    """
    missing = "a round's level did not hold for both"
    ratios: list[float] = []
    blocks: dict[int | None, list[float]] = {}
    for a, b in zip(numerator, denominator, strict=True):
        if holds(a) and holds(b) and a.cpu_ms_per_1000:
            ratios.append(b.cpu_ms_per_1000 / a.cpu_ms_per_1000)
            blocks.setdefault(a.block, []).append(ratios[-1])
    if None in blocks or not numerator:
        return _summary(ratios, len(numerator), missing)
    measured = {step.block for step in numerator}
    medians = [statistics.median(block) for block in blocks.values()]
    summary = _summary(medians, len(measured), missing)
    summary["rounds"] = [round(value, 3) for value in ratios]
    if len(ratios) < len(numerator) - len(numerator) // 8 and summary["median"] is not None:
        summary["note"] = f"too noisy to give a figure: {missing}"
        summary["median"] = None
    return summary


def median_interval(values: Sequence[float]) -> tuple[float, float]:
    """Where the median of what ``values`` sample lies, with :data:`CONFIDENCE`: the
    narrowest pair of order statistics, the k-th from each end, that brackets the median
    that often whatever the distribution (the sign test's interval). Too few values for it
    (five or fewer at 95%), the smallest and the largest.

    A spread, the largest less the smallest, widens with every round added; this narrows,
    as the median it brackets grows surer. Sixteen rounds that scatter ±7% (one step's
    CPU per packet on a shared machine) bracket their median within about ±3%.
    """
    ordered = sorted(values)
    count = len(ordered)
    k = 1
    # P(fewer than k+1 of the values below the median) = P(Binomial(count, 1/2) <= k).
    while 2 * sum(math.comb(count, i) for i in range(k + 1)) / 2**count <= 1 - CONFIDENCE:
        k += 1
    return ordered[k - 1], ordered[count - k]


def _summary(ratios: list[float], rounds: int, missing: str) -> dict[str, Any]:
    """The median of ``ratios`` (one per round that gave one), their spread and the
    median's :func:`median_interval`; the median is None, with a note, when more than an
    eighth of the ``rounds`` gave no ratio or the interval is wider than
    :data:`NOISE_LIMIT`."""
    summary: dict[str, Any] = {
        "ratios": [round(value, 3) for value in ratios],
        "median": round(statistics.median(ratios), 3) if ratios else None,
        "spread": round(max(ratios) - min(ratios), 3) if ratios else None,
    }
    if ratios:
        low, high = median_interval(ratios)
        summary["interval"] = [round(low, 3), round(high, 3)]
    if len(ratios) < max(rounds - rounds // 8, 1):
        summary["note"] = f"too noisy to give a figure: {missing}"
        summary["median"] = None
    elif (width := summary["interval"][1] - summary["interval"][0]) > NOISE_LIMIT + 1e-9:
        summary["note"] = (
            f"too noisy to give a figure: the median of {summary['ratios']} lies in "
            f"{summary['interval']}, {width:.3f} wide > {NOISE_LIMIT}; run again on a quiet "
            "machine"
        )
        summary["median"] = None
    return summary


#: The share of the lower saturation at which :func:`compare_costs` measures a pair.
COST_LOAD = 0.8
#: Rounds of :func:`compare_costs`, and the seconds each of its steps measures: its
#: steps are cheap (the members stay joined), and many short ones, each pair of them
#: seconds apart, see the same machine better than a few long ones.
COST_ROUNDS = 16
COST_STEP_S = 1.0
#: Fresh pairs of relays the rounds of :func:`compare_costs` are spread over.
COST_BLOCKS = 4
#: How many times a round of :func:`compare_costs` is measured before it counts as one
#: that did not hold (:func:`measure_round`).
COST_ATTEMPTS = 3


#: Channels a pool of :func:`compare_costs` joins before the next pool's turn.
JOIN_TURN = 10


async def compare_costs(
    contenders: dict[str, Contender],
    level: int,
    seconds: float,
    loadgen: Path | None,
    rounds: int = COST_ROUNDS,
    blocks: int = COST_BLOCKS,
) -> dict[str, list[Step]]:
    """Every contender at one load, ``level`` channels, in turn (A B A B ...), ``rounds``
    times: the steps whose CPU per forwarded packet :func:`cpu_ratio` compares.

    A saturation is the largest load that held: it moves with whatever else took the
    relay's core during a step. The CPU a relay spends per packet at a load both hold is
    counted in its own process's time, which another process or the hypervisor taking the
    core does not add to: in the run of 2026-12-01 the C path's and the C relay's
    saturations spread 0.354 as a ratio over three rounds, their CPU per packet 0.078.

    The rounds are measured in ``blocks``. In each, every contender is one :class:`Pool`,
    up and joined before the block's first step: a step is then the load alone, seconds
    rather than the half minute of joining a level's members. With the C generator a
    round is one run of it in which the contenders' loads take turns of :data:`SLICE_MS`
    (:func:`measure_in_turns`), so every contender's step spans the same seconds of
    the machine; without it, the contenders' steps follow one another. Each block starts
    its relays afresh, the contenders in the other order: two nodes of the same code, each
    measured sixteen times, differed by 5% in CPU per packet (where a process's memory
    landed, what its tables hash to), and a single pair of processes would carry that into
    the ratio however many rounds it ran.
    """
    steps: dict[str, list[Step]] = {name: [] for name in contenders}
    names = list(contenders)
    blocks = max(1, min(blocks, rounds))
    for block in range(blocks):
        order = names if block % 2 == 0 else names[::-1]
        pools: dict[str, Pool] = {}
        try:
            for name in order:
                pools[name] = Pool(contenders[name].make(level))
            # Their members join in turns, a few channels at a time: when one relay's members
            # had all joined before the other's, the later relay measured 5-10% cheaper in
            # A/A runs, block after block (its blocks alternated 0.96, 1.05, 0.91, 1.04;
            # joined in turns 0.977, 0.988, 0.969, 0.975; 2026-12-02).
            for joined in range(JOIN_TURN, level + JOIN_TURN, JOIN_TURN):
                for name in order:
                    contender = contenders[name]
                    await pools[name].join_channels(
                        min(joined, level), contender.per_channel, contender.modes, Tally()
                    )
            measure_once = functools.partial(
                _measure_pools,
                [pools[name] for name in order],
                [contenders[name] for name in order],
                level,
                seconds,
                loadgen,
            )
            for _ in range(rounds * (block + 1) // blocks - rounds * block // blocks):
                measured = await measure_round(measure_once)
                for name, step in zip(order, measured, strict=True):
                    steps[name].append(replace(step, block=block + 1))
        finally:
            for pool in pools.values():
                await pool.close()
    return steps


async def _measure_pools(
    pools: list[Pool],
    contenders: list[Contender],
    level: int,
    seconds: float,
    loadgen: Path | None,
) -> list[Step]:
    """One step of each of ``pools`` at ``level``: in turns in one run of the C generator
    where it speaks their modes, else one after the other."""
    if loadgen is not None and all(
        set(contender.modes) <= LOADGEN_MODES.keys() for contender in contenders
    ):
        return await measure_in_turns(pools, contenders, level, seconds, loadgen)
    return [
        await contender.measure(pool, level, seconds, loadgen)
        for pool, contender in zip(pools, contenders, strict=True)
    ]


async def measure_round(
    measure_once: Callable[[], Awaitable[list[Step]]], attempts: int = COST_ATTEMPTS
) -> list[Step]:
    """One round of :func:`compare_costs`: ``measure_once`` until every relay's step
    holds, at most ``attempts`` times; the last steps, each with its ``attempts``.

    A round that does not hold is measured again, as the search tries a level again: the
    CPU per packet of a relay with a standing queue is not that of one keeping up. Whether
    a step holds is its latency and loss, never the CPU compared, so a round measured again
    is not chosen for its ratio. The machine's stalls that fail a round take both relays
    in the same second and can last past the next one (2026-12-03: both relays' median
    latency 7 to 20 ms in two steps a second apart), hence more than one more try.
    """
    tried = 1
    measured = await measure_once()
    while tried < attempts and not all(map(holds, measured)):
        tried += 1
        measured = await measure_once()
    return [replace(step, attempts=tried) for step in measured]


def cost_level(*saturations: Sequence[Step | None]) -> int:
    """:data:`COST_LOAD` of the lowest median saturation, in channels (at least 1)."""
    lowest = min(
        (middle.channels for rounds in saturations if (middle := _median_step(rounds))),
        default=1,
    )
    return max(1, int(lowest * COST_LOAD))


def pin_generator(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def _raise_open_files_limit() -> None:
    """Thousands of members hold a WebSocket and a UDP socket each in this process."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _median_step(rounds: Sequence[Step | None]) -> Step | None:
    """The round whose saturation is the median one (rounds where none held count as 0)."""
    ranked = sorted(rounds, key=lambda step: step.forwarded_pps if step else 0)
    return ranked[len(ranked) // 2] if ranked else None


def _saturation(rounds: Sequence[Step | None], steps: list[dict[str, Any]]) -> dict[str, Any]:
    middle = _median_step(rounds)
    return {
        "steps": steps,
        "forwarded_pps": median_pps(rounds),
        "forwarded_pps_rounds": [step.forwarded_pps if step else 0 for step in rounds],
        "saturation_channels": middle.channels if middle else 0,
        "cpu_ms_per_1000": middle.cpu_ms_per_1000 if middle else None,
        # Near 1, the generator rather than the relay may have failed the levels above.
        "generator_busy_max": max(
            (step["generator_busy"] for step in steps if step.get("generator_busy") is not None),
            default=None,
        ),
    }


def _put_ratio(result: dict[str, Any], key: str, summary: dict[str, Any]) -> None:
    """``key`` (the median ratio, or None when too noisy), ``key_spread``, ``key_rounds``
    and ``key_note``, flat in the result as the bench has always reported ratios."""
    result[key] = summary["median"]
    result[f"{key}_spread"] = summary["spread"]
    result[f"{key}_rounds"] = summary.get("rounds", summary["ratios"])
    if "rounds" in summary:
        result[f"{key}_blocks"] = summary["ratios"]
    if "interval" in summary:
        result[f"{key}_interval"] = summary["interval"]
    if "note" in summary:
        result[f"{key}_note"] = summary["note"]


async def run(
    seconds: float = 3.0,
    quick: bool = False,
    ceiling: bool = True,
    loadgen: Path | None = None,
    loadgen_note: str = "",
    bare: bool = False,
    rounds: int = ROUNDS,
    cost_rounds: int = COST_ROUNDS,
    cost_seconds: float = COST_STEP_S,
) -> dict[str, Any]:
    """Every scenario of ``voxgate bench relay``; one dict of figures.

    The saturations at fan-out 10 (voxgate on its default media path, the C relay,
    voxgate with XChaCha20 members, and with ``bare`` voxgate's pure-Python path and
    ``bare_relay.py``) are searched together, level by level in turn, ``rounds`` times
    (:func:`interleave`); each ratio is the median of its rounds, with their spread, or
    None with a note when the spread says the machine was too noisy. Then each pair (voxgate
    and the C relay, XChaCha20 and AES-GCM, the Python path and ``bare_relay.py``) is
    measured in turn at :data:`COST_LOAD` of the lower saturation, ``cost_rounds`` steps
    of ``cost_seconds`` each with the members joined once (:func:`compare_costs`), and
    ``cpu_…`` compares their CPU per forwarded packet: the median of the rounds' blocks,
    given when the blocks lie within ±0.05 (:func:`cpu_ratio`). The latency at half of
    voxgate's saturation is measured so too, beside the C relay's at the same load.

    ``loadgen`` is the built C generator (:func:`build_loadgen`); without it this process
    generates the load, and its own queueing then shows in the latencies.
    """
    cores = os.cpu_count() or 1
    server_cpu, generator_cpu = (0, 1) if cores >= 2 else (None, None)
    pin_generator(generator_cpu)
    _raise_open_files_limit()
    limit = 4 if quick else 512
    start = 1 if quick else 8
    result: dict[str, Any] = {
        "machine": machine(),
        "seconds_per_step": seconds,
        "generator": "c" if loadgen else "python",
        "saturation_rule": SATURATION_RULE,
        "rounds": rounds,
        "cost_rounds": cost_rounds,
        "cost_seconds_per_step": cost_seconds,
        "noise_limit": NOISE_LIMIT,
    }
    if loadgen_note:
        result["generator_note"] = loadgen_note
    probe = VoxgateRelay.pinned(server_cpu)
    try:
        result["fast_path"] = probe.node.media_path()
    finally:
        probe.stop()
    # The nodes run voxgate serve's default (the C path's tick; server/fastpath.py).
    result["media_tick_ms"] = ServerConfig.media_tick_ms

    contenders = {"voxgate": Contender(lambda channels: VoxgateRelay.pinned(server_cpu))}
    binary = None
    if ceiling:
        binary, why = build_ceiling()
        if binary is None:
            result["ceiling_note"] = why
        else:
            command = [str(binary)]
            contenders["ceiling"] = Contender(
                lambda channels: CeilingRelay(command, channels, 10, server_cpu)
            )
    contenders["xchacha"] = Contender(
        lambda channels: VoxgateRelay.pinned(server_cpu), modes=(XCHACHA,)
    )
    if bare:
        if result["fast_path"] != "python":
            contenders["python_path"] = Contender(
                lambda channels: VoxgateRelay.pinned(server_cpu, python_path=True)
            )
        bare_command = [sys.executable, str(BARE_RELAY)]
        contenders["bare_python"] = Contender(
            lambda channels: CeilingRelay(bare_command, channels, 10, server_cpu)
        )
    best, steps = await interleave(contenders, seconds, start, limit, loadgen, rounds=rounds)

    result["fanout10"] = _saturation(best["voxgate"], steps["voxgate"])
    middle = _median_step(best["voxgate"])
    result["forwarded_pps"] = result["fanout10"]["forwarded_pps"]
    result["saturation_channels"] = middle.channels if middle else 0
    result["loss"] = middle.loss if middle else 1.0
    result["cpu_ms_per_1000"] = middle.cpu_ms_per_1000 if middle else None
    # Latency at half of voxgate's saturation, the C relay's at the same load beside it:
    # what the machine alone adds to a packet's time (another tenant's thread or the
    # hypervisor taking the core for milliseconds) shows in both, and only there.
    half = max(1, (middle.channels if middle else 1) // 2)
    at_half_pair = {name: contenders[name] for name in ("voxgate", "ceiling") if name in contenders}
    halves = await compare_costs(at_half_pair, half, cost_seconds, loadgen, cost_rounds)
    at_half = sorted(halves["voxgate"], key=lambda step: step.latency_p99_ms)[
        len(halves["voxgate"]) // 2
    ]
    result["rss_per_session_kb"] = at_half.rss_per_session_kb
    result["at_half_saturation"] = asdict(at_half)
    result["latency_p50_ms"] = _median_ms(step.latency_p50_ms for step in halves["voxgate"])
    result["latency_p99_ms"] = _median_ms(step.latency_p99_ms for step in halves["voxgate"])
    result["latency_p99_ms_rounds"] = [step.latency_p99_ms for step in halves["voxgate"]]
    if "ceiling" in halves:
        result["ceiling_latency_p99_ms_at_half"] = _median_ms(
            step.latency_p99_ms for step in halves["ceiling"]
        )
        result["ceiling_latency_p99_ms_at_half_rounds"] = [
            step.latency_p99_ms for step in halves["ceiling"]
        ]
        _put_ratio(result, "cpu_ratio_at_half", cpu_ratio(halves["voxgate"], halves["ceiling"]))

    for name, channels, per_channel, speakers, modes in (
        ("fanout100", 1, 100 if not quick else 20, 1, [AES]),
        ("mixed_modes", half, 10, 2, [AES, XCHACHA]),
    ):
        relay = VoxgateRelay.pinned(server_cpu)
        try:
            result[name] = asdict(
                await measure(
                    relay, channels, per_channel, speakers, modes, seconds, loadgen=loadgen
                )
            )
        finally:
            relay.stop()

    result["xchacha"] = _saturation(best["xchacha"], steps["xchacha"])
    _put_ratio(result, "xchacha_to_aes", ratio(best["xchacha"], best["voxgate"]))

    result["ceiling_pps"] = None
    result["ratio"] = None
    if "ceiling" in contenders:
        result["ceiling"] = _saturation(best["ceiling"], steps["ceiling"])
        result["ceiling_pps"] = result["ceiling"]["forwarded_pps"]
        result["ceiling_saturation_channels"] = result["ceiling"]["saturation_channels"]
        _put_ratio(result, "ratio", ratio(best["voxgate"], best["ceiling"]))
        if all(holds(Step(**_fields(step))) for step in steps["ceiling"]):
            result["ceiling_note"] = "the C relay held every level tried: its ceiling is higher"
    if bare:
        python_key = "python_path" if "python_path" in contenders else "voxgate"
        result["python_path"] = _saturation(best[python_key], steps[python_key])
        result["python_path_pps"] = result["python_path"]["forwarded_pps"]
        result["bare_python"] = _saturation(best["bare_python"], steps["bare_python"])
        result["bare_python_pps"] = result["bare_python"]["forwarded_pps"]
        _put_ratio(result, "ratio_to_bare_python", ratio(best[python_key], best["bare_python"]))
        if python_key != "voxgate":
            _put_ratio(result, "native_to_python", ratio(best["voxgate"], best[python_key]))

    # The same comparisons by CPU per forwarded packet, each pair at one load both hold;
    # and so channels of both modes against AES-GCM ones, at the fan-out 10 pair's load,
    # and fan-out 100 (one speaker) against the C relay at the packet rate of half of
    # voxgate's saturation. At the fan-out 10 pair's rate, fan-out 100's median latency
    # was 1.2 to 4.4 ms for both relays (each packet in is 99 out, the generator's
    # receiving with them), so near the 5 ms a level holds by that a stall of the
    # machine failed a quarter of the rounds (2026-12-03).
    pairs = [("cpu_ratio", "voxgate", "ceiling"), ("cpu_xchacha_to_aes", "xchacha", "voxgate")]
    if bare:
        pairs.append(("cpu_ratio_to_bare_python", python_key, "bare_python"))
    levels = {
        key: cost_level(best[ours], best[theirs])
        for key, ours, theirs in pairs
        if ours in best and theirs in best
    }
    fanout10 = levels.get("cpu_ratio", levels["cpu_xchacha_to_aes"])
    wide = 20 if quick else 100
    per_wide_channel = (wide - 1) / FRAME_S  # packets/s forwarded with one speaker
    per_narrow_channel = 2 * 9 / FRAME_S  # two speakers, nine receivers each
    contenders["mixed_modes"] = Contender(
        lambda channels: VoxgateRelay.pinned(server_cpu), modes=(AES, XCHACHA)
    )
    pairs.append(("cpu_mixed_to_aes", "mixed_modes", "voxgate"))
    levels["cpu_mixed_to_aes"] = fanout10
    if "ceiling" in contenders:
        contenders["fanout100"] = Contender(
            lambda channels: VoxgateRelay.pinned(server_cpu), per_channel=wide, speakers=1
        )
        contenders["ceiling_fanout100"] = Contender(
            lambda channels: CeilingRelay(command, channels, wide, server_cpu),
            per_channel=wide,
            speakers=1,
        )
        pairs.append(("cpu_ratio_fanout100", "fanout100", "ceiling_fanout100"))
        levels["cpu_ratio_fanout100"] = max(1, round(half * per_narrow_channel / per_wide_channel))
    result["costs"] = {}
    for key, ours, theirs in pairs:
        if key not in levels:
            continue
        level = levels[key]
        pair = {ours: contenders[ours], theirs: contenders[theirs]}
        costs = await compare_costs(pair, level, cost_seconds, loadgen, cost_rounds)
        result["costs"][key] = {
            "channels": level,
            "per_channel": contenders[ours].per_channel,
            **{name: [asdict(step) for step in costs[name]] for name in pair},
        }
        _put_ratio(result, key, cpu_ratio(costs[ours], costs[theirs]))
    return result


def _median_ms(values: Iterable[float]) -> float:
    return round(statistics.median(values), 3)


def _fields(step: dict[str, Any]) -> dict[str, Any]:
    """A step's dict as :class:`Step` takes it (without the round it was measured in)."""
    return {name: value for name, value in step.items() if name != "round"}


def _cpu_by_level(steps: list[dict[str, Any]]) -> dict[int, list[float]]:
    """CPU-ms per 1000 forwarded at each level that held, over the rounds."""
    levels: dict[int, list[float]] = {}
    for step in steps:
        if holds(Step(**_fields(step))) and step["cpu_ms_per_1000"]:
            levels.setdefault(step["channels"], []).append(step["cpu_ms_per_1000"])
    return levels


async def run_workers(
    counts: Sequence[int] = (1, 2),
    seconds: float = 3.0,
    quick: bool = False,
    loadgen: Path | None = None,
    rounds: int = ROUNDS,
) -> dict[str, Any]:
    """Saturation at fan-out 10 of ``voxgate serve --workers N`` for each N in ``counts``,
    searched level by level in turn, ``rounds`` times (:func:`interleave`); ``scaling`` is
    the median ratio of the last count to the first, with its spread.

    Worker i is pinned to core i; the generator stays on core 1, so on a two-core machine
    the second worker shares its core with the generator and the scaling shown is what is
    left of that core, not what a free core would give.
    """
    cores = os.cpu_count() or 1
    pin_generator(1 if cores >= 2 else None)
    _raise_open_files_limit()
    result: dict[str, Any] = {
        "machine": machine(),
        "seconds_per_step": seconds,
        "generator": "c" if loadgen else "python",
        "generator_cpu": 1 if cores >= 2 else None,
        "saturation_rule": SATURATION_RULE,
        "rounds": rounds,
        "noise_limit": NOISE_LIMIT,
    }
    contenders = {
        f"workers_{count}": Contender(lambda channels, count=count: WorkersRelay(count))
        for count in counts
    }
    best, steps = await interleave(
        contenders, seconds, 1 if quick else 8, 4 if quick else 1024, loadgen, rounds=rounds
    )
    for name in contenders:
        result[name] = _saturation(best[name], steps[name])
    first, last = f"workers_{counts[0]}", f"workers_{counts[-1]}"
    if first != last:
        _put_ratio(result, "scaling", ratio(best[last], best[first]))
    if cores < max(counts) + 1:
        result["note"] = (
            f"{cores} cores for {max(counts)} workers and the generator: the workers beyond "
            "the first share a core with the generator"
        )
    return result


async def run_dave(
    seconds: float = 3.0,
    quick: bool = False,
    loadgen: Path | None = None,
    rounds: int = ROUNDS,
) -> dict[str, Any]:
    """``voxgate bench relay --dave``: the relay's cost per packet with DAVE members.

    ``plain``, a ``--dave off`` node whose members join without DAVE, and ``dave``, a
    ``--dave preferred`` node whose members join as DAVE members and, once every channel's
    group is established, send a real DAVE frame of that group, are saturated in turn
    (:func:`interleave`); both send payloads of :data:`DAVE_PAYLOAD_SIZE` bytes. The relay
    never opens a DAVE frame, so ``dave_to_plain`` (the median ratio of their saturations,
    with its spread) should be 1. The DAVE frame is checked to open on another member of its
    group before load starts; every payload received is compared by the C generator with
    the one sent: ``dave_frames_verified`` says the DAVE side's were DAVE frames,
    byte-identical, and the plain side's were not DAVE frames.

    Each side is one :class:`Pool` for the whole run: one node, and each channel's
    members joined once and kept across levels (``members_kept_across_levels``), since
    joining DAVE members afresh at every level costs the bench far more than the levels'
    measuring (every member commits every proposal batch in davey). A level of L channels
    streams on channels 0 to L-1; ``channels_joined`` says how many channels' members the
    node held by the end, the others idle.
    """
    if loadgen is None:
        raise RuntimeError("voxgate bench relay --dave needs the C load generator")
    cores = os.cpu_count() or 1
    server_cpu, generator_cpu = (0, 1) if cores >= 2 else (None, None)
    pin_generator(generator_cpu)
    _raise_open_files_limit()
    result: dict[str, Any] = {
        "machine": machine(),
        "seconds_per_step": seconds,
        "generator": "c",
        "saturation_rule": SATURATION_RULE,
        "rounds": rounds,
        "noise_limit": NOISE_LIMIT,
        "payload_size": DAVE_PAYLOAD_SIZE,
        "members_kept_across_levels": True,
        "members_note": (
            "each side keeps one node and each channel's members for the whole run (joining "
            "DAVE members afresh at every level would take the bench most of an hour); a "
            "level of L channels streams on channels 0..L-1, members of higher channels "
            "stay joined and idle"
        ),
    }
    pools: dict[str, Pool] = {}
    try:
        pools["plain"] = Pool(VoxgateRelay.pinned(server_cpu, sized_like_dave=True))
        pools["dave"] = Pool(VoxgateRelay.pinned(server_cpu, dave=True))
        contenders = {
            name: Contender(lambda channels, pool=pool: pool) for name, pool in pools.items()
        }
        best, steps = await interleave(
            contenders, seconds, 1 if quick else 8, 2 if quick else 512, loadgen, rounds=rounds
        )
        for name, pool in pools.items():
            result[name] = _saturation(best[name], steps[name])
            result[name]["channels_joined"] = len(pool.joined)
    finally:
        for pool in pools.values():
            await pool.close()
    _put_ratio(result, "dave_to_plain", ratio(best["dave"], best["plain"]))
    ours, theirs = _cpu_by_level(steps["dave"]), _cpu_by_level(steps["plain"])
    common = sorted(set(ours) & set(theirs))
    if common:
        top = common[-1]
        result["cpu_dave_to_plain"] = round(
            statistics.median(ours[top]) / statistics.median(theirs[top]), 3
        )
        result["cpu_compared_at_channels"] = top
    result["dave_payloads"] = _payload_check(steps["dave"], dave=True)
    result["plain_payloads"] = _payload_check(steps["plain"], dave=False)
    result["dave_frames_verified"] = (
        result["dave_payloads"]["ok"] and result["plain_payloads"]["ok"]
    )
    return result


def _payload_check(steps: list[dict[str, Any]], *, dave: bool) -> dict[str, Any]:
    """What the C generator found in the payloads received over ``steps``: every one the
    template sent (no mismatch), and all of them (``dave``) or none ending in 0xFA 0xFA."""
    received = sum(step["payloads_checked"] for step in steps)
    mismatched = sum(step["template_mismatch"] for step in steps)
    trailers = sum(step["dave_trailer"] for step in steps)
    ok = received > 0 and mismatched == 0 and trailers == (received if dave else 0)
    return {
        "received": received,
        "template_mismatch": mismatched,
        "dave_trailer": trailers,
        "ok": ok,
    }


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model}
