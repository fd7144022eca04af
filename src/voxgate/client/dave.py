"""The member's side of DAVE: the call's MLS group and its media frames, through davey.

DAVE.md §4 and §8 "Client". :class:`DaveMember` is sans-I/O like the
:class:`~voxgate.client.gateway.ClientGateway` that feeds it: a decoded server message goes
in (op 4, 11, 13, 21, 22, 24, 25, 27, 29, 30) and the client messages to send come out
(op 23, 26, 28, 31). It reacts message for message as discord.py 2.7 and @discordjs/voice
0.19 do, because those are the clients Discord's voice servers are used to. davey (the
package discord.py uses) keeps the group and the key ratchets; this is the only module of
the client that imports it.

Media: :meth:`DaveMember.encrypt` turns an Opus frame into a DAVE frame once the group is
ready; :meth:`DaveMember.decrypt` opens one per sender, and never raises: a frame it cannot
open (a sender whose ratchet is not known yet, plain Opus outside a passthrough window) is
dropped and counted, which is where @discordjs/voice 0.19.0 throws
``DecryptionFailed(UnencryptedWhenPassthroughDisabled)`` (discord.js #11419, #11445).
"""

from __future__ import annotations

import enum
import logging

import davey

from voxgate.protocol.dave import OPUS_SILENCE, is_dave_frame
from voxgate.protocol.messages import (
    ClientDisconnect,
    ClientMessage,
    ClientsConnect,
    DaveExecuteTransition,
    DavePrepareEpoch,
    DavePrepareTransition,
    DaveTransitionReady,
    MlsAnnounceCommitTransition,
    MlsCommitWelcome,
    MlsExternalSender,
    MlsInvalidCommitWelcome,
    MlsKeyPackage,
    MlsProposals,
    MlsWelcome,
    ServerMessage,
    SessionDescription,
)

log = logging.getLogger(__name__)

#: Seconds receivers accept plain frames after an upgrade or a reset, as both reference
#: clients allow (discord.py ``voice_state.py`` 290 and 319, discord.js ``TRANSITION_EXPIRY``).
TRANSITION_EXPIRY_S = 10
#: Seconds of passthrough once a downgrade is announced (op 21 to version 0): discord.py's
#: 120 (discord.js: 24); the senders switch to plain Opus at op 22, some time later.
DOWNGRADE_EXPIRY_S = 120

_PROPOSALS_OPERATION = {
    0: davey.ProposalsOperationType.append,
    1: davey.ProposalsOperationType.revoke,
}
#: davey's SessionStatus by its int value (its enum members are not hashable). Inactive:
#: the key package is sent and the external sender (op 25) has not come yet.
_STATUS = ("pending", "pending", "awaiting_response", "active")
#: What davey raises for input it cannot take (PyO3 maps its errors to these).
_DAVEY_ERRORS = (ValueError, TypeError, OverflowError, RuntimeError)


def _is_snowflake(value: str) -> bool:
    return value.isascii() and value.isdigit() and int(value) < 1 << 64


class DaveState(enum.Enum):
    """Where a member is in the call's end-to-end encryption."""

    DISABLED = "disabled"  # this client identified without DAVE (``dave=False``)
    INACTIVE = "inactive"  # the call is not E2EE: the server chose version 0, or downgraded
    PENDING = "pending"  # key package sent; no group yet (alone, or waiting to be added)
    AWAITING_RESPONSE = "awaiting_response"  # our commit is out; the server has not answered
    ACTIVE = "active"  # in the group: audio is end-to-end encrypted


