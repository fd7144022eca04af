"""The voxgate client against ``voxgate serve --dave required``: without DAVE it is refused."""

from __future__ import annotations

import asyncio
import ssl
import struct

import pytest

from voxgate.client import VoiceConnection, VoiceConnectionError
from voxgate.client.dave import DaveState
from voxgate.client.receiver import AudioReceiver
from voxgate.protocol.dave import is_dave_frame


async def _connect(server, guild: str, channel: str, user: str, **kwargs) -> VoiceConnection:
    events = server.join(guild, channel, user)
    trust = ssl.create_default_context(cafile=str(server.ca_path))
    return await VoiceConnection.connect(
        events["voice_state"], events["voice_server"], ssl=trust, **kwargs
    )


def _send_frame(speaker: VoiceConnection, first: int, sequence: int, frame: bytes) -> None:
    """One RTP packet of ``speaker`` around ``frame``, its first header byte ``first``."""
    header = struct.pack(">BBHII", first, 0x78, sequence, sequence * 960, speaker.ssrc)
    assert speaker._cipher is not None and speaker.media_transport is not None
    speaker.media_transport.sendto(speaker._cipher.seal(header, frame))


async def test_4017_is_fatal_and_says_that_dave_is_required(start_voxgate, ids) -> None:
    server = start_voxgate("--dave", "required")
    guild, channel = ids(), ids()
    with pytest.raises(VoiceConnectionError) as refused:
        await _connect(server, guild, channel, ids(), dave=False)
    assert refused.value.close_code == 4017
    assert "requires DAVE end-to-end encryption" in str(refused.value)
    assert "dave=False" in str(refused.value)
    # Offering DAVE, the same server takes the client: alone, it waits for a group.
    connection = await _connect(server, guild, channel, ids())
    async with connection:
        assert connection.dave.state is DaveState.PENDING
        assert connection.gateway.max_dave_protocol_version == 1


async def test_without_dave_on_a_server_with_dave_off_nothing_changes(start_voxgate, ids) -> None:
    server = start_voxgate("--dave", "off")
    connection = await _connect(server, ids(), ids(), ids())
    async with connection:
        assert connection.dave.state is DaveState.INACTIVE
        assert connection.dave.privacy_code is None


async def test_a_padded_dave_frame_is_opened_once_its_padding_is_removed(
    voxgate_server, ids
) -> None:
    # Discord's clients pad some packets (RTP P bit): the padding hides the DAVE trailer
    # unless it is removed first (py-cord #3202, Discord.Net #3262).
    guild, channel, alice, bob = ids(), ids(), ids(), ids()
    listener = await _connect(voxgate_server, guild, channel, bob)
    speaker = await _connect(voxgate_server, guild, channel, alice)
    async with listener, speaker:
        assert await speaker.until_encrypted() and await listener.until_encrypted()
        heard = AudioReceiver(listener, decode=False)
        await speaker.set_speaking(True)
        async with asyncio.timeout(5):
            while listener.user_of(speaker.ssrc) is None:
                await asyncio.sleep(0.01)
        opus = bytes(range(1, 61))
        frames = [speaker.dave.encrypt(opus) for _ in range(3)]
        assert all(frame is not None and is_dave_frame(frame) for frame in frames)
        for sequence, frame in enumerate(frames):
            assert frame is not None
            padding = bytes(sequence) + bytes([sequence + 1])  # 1, 2 and 3 bytes
            _send_frame(speaker, 0xA0, sequence, frame + padding)
        async with asyncio.timeout(5):
            while len(heard.opus_of(alice)) < 3:
                await asyncio.sleep(0.01)
        heard.close()
        assert heard.opus_of(alice) == [opus] * 3
        assert listener.dave.frames_decrypted == 3


async def test_dave_frames_that_come_before_their_speaking_are_opened_when_it_comes(
    voxgate_server, ids
) -> None:
    # Speaking (op 5) names an ssrc over the WebSocket, the frames come over UDP: on a busy
    # machine the first frames can come first, and no key opens them until the name does.
    guild, channel, alice, bob = ids(), ids(), ids(), ids()
    listener = await _connect(voxgate_server, guild, channel, bob)
    speaker = await _connect(voxgate_server, guild, channel, alice)
    async with listener, speaker:
        assert await speaker.until_encrypted() and await listener.until_encrypted()
        heard = AudioReceiver(listener, decode=False)
        listener.gateway.users_by_ssrc.pop(speaker.ssrc, None)  # not named yet
        opus = bytes(range(1, 61))
        for sequence in range(3):
            frame = speaker.dave.encrypt(opus)
            assert frame is not None and is_dave_frame(frame)
            _send_frame(speaker, 0x80, sequence, frame)
        async with asyncio.timeout(5):
            while listener.packets_received < 3:
                await asyncio.sleep(0.01)
        assert heard.opus_of(alice) == []
        await speaker.set_speaking(True)
        async with asyncio.timeout(5):
            while len(heard.opus_of(alice)) < 3:
                await asyncio.sleep(0.01)
        heard.close()
        assert heard.opus_of(alice) == [opus] * 3
