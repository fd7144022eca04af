"""The Redis backend of :mod:`voxgate.server.placement`: one cluster of nodes on one Redis.

Keys (SCALE.md §3, prefix ``vg:`` by default; a channel key is the JSON ``["guild",
"channel"]``, so no id can make two keys collide):

- ``vg:nodes`` SET of node ids; ``vg:node:<id>`` HASH endpoint, state, sessions, channels,
  cpu; ``vg:alive:<id>`` a key SET with PX, refreshed each heartbeat: **a node is live
  while it exists**, so only Redis's clock decides that a node is dead;
- ``vg:since`` when (Redis's ms) the first node registered in this Redis: a Redis that
  came back empty places no unclaimed channel for ``settle_s``, so that every live node has
  registered and claimed again the channels it carries before a join could place one of
  them elsewhere (a restart then costs no call);
- ``vg:load`` ZSET node id -> claims held, which the claim script walks from the lowest to
  choose where a new channel goes (so a join costs the same with 3 nodes or 300);
- ``vg:gone:<id>`` / ``vg:new:<id>`` SETs: the claims a script took away from a node / gave
  to it since its last heartbeat, so a heartbeat reads only what changed (every
  :data:`FULL_EVERY`-th one reads all the node's claims);
- ``vg:chan:<key>`` HASH node, epoch, until (wall-clock seconds the newest token for it
  expires); ``vg:epoch:<key>`` the fencing counter, INCR'd whenever the claim changes
  hands, kept a day after a release; ``vg:placed:<id>`` SET of the keys a node holds.

Every step is one Lua script, so each is atomic and costs one round trip: a join is one
(``CLAIM``, which also chooses the node), a heartbeat one (``RECONCILE`` with the heartbeat
first); ``LIVE_NODES`` is only for listing the cluster.
The scripts name keys they build themselves, which a single Redis (or a replica set)
allows and Redis Cluster would not.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

import msgspec
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from voxgate.server.placement import (
    CPU_LIMIT,
    HEARTBEAT_S,
    ChannelKey,
    Claim,
    NodeLoad,
    PlacementUnavailable,
    Reconciled,
)

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "vg:"
#: A command that takes longer than this counts as Redis being unreachable.
COMMAND_TIMEOUT_S = 1.0
#: How long an empty Redis waits before placing unclaimed channels: two heartbeats, in
#: which every live node registers again (a heartbeat retried with back-off included).
SETTLE_S = 2 * HEARTBEAT_S
#: A heartbeat's reconcile looks at every claim of the node once in this many (a safety net
#: under the change sets, 30 s); the others only at what changed.
FULL_EVERY = 20


def _register(node: str, first: int) -> str:
    """Lua that marks the node in the Lua variable ``node`` alive and writes its record, from
    ARGV[first] on: ttl in ms ('0': no expiry), endpoint, state, sessions, channels, cpu;
    and notes when Redis first saw a node (``since``). ``p`` is the key prefix."""
    ttl, endpoint, state, sessions, channels, cpu = (f"ARGV[{first + i}]" for i in range(6))
    return f"""
if {ttl} == '0' then
  redis.call('SET', p..'alive:'..{node}, '1')
else
  redis.call('SET', p..'alive:'..{node}, '1', 'PX', {ttl})
end
redis.call('HSET', p..'node:'..{node}, 'endpoint', {endpoint}, 'state', {state},
  'sessions', {sessions}, 'channels', {channels}, 'cpu', {cpu})
redis.call('SADD', p..'nodes', {node})
local t = redis.call('TIME')
redis.call('SET', p..'since', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), 'NX')
"""


def _give(node: str, epoch: str) -> str:
    """Lua that gives channel ``k`` (its record at ``ck``, held by ``owner`` or by none) to
    the node in the Lua variable ``node``, in a new epoch kept in the local ``epoch``, with
    its tokens valid until ARGV[3]; the previous owner notes it in ``gone:<owner>``."""
    return f"""
if owner then
  redis.call('SREM', p..'placed:'..owner, k)
  redis.call('SADD', p..'gone:'..owner, k)
  recount(owner)
end
local {epoch} = redis.call('INCR', p..'epoch:'..k)
redis.call('PERSIST', p..'epoch:'..k)
redis.call('HSET', ck, 'node', {node}, 'epoch', {epoch}, 'until', ARGV[3])
redis.call('SADD', p..'placed:'..{node}, k)
"""


HEARTBEAT = (
    """
local p, id = ARGV[1], ARGV[2]
"""
    + _register("id", 3)
    + """
