"""The player's frame clock and the receiver's reorder buffer, with time as a parameter."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from voxgate.client.player import FRAME_S, MAX_LAG_S, FrameClock
from voxgate.client.receiver import ReorderBuffer, mix_pcm


def test_frames_are_due_every_20_ms_from_the_start_without_drift() -> None:
    clock = FrameClock(now=100.0)
    for n in range(1000):
        assert abs(clock.due() - (100.0 + n * FRAME_S)) < 1e-9
        # Sending a little late each time does not push the schedule back.
        clock.sent(clock.due() + 0.004)
    assert clock.reanchored == 0


def test_a_long_stall_reanchors_instead_of_bursting() -> None:
    clock = FrameClock(now=0.0)
    clock.sent(0.0)
    stalled = clock.due() + MAX_LAG_S + 0.5
    clock.sent(stalled)
    assert clock.reanchored == 1
    assert abs(clock.due() - (stalled + FRAME_S)) < 1e-9


def test_pause_resumes_the_schedule_from_now() -> None:
    clock = FrameClock(now=0.0)
    for _ in range(10):
        clock.sent(clock.due())
    clock.resume(50.0)
    assert clock.due() == 50.0


def _payloads(released: list[tuple[int, bytes | None]]) -> list[bytes | None]:
    return [payload for _, payload in released]


def test_reorder_buffer_puts_packets_back_in_order() -> None:
    buffer = ReorderBuffer(depth=3)
    out: list[bytes | None] = []
    for sequence in (0, 2, 1, 3, 5, 4):
        out += _payloads(buffer.push(sequence, sequence * 960, bytes([sequence])))
    out += _payloads(buffer.flush())
    assert out == [bytes([n]) for n in range(6)]
    assert buffer.lost == 0


def test_a_missing_packet_is_declared_lost_once_depth_later_ones_arrived() -> None:
    buffer = ReorderBuffer(depth=2)
    assert _payloads(buffer.push(0, 0, b"a")) == [b"a"]
    assert buffer.push(2, 0, b"c") == []
    assert buffer.push(3, 0, b"d") == []
    assert _payloads(buffer.push(4, 0, b"e")) == [None, b"c", b"d", b"e"]
    assert buffer.lost == 1
    assert buffer.push(1, 0, b"b") == [] and buffer.late == 1


def test_sequence_numbers_wrap() -> None:
    buffer = ReorderBuffer(depth=3)
    out: list[bytes | None] = []
    for sequence in (65534, 0, 65535, 1):
        out += _payloads(buffer.push(sequence, 0, sequence.to_bytes(2, "big")))
    assert out == [n.to_bytes(2, "big") for n in (65534, 65535, 0, 1)]


@given(st.permutations(list(range(40))), st.integers(1, 8))
def test_any_reordering_within_depth_is_undone(order: list[int], depth: int) -> None:
    # Displace each packet by at most `depth` positions: sort by a jittered key. The first
    # packet comes first: it is where a receiver starts counting.
    jittered = sorted(range(40), key=lambda n: n + (order[n] % (depth + 1)) if n else -1)
    buffer = ReorderBuffer(depth=depth)
    out: list[bytes | None] = []
    for sequence in jittered:
        out += _payloads(buffer.push(sequence, 0, bytes([sequence])))
    out += _payloads(buffer.flush())
    assert out == [bytes([n]) for n in range(40)]


def test_mix_sums_and_clips() -> None:
    loud = (30000).to_bytes(2, "little", signed=True) * 2
    quiet = (10000).to_bytes(2, "little", signed=True)
    mixed = mix_pcm([loud, quiet])
    assert int.from_bytes(mixed[0:2], "little", signed=True) == 32767
    assert int.from_bytes(mixed[2:4], "little", signed=True) == 30000


def test_a_users_tracks_from_two_sessions_are_joined_in_one_wav(tmp_path) -> None:
    import wave
    from types import SimpleNamespace

    from voxgate.client.receiver import AudioReceiver, SpeakerTrack

    connection = SimpleNamespace(
        add_listener=lambda listener: None,
        remove_listener=lambda listener: None,
        user_of=lambda ssrc: "alice",
    )
    receiver = AudioReceiver(connection, decode=False)  # type: ignore[arg-type]
    before = SpeakerTrack(1, 0.0, pcm=bytearray(b"\x01\x00" * 4))
    after = SpeakerTrack(2, 0.0, pcm=bytearray(bytes(8) + b"\x02\x00" * 4))
    receiver.tracks = {1: before, 2: after}
    written = receiver.save_wav(tmp_path)
    with wave.open(str(written["alice"])) as wav:
        frames = wav.readframes(wav.getnframes())
    assert frames == b"\x01\x00" * 4 + b"\x02\x00" * 4


class _RecordingConnection:
    """What a player needs of a VoiceConnection: Speaking and send_opus, recorded in order."""

    def __init__(self) -> None:
        import asyncio
        import time

        from voxgate.client.dave import DaveMember

        self.dave = DaveMember("1", "2", enabled=False)
        self.closed = asyncio.Event()
        self.sent: list[tuple[str, object, float]] = []
        self._clock = time.monotonic

    async def set_speaking(self, speaking: object = True) -> None:
        self.sent.append(("speaking", speaking, self._clock()))

    def send_opus(self, opus: bytes) -> bool:
        self.sent.append(("opus", opus, self._clock()))
        return True


async def test_players_started_together_share_one_pacer_in_different_phases() -> None:
    import asyncio

    from voxgate.client.player import PHASE_SLOTS, SILENCE_FRAMES, AudioPlayer, _pacers
    from voxgate.protocol.rtp import SILENCE_FRAME

    connections = [_RecordingConnection() for _ in range(PHASE_SLOTS)]
    players = [AudioPlayer(c, [bytes([n]) * 3 for n in range(5)]) for c in connections]  # type: ignore[arg-type]
    await asyncio.gather(*(player.play() for player in players))
    assert not _pacers  # the last player to finish took the pacer down
    first_sends = set()
    for connection, player in zip(connections, players, strict=True):
        kinds = [kind for kind, _, _ in connection.sent]
        assert kinds == ["speaking", *["opus"] * (5 + SILENCE_FRAMES), "speaking"]
        payloads = [payload for kind, payload, _ in connection.sent if kind == "opus"]
        assert payloads[5:] == [SILENCE_FRAME] * SILENCE_FRAMES
        assert player.frames_sent == 5 + SILENCE_FRAMES
        assert len(player.lateness) == player.frames_sent and min(player.lateness) >= 0
        speaking_at, first_at = connection.sent[0][2], connection.sent[1][2]
        assert first_at - speaking_at >= FRAME_S  # Speaking still leads by a period
        first_sends.add(round(first_at * 1000) % round(FRAME_S * 1000))
    # Each started in a phase of its own, not all in the same millisecond.
    assert len(first_sends) > PHASE_SLOTS // 2
