"""A real redis-server for the cluster tests, on a free loopback port, without persistence.

One server per session; each test gets a database of its own, emptied first, so tests
never see each other's nodes or claims.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from voxgate.bench.redis_server import RedisNotInstalled, RedisServer

_databases = itertools.cycle(range(1, 64))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer().start()
    except RedisNotInstalled as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    import redis

    db = next(_databases)
    client = redis.Redis(port=redis_server.port, db=db)
    client.flushdb()
    client.close()
    return redis_server.url_for(db)