redis.call('ZADD', p..'load', redis.call('SCARD', p..'placed:'..id), id)
return 1
"""
)

LIVE_NODES = """
local p = ARGV[1]
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', p..'nodes')) do
  local placed = redis.call('SCARD', p..'placed:'..id)
  if redis.call('EXISTS', p..'alive:'..id) == 1 then
    local h = redis.call('HMGET', p..'node:'..id, 'endpoint', 'state', 'sessions',
      'channels', 'cpu')
    table.insert(out, {id, h[1] or '', h[2] or '', h[3] or '0', h[4] or '0', h[5] or '0',
      placed})
  elseif placed == 0 then
    -- dead and holding nothing: forgotten, so this list stays as long as the cluster
    redis.call('SREM', p..'nodes', id)
    redis.call('DEL', p..'node:'..id, p..'gone:'..id, p..'new:'..id)
  end
end
return out
"""

CLAIM = (
    """
local p, k, untl, settle = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local ck = p..'chan:'..k
local function recount(id)
  redis.call('ZADD', p..'load', redis.call('SCARD', p..'placed:'..id), id)
end
local owner = redis.call('HGET', ck, 'node')
if (not owner) and settle > 0 then
  -- A Redis that came back empty knows no claim: until every live node has had time to
  -- register and claim again what it carries, a channel nobody claims is not placed.
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local since = tonumber(redis.call('GET', p..'since') or now_ms)
  if now_ms - since < settle then
    return {0, settle - (now_ms - since)}
  end
end
if (not owner) or redis.call('EXISTS', p..'alive:'..owner) == 0 then
  -- The least-loaded live serving node, fewest claims first, then by id (the ZSET's own
  -- order); one with CPU to spare before one without. Dead entries met are dropped (a node
  -- that comes back is added again by its heartbeat), so the scan stays short.
  local chosen, fallback, start = nil, nil, 0
  while not chosen do
    local page = redis.call('ZRANGE', p..'load', start, start + 15)
    if #page == 0 then
      break
    end
    for _, id in ipairs(page) do
      if redis.call('EXISTS', p..'alive:'..id) == 0 then
        redis.call('ZREM', p..'load', id)
        start = start - 1
      else
        local h = redis.call('HMGET', p..'node:'..id, 'state', 'cpu')
        if h[1] == 'serving' then
          if tonumber(h[2] or '0') < limit then
            chosen = id
            break
          end
          fallback = fallback or id
        end
      end
    end
    start = start + 16
  end
  chosen = chosen or fallback
  if not chosen then
    return false
  end
"""
    + _give("chosen", "epoch")
    + """
  redis.call('SADD', p..'new:'..chosen, k)
  recount(chosen)
  owner = chosen
elseif untl > tonumber(redis.call('HGET', ck, 'until') or '0') then
  redis.call('HSET', ck, 'until', ARGV[3])
end
return {owner, redis.call('HGET', ck, 'epoch'),
  redis.call('HGET', p..'node:'..owner, 'endpoint') or ''}
"""
)

RECONCILE = (
    """
local p, me, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local mine = p..'placed:'..me
local function recount(id)
  redis.call('ZADD', p..'load', redis.call('SCARD', p..'placed:'..id), id)
end
-- ARGV[4]: '1' every claim of the node, '0' only the keys given, 'd' the keys given and
-- what changed since the last 'd' (claims taken away: gone:<me>; placed on it: new:<me>).
-- ARGV[5]: '1' when a heartbeat comes first (ttl, endpoint, state, sessions, channels, cpu)
local mode = ARGV[4]
local i = 6
if ARGV[5] == '1' then
  -- No record of this node: Redis lost everything (or the node is new): 'd' cannot work.
  local fresh = redis.call('EXISTS', p..'node:'..me) == 0
  if fresh and mode == 'd' then
    mode = 'fresh'
  end
"""
    + _register("me", 6)
    + """
  i = 12
end
if mode == 'fresh' then
  return {{}, {}, {}, 1}
end
local occupied, given, order = {}, {}, {}
while i <= #ARGV do
  local k = ARGV[i + 1]
  if ARGV[i] == 'o' then
    occupied[k] = true
  end
  if not given[k] then
    given[k] = true
    table.insert(order, k)
  end
  i = i + 2
end
local seen = {}
for _, k in ipairs(order) do seen[k] = true end
if mode == '1' then
  for _, k in ipairs(redis.call('SMEMBERS', mine)) do
    if not seen[k] then
      seen[k] = true
      table.insert(order, k)
    end
  end
