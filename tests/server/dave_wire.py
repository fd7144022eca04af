"""A DAVE member over the wire: a bare protocol-core peer's WebSocket and UDP
(tests/server/conftest.py ``Peer``) with a davey session driven as discord.py drives it
(tests/server/dave_call.py ``DaveyPeer``). Used by the loopback and hostile-input tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from tests.server.conftest import Peer
from tests.server.dave_call import DaveyPeer
from voxgate.protocol.crypto import transport_cipher
from voxgate.protocol.messages import (
    Identify,
    Message,
    Ready,
    SessionDescription,
)
from voxgate.protocol.opcodes import EncryptionMode

AES = EncryptionMode.AEAD_AES256_GCM_RTPSIZE.value
XCHACHA = EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE.value


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


class DaveClient:
    """One member over the wire. ``dave`` False identifies without DAVE; ``key_package``
    False keeps the davey session's own key package back (a test sends its own)."""

    def __init__(
        self,
        peer: Peer,
        user_id: str,
        guild: str,
        channel: str,
        *,
        dave: bool = True,
        key_package: bool = True,
    ) -> None:
        self.peer = peer
        self.user_id = user_id
        self.guild = guild
        self.channel = channel
        self.dave = dave
        self.send_key_package = key_package
        self.member = DaveyPeer(user_id, int(channel))
        self.frames: list[tuple[Message, int | None]] = []
        self.description: SessionDescription | None = None
        self._task: asyncio.Task[None] | None = None

    async def join(self, authority: Any, mode: str = AES) -> None:
        """Identify (``authority.mint`` gives the token), discover, select, and drive."""
        peer = self.peer
        token, grant = authority.mint(self.guild, self.channel, self.user_id)
        peer.token, peer.session_id, peer.guild = token, grant.session_id, self.guild
        await peer.open()
        await peer.send(
            Identify(
                server_id=self.guild,
                user_id=self.user_id,
                session_id=grant.session_id,
                token=token,
                max_dave_protocol_version=1 if self.dave else 0,
            )
        )
        peer.ready = await peer.expect(Ready)
        self.start()
        await peer.select_udp(mode)
        await until(lambda: self.description is not None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._drive())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _drive(self) -> None:
        while True:
            message, seq = await self.peer.messages.get()
            self.frames.append((message, seq))
            if isinstance(message, SessionDescription):
                self.description = message
                self.peer.cipher = transport_cipher(message.mode, bytes(message.secret_key))
                replies = self.member.described(message.dave_protocol_version)
                if not self.send_key_package:
                    replies = []
            else:
                replies = self.member.receive(message)
            for reply in replies:
                await self.peer.send(reply)

    def kinds(self) -> list[type]:
        return [type(message) for message, _ in self.frames]

    def send_opus(self, opus: bytes) -> bytes:
        """Send ``opus`` as the member would now (DAVE-encrypted when ready); the payload."""
        payload = self.member.encrypt(opus) if self.member.ready else opus
        self.peer.send_audio(payload)
        return payload


async def established(*clients: DaveClient, after: bytes | None = None) -> bytes:
    """Wait for one group on every client (another than ``after``); its authenticator."""

    def done() -> bool:
        codes = {client.member.epoch_authenticator for client in clients}
        return None not in codes and len(codes) == 1 and after not in codes

    await until(done)
    authenticator = clients[0].member.epoch_authenticator
    assert authenticator is not None
    return authenticator
