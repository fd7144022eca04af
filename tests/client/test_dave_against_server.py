"""The voxgate client against ``voxgate serve --dave required``: without DAVE it is refused."""

from __future__ import annotations

import ssl

import pytest

from voxgate.client import VoiceConnection, VoiceConnectionError
from voxgate.client.dave import DaveState


async def _connect(server, guild: str, channel: str, user: str, **kwargs) -> VoiceConnection:
    events = server.join(guild, channel, user)
    trust = ssl.create_default_context(cafile=str(server.ca_path))
    return await VoiceConnection.connect(
        events["voice_state"], events["voice_server"], ssl=trust, **kwargs
    )


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