end
if mode == '1' or mode == 'd' then
  -- Taken away: reported lost (the node may carry them). Placed here: reported held.
  for _, k in ipairs(redis.call('SMEMBERS', p..'gone:'..me)) do
    given[k] = true
    if not seen[k] then
      seen[k] = true
      table.insert(order, k)
    end
  end
  for _, k in ipairs(redis.call('SMEMBERS', p..'new:'..me)) do
    if not seen[k] then
      seen[k] = true
      table.insert(order, k)
    end
  end
  redis.call('DEL', p..'gone:'..me, p..'new:'..me)
end
local held, lost, released = {}, {}, {}
for _, k in ipairs(order) do
  local ck = p..'chan:'..k
  local c = redis.call('HMGET', ck, 'node', 'epoch', 'until')
  local owner = c[1]
  if (not owner) or (owner ~= me and redis.call('EXISTS', p..'alive:'..owner) == 0) then
    if occupied[k] then
"""
    + _give("me", "e")
    + """
      table.insert(held, k)
      table.insert(held, e)
      table.insert(held, ARGV[3])
    else
      redis.call('SREM', mine, k)
    end
  elseif owner ~= me then
    redis.call('SREM', mine, k)
    if given[k] then
      table.insert(lost, k)
      table.insert(lost, owner)
    end
  elseif (not occupied[k]) and now >= tonumber(c[3] or '0') then
    redis.call('DEL', ck)
    redis.call('SREM', mine, k)
    -- Kept a day after the release, far longer than any node could still be carrying a
    -- claim of it from before, then forgotten (so the counters do not pile up).
    redis.call('EXPIRE', p..'epoch:'..k, 86400)
    table.insert(released, k)
  else
    table.insert(held, k)
    table.insert(held, tonumber(c[2]))
    table.insert(held, c[3] or '0')
  end
end
if ARGV[5] == '1' or #held > 0 or #released > 0 then
  recount(me)
