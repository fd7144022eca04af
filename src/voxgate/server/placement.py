"""Which node hosts which voice channel: one set of rules over two backends.

A channel lives on exactly one node (DESIGN.md, "Scaling out"). A node is *live* while its
liveness record has not expired, and *serving* while it takes new channels; a channel is
*claimed* by one node, atomically, and every claim carries an epoch (a fencing counter,
bumped whenever the claim changes hands), so a node that lost touch with the placement
store learns on its next reconcile that a channel it still carries is now another's.
A claim lasts while the channel has members on its node or a token minted for it is still
valid, so a token already handed out never sends its holder somewhere the channel's other
members are not.

:class:`Placement` holds the rules (sticky; new channels on the least-loaded serving node,
lowest id first; re-placed when their node's liveness lapses). The backends hold the state
and make each step atomic: :class:`MemoryPlacementStore` in one process (the ``serve
--workers`` supervisor) and ``voxgate.server.redis_placement.RedisPlacementStore`` in Redis
(``serve --redis``, many machines), where only Redis's clock decides liveness. Time is a
parameter wherever tokens are involved (``now``, wall-clock seconds, as token expiry is), so
the rules are tested without sleeping; the memory backend's liveness clock is settable too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from voxgate.errors import VoxgateError

ChannelKey = tuple[str, str]

#: A node's liveness record lives this long unless refreshed (SCALE.md §3: PX 5000).
NODE_TTL_S = 5.0
#: How often a node refreshes its liveness and load and reconciles its claims.
HEARTBEAT_S = 1.5
#: A node whose CPU share is at or above this takes new channels only when all others do too.
CPU_LIMIT = 0.9

SERVING = "serving"
#: Live but taking no new channels: a worker being restarted, a node draining.
DOWN = "down"


class PlacementUnavailable(VoxgateError):
    """The placement store cannot be reached, or no node can take a channel."""


@dataclass(frozen=True)
class NodeLoad:
    """What a node reports about itself at each heartbeat, and what placement reads."""

    node_id: str
    endpoint: str
    state: str = SERVING
    sessions: int = 0
    channels: int = 0
    #: Share of one core the node's process used since its previous heartbeat.
    cpu: float = 0.0
    #: Channels claimed by the node (filled in by the store when listing nodes).
    placed: int = 0


@dataclass(frozen=True)
class Claim:
    """A channel's node and the epoch of that claim."""

    node_id: str
    epoch: int
    endpoint: str = ""


@dataclass
class Reconciled:
    """What a node's reconcile found: the claims it holds (by epoch), the channels it
    carries that another live node holds now (by that node), and the claims released."""

    held: dict[ChannelKey, int] = field(default_factory=dict)
    lost: dict[ChannelKey, str] = field(default_factory=dict)
    released: list[ChannelKey] = field(default_factory=list)
    #: ``held`` lists every claim of the node (else only those that changed).
    complete: bool = True


class PlacementStore(Protocol):
    """Where placement state lives; every method is one atomic step."""

    async def heartbeat(self, load: NodeLoad, ttl_s: float | None) -> None:
        """Record ``load`` and make the node live for ``ttl_s`` (None: until removed)."""

    async def remove_node(self, node_id: str) -> None:
        """Forget a node that stops cleanly (its claims stay until re-placed or released)."""

    async def live_nodes(self) -> list[NodeLoad]:
        """Every live node, with its count of claimed channels in ``placed``."""

    async def claim(self, key: ChannelKey, tokens_until: float) -> Claim | None:
        """The claim of ``key``: kept where it is while its node is live, else given (a new
        epoch) to the live node :func:`choose_node` puts first. Either way it is kept until
        ``tokens_until`` at least. None when it has no live node and no node takes it."""

    async def reconcile(
        self,
        node_id: str,
        occupied: Collection[ChannelKey],
        known: Mapping[ChannelKey, int],
        now: float,
        *,
        everything: bool = True,
    ) -> Reconciled:
        """Bring ``node_id``'s claims in line with the channels it carries (``occupied``) and
        those it believes it holds (``known``: key -> epoch).

        An occupied channel with no claim, or claimed by a node no longer live, is claimed
        for ``node_id`` (adopted); one claimed by another live node is ``lost``. A claim of
        ``node_id`` on a channel not occupied whose tokens have expired by ``now`` is
        released. ``everything`` also looks at every claim the store has for ``node_id``,
        not only those named.
        """

    async def placed_on(self, node_id: str) -> list[ChannelKey]:
        """The channels claimed by ``node_id``."""

    async def aclose(self) -> None: ...


def choose_node(nodes: Iterable[NodeLoad], cpu_limit: float = CPU_LIMIT) -> list[str]:
    """The order in which live nodes are offered a new channel: serving ones with CPU to
    spare first, the fewest channels placed first, then by id (tests can say which node
    comes next). The Redis backend's claim script applies the same rules in Lua."""
    serving = [node for node in nodes if node.state == SERVING]
    spare = [node for node in serving if node.cpu < cpu_limit] or serving
    return [node.node_id for node in sorted(spare, key=lambda n: (n.placed, _natural(n.node_id)))]


