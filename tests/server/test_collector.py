"""The node's cyclic collector: what survives a full collection is frozen, and thawed again
every so often so that cycles which died frozen are still collected."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from voxgate.server.node import freeze_survivors


class Node:
    """An object that can be part of a cycle and be watched through a weak reference."""

    other: Node | None = None


@pytest.fixture
def collector() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


async def _full_collection() -> None:
    gc.collect()
    await asyncio.sleep(0.01)  # the freeze (or thaw) the callback scheduled runs


async def test_survivors_are_frozen_and_a_cycle_that_died_frozen_goes_at_the_thaw(
    collector: None,
) -> None:
    callback = freeze_survivors(asyncio.get_running_loop(), thaw_every_s=0.5)
    try:
        first, second = Node(), Node()
        first.other, second.other = second, first
        watched = weakref.ref(first)
        await _full_collection()
        frozen = gc.get_freeze_count()
        assert frozen > 0  # the cycle with everything else alive
        del first, second
        await _full_collection()
        assert watched() is not None, "a frozen cycle is not walked: it waits for the thaw"
        assert gc.get_freeze_count() >= frozen
        await asyncio.sleep(0.5)
        await _full_collection()  # the thaw comes after this one
        assert gc.get_freeze_count() == 0
        await _full_collection()
        assert watched() is None
        assert gc.get_freeze_count() > 0  # and the survivors are frozen again
    finally:
        gc.callbacks.remove(callback)
