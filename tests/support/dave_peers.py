"""In-process DAVE peers for tests: a davey session or a libdave (dave.py) session behind
one small byte-level interface, the client role of DAVE.md §4 with no gateway messages.

(``tests/server/dave_call.py`` is the server tests' harness, which speaks gateway
messages to :class:`~voxgate.server.dave.DaveGroup`; this one takes the raw MLS bytes.)
A test plays the voice gateway with :mod:`voxgate.protocol.mls` and calls what a real
client calls on each message::

    peer = make_peer("davey", user_id=1, channel_id=42)       # or "libdave"
    op26 = peer.key_package()                                 # after op 4
    peer.set_external_sender(op25)                            # op 25
    peer.users_connected([2, 3])                              # op 11 (libdave needs it)
    op28 = peer.process_proposals(0, op27[1:], {2, 3})        # op 27 -> commit ‖ welcome | None
    peer.process_commit(commit)                               # op 29 body after the u16 T
    peer.process_welcome(welcome)                             # op 30 body after the u16 T
    peer.epoch_authenticator(); peer.privacy_code
    frame = peer.encrypt_opus(opus); other.decrypt(peer.user_id, frame)

Failures raise :class:`DavePeerError` (what a client answers with op 31). Proposals go
in the way the real clients feed them: discord.py gives davey the payload after the
optype byte and the optype separately, libdave takes the byte with it (DAVE.md §2).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Literal

import dave
import davey

from voxgate.protocol import mls

#: The DAVE protocol version both implementations speak.
DAVE_VERSION = 1
#: Length and group size of the voice privacy code (30 digits in groups of 5).
PRIVACY_CODE_LENGTH, PRIVACY_CODE_GROUP = 30, 5

Implementation = Literal["davey", "libdave"]
IMPLEMENTATIONS: tuple[Implementation, ...] = ("davey", "libdave")


class DavePeerError(Exception):
    """The session's DAVE library refused a message (a real client would send op 31)."""