class DaveMember:
    """One member's DAVE session, across the transitions and epochs of a call.

    ``user_id`` and ``channel_id`` are the join's (the MLS identity and group id);
    ``enabled=False`` identifies with ``max_dave_protocol_version: 0`` and never encrypts.

    Example (what :class:`~voxgate.client.gateway.ClientGateway` does with each message)::

        for reply in member.handle(message):
            send(encode(reply))
        payload = member.encrypt(opus)            # before transport encryption
        opus = member.decrypt(user_id, payload)   # after transport decryption; None: dropped
    """

    def __init__(self, user_id: str, channel_id: str, *, enabled: bool = True) -> None:
        self.user_id = user_id
        self.channel_id = channel_id
        # The MLS identity and group id are the ids as u64 (DAVE.md §3): other ids cannot
        # be in a DAVE group, so such a join identifies without it.
        self.enabled = enabled and _is_snowflake(user_id) and _is_snowflake(channel_id)
        if enabled and not self.enabled:
            log.warning(
                "ids %r / %r are not u64 snowflakes: joining without DAVE", user_id, channel_id
            )
        #: The version in force: op 4's, then what transitions and epochs change it to.
        self.protocol_version = 0
        self.downgraded = False
        #: transition_id -> protocol_version, prepared (op 21) or committed (op 29/30).
        self.pending_transitions: dict[int, int] = {}
        self.last_transition_id: int | None = None
        #: The transition whose commit or welcome we processed (so davey now encrypts with
        #: the new key) and that has not executed yet (op 22).
        self.awaiting_execute: int | None = None
        #: The other members the server named (op 11 in, op 13 out): the only users whose
        #: Add proposals are accepted (davey's ``expected_user_ids``, DAVE.md §2).
        self.connected_users: set[str] = set()
        self._session: davey.DaveSession | None = None
        # Counters (plain integers, read by whoever reports them).
        self.frames_encrypted = 0
        self.frames_decrypted = 0
        #: Plain frames accepted inside a passthrough window (a transition).
        self.frames_passed_through = 0
        #: Plain frames received while the call had no E2EE in force for us.
        self.frames_plain = 0
        #: Plain frames while E2EE was in force and passthrough was not: not trusted.
        self.frames_dropped_unencrypted = 0
        #: DAVE frames that did not open: no key for that sender (yet), or a bad tag.
        self.frames_dropped_undecryptable = 0
        self.encrypt_failures = 0
        self.commits_processed = 0
        self.welcomes_processed = 0
        self.proposals_rejected = 0
        self.transitions_executed = 0
        #: Op 31 sent: a commit or welcome we could not process, then a fresh key package.
        self.recoveries = 0

    # --- views ---------------------------------------------------------------------------

    @property
    def max_protocol_version(self) -> int:
        """What Identify offers: davey's version, or 0 without DAVE."""
        return davey.DAVE_PROTOCOL_VERSION if self.enabled else 0

    @property
    def state(self) -> DaveState:
        if not self.enabled:
            return DaveState.DISABLED
        if self.protocol_version == 0 or self._session is None:
            return DaveState.INACTIVE
        return DaveState(_STATUS[int(self._session.status)])  # type: ignore[call-overload]

    @property
    def ready(self) -> bool:
        """Whether frames we send now are end-to-end encrypted."""
        return self.protocol_version > 0 and self._session is not None and self._session.ready

    @property
    def epoch(self) -> int | None:
        """The MLS epoch: None without a session, 0 pending, 1 and up in a group."""
        return None if self._session is None else self._session.epoch

    @property
    def privacy_code(self) -> str | None:
        """The call's voice privacy code, as Discord's clients show it (30 digits in groups
        of 5); the same for every member of the group, and new after each membership change.
        None while the call is not end-to-end encrypted."""
        if self.protocol_version == 0 or self._session is None or not self._session.ready:
            return None
        return self._session.voice_privacy_code

    def verification_code(self, user_id: str) -> str | None:
        """The verification code of this member and ``user_id`` as a pair (the same on both
        sides; compare it with ``user_id`` out of band). None if it is not in the group."""
        if self._session is None or not self._session.ready:
            return None
        try:
            return self._session.get_verification_code(int(user_id))
        except _DAVEY_ERRORS:
            return None

    def epoch_authenticator(self) -> bytes | None:
        """The group's epoch authenticator: equal on every member of the same epoch."""
        return None if self._session is None else self._session.get_epoch_authenticator()

    def group_user_ids(self) -> list[str]:
        """The members of the group, as davey knows them."""
        if self._session is None or not self._session.ready:
            return []
        return [str(user) for user in self._session.get_user_ids()]

    def decryption_counts(self, user_id: str) -> tuple[int, int, int]:
        """davey's own ``(successes, failures, passthroughs)`` for frames from ``user_id``."""
        try:
            stats = (
                None if self._session is None else self._session.get_decryption_stats(int(user_id))
            )
        except _DAVEY_ERRORS:  # no decryptor for that user
            stats = None
        if stats is None:
            return 0, 0, 0
        return stats.successes, stats.failures, stats.passthroughs

    # --- the gateway's messages ----------------------------------------------------------

    def handle(self, message: ServerMessage) -> list[ClientMessage]:
        """React to one server message; returns the messages to send, in order.

        Never raises for what the server sent: a commit or welcome that does not process
        is answered with op 31 and a new key package (DAVE.md §4.6); proposals that do not
        process are logged and counted.
        """
        match message:
            case SessionDescription():
                self.protocol_version = message.dave_protocol_version if self.enabled else 0
                return self._reinit()
            case ClientsConnect():
                self.connected_users.update(filter(_is_snowflake, message.user_ids))
                self.connected_users.discard(self.user_id)
            case ClientDisconnect():
                self.connected_users.discard(message.user_id)
        session = self._session
        if session is None:
            # discord.py drops DAVE messages until op 4 made a session (DAVE.md §2).
            return []
        match message:
            case DavePrepareTransition():
                self.pending_transitions[message.transition_id] = message.protocol_version
                if message.transition_id == 0:
                    self._execute_transition(0)  # (re)initialise: now, and no op 23
                    return []
                if message.protocol_version == 0:
                    # A downgrade: members switch to plain Opus at op 22, not all at once.
                    session.set_passthrough_mode(True, DOWNGRADE_EXPIRY_S)
                return [DaveTransitionReady(transition_id=message.transition_id)]
            case DaveExecuteTransition():
                self._execute_transition(message.transition_id)
            case DavePrepareEpoch() if message.epoch == 1:
                # A new group (an upgrade, or the sole member's reset, DAVE.md §4.4-4.5).
                self.protocol_version = message.protocol_version
                return self._reinit()
            case MlsExternalSender():
                try:
                    session.set_external_sender(message.external_sender)
                except _DAVEY_ERRORS as exc:
                    log.warning("DAVE external sender rejected: %s", exc)
            case MlsProposals():
                return self._proposals(session, message)
            case MlsAnnounceCommitTransition():
                return self._joined(message.transition_id, message.commit, welcome=False)
            case MlsWelcome():
                return self._joined(message.transition_id, message.welcome, welcome=True)
        return []

    def _proposals(self, session: davey.DaveSession, message: MlsProposals) -> list[ClientMessage]:
        operation = _PROPOSALS_OPERATION.get(message.operation_type)
        if operation is None:
            self.proposals_rejected += 1
            log.warning("DAVE proposals with unknown operation type %d", message.operation_type)
            return []
        try:
            result = session.process_proposals(
                operation, message.proposals, [int(user) for user in self.connected_users]
            )
        except _DAVEY_ERRORS as exc:
            self.proposals_rejected += 1
            log.warning("DAVE proposals rejected: %s", exc)
            return []
        if result is None:
            return []  # nothing left to commit (every proposal revoked)
        welcome = result.welcome or b""
        return [MlsCommitWelcome(commit_welcome=result.commit + welcome)]

    def _joined(self, transition_id: int, payload: bytes, *, welcome: bool) -> list[ClientMessage]:
        """Op 29 or 30: take the commit or welcome, and say we are ready for its transition."""
        assert self._session is not None
        try:
            if welcome:
                self._session.process_welcome(payload)
            else:
                self._session.process_commit(payload)
        except _DAVEY_ERRORS as exc:
            # Someone else's commit won while we were pending, or the message is bad: leave
            # the group we had and start over (DAVE.md §4.2 step 5, §4.6).
            log.info("DAVE transition %d: %s; recovering", transition_id, exc)
            self.recoveries += 1
            return [MlsInvalidCommitWelcome(transition_id=transition_id), *self._reinit()]
        if welcome:
            self.welcomes_processed += 1
        else:
            self.commits_processed += 1
        if transition_id == 0:
            self.last_transition_id = 0
            return []
        self.pending_transitions[transition_id] = self.protocol_version
        self.awaiting_execute = transition_id
        return [DaveTransitionReady(transition_id=transition_id)]

    def _reinit(self) -> list[ClientMessage]:
        """A fresh session for the version in force, with its key package (op 26)."""
        self.awaiting_execute = None
        if self.protocol_version > 0:
            user, channel = int(self.user_id), int(self.channel_id)
            if self._session is None:
                self._session = davey.DaveSession(self.protocol_version, user, channel)
            else:
                self._session.reinit(self.protocol_version, user, channel)
            return [MlsKeyPackage(key_package=self._session.get_serialized_key_package())]
        if self._session is not None:
            self._session.reset()
            self._session.set_passthrough_mode(True, TRANSITION_EXPIRY_S)
        return []

    def _execute_transition(self, transition_id: int) -> None:
        if transition_id == self.awaiting_execute:
            self.awaiting_execute = None
        version = self.pending_transitions.pop(transition_id, None)
        if version is None:
            log.debug("DAVE execute transition %d, which was never prepared", transition_id)
            return
        old, self.protocol_version = self.protocol_version, version
        if old != version and version == 0:
            self.downgraded = True
            log.info("DAVE downgraded: the call is no longer end-to-end encrypted")
        elif transition_id > 0 and self.downgraded:
            self.downgraded = False
            if self._session is not None:
                # Others may still send plain frames for a moment after the upgrade.
                self._session.set_passthrough_mode(True, TRANSITION_EXPIRY_S)
            log.info("DAVE upgraded: the call is end-to-end encrypted again")
        self.last_transition_id = transition_id
        self.transitions_executed += 1

    # --- media ---------------------------------------------------------------------------

    def encrypt(self, opus: bytes) -> bytes | None:
        """The payload to send for one Opus frame: a DAVE frame once the group is ready,
        else the frame itself. Silence (``F8 FF FE``) is never encrypted (DAVE.md §5).
        None if davey failed to encrypt: the frame must not go out in the clear."""
        session = self._session
        if self.protocol_version == 0 or session is None or opus == OPUS_SILENCE:
            return opus
        if not session.ready:
            return opus  # no group yet: nobody to encrypt for (DAVE.md §4.1)
        try:
            frame = session.encrypt_opus(opus)
        except _DAVEY_ERRORS:
            self.encrypt_failures += 1
            return None
        self.frames_encrypted += 1
        return frame

    def decrypt(self, user_id: str | None, payload: bytes) -> bytes | None:
        """The Opus frame in ``payload`` from ``user_id``, or None if it is dropped.

        Plain frames pass while the call is not end-to-end encrypted for us, or inside a
        passthrough window; DAVE frames open with the sender's key. ``user_id`` None: the
        server has not named the sender's ssrc yet (op 5), so no key can open its frames.
        Never raises.
        """
        if payload == OPUS_SILENCE:
            return payload
        dave_frame = is_dave_frame(payload)
        session = self._session
        if session is None or not session.ready or (self.protocol_version == 0 and not dave_frame):
            if dave_frame:
                self.frames_dropped_undecryptable += 1  # we are not in the group (yet)
                return None
            self.frames_plain += 1
            return payload
        if not dave_frame and (self.downgraded or 0 in self.pending_transitions.values()):
            # A downgrade is prepared (members switch to plain one by one), or the upgrade
            # after one has not executed yet: plain frames are expected, from members and
            # from the one without DAVE, which has no decryptor to pass them through.
            self.frames_passed_through += 1
            return payload
        if user_id is None:
            if dave_frame:
                self.frames_dropped_undecryptable += 1
            else:
                self.frames_dropped_unencrypted += 1
            return None
        try:
            opus = session.decrypt(int(user_id), davey.MediaType.audio, payload)
        except _DAVEY_ERRORS:
            # davey's errors for an unknown sender, a ratchet not known yet, a bad tag, and
            # plain Opus with passthrough off: dropped, told apart by the frame itself.
            if dave_frame:
                self.frames_dropped_undecryptable += 1
            else:
                self.frames_dropped_unencrypted += 1
            return None
        if dave_frame:
            self.frames_decrypted += 1
        else:
            self.frames_passed_through += 1
        return opus

    def counters(self) -> dict[str, int]:
        """Every counter by name, for reports and metrics."""
        names = (
            "frames_encrypted",
            "frames_decrypted",
            "frames_passed_through",
            "frames_plain",
            "frames_dropped_unencrypted",
            "frames_dropped_undecryptable",
            "encrypt_failures",
            "commits_processed",
            "welcomes_processed",
            "proposals_rejected",
            "transitions_executed",
            "recoveries",
        )
        return {name: getattr(self, name) for name in names}