end
return {held, lost, released, 0}
"""
)

_encoder = msgspec.json.Encoder()
_key_decoder = msgspec.json.Decoder(tuple[str, str])


def encode_key(key: ChannelKey) -> str:
    return _encoder.encode(list(key)).decode()


def decode_key(raw: bytes | str) -> ChannelKey:
    return _key_decoder.decode(raw)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisPlacementStore:
    """Placement state in Redis, through redis-py's asyncio client.

    Every failure to reach Redis (refused, reset, timed out, read-only replica...) is
    raised as :class:`PlacementUnavailable`; ``errors`` counts them. The client reconnects
    by itself on the next call, so a caller retrying with back-off is all it takes.
    """

    def __init__(
        self, url: str, *, prefix: str = DEFAULT_PREFIX, settle_s: float = SETTLE_S
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.settle_ms = int(settle_s * 1000)
        self._beats = 0
        self._until: dict[ChannelKey, float] = {}
        self.errors = 0
        # One retry on a fresh connection: after a Redis restart the pooled connection is
        # dead and only the first command on it fails. More would only stall callers.
        self.redis: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=COMMAND_TIMEOUT_S,
            socket_connect_timeout=COMMAND_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
        )
        self._heartbeat = self.redis.register_script(HEARTBEAT)
        self._live_nodes = self.redis.register_script(LIVE_NODES)
        self._claim = self.redis.register_script(CLAIM)
        self._reconcile = self.redis.register_script(RECONCILE)

    def _unavailable(self, exc: Exception) -> PlacementUnavailable:
        self.errors += 1
        return PlacementUnavailable(f"Redis at {self.url} unreachable: {exc}")

    async def _run(self, script: Any, args: list[Any]) -> Any:
        try:
            return await script(args=args)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    def _heartbeat_args(self, load: NodeLoad, ttl_s: float | None) -> list[Any]:
        ttl_ms = 0 if ttl_s is None else max(1, int(ttl_s * 1000))
        return [
            self.prefix,
            load.node_id,
            ttl_ms,
            load.endpoint,
            load.state,
            load.sessions,
            load.channels,
            f"{load.cpu:.3f}",
        ]

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def heartbeat(self, load: NodeLoad, ttl_s: float | None) -> None:
        await self._run(self._heartbeat, self._heartbeat_args(load, ttl_s))

    async def heartbeat_and_reconcile(
        self,
        load: NodeLoad,
        ttl_s: float | None,
        occupied: Collection[ChannelKey],
        known: Mapping[ChannelKey, int],
        now: float,
    ) -> Reconciled:
        """:meth:`heartbeat` then a reconcile, in one script call.

        Every :data:`FULL_EVERY`-th call (the first included) looks at every claim of the
        node, and its result is ``complete``; the others look only at what changed: the
        channels ``occupied`` but not ``known`` (to adopt), those ``known`` but not
        occupied (to release), and the claims the store took away from the node or placed
        on it since. Their cost does not grow with the claims the node holds.
        """
        self._beats += 1
        full = self._beats % FULL_EVERY == 1 or FULL_EVERY == 1
        beat = self._heartbeat_args(load, ttl_s)[2:]
        if full:
            args = self._reconcile_args(load.node_id, occupied, known, now, "1", beat)
        else:
            new = [key for key in occupied if key not in known]
            unused = {
                key: epoch
                for key, epoch in known.items()
                if key not in occupied and self._until.get(key, 0.0) <= now
            }
            args = self._reconcile_args(load.node_id, new, unused, now, "d", beat)
        raw = await self._run(self._reconcile, args)
        if raw[3]:
            # Redis has no record of the node (it restarted empty): claim everything again.
            args = self._reconcile_args(load.node_id, occupied, known, now, "1", None)
            raw = await self._run(self._reconcile, args)
            full = True
        reconciled = self._reconciled(raw)
        reconciled.complete = full
        return reconciled

    async def remove_node(self, node_id: str) -> None:
        try:
            await self.redis.delete(f"{self.prefix}alive:{node_id}")
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def live_nodes(self) -> list[NodeLoad]:
        rows = await self._run(self._live_nodes, [self.prefix])
        return [
            NodeLoad(
                node_id=_text(row[0]),
                endpoint=_text(row[1]),
                state=_text(row[2]),
                sessions=int(row[3]),
                channels=int(row[4]),
                cpu=float(row[5]),
                placed=int(row[6]),
            )
            for row in rows
        ]

    async def claim(self, key: ChannelKey, tokens_until: float) -> Claim | None:
        raw = await self._run(
            self._claim,
            [self.prefix, encode_key(key), f"{tokens_until:.3f}", self.settle_ms, CPU_LIMIT],
        )
        if raw is None:
            return None
        if isinstance(raw[0], int):
            raise PlacementUnavailable(
                f"Redis at {self.url} came back empty: new channels are placed in "
                f"{int(raw[1])} ms, once every live node has claimed its channels again"
            )
        return Claim(_text(raw[0]), int(raw[1]), _text(raw[2]))

    def _reconcile_args(
        self,
        node_id: str,
        occupied: Collection[ChannelKey],
        known: Mapping[ChannelKey, int],
        now: float,
        mode: str,
        beat: list[Any] | None = None,
    ) -> list[Any]:
        args: list[Any] = [self.prefix, node_id, f"{now:.3f}", mode]
        args += ["0"] if beat is None else ["1", *beat]
        for key in occupied:
            args += ["o", encode_key(key)]
        for key in known:
            if key not in occupied:
                args += ["k", encode_key(key)]
        return args

    def _reconciled(self, raw: list[list[Any]]) -> Reconciled:
        held, lost, released = raw[:3]
        result = Reconciled(
            held={decode_key(held[i]): int(held[i + 1]) for i in range(0, len(held), 3)},
            lost={decode_key(lost[i]): _text(lost[i + 1]) for i in range(0, len(lost), 2)},
            released=[decode_key(key) for key in released],
        )
        # Until when each held claim's tokens are valid: a partial heartbeat asks to release
        # only the unused claims whose time has come, not every unused claim each time.
        for i in range(0, len(held), 3):
            self._until[decode_key(held[i])] = float(held[i + 2])
        for key in (*result.lost, *result.released):
            self._until.pop(key, None)
        return result

    async def reconcile(
        self,
        node_id: str,
        occupied: Collection[ChannelKey],
        known: Mapping[ChannelKey, int],
        now: float,
        *,
        everything: bool = True,
    ) -> Reconciled:
        args = self._reconcile_args(node_id, occupied, known, now, "1" if everything else "0")
        return self._reconciled(await self._run(self._reconcile, args))

    async def placed_on(self, node_id: str) -> list[ChannelKey]:
        try:
            raw = await self.redis.smembers(f"{self.prefix}placed:{node_id}")
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return sorted(decode_key(key) for key in raw)

    async def set_admin_url(self, node_id: str, url: str, ttl_s: float) -> None:
        """Where node ``node_id``'s admin API listens (the consoles of the others read
        its channels there); kept apart from the node's record, for as long as it lives."""
        try:
            await self.redis.set(f"{self.prefix}admin:{node_id}", url, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def admin_urls(self, node_ids: list[str]) -> list[str]:
        """The admin URL of each node (``""`` for one that registered none)."""
        if not node_ids:
            return []
        try:
            raw = await self.redis.mget([f"{self.prefix}admin:{n}" for n in node_ids])
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return ["" if url is None else _text(url) for url in raw]

    async def aclose(self) -> None:
        await self.redis.aclose()