class DavePeer(abc.ABC):
    """One member's DAVE session. ``user_id`` and ``channel_id`` are Discord snowflakes."""

    implementation: Implementation

    def __init__(self, user_id: int, channel_id: int) -> None:
        self.user_id = user_id
        self.channel_id = channel_id
        self.external_sender: bytes | None = None
        #: users the session was told are in the call (op 11 adds, op 13 removes)
        self.known_user_ids: set[int] = set()

    def users_connected(self, user_ids: Iterable[int]) -> None:
        """Op 11: these users are in the call (libdave only welcomes recognised users)."""
        self.known_user_ids.update(int(u) for u in user_ids)

    def user_disconnected(self, user_id: int) -> None:
        """Op 13."""
        self.known_user_ids.discard(int(user_id))

    @abc.abstractmethod
    def key_package(self) -> bytes:
        """A fresh op 26 payload (bare KeyPackage)."""

    @abc.abstractmethod
    def set_external_sender(self, package: bytes) -> None:
        """Op 25: makes the pending group at epoch 0."""

    @abc.abstractmethod
    def process_proposals(
        self, optype: int, payload: bytes, expected_user_ids: Iterable[int] | None = None
    ) -> bytes | None:
        """Op 27 (``payload`` after the optype byte): the op 28 payload, or None.

        ``expected_user_ids`` is the set a client checks Adds against (discord.js passes
        the op 11 set); None means the users already known plus those of the Adds.
        """

    @abc.abstractmethod
    def process_commit(self, commit: bytes) -> None:
        """Op 29's commit (after the transition id). Raises DavePeerError."""

    @abc.abstractmethod
    def process_welcome(self, welcome: bytes) -> None:
        """Op 30's Welcome (after the transition id). Raises DavePeerError."""

    @abc.abstractmethod
    def epoch_authenticator(self) -> bytes | None: ...

    @abc.abstractmethod
    def encrypt_opus(self, frame: bytes) -> bytes:
        """The DAVE frame of one Opus frame (silence stays as is). Raises DavePeerError."""

    @abc.abstractmethod
    def decrypt(self, user_id: int, frame: bytes) -> bytes:
        """The Opus frame ``user_id`` sent. Raises DavePeerError."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Op 31 / sole-member reset / upgrade: a new pending group (external sender kept)."""

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether the session is in an established group and can encrypt."""

    @property
    def privacy_code(self) -> str | None:
        """The voice privacy code (30 digits, groups of 5) of the current epoch, or None."""
        authenticator = self.epoch_authenticator()
        if not authenticator:
            return None
        code: str = davey.generate_displayable_code(
            authenticator, PRIVACY_CODE_LENGTH, PRIVACY_CODE_GROUP
        )
        return code

    def _expected(self, payload: bytes, optype: int, expected: Iterable[int] | None) -> set[int]:
        if expected is not None:
            return {int(u) for u in expected}
        users = set(self.known_user_ids)
        if optype == 0:
            for proposal in mls.parse_proposals_append(payload):
                if proposal.key_package is not None and proposal.key_package.user_id is not None:
                    users.add(proposal.key_package.user_id)
        return users

    def __repr__(self) -> str:
        return f"<{self.implementation} peer {self.user_id}>"


class DaveyPeer(DavePeer):
    """davey 0.1.x (Rust/openmls), the session discord.py 2.7 uses."""

    implementation: Implementation = "davey"

    def __init__(self, user_id: int, channel_id: int) -> None:
        super().__init__(user_id, channel_id)
        self.session = davey.DaveSession(DAVE_VERSION, user_id, channel_id)

    def key_package(self) -> bytes:
        return bytes(self.session.get_serialized_key_package())

    def set_external_sender(self, package: bytes) -> None:
        self.external_sender = package
        try:
            self.session.set_external_sender(package)
        except ValueError as error:
            raise DavePeerError(str(error)) from error

    def process_proposals(
        self, optype: int, payload: bytes, expected_user_ids: Iterable[int] | None = None
    ) -> bytes | None:
        # ProposalsOperationType(0) raises TypeError: map the byte by hand (DAVE.md §6).
        operation = (
            davey.ProposalsOperationType.append
            if optype == 0
            else davey.ProposalsOperationType.revoke
        )
        expected = list(self._expected(payload, optype, expected_user_ids))
        try:
            result = self.session.process_proposals(operation, payload, expected)
        except ValueError as error:
            raise DavePeerError(str(error)) from error
        if result is None:
            return None
        return bytes(result.commit) + bytes(result.welcome or b"")

    def process_commit(self, commit: bytes) -> None:
        try:
            self.session.process_commit(commit)
        except ValueError as error:
            raise DavePeerError(str(error)) from error

    def process_welcome(self, welcome: bytes) -> None:
        try:
            self.session.process_welcome(welcome)
        except ValueError as error:
            raise DavePeerError(str(error)) from error

    def epoch_authenticator(self) -> bytes | None:
        if not self.session.ready:
            return None
        return bytes(self.session.get_epoch_authenticator())

    def encrypt_opus(self, frame: bytes) -> bytes:
        try:
            return bytes(self.session.encrypt_opus(frame))
        except ValueError as error:
            raise DavePeerError(str(error)) from error

    def decrypt(self, user_id: int, frame: bytes) -> bytes:
        try:
            return bytes(self.session.decrypt(user_id, davey.MediaType.audio, frame))
        except ValueError as error:
            raise DavePeerError(str(error)) from error

    def reset(self) -> None:
        self.session.reinit(DAVE_VERSION, self.user_id, self.channel_id)

    @property
    def ready(self) -> bool:
        return bool(self.session.ready)

    @property
    def epoch(self) -> int | None:
        epoch: int | None = self.session.epoch
        return epoch

    @property
    def own_leaf_index(self) -> int | None:
        leaf: int | None = self.session.own_leaf_index
        return leaf

    @property
    def privacy_code(self) -> str | None:
        return self.session.voice_privacy_code or None


class LibdavePeer(DavePeer):
    """libdave (Discord's C++ DAVE) through dave.py, the session nextcord uses."""

    implementation: Implementation = "libdave"
    SSRC = 1

    def __init__(self, user_id: int, channel_id: int) -> None:
        super().__init__(user_id, channel_id)
        self.failures: list[tuple[str, str]] = []
        self.session = dave.Session(lambda source, reason: self.failures.append((source, reason)))
        self.session.init(DAVE_VERSION, channel_id, str(user_id))
        self.encryptor = dave.Encryptor()
        self.encryptor.assign_ssrc_to_codec(self.SSRC, dave.Codec.opus)
        self.decryptors: dict[int, dave.Decryptor] = {}
        self.roster: set[int] = set()

    def _failure(self, what: str) -> DavePeerError:
        detail = "; ".join(f"{source}: {reason}" for source, reason in self.failures[-3:])
        return DavePeerError(f"libdave {what} failed: {detail or 'no detail'}")

    def key_package(self) -> bytes:
        package = self.session.get_marshalled_key_package()
        if package is None:
            raise self._failure("key package")
        return bytes(package)

    def set_external_sender(self, package: bytes) -> None:
        self.external_sender = package
        self.session.set_external_sender(package)

    def process_proposals(
        self, optype: int, payload: bytes, expected_user_ids: Iterable[int] | None = None
    ) -> bytes | None:
        expected = self._expected(payload, optype, expected_user_ids) | {self.user_id}
        result = self.session.process_proposals(
            bytes((optype,)) + payload, {str(u) for u in expected}
        )
        return None if result is None else bytes(result)

    def _apply_roster(self, changes: dict[int, list[int]]) -> None:
        # libdave returns the roster's changes: a member with a key joined, without left.
        for user_id, key in changes.items():
            if key:
                self.roster.add(int(user_id))
            else:
                self.roster.discard(int(user_id))
        # As libdave's samples do: after every epoch the encryptor gets our ratchet and
        # each other member's decryptor theirs.
        self.encryptor.set_key_ratchet(self.session.get_key_ratchet(str(self.user_id)))
        for user_id in self.roster - {self.user_id}:
            ratchet = self.session.get_key_ratchet(str(user_id))
            if ratchet is not None:
                decryptor = self.decryptors.setdefault(user_id, dave.Decryptor())
                decryptor.transition_to_key_ratchet(ratchet)

    def process_commit(self, commit: bytes) -> None:
        result = self.session.process_commit(commit)
        if isinstance(result, dave.RejectType):
            raise self._failure(f"commit ({result.name})")
        self._apply_roster(result)

    def process_welcome(self, welcome: bytes) -> None:
        known = {str(u) for u in self.known_user_ids | {self.user_id}}
        result = self.session.process_welcome(welcome, known)
        if result is None:
            raise self._failure("welcome")
        self.roster = {self.user_id}
        self._apply_roster(result)

    def epoch_authenticator(self) -> bytes | None:
        if not self.session.has_established_group():
            return None
        authenticator = self.session.get_last_epoch_authenticator()
        return bytes(authenticator) if authenticator else None

    def encrypt_opus(self, frame: bytes) -> bytes:
        if frame == b"\xf8\xff\xfe":  # silence is never encrypted (WP:633-643)
            return frame
        encrypted = self.encryptor.encrypt(dave.MediaType.audio, self.SSRC, frame)
        if encrypted is None:
            raise self._failure("encrypt")
        return bytes(encrypted)

    def decrypt(self, user_id: int, frame: bytes) -> bytes:
        decryptor = self.decryptors.get(int(user_id))
        if decryptor is None:
            raise DavePeerError(f"libdave has no key ratchet for user {user_id}")
        plain = decryptor.decrypt(dave.MediaType.audio, frame)
        if plain is None:
            raise self._failure("decrypt")
        return bytes(plain)

    def reset(self) -> None:
        self.session.reset()
        self.session.init(DAVE_VERSION, self.channel_id, str(self.user_id))
        self.roster = set()
        if self.external_sender is not None:
            self.session.set_external_sender(self.external_sender)

    @property
    def ready(self) -> bool:
        return bool(self.session.has_established_group())


def make_peer(implementation: Implementation, user_id: int, channel_id: int) -> DavePeer:
    """A DAVE member of ``implementation`` ("davey" or "libdave")."""
    if implementation == "davey":
        return DaveyPeer(user_id, channel_id)
    return LibdavePeer(user_id, channel_id)
