"""The DAVE media frame (protocol/dave.py): the relay's check and the parse/build pair.

Real frames from davey and libdave pass :func:`is_dave_frame` and parse to what DAVE.md §5
says (40 bytes of Opus -> 52 bytes ending ``01 0c fa fa``); real Opus from libopus and
silence do not. Properties: build/parse round trip, the check agrees with the parser,
and arbitrary bytes never make the check raise or the parser raise anything but
DaveFrameError.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.audio import ogg_packets, tone_sequence, write_tones
from tests.support.dave_peers import (
    IMPLEMENTATIONS,
    DavePeer,
    Implementation,
    make_peer,
)
from voxgate.protocol import mls
from voxgate.protocol.dave import (
    MAGIC,
    OPUS_SILENCE,
    DaveFrame,
    build_dave_frame,
    is_dave_frame,
    parse_dave_frame,
)
from voxgate.protocol.errors import DaveFrameError, MlsError

CHANNEL_ID = 42


def _established_pair(implementation: Implementation) -> tuple[DavePeer, DavePeer]:
    sender = mls.ExternalSender()
    a = make_peer(implementation, 1, CHANNEL_ID)
    b = make_peer("davey", 2, CHANNEL_ID)
    for member in (a, b):
        member.set_external_sender(sender.package())
    b.users_connected([1])
    add = sender.propose_add(mls.group_id_of(CHANNEL_ID), 0, mls.parse_key_package(b.key_package()))
    op28 = a.process_proposals(0, mls.proposals_append([add]), [2])
    assert op28 is not None
    commit, welcome = mls.split_commit_welcome(op28)
    assert welcome is not None
    a.process_commit(commit.raw)
    b.process_welcome(welcome.raw)
    return a, b


@pytest.fixture(scope="module")
def opus_packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path: Path = tmp_path_factory.mktemp("opus") / "tones.ogg"
    write_tones(path, tone_sequence(2.0))
    return ogg_packets(path)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_real_encrypted_opus_is_a_dave_frame_and_real_opus_is_not(
    implementation: Implementation, opus_packets: list[bytes]
) -> None:
    a, b = _established_pair(implementation)
    forty = bytes(range(40))
    frame = a.encrypt_opus(forty)
    assert len(frame) == 52 and frame.endswith(b"\x01\x0c\xfa\xfa")
    parsed = parse_dave_frame(frame)
    assert (parsed.nonce, parsed.generation, parsed.supplemental_size) == (1, 0, 12)
    assert build_dave_frame(parsed) == frame
    for packet in opus_packets:
        assert not is_dave_frame(packet)
        encrypted = a.encrypt_opus(packet)
        assert is_dave_frame(encrypted) and len(encrypted) >= len(packet) + 12
        assert b.decrypt(1, encrypted) == packet
    assert not is_dave_frame(OPUS_SILENCE)
    assert a.encrypt_opus(OPUS_SILENCE) == OPUS_SILENCE


def test_frame_check_rejects_what_only_looks_like_a_trailer() -> None:
    good = build_dave_frame(DaveFrame.create(b"c" * 20, b"t" * 8, 300, ((0, 2), (5, 3))))
    assert is_dave_frame(good) and parse_dave_frame(good).unencrypted_ranges == ((0, 2), (5, 3))
    size_at = len(good) - 3
    cases = {
        "too short": MAGIC,
        "no magic": good[:-1] + b"\xfb",
        "size below 12": good[:size_at] + b"\x0b" + MAGIC,
        "size beyond the frame": bytes(20) + b"\xff" + MAGIC,
        "nonce runs into the size byte": bytes(20) + b"t" * 8 + b"\x80" + b"\x0c" + MAGIC,
        "nonce above u32": bytes(4) + b"t" * 8 + b"\xff\xff\xff\xff\x7f" + b"\x10" + MAGIC,
        "non-minimal nonce": bytes(4) + b"t" * 8 + b"\x81\x00" + b"\x0d" + MAGIC,
        "overlapping ranges": b"c" * 20 + b"t" * 8 + b"\x01" + b"\x00\x04\x02\x01\x10" + MAGIC,
        "range out of bounds": bytes(4) + b"t" * 8 + b"\x01" + b"\x02\x05" + b"\x0e" + MAGIC,
    }
    # the same bytes with the second range moved past the first are a frame
    assert is_dave_frame(b"c" * 20 + b"t" * 8 + b"\x01" + b"\x00\x04\x04\x01\x10" + MAGIC)
    for name, payload in cases.items():
        assert not is_dave_frame(payload), name
        with pytest.raises(DaveFrameError):
            parse_dave_frame(payload)


def test_build_refuses_inconsistent_frames() -> None:
    frame = DaveFrame.create(b"c" * 10, b"t" * 8, 1)
    for bad in (
        DaveFrame(frame.ciphertext, b"short", 1, (), 12),
        DaveFrame(frame.ciphertext, frame.tag, 1, (), 13),
        DaveFrame(frame.ciphertext, frame.tag, 2**32, (), 12),
        DaveFrame(frame.ciphertext, frame.tag, 1, ((0, 11),), 14),
    ):
        with pytest.raises(DaveFrameError):
            build_dave_frame(bad)
    assert issubclass(DaveFrameError, MlsError)


@st.composite
def frames(draw: st.DrawFn) -> DaveFrame:
    ciphertext = draw(st.binary(max_size=200))
    ranges: list[tuple[int, int]] = []
    at = 0
    for _ in range(draw(st.integers(0, 4))):
        if at > len(ciphertext):
            break
        offset = draw(st.integers(at, len(ciphertext)))
        length = draw(st.integers(0, len(ciphertext) - offset))
        ranges.append((offset, length))
        at = offset + length
    return DaveFrame.create(
        ciphertext, draw(st.binary(min_size=8, max_size=8)), draw(st.integers(0, 2**32 - 1)),
        tuple(ranges),
    )  # fmt: skip


@given(frames())
def test_parse_inverts_build(frame: DaveFrame) -> None:
    encoded = build_dave_frame(frame)
    assert is_dave_frame(encoded)
    assert parse_dave_frame(encoded) == frame


def _check_agrees_with_the_parser(data: bytes) -> None:
    """The quick check never raises, says yes exactly when the parser accepts ``data``, and
    what the parser accepts builds back to ``data``."""
    verdict = is_dave_frame(data)
    parsed = None
    with contextlib.suppress(DaveFrameError):
        parsed = parse_dave_frame(data)
    assert verdict == (parsed is not None)
    if parsed is not None:
        assert build_dave_frame(parsed) == data


@given(st.binary(max_size=300))
def test_arbitrary_bytes_check_never_raises_and_agrees_with_the_parser(data: bytes) -> None:
    _check_agrees_with_the_parser(data)


@given(st.binary(max_size=120), st.binary(min_size=1, max_size=20))
def test_arbitrary_trailers_check_never_raises_and_agrees_with_the_parser(
    body: bytes, trailer: bytes
) -> None:
    _check_agrees_with_the_parser(body + trailer + MAGIC)