def _natural(node_id: str) -> tuple[int, int | str]:
    # "worker-10" after "worker-9", and plain ids in text order.
    head, _, tail = node_id.rpartition("-")
    return (0, int(tail)) if tail.isdigit() and head else (1, node_id)


async def describe_nodes(store: PlacementStore) -> list[dict[str, Any]]:
    """The live nodes with their load and the channels each holds, as ``GET /v1/cluster``
    lists them."""
    listed: list[dict[str, Any]] = []
    for load in sorted(await store.live_nodes(), key=lambda node: _natural(node.node_id)):
        channels = await store.placed_on(load.node_id)
        listed.append(
            {
                "node_id": load.node_id,
                "endpoint": load.endpoint,
                "state": load.state,
                "sessions": load.sessions,
                "channels": load.channels,
                "cpu": load.cpu,
                "placed": [{"guild_id": g, "channel_id": c} for g, c in channels],
            }
        )
    return listed


class Placement:
    """The rules of placement over a :class:`PlacementStore`."""

    def __init__(self, store: PlacementStore, token_ttl_s: float) -> None:
        self.store = store
        self.token_ttl_s = token_ttl_s

    async def place(self, key: ChannelKey, now: float) -> Claim:
        """The claim of ``key``, placing it on the least-loaded serving node when it has no
        live node; records that a token for it is minted at ``now``.

        Raises :class:`PlacementUnavailable` when no node is live and serving.
        """
        claim = await self.store.claim(key, now + self.token_ttl_s)
        if claim is None:
            raise PlacementUnavailable("no live node takes new channels")
        return claim


# --- the in-memory backend ---------------------------------------------------------------


@dataclass
class _Record:
    load: NodeLoad
    expires: float | None


@dataclass
class _ClaimRecord:
    node_id: str
    epoch: int
    tokens_until: float


class MemoryPlacementStore:
    """Placement state in one process's memory: the ``--workers`` supervisor's.

    ``clock`` (monotonic seconds) decides liveness; tests set it to step time.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._nodes: dict[str, _Record] = {}
        self._claims: dict[ChannelKey, _ClaimRecord] = {}
        self._epochs: dict[ChannelKey, int] = {}
        self._placed: dict[str, set[ChannelKey]] = {}

    def _live(self, node_id: str) -> bool:
        record = self._nodes.get(node_id)
        return record is not None and (record.expires is None or record.expires > self.clock())

    def _give(self, key: ChannelKey, node_id: str, tokens_until: float) -> _ClaimRecord:
        previous = self._claims.get(key)
        if previous is not None:
            self._placed.get(previous.node_id, set()).discard(key)
        epoch = self._epochs[key] = self._epochs.get(key, 0) + 1
        claim = self._claims[key] = _ClaimRecord(node_id, epoch, tokens_until)
        self._placed.setdefault(node_id, set()).add(key)
        return claim

    def _endpoint(self, node_id: str) -> str:
        record = self._nodes.get(node_id)
        return record.load.endpoint if record is not None else ""

    async def heartbeat(self, load: NodeLoad, ttl_s: float | None) -> None:
        expires = None if ttl_s is None else self.clock() + ttl_s
        self._nodes[load.node_id] = _Record(load, expires)

    async def remove_node(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    async def live_nodes(self) -> list[NodeLoad]:
        return [
            replace(record.load, placed=len(self._placed.get(node_id, ())))
            for node_id, record in self._nodes.items()
            if self._live(node_id)
        ]

    async def claim(self, key: ChannelKey, tokens_until: float) -> Claim | None:
        current = self._claims.get(key)
        if current is None or not self._live(current.node_id):
            chosen = next(iter(choose_node(await self.live_nodes())), None)
            if chosen is None:
                return None
            current = self._give(key, chosen, tokens_until)
        current.tokens_until = max(current.tokens_until, tokens_until)
        return Claim(current.node_id, current.epoch, self._endpoint(current.node_id))

    async def reconcile(
        self,
        node_id: str,
        occupied: Collection[ChannelKey],
        known: Mapping[ChannelKey, int],
        now: float,
        *,
        everything: bool = True,
    ) -> Reconciled:
        occupied = set(occupied)
        keys = occupied | set(known)
        if everything:
            keys |= self._placed.get(node_id, set())
        result = Reconciled()
        for key in sorted(keys):
            current = self._claims.get(key)
            if current is None or (current.node_id != node_id and not self._live(current.node_id)):
                if key in occupied:
                    result.held[key] = self._give(key, node_id, now).epoch
            elif current.node_id != node_id:
                if key in occupied or key in known:
                    result.lost[key] = current.node_id
            elif key not in occupied and now >= current.tokens_until:
                del self._claims[key]
                self._placed[node_id].discard(key)
                result.released.append(key)
            else:
                result.held[key] = current.epoch
        return result

    async def placed_on(self, node_id: str) -> list[ChannelKey]:
        return sorted(self._placed.get(node_id, ()))

    async def aclose(self) -> None:
        return None
