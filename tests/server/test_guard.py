"""The anti-replay window and the rate bucket, on their own."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxgate.protocol.opcodes import EncryptionMode
from voxgate.server.guard import RateLimit, ReplayWindow, replay_window


def test_each_counter_is_accepted_once_in_any_order() -> None:
    window = ReplayWindow(size=64)
    assert [window.accept(n) for n in (5, 3, 4, 5, 3, 10, 4, 9)] == [
        True,
        True,
        True,
        False,
        False,
        True,
        False,
        True,
    ]


def test_counters_too_far_behind_are_refused() -> None:
    window = ReplayWindow(size=64)
    assert window.accept(1000)
    assert not window.accept(1000 - 64)
    assert window.accept(1000 - 63)


def test_counter_wraps_at_2_to_the_32() -> None:
    window = ReplayWindow(size=64)
    assert window.accept(0xFFFF_FFFE)
    assert window.accept(0xFFFF_FFFF)
    assert window.accept(0)
    assert window.accept(1)
    assert not window.accept(0xFFFF_FFFF)


def test_a_jump_of_half_the_counter_space_keeps_the_window_its_size() -> None:
    window = ReplayWindow()
    assert window.accept(5)
    tracemalloc.start()
    try:
        assert window.accept(5 + 2**31 - 1)  # an authenticated sender may jump this far
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, "the window made a 2**31-bit integer on the way"
    assert not window.accept(5)
    assert window.accept(5 + 2**31 - 2)
    assert not window.accept(5 + 2**31 - 2)


@given(st.lists(st.integers(0, 2000), max_size=300))
def test_window_never_accepts_a_counter_twice(counters: list[int]) -> None:
    window = ReplayWindow(size=128)
    accepted = [n for n in counters if window.accept(n)]
    assert len(accepted) == len(set(accepted))


@given(st.permutations(list(range(200))))
def test_in_window_reordering_loses_nothing(order: list[int]) -> None:
    window = ReplayWindow(size=256)
    assert all(window.accept(n) for n in order)


def _reference_window(counters: list[int], size: int, bits: int) -> list[bool]:
    """What an anti-replay window answers, from the set of accepted counters it covers."""
    mask, half = (1 << bits) - 1, 1 << (bits - 1)
    highest: int | None = None
    accepted: set[int] = set()
    answers = []
    for counter in counters:
        if highest is None or 0 < (counter - highest) & mask < half:
            highest, answer = counter, True
        else:
            answer = (highest - counter) & mask < size and counter not in accepted
        if answer:
            accepted.add(counter)
        accepted = {seen for seen in accepted if (highest - seen) & mask < size}
        answers.append(answer)
    return answers


@given(st.lists(st.integers(0, 255), max_size=400), st.sampled_from([1, 4, 16, 64]))
def test_window_answers_as_the_set_of_counters_it_covers(counters: list[int], size: int) -> None:
    # 8-bit counters wrap often, so the ring's slots are reused across wraps and jumps.
    window = ReplayWindow(size=size, bits=8)
    assert [window.accept(n) for n in counters] == _reference_window(counters, size, 8)


def test_a_late_counter_is_new_though_its_slot_held_it_a_wrap_ago() -> None:
    # Counter 5 is accepted, then the sender goes once round the 8-bit counter space losing
    # every counter of 5's slot; when 5 comes again late it is a new packet, not a replay.
    window = ReplayWindow(size=16, bits=8)
    assert window.accept(5)
    assert all(window.accept(n & 0xFF) for n in range(6, 256 + 7) if n % 16 != 5)
    assert window.accept(5)
    assert not window.accept(5)


def test_window_size_must_be_a_power_of_two_within_the_counter() -> None:
    for size in (0, 3, 1000, 512):
        with pytest.raises(ValueError, match="power of two"):
            ReplayWindow(size=size, bits=8)


def test_suffix_mode_has_no_window_and_legacy_mode_windows_the_sequence() -> None:
    assert replay_window(EncryptionMode.XSALSA20_POLY1305_SUFFIX) is None
    legacy = replay_window(EncryptionMode.XSALSA20_POLY1305)
    assert legacy is not None
    packet = bytes.fromhex("8078fffe") + bytes(8) + b"sealed"
    assert legacy.accept_packet(packet)
    assert not legacy.accept_packet(packet)
    assert legacy.accept_packet(bytes.fromhex("80780001") + bytes(8) + b"sealed")


def test_rate_limit_allows_the_burst_then_the_rate() -> None:
    # Powers of two keep the clock arithmetic exact.
    bucket = RateLimit(rate=64, burst=10, now=0.0)
    assert sum(bucket.allow(0.0) for _ in range(20)) == 10
    assert sum(bucket.allow(1.0) for _ in range(100)) == 10
    assert sum(bucket.allow(1.0 + n / 64) for n in range(1, 65)) == 64
    assert sum(bucket.allow(2.0) for _ in range(2)) == 0
