"""In-process DAVE members: davey and libdave (dave.py) sessions reacting to the gateway's
messages as discord.py and discord.js do (DAVE.md §4, §8 "Client"), with no sockets.

A peer takes the server's messages (:class:`voxgate.protocol.messages` values) through
:meth:`DavePeer.receive` and returns what its client would send back (op 23, 26, 28, 31).
:class:`InProcessCall` wires peers to one :class:`~voxgate.server.dave.DaveGroup` the way
the router does (op 11 at join, op 4 then the group's op 25, op 13 at leave) and pumps
messages until nothing moves; a test may hold a member's inbound frames back to order a
race (``hold`` / ``release``).
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Iterable
from typing import Any

import dave as libdave
import davey

from voxgate.protocol.messages import (
    ClientDisconnect,
    ClientsConnect,
    DaveExecuteTransition,
    DavePrepareEpoch,
    DavePrepareTransition,
    DaveTransitionReady,
    Message,
    MlsAnnounceCommitTransition,
    MlsCommitWelcome,
    MlsExternalSender,
    MlsInvalidCommitWelcome,
    MlsKeyPackage,
    MlsProposals,
    MlsWelcome,
)
from voxgate.server.dave import (
    Close,
    DaveGroup,
    Joined,
    Left,
    MemberMessage,
    Output,
    Received,
    Send,
)

OPUS = bytes(range(1, 61))


class DavePeer(abc.ABC):
    """One member's client: its DAVE session and the client logic around it."""

    kind: str

    def __init__(self, user_id: str, channel_id: int) -> None:
        self.user_id = user_id
        self.channel_id = channel_id
        self.protocol_version = 0
        #: The op 11 / op 13 set (discord.js's connectedClients).
        self.connected: set[str] = set()
        self.pending_transitions: dict[int, int] = {}
        self.executed: list[int] = []
        self.failures: list[str] = []
        self.commits_sent = 0
        #: Fail on the next commit or Welcome, as a client that cannot process it.
        self.fail_next = False
        self.closed: tuple[int, str] | None = None
        #: Every message received, in order, for assertions on ordering.
        self.inbox: list[Message] = []

    def receive(self, message: Message) -> list[MemberMessage]:
        self.inbox.append(message)
        match message:
            case ClientsConnect():
                self.connected.update(message.user_ids)
            case ClientDisconnect():
                self.connected.discard(message.user_id)
            case MlsExternalSender():
                self.set_external_sender(message.external_sender)
            case MlsProposals():
                try:
                    commit = self.process_proposals(message.operation_type, message.proposals)
                except Exception as exc:
                    # Proposals sent before the server learnt that this member reset
                    # (op 31) name an epoch it left: libdave logs and drops them; so do we.
                    self.failures.append(f"MlsProposals: {exc}")
                    return []
                if commit is not None:
                    self.commits_sent += 1
                    return [MlsCommitWelcome(commit_welcome=commit)]
            case MlsAnnounceCommitTransition() | MlsWelcome():
                transition_id = message.transition_id
                try:
                    if self.fail_next:
                        self.fail_next = False
                        raise ValueError("told to fail")
                    if isinstance(message, MlsWelcome):
                        self.process_welcome(message.welcome)
                    else:
                        self.process_commit(message.commit)
                except Exception as exc:  # what discord.py does on any failure
                    self.failures.append(f"{type(message).__name__}: {exc}")
                    return [MlsInvalidCommitWelcome(transition_id=transition_id), *self.reinit()]
                if transition_id != 0:
                    self.pending_transitions[transition_id] = self.protocol_version
                    return [DaveTransitionReady(transition_id=transition_id)]
            case DavePrepareTransition():
                self.pending_transitions[message.transition_id] = message.protocol_version
                if message.transition_id == 0:
                    self.execute(0)
                else:
                    return [DaveTransitionReady(transition_id=message.transition_id)]
            case DaveExecuteTransition():
                self.execute(message.transition_id)
            case DavePrepareEpoch():
                if message.epoch == 1:
                    self.protocol_version = message.protocol_version
                    return self.reinit()
        return []

    def described(self, dave_protocol_version: int) -> list[MemberMessage]:
        """Op 4: a version above 0 makes the DAVE session and sends op 26 at once."""
        self.protocol_version = dave_protocol_version
        return self.reinit() if dave_protocol_version > 0 else []

    def execute(self, transition_id: int) -> None:
        if transition_id in self.pending_transitions:
            self.protocol_version = self.pending_transitions.pop(transition_id)
            self.executed.append(transition_id)

    def reinit(self) -> list[MemberMessage]:
        if self.protocol_version == 0:
            return []
        return [MlsKeyPackage(key_package=self.new_key_package())]

    # --- the implementation -------------------------------------------------------------

    @abc.abstractmethod
    def new_key_package(self) -> bytes: ...

    @abc.abstractmethod
    def set_external_sender(self, package: bytes) -> None: ...

    @abc.abstractmethod
    def process_proposals(self, operation_type: int, proposals: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def process_commit(self, commit: bytes) -> None: ...

    @abc.abstractmethod
    def process_welcome(self, welcome: bytes) -> None: ...

    @property
    @abc.abstractmethod
    def ready(self) -> bool: ...

    @property
    @abc.abstractmethod
    def epoch_authenticator(self) -> bytes | None: ...

    @abc.abstractmethod
    def encrypt(self, opus: bytes) -> bytes: ...

    @abc.abstractmethod
    def decrypt(self, sender: str, frame: bytes) -> bytes | None: ...

    def __repr__(self) -> str:
        return f"<{self.kind} {self.user_id}>"


class DaveyPeer(DavePeer):
    """davey, as discord.py drives it (``expected_user_ids`` as discord.js passes them
    when ``strict``)."""

    kind = "davey"

    def __init__(self, user_id: str, channel_id: int, *, strict: bool = True) -> None:
        super().__init__(user_id, channel_id)
        self.strict = strict
        self.session: davey.DaveSession | None = None

    def new_key_package(self) -> bytes:
        if self.session is None:
            self.session = davey.DaveSession(1, int(self.user_id), self.channel_id)
        else:
            self.session.reinit(1, int(self.user_id), self.channel_id)
        return bytes(self.session.get_serialized_key_package())

    def set_external_sender(self, package: bytes) -> None:
        assert self.session is not None
        self.session.set_external_sender(package)

    def process_proposals(self, operation_type: int, proposals: bytes) -> bytes | None:
        assert self.session is not None
        optype = (
            davey.ProposalsOperationType.append
            if operation_type == 0
            else davey.ProposalsOperationType.revoke
        )
        expected = [int(user) for user in self.connected] if self.strict else None
        result = self.session.process_proposals(optype, proposals, expected)
        if result is None:
            return None
        return bytes(result.commit) + (bytes(result.welcome) if result.welcome else b"")

    def process_commit(self, commit: bytes) -> None:
        assert self.session is not None
        self.session.process_commit(commit)

    def process_welcome(self, welcome: bytes) -> None:
        assert self.session is not None
        self.session.process_welcome(welcome)

    @property
    def ready(self) -> bool:
        return self.session is not None and bool(self.session.ready)

    @property
    def epoch(self) -> int | None:
        return None if self.session is None else self.session.epoch

    @property
    def leaf(self) -> int | None:
        return None if self.session is None else self.session.own_leaf_index

    @property
    def epoch_authenticator(self) -> bytes | None:
        if self.session is None or not self.session.ready:
            return None
        return bytes(self.session.get_epoch_authenticator())

    @property
    def privacy_code(self) -> str | None:
        return None if self.session is None else self.session.voice_privacy_code

    def encrypt(self, opus: bytes) -> bytes:
        assert self.session is not None
        return bytes(self.session.encrypt_opus(opus))

    def decrypt(self, sender: str, frame: bytes) -> bytes | None:
        assert self.session is not None
        try:
            return bytes(self.session.decrypt(int(sender), davey.MediaType.audio, frame))
        except Exception:
            return None


class LibdavePeer(DavePeer):
    """libdave through dave.py, as nextcord drives it."""

    kind = "libdave"

    def __init__(self, user_id: str, channel_id: int) -> None:
        super().__init__(user_id, channel_id)
        self.mls_failures: list[tuple[str, str]] = []
        self.session = libdave.Session(
            lambda source, reason: self.mls_failures.append((source, reason))
        )
        self.encryptor = libdave.Encryptor()
        self.decryptors: dict[str, Any] = {}
        self._ready = False
        self._ssrc = int(user_id) & 0xFFFFFFFF or 1

    def new_key_package(self) -> bytes:
        self.session.init(1, self.channel_id, self.user_id)
        self._ready = False
        package = self.session.get_marshalled_key_package()
        assert package is not None
        return bytes(package)

    def set_external_sender(self, package: bytes) -> None:
        self.session.set_external_sender(package)

    def process_proposals(self, operation_type: int, proposals: bytes) -> bytes | None:
        result = self.session.process_proposals(
            bytes((operation_type,)) + proposals, set(self.connected) | {self.user_id}
        )
        return None if result is None else bytes(result)

    def process_commit(self, commit: bytes) -> None:
        result = self.session.process_commit(commit)
        if isinstance(result, libdave.RejectType):
            raise ValueError(f"libdave rejected the commit: {result.name}")
        self._keys_changed()

    def process_welcome(self, welcome: bytes) -> None:
        result = self.session.process_welcome(welcome, set(self.connected) | {self.user_id})
        if result is None:
            raise ValueError("libdave rejected the welcome")
        self._keys_changed()

    def _keys_changed(self) -> None:
        self._ready = True
        self.encryptor.set_key_ratchet(self.session.get_key_ratchet(self.user_id))
        self.encryptor.assign_ssrc_to_codec(self._ssrc, libdave.Codec.opus)
        for user, decryptor in self.decryptors.items():
            ratchet = self.session.get_key_ratchet(user)
            if ratchet is not None:
                decryptor.transition_to_key_ratchet(ratchet)

    @property
    def ready(self) -> bool:
        return self._ready and self.session.has_established_group()

    @property
    def epoch_authenticator(self) -> bytes | None:
        if not self.ready:
            return None
        value = self.session.get_last_epoch_authenticator()
        return None if value is None else bytes(value)

    def encrypt(self, opus: bytes) -> bytes:
        frame = self.encryptor.encrypt(libdave.MediaType.audio, self._ssrc, opus)
        assert frame is not None, "libdave could not encrypt"
        return bytes(frame)

    def decrypt(self, sender: str, frame: bytes) -> bytes | None:
        decryptor = self.decryptors.get(sender)
        if decryptor is None:
            ratchet = self.session.get_key_ratchet(sender)
            if ratchet is None:
                return None
            decryptor = self.decryptors[sender] = libdave.Decryptor()
            decryptor.transition_to_key_ratchet(ratchet)
        result = decryptor.decrypt(libdave.MediaType.audio, frame)
        return None if result is None else bytes(result)


class InProcessCall:
    """One channel's DAVE group and its peers, wired as the router wires sessions."""

    def __init__(self, group: DaveGroup) -> None:
        self.group = group
        self.now = 0.0
        self.peers: dict[str, DavePeer] = {}
        #: Frames to each member not yet delivered, in order.
        self.inbound: dict[str, deque[Message]] = {}
        #: Frames from each member not yet handled by the group, in order.
        self.outbound: dict[str, deque[MemberMessage]] = {}
        self.held: set[str] = set()
        self.held_out: set[str] = set()
        self.closed: dict[str, tuple[int, str]] = {}

    # --- membership, as the router does it ------------------------------------------

    def join(self, peer: DavePeer, *, dave: bool = True) -> None:
        present = list(self.peers)
        self.peers[peer.user_id] = peer
        self.inbound[peer.user_id] = deque()
        self.outbound[peer.user_id] = deque()
        if present:
            self.inbound[peer.user_id].append(ClientsConnect(user_ids=present))
        for other in present:
            self.inbound[other].append(ClientsConnect(user_ids=[peer.user_id]))
        outputs = self.group.handle(Joined(peer.user_id, dave), self.now)
        version = self.group.description_version(peer.user_id)
        self.pump_until_idle(skip=peer.user_id)
        # op 4, then what the group sends after it
        self.outbound[peer.user_id].extend(peer.described(version))
        self.apply(outputs)
        self.pump()

    def leave(self, user_id: str) -> None:
        self.peers.pop(user_id)
        self.inbound.pop(user_id)
        self.outbound.pop(user_id)
        for other in self.peers:
            self.inbound[other].append(ClientDisconnect(user_id=user_id))
        self.apply(self.group.handle(Left(user_id), self.now))
        self.pump()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.group.on_timer(self.now))
        self.pump()

    # --- delivery ----------------------------------------------------------------------

    def apply(self, outputs: Iterable[Output]) -> None:
        for output in outputs:
            if isinstance(output, Send):
                if output.user_id in self.inbound:
                    self.inbound[output.user_id].append(output.message)
            elif isinstance(output, Close):
                self.closed[output.user_id] = (output.code, output.reason)
                if output.user_id in self.peers:
                    self.peers[output.user_id].closed = (output.code, output.reason)
                    self.leave(output.user_id)

    def send_from(self, user_id: str, message: MemberMessage) -> None:
        """Hand the group one message as if ``user_id`` sent it."""
        self.apply(self.group.handle(Received(user_id, message), self.now))
        self.pump()

    def hold(self, user_id: str) -> None:
        """Stop delivering frames to ``user_id`` until :meth:`release`."""
        self.held.add(user_id)

    def hold_replies(self, user_id: str) -> None:
        """Keep what ``user_id`` sends from the group until :meth:`release`."""
        self.held_out.add(user_id)

    def release(self, user_id: str) -> None:
        self.held.discard(user_id)
        self.held_out.discard(user_id)
        self.pump()

    def pump(self) -> None:
        self.pump_until_idle()

    def pump_until_idle(self, skip: str | None = None) -> None:
        moved = True
        while moved:
            moved = False
            for user_id in list(self.peers):
                if user_id == skip or user_id not in self.peers:
                    continue
                inbound = self.inbound[user_id]
                if user_id not in self.held:
                    while inbound and user_id in self.peers:
                        replies = self.peers[user_id].receive(inbound.popleft())
                        self.outbound[user_id].extend(replies)
                        moved = True
                if user_id in self.held_out or user_id not in self.peers:
                    continue
                outbound = self.outbound[user_id]
                while outbound and user_id in self.peers:
                    message = outbound.popleft()
                    self.apply(self.group.handle(Received(user_id, message), self.now))
                    moved = True

    # --- what tests assert -------------------------------------------------------------

    def dave_peers(self) -> list[DavePeer]:
        return [peer for peer in self.peers.values() if not self.group.is_legacy(peer.user_id)]

    def assert_one_group(self) -> bytes:
        """Every DAVE member is ready with the same epoch authenticator; it is returned."""
        peers = self.dave_peers()
        authenticators = {peer.user_id: peer.epoch_authenticator for peer in peers}
        assert all(value is not None for value in authenticators.values()), authenticators
        assert len(set(authenticators.values())) == 1, authenticators
        return next(iter(authenticators.values()))  # type: ignore[return-value]

    def assert_media_flows(self) -> None:
        """A frame each member encrypts, every other member decrypts to the same Opus."""
        peers = self.dave_peers()
        for sender in peers:
            opus = OPUS + sender.user_id.encode()
            frame = sender.encrypt(opus)
            assert frame != opus and frame.endswith(b"\xfa\xfa"), (sender, frame.hex())
            for receiver in peers:
                if receiver is not sender:
                    assert receiver.decrypt(sender.user_id, frame) == opus, (sender, receiver)
