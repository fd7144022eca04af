"""Fixtures shared by the suites: a real ``voxgate serve`` and test audio files."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.audio import tone_sequence, write_tones
from tests.support.server import RunningServer, start_server

_ids = itertools.count(1000)


@pytest.fixture
def ids() -> Callable[[], str]:
    """Fresh numeric snowflake-like ids, so tests sharing a server never share a channel."""
    return lambda: str(next(_ids))


@pytest.fixture(scope="session")
def voxgate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One node on the defaults, shared by the tests that need nothing special."""
    server = start_server(tmp_path_factory.mktemp("voxgate"))
    yield server
    server.stop()


@pytest.fixture
def start_voxgate(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start a node with extra ``voxgate serve`` arguments, stopped after the test."""
    started: list[RunningServer] = []

    def start(*args: str) -> RunningServer:
        server = start_server(tmp_path / f"node{len(started)}", *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def tones(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[float, int], tuple[Path, list[float]]]:
    """An Ogg/Opus file of ``seconds`` of tones (one per 100 ms), made once per length+seed."""
    folder = tmp_path_factory.mktemp("audio")
    made: dict[tuple[float, int], tuple[Path, list[float]]] = {}

    def make(seconds: float, seed: int = 1) -> tuple[Path, list[float]]:
        if (seconds, seed) not in made:
            windows = tone_sequence(seconds, seed)
            path = folder / f"tones-{seconds}-{seed}.ogg"
            write_tones(path, windows)
            made[seconds, seed] = (path, windows)
        return made[seconds, seed]

    return make
