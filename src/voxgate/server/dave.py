"""The per-channel DAVE group machine: the voice gateway as MLS delivery service and
external sender (DAVE.md §3-§4), with no sockets in it.

One :class:`DaveGroup` per voice channel. The router tells it what happened (a member was
described, left, or sent op 23/26/28/31) through :meth:`DaveGroup.handle` with the time,
and sends what it returns: :class:`Send` (a message to one member, in order) and
:class:`Close` (end that member's session). Deadlines (a transition's ready timeout) fire
through :meth:`DaveGroup.on_timer` with a later ``now``, as aioquic does it; nothing here
reads a clock.

The server never joins the group: it holds the group id, the epoch, who sits at which leaf,
each member's key package and signature key, and the proposals it signed this epoch. It
validates commits structurally (§3.6), because a member's signature and membership tag
need the group's secrets, which it never has.

States, as data (h11's way):

- the group: ``pending`` (protocol 1, no group yet: members at epoch 0 propose to each
  other), ``established`` (a group at epoch >= 1), ``downgraded`` (protocol 0: a member
  without DAVE is in the call, so everybody sends plain Opus);
- each member: ``legacy`` (no DAVE at all), ``awaiting_key_package`` (told the external
  sender, or told to reset), ``pending`` (its key package is held, it is not in the group),
  ``member`` (at a leaf of the group).

:data:`ALLOWED` says which op each member state may send in each group state; anything else
is ignored and counted by reason in one place (:meth:`DaveGroup._refusal`).

Bad input, decided per DAVE.md: a key package that does not parse or fails the §3.3
checks closes that member with 4002 and the check's reason (without one it can never
join, and a forged one is an attack, not a race); an op 28 that does not parse closes it
with 4002 too. A well-formed commit that fails §3.6 is ignored and counted by reason:
commits race (§4.2), so the loser's stale or wrong-epoch commit is normal traffic. Op 23
and op 31 for a transition the server does not know are ignored and counted.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter, deque
from dataclasses import dataclass, field

from voxgate.protocol import mls
from voxgate.protocol.errors import MlsError
from voxgate.protocol.messages import (
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
from voxgate.protocol.opcodes import CloseCode

log = logging.getLogger(__name__)

#: DAVE protocol version the gateway speaks (DAVE.md §2).
DAVE_PROTOCOL_VERSION = 1
#: How long a transition waits for every op 23 before it executes anyway (op 22). The
#: value is unpublished; WP:253 implies "roughly two seconds", discord.js says transitions
#: "last about 3 seconds maximum" (DAVE.md §4.2 step 7).
READY_TIMEOUT_S = 2.0
#: Transitions remembered after they executed, so that a late op 31 naming one is known.
RECENT_TRANSITIONS = 16
_MAX_U64 = (1 << 64) - 1
#: Proposal operation types of op 27 (DAVE.md §2).
APPEND = 0
REVOKE = 1


def snowflake(value: str) -> int | None:
    """``value`` as a Discord id (decimal u64), or None: DAVE identities and group ids are
    ids as 8 bytes big-endian, so a channel or user named otherwise cannot do DAVE."""
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        return None
    number = int(value)
    return number if 0 < number <= _MAX_U64 else None


# --- states ------------------------------------------------------------------------------


class GroupState(enum.StrEnum):
    PENDING = "pending"
    ESTABLISHED = "established"
    DOWNGRADED = "downgraded"


class MemberState(enum.StrEnum):
    LEGACY = "legacy"
    AWAITING_KEY_PACKAGE = "awaiting_key_package"
    PENDING = "pending"
    MEMBER = "member"


MemberMessage = MlsKeyPackage | MlsCommitWelcome | DaveTransitionReady | MlsInvalidCommitWelcome

_DAVE_MEMBER_OPS: frozenset[type[MemberMessage]] = frozenset(
    {MlsKeyPackage, MlsCommitWelcome, DaveTransitionReady, MlsInvalidCommitWelcome}
)
_READY_ONLY: frozenset[type[MemberMessage]] = frozenset(
    {DaveTransitionReady, MlsInvalidCommitWelcome}
)
_TRANSITION_READY: frozenset[type[MemberMessage]] = frozenset({DaveTransitionReady})

#: Which op a member in a state may send while the group is in a state. A key package is
#: welcome from every DAVE member (a client resets and sends a new one after op 24 and op
#: 31); a commit only from those who hold proposals: pending members of a pending group,
#: members of an established one. In a downgraded call only op 23 counts: op 31 asks to
#: rejoin a group that no longer exists, and the member it came from still owes op 23 to
#: the downgrade's op 21, which it answers after its reset.
ALLOWED: dict[tuple[GroupState, MemberState], frozenset[type[MemberMessage]]] = {
    (GroupState.PENDING, MemberState.AWAITING_KEY_PACKAGE): _READY_ONLY | {MlsKeyPackage},
    (GroupState.PENDING, MemberState.PENDING): _DAVE_MEMBER_OPS,
    (GroupState.PENDING, MemberState.MEMBER): _DAVE_MEMBER_OPS,
    (GroupState.ESTABLISHED, MemberState.AWAITING_KEY_PACKAGE): _READY_ONLY | {MlsKeyPackage},
    (GroupState.ESTABLISHED, MemberState.PENDING): _READY_ONLY | {MlsKeyPackage},
    (GroupState.ESTABLISHED, MemberState.MEMBER): _DAVE_MEMBER_OPS,
    (GroupState.DOWNGRADED, MemberState.AWAITING_KEY_PACKAGE): _TRANSITION_READY,
    (GroupState.DOWNGRADED, MemberState.PENDING): _TRANSITION_READY,
    (GroupState.DOWNGRADED, MemberState.MEMBER): _TRANSITION_READY,
}

#: The state changes each machine may make; anything else is a bug, raised at once.
GROUP_TRANSITIONS: dict[GroupState, frozenset[GroupState]] = {
    # the first commit; a member without DAVE joins
    GroupState.PENDING: frozenset({GroupState.ESTABLISHED, GroupState.DOWNGRADED}),
    # a reset (sole member, or none left); a member without DAVE joins; a later epoch
    GroupState.ESTABLISHED: frozenset(
        {GroupState.PENDING, GroupState.DOWNGRADED, GroupState.ESTABLISHED}
    ),
    # the upgrade
    GroupState.DOWNGRADED: frozenset({GroupState.PENDING}),
}
MEMBER_TRANSITIONS: dict[MemberState, frozenset[MemberState]] = {
    MemberState.LEGACY: frozenset(),
    MemberState.AWAITING_KEY_PACKAGE: frozenset(
        {MemberState.PENDING, MemberState.AWAITING_KEY_PACKAGE}
    ),
    # welcomed or the initial committer; a new key package; reset (op 24, op 31, downgrade)
    MemberState.PENDING: frozenset(
        {MemberState.MEMBER, MemberState.PENDING, MemberState.AWAITING_KEY_PACKAGE}
    ),
    # out of the group (op 31, a new key package, a reset, a downgrade)
    MemberState.MEMBER: frozenset({MemberState.AWAITING_KEY_PACKAGE, MemberState.PENDING}),
}

#: Why a well-formed commit was not accepted: each a label of the commits-rejected counter.
COMMIT_REJECTIONS = (
    "epoch",  # not the server's epoch: a loser of the race, or a replay
    "group_id",  # another group (channel)
    "sender",  # not from a member, or not from the sender's own leaf
    "inline_proposal",  # clients reject inline proposals (WP:314)
    "no_proposals",  # libdave's empty commit after a revoke (DAVE.md §4.4)
    "proposal_set",  # not exactly the unrevoked proposals of this epoch
    "update_path",  # the UpdatePath leaf is not the committer's key or identity
    "welcome",  # no Welcome for added members, one without adds, or the wrong secrets
)


# --- events and outputs ------------------------------------------------------------------


@dataclass(frozen=True)
class Joined:
    """A member's session is being described (op 4): ``dave`` says whether it can do
    DAVE (identified with ``max_dave_protocol_version`` >= 1 and a snowflake user id)."""

    user_id: str
    dave: bool


@dataclass(frozen=True)
class Left:
    """A member's session ended (op 13 goes to the others)."""

    user_id: str


@dataclass(frozen=True)
class Received:
    """A member sent op 23, 26, 28 or 31."""

    user_id: str
    message: MemberMessage


Event = Joined | Left | Received


@dataclass(frozen=True)
class Send:
    """Send ``message`` to ``user_id``, after everything sent to it before."""

    user_id: str
    message: Message


@dataclass(frozen=True)
class Close:
    """End ``user_id``'s session with ``code`` and ``reason``."""

    user_id: str
    code: int
    reason: str


Output = Send | Close


# --- what the machine keeps ---------------------------------------------------------------


@dataclass
class Member:
    """One member as the group machine sees it."""

    user_id: str
    state: MemberState
    key_package: mls.KeyPackage | None = None
    key_package_ref: bytes = b""
    #: Its Add, signed for the current epoch, once sent to anyone.
    add: mls.Proposal | None = None
    leaf: int | None = None
    #: From its key package: what an UpdatePath of its commits must carry (§3.6 rule 3).
    signature_key: bytes = b""


@dataclass
class Transition:
    """A transition announced (op 21, or op 29/30) and waiting for op 23 before op 22."""

    transition_id: int
    protocol_version: int
    participants: set[str]
    awaiting: set[str]
    deadline: float
    #: Joiners whose Welcome waits until the members told of the commit have sent op 23.
    welcoming: set[str] = field(default_factory=set)


@dataclass
class DaveCounters:
    """Monotonic counters of one group machine (or, summed, of a node)."""

    commits_accepted: int = 0
    commits_rejected: Counter[str] = field(default_factory=Counter)
    key_packages_rejected: Counter[str] = field(default_factory=Counter)
    transitions: int = 0
    transition_timeouts: int = 0
    recoveries: int = 0
    ignored: Counter[str] = field(default_factory=Counter)


class DaveGroup:
    """The DAVE group of one voice channel (``channel_id`` a snowflake).

    ``external_sender`` is the node's key (one per node, DAVE.md §8); ``node_counters``,
    when given, is bumped along with the group's own counters so a node's totals survive
    its channels.
    """

    def __init__(
        self,
        channel_id: int,
        external_sender: mls.ExternalSender,
        node_counters: DaveCounters | None = None,
    ) -> None:
        self.channel_id = channel_id
        self.group_id = mls.group_id_of(channel_id)
        self.external_sender = external_sender
        self.counters = DaveCounters()
        self._node_counters = node_counters
        self.state: GroupState = GroupState.PENDING
        self.members: dict[str, Member] = {}
        self.epoch = 0
        #: Who sits at each leaf (None: blank), as every member's ratchet tree has it.
        self.leaves: list[str | None] = []
        #: This epoch's unrevoked proposals in the order sent (established group only:
        #: a pending group's proposals are each pending member's Add).
        self.proposals: list[mls.Proposal] = []
        self.transitions: dict[int, Transition] = {}
        self._recent: deque[int] = deque(maxlen=RECENT_TRANSITIONS)
        self._last_transition_id = 0
        #: The id op 24 announced for an upgrade, used by the commit that re-creates the group.
        self._upgrade_transition: int | None = None
        self._out: list[Output] = []
        #: What goes to a joiner from its Welcome on, held until its transition welcomes it.
        self._held: dict[str, list[Message]] = {}

    # --- what the router reads -------------------------------------------------------

    @property
    def protocol_version(self) -> int:
        """The call's protocol version: 0 while downgraded."""
        return 0 if self.state is GroupState.DOWNGRADED else DAVE_PROTOCOL_VERSION

    def description_version(self, user_id: str) -> int:
        """``dave_protocol_version`` for this member's op 4.

        A member that can do DAVE is told 1 even while the call is downgraded, and then
        downgraded by a transition: discord.py handles op 21-24 only when it created a
        DAVE session, which it does on op 4 with a version above 0 (DAVE.md §4.5).
        """
        member = self.members.get(user_id)
        return 0 if member is None or member.state is MemberState.LEGACY else 1

    @property
    def filters_media(self) -> bool:
        """Whether the relay must keep DAVE frames from members without DAVE (WP:623-631):
        only while the call mixes both kinds."""
        states = {member.state for member in self.members.values()}
        return MemberState.LEGACY in states and len(states) > 1

    def is_legacy(self, user_id: str) -> bool:
        member = self.members.get(user_id)
        return member is not None and member.state is MemberState.LEGACY

    def next_timer(self) -> float | None:
        """When :meth:`on_timer` must next run, None when nothing waits."""
        if not self.transitions:
            return None
        return min(transition.deadline for transition in self.transitions.values())

    # --- events --------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Output]:
        """Apply ``event``; the messages to send and the sessions to close, in order."""
        match event:
            case Joined():
                self._joined(event.user_id, event.dave, now)
            case Left():
                self._left(event.user_id, now)
            case Received():
                member = self.members.get(event.user_id)
                refusal = self._refusal(member, event.message)
                if refusal is not None:
                    self._count_ignored(refusal)
                    log.debug(
                        "channel %s: op from %s ignored: %s",
                        self.channel_id,
                        event.user_id,
                        refusal,
                    )
                else:
                    assert member is not None
                    self._received(member, event.message, now)
        return self._flush()

    def on_timer(self, now: float) -> list[Output]:
        """Execute the transitions whose ready timeout has passed."""
        for transition in list(self.transitions.values()):
            if now >= transition.deadline:
                self._bump("transition_timeouts")
                log.info(
                    "channel %s: transition %d executes without op 23 from %s",
                    self.channel_id,
                    transition.transition_id,
                    sorted(transition.awaiting),
                )
                self._execute(transition)
        return self._flush()

    def _refusal(self, member: Member | None, message: MemberMessage) -> str | None:
        """Why ``message`` is not acted on, or None: the one place illegal events stop."""
        if member is None:
            return "not_in_channel"
        if member.state is MemberState.LEGACY:
            return "not_dave"
        if type(message) not in ALLOWED[self.state, member.state]:
            return f"{type(message).__name__}_when_{self.state}_{member.state}"
        if isinstance(message, DaveTransitionReady) and (
            message.transition_id not in self.transitions
        ):
            return "unknown_transition"
        if isinstance(message, MlsInvalidCommitWelcome) and not (
            message.transition_id in self.transitions or message.transition_id in self._recent
        ):
            return "unknown_transition"
        return None

    def _received(self, member: Member, message: MemberMessage, now: float) -> None:
        match message:
            case MlsKeyPackage():
                self._key_package(member, message.key_package, now)
            case MlsCommitWelcome():
                self._commit_welcome(member, message.commit_welcome, now)
            case DaveTransitionReady():
                self._ready(member, message.transition_id)
            case MlsInvalidCommitWelcome():
                self._bump("recoveries")
                log.info(
                    "channel %s: %s could not process transition %d; it rejoins",
                    self.channel_id,
                    member.user_id,
                    message.transition_id,
                )
                # The client resets and sends a new key package next (WP:319-331).
                self._forget_in_transitions(member.user_id)
                self._out_of_group(member, now)
                _move(member, MemberState.AWAITING_KEY_PACKAGE)

    # --- joining and leaving -----------------------------------------------------------

    def _joined(self, user_id: str, dave: bool, now: float) -> None:
        if user_id in self.members:
            return
        if not dave:
            self.members[user_id] = Member(user_id, MemberState.LEGACY)
            if self.state is not GroupState.DOWNGRADED:
                self._downgrade(now)
            return
        member = self.members[user_id] = Member(user_id, MemberState.AWAITING_KEY_PACKAGE)
        # After op 4 (the router sends these after it): discord.py drops binary frames
        # until op 4 made its DAVE session (DAVE.md §2, "Op 25 after op 4").
        self._send(member, MlsExternalSender(external_sender=self.external_sender.package()))
        if self.state is GroupState.DOWNGRADED:
            self._start_transition(0, {user_id}, now)

    def _left(self, user_id: str, now: float) -> None:
        member = self.members.pop(user_id, None)
        if member is None:
            return
        self._held.pop(user_id, None)
        self._forget_in_transitions(user_id)
        if member.state is MemberState.LEGACY:
            if self.state is GroupState.DOWNGRADED and not any(
                other.state is MemberState.LEGACY for other in self.members.values()
            ):
                self._upgrade(now)
            return
        self._out_of_group(member, now)

    def _out_of_group(self, member: Member, now: float) -> None:
        """``member`` is no longer in the group or pending (it left, or it resets): revoke
        its Add, propose the Remove of its leaf, or reset a group left with one member."""
        if self.state is GroupState.DOWNGRADED:
            member.key_package, member.add = None, None
            return
        if member.add is not None:
            self._revoke(member)
        member.key_package, member.key_package_ref, member.add = None, b"", None
        if member.leaf is None:
            return
        leaf, member.leaf = member.leaf, None
        if member.state is MemberState.MEMBER:
            _move(member, MemberState.AWAITING_KEY_PACKAGE)
        in_group = self._group_members()
        if len(in_group) >= 2:
            # WP:238-250: remaining members commit the Remove (and any Adds of the epoch).
            self._propose(self.external_sender.propose_remove(self.group_id, self.epoch, leaf))
        else:
            self._reset_group(in_group, now)

    def _reset_group(self, in_group: list[Member], now: float) -> None:
        """Back to a pending group at epoch 0: the sole member reset (WP:279-287), or no
        member left at all while others wait to join."""
        log.info("channel %s: group reset (%d member left in it)", self.channel_id, len(in_group))
        self._enter(GroupState.PENDING)
        self.epoch = 0
        self.leaves = []
        self.proposals = []
        for sole in in_group:
            sole.leaf = None
            _move(sole, MemberState.AWAITING_KEY_PACKAGE)
            sole.key_package, sole.add = None, None
            self._send(sole, DavePrepareEpoch(protocol_version=1, epoch=1, transition_id=0))
            self._send(sole, DavePrepareTransition(protocol_version=1, transition_id=0))
        # Members waiting to join the old group are pending members of the new one: each
        # gets the others' Adds, signed anew for epoch 0.
        waiting = [m for m in self.members.values() if m.state is MemberState.PENDING]
        for member in waiting:
            member.add = None
        for index, member in enumerate(waiting):
            self._propose_pending(member, already=waiting[:index])

    def _downgrade(self, now: float) -> None:
        """A member without DAVE joined: everyone sends plain Opus (DAVE.md §4.5). The
        group's state is dropped; the upgrade re-creates it."""
        dave_members = {
            m.user_id for m in self.members.values() if m.state is not MemberState.LEGACY
        }
        log.info("channel %s: downgrade to protocol 0", self.channel_id)
        self._enter(GroupState.DOWNGRADED)
        self.epoch = 0
        self.leaves = []
        self.proposals = []
        self._upgrade_transition = None
        for transition in list(self.transitions.values()):
            if transition.protocol_version != 0:
                self._execute(transition)
        for member in self.members.values():
            member.key_package, member.key_package_ref, member.add, member.leaf = (
                None,
                b"",
                None,
                None,
            )
            if member.state is not MemberState.LEGACY:
                _move(member, MemberState.AWAITING_KEY_PACKAGE)
        if dave_members:
            self._start_transition(0, dave_members, now)

    def _upgrade(self, now: float) -> None:
        """The last member without DAVE left: every member re-creates the group at epoch 0
        (op 24 epoch 1), and the commit that does it carries the announced transition."""
        for transition in list(self.transitions.values()):
            self._execute(transition)
        self._enter(GroupState.PENDING)
        dave_members = list(self.members.values())
        if not dave_members:
            return
        self._upgrade_transition = self._new_transition_id()
        log.info(
            "channel %s: upgrade to protocol 1 (transition %d)",
            self.channel_id,
            self._upgrade_transition,
        )
        for member in dave_members:
            _move(member, MemberState.AWAITING_KEY_PACKAGE)
            self._send(
                member,
                DavePrepareEpoch(
                    protocol_version=1, epoch=1, transition_id=self._upgrade_transition
                ),
            )

    # --- key packages and proposals --------------------------------------------------

    def _key_package(self, member: Member, data: bytes, now: float) -> None:
        user = snowflake(member.user_id)
        try:
            key_package = mls.parse_key_package(data)
            assert user is not None  # DAVE members have snowflake ids (see Joined)
            mls.verify_key_package(key_package, user)
        except MlsError as exc:
            self._reject_key_package(member, exc.reason)
            return
        if member.state is MemberState.MEMBER or member.add is not None:
            # A new key package from a member is a client that reset without op 31.
            self._out_of_group(member, now)
        _move(member, MemberState.PENDING)
        member.key_package = key_package
        member.key_package_ref = mls.key_package_ref(key_package)
        member.signature_key = key_package.leaf_node.signature_key
        member.add = None
        if self.state is GroupState.PENDING:
            pending = [
                m
                for m in self.members.values()
                if m.state is MemberState.PENDING and m is not member
            ]
            self._propose_pending(member, already=pending)
        else:
            member.add = self.external_sender.propose_add(self.group_id, self.epoch, key_package)
            self._propose(member.add)

    def _propose(self, proposal: mls.Proposal) -> None:
        """Add ``proposal`` to the established group's epoch and send it to its members."""
        adds = [p for p in self.proposals if p.kind == "add"]
        self.proposals.append(proposal)
        if proposal.kind == "add" or not adds:
            for member in self._group_members():
                self._send(member, _append([proposal]))
            return
        # davey 0.1.7 returns a Welcome only when the op 27 it processes appends an Add: a
        # Remove after a pending Add comes back as a commit that adds without welcoming
        # (rejected, and the joiner would wait forever). So the Adds are taken back and
        # sent again with the Remove, in one op 27 (libdave answers the revoke with an
        # empty commit, dropped as usual).
        revoke = MlsProposals(
            operation_type=REVOKE, proposals=mls.proposals_revoke([p.ref for p in adds])
        )
        append = _append([*adds, proposal])
        for member in self._group_members():
            self._send(member, revoke)
            self._send(member, append)

    def _propose_pending(self, member: Member, already: list[Member]) -> None:
        """``member`` joins the pending members ``already`` there (DAVE.md §4.2 step 3):
        it gets their Adds, they get its Add, all at epoch 0; never a member's own."""
        assert member.key_package is not None
        if member.add is None:
            member.add = self.external_sender.propose_add(self.group_id, 0, member.key_package)
        theirs = [other.add for other in already if other.add is not None]
        if theirs:
            self._send(member, _append(theirs))
        for other in already:
            self._send(other, _append([member.add]))

    def _revoke(self, member: Member) -> None:
        """Take back ``member``'s Add from everyone who got it (WP:170-172)."""
        add = member.add
        assert add is not None
        member.add = None
        if self.state is GroupState.ESTABLISHED:
            if add in self.proposals:
                self.proposals.remove(add)
            holders = self._group_members()
        else:
            holders = [
                m
                for m in self.members.values()
                if m.state is MemberState.PENDING and m is not member
            ]
        revoke = MlsProposals(operation_type=REVOKE, proposals=mls.proposals_revoke([add.ref]))
        for holder in holders:
            self._send(holder, revoke)

    def _reject_key_package(self, member: Member, reason: str) -> None:
        self.counters.key_packages_rejected[reason] += 1
        if self._node_counters is not None:
            self._node_counters.key_packages_rejected[reason] += 1
        log.info(
            "channel %s: key package of %s rejected: %s", self.channel_id, member.user_id, reason
        )
        self._out.append(
            Close(member.user_id, CloseCode.DECODE_ERROR, f"invalid key package: {reason}")
        )

    # --- commits ---------------------------------------------------------------------

    def _commit_welcome(self, member: Member, data: bytes, now: float) -> None:
        try:
            commit, welcome = mls.split_commit_welcome(data)
        except MlsError as exc:
            self._out.append(
                Close(member.user_id, CloseCode.DECODE_ERROR, f"invalid commit: {exc.reason}")
            )
            return
        expected = self._expected_proposals(member)
        rejection = self._commit_rejection(member, commit, welcome, expected)
        if rejection is not None:
            self.counters.commits_rejected[rejection] += 1
            if self._node_counters is not None:
                self._node_counters.commits_rejected[rejection] += 1
            log.debug(
                "channel %s: commit of %s at epoch %d ignored: %s",
                self.channel_id,
                member.user_id,
                commit.epoch,
                rejection,
            )
            return
        self._accept(member, commit, welcome, expected, now)

    def _expected_proposals(self, committer: Member) -> dict[bytes, mls.Proposal]:
        """The proposals a commit of ``committer`` must cite, by ref (§3.6 rule 2)."""
        if self.state is GroupState.PENDING:
            return {
                m.add.ref: m.add
                for m in self.members.values()
                if m is not committer and m.state is MemberState.PENDING and m.add is not None
            }
        return {proposal.ref: proposal for proposal in self.proposals}

    def _commit_rejection(
        self,
        committer: Member,
        commit: mls.Commit,
        welcome: mls.Welcome | None,
        expected: dict[bytes, mls.Proposal],
    ) -> str | None:
        """Why ``commit`` is not accepted (DAVE.md §3.6), None when it is."""
        if commit.group_id != self.group_id:
            return "group_id"
        if commit.epoch != self.epoch:
            return "epoch"
        own_leaf = 0 if self.state is GroupState.PENDING else committer.leaf
        if commit.sender_type != mls.SenderType.MEMBER or commit.sender_leaf != own_leaf:
            return "sender"
        if commit.has_inline_proposals:
            return "inline_proposal"
        refs = commit.proposal_refs
        if not refs:
            return "no_proposals"
        if len(set(refs)) != len(refs) or set(refs) != set(expected):
            return "proposal_set"
        path = commit.update_path_leaf
        if path is not None and (
            path.signature_key != committer.signature_key
            or path.credential.credential_type != mls.BASIC_CREDENTIAL
            or path.credential.identity != mls.user_identity(snowflake(committer.user_id) or 0)
        ):
            return "update_path"
        added_refs = {
            mls.key_package_ref(proposal.key_package)
            for proposal in expected.values()
            if proposal.kind == "add" and proposal.key_package is not None
        }
        if added_refs:
            if (
                welcome is None
                or welcome.cipher_suite != mls.CIPHER_SUITE
                or len(welcome.new_members) != len(added_refs)
                or set(welcome.new_members) != added_refs
            ):
                return "welcome"
        elif welcome is not None:
            return "welcome"
        return None

    def _accept(
        self,
        committer: Member,
        commit: mls.Commit,
        welcome: mls.Welcome | None,
        expected: dict[bytes, mls.Proposal],
        now: float,
    ) -> None:
        """The first valid commit of the epoch wins (WP:289-293): announce it (op 29) to
        the members that were in the group and stay, welcome the added (op 30), and wait
        for op 23 from all of them."""
        initial = self.state is GroupState.PENDING
        prior = [committer] if initial else self._group_members()
        by_key_package = {m.key_package_ref: m for m in self.members.values() if m.key_package}
        leaves: list[str | None] = [committer.user_id] if initial else list(self.leaves)
        ordered = [expected[ref] for ref in commit.proposal_refs]
        # §3.4: Removes first (blank, then drop trailing blanks), then Adds in the commit's
        # order, each into the leftmost blank leaf or appended.
        removed: set[str] = set()
        for proposal in ordered:
            if proposal.kind == "remove" and proposal.removed_leaf is not None:
                index = proposal.removed_leaf
                if 0 <= index < len(leaves):
                    occupant = leaves[index]
                    if occupant is not None:
                        removed.add(occupant)
                    leaves[index] = None
        while leaves and leaves[-1] is None:
            leaves.pop()
        added: list[Member] = []
        for proposal in ordered:
            if proposal.kind != "add" or proposal.key_package is None:
                continue
            joiner = by_key_package.get(mls.key_package_ref(proposal.key_package))
            if joiner is None:
                continue
            try:
                index = leaves.index(None)
                leaves[index] = joiner.user_id
            except ValueError:
                index = len(leaves)
                leaves.append(joiner.user_id)
            added.append(joiner)
            joiner.leaf = index
        if initial:
            committer.leaf = 0
            _move(committer, MemberState.MEMBER)
            committer.add = None
            committer.key_package = None
        self.leaves = leaves
        self.epoch += 1
        self._enter(GroupState.ESTABLISHED)
        self.proposals = []
        if initial and self._upgrade_transition is not None:
            transition_id, self._upgrade_transition = self._upgrade_transition, None
        else:
            transition_id = self._new_transition_id()
        self._bump("commits_accepted")
        log.info(
            "channel %s: epoch %d by %s (transition %d, +%d -%d)",
            self.channel_id,
            self.epoch,
            committer.user_id,
            transition_id,
            len(added),
            len(removed),
        )
        announce = MlsAnnounceCommitTransition(transition_id=transition_id, commit=commit.raw)
        recipients: set[str] = set()
        for member in prior:
            if member.user_id not in removed and member.state is MemberState.MEMBER:
                self._send(member, announce)
                recipients.add(member.user_id)
        assert welcome is not None or not added
        # A joiner encrypts to the new epoch as soon as it has read its Welcome, and a
        # member drops the frames of a sender it has no key for (@discordjs/voice does):
        # so the Welcome waits until the members have read the commit (their op 23), as
        # a slow link to the joiner would make it, and never past the ready timeout.
        welcoming = {joiner.user_id for joiner in added} if recipients else set()
        for joiner in added:
            _move(joiner, MemberState.MEMBER)
            # Their key packages are used up (WP:206).
            joiner.key_package, joiner.add = None, None
            if welcoming:
                self._held.setdefault(joiner.user_id, [])
            self._send(joiner, MlsWelcome(transition_id=transition_id, welcome=welcome.raw))  # type: ignore[union-attr]
            recipients.add(joiner.user_id)
        self.transitions[transition_id] = Transition(
            transition_id, 1, set(recipients), set(recipients), now + READY_TIMEOUT_S, welcoming
        )

    # --- transitions -------------------------------------------------------------------

    def _start_transition(self, protocol_version: int, users: set[str], now: float) -> None:
        transition_id = self._new_transition_id()
        prepare = DavePrepareTransition(
            protocol_version=protocol_version, transition_id=transition_id
        )
        for user_id in users:
            self._send(self.members[user_id], prepare)
        self.transitions[transition_id] = Transition(
            transition_id, protocol_version, set(users), set(users), now + READY_TIMEOUT_S
        )

    def _ready(self, member: Member, transition_id: int) -> None:
        transition = self.transitions[transition_id]
        transition.awaiting.discard(member.user_id)
        self._welcome_when_ready(transition)
        if not transition.awaiting:
            self._execute(transition)

    def _welcome_when_ready(self, transition: Transition) -> None:
        """Release the joiners' Welcomes once only joiners are left to send op 23."""
        if transition.welcoming and transition.awaiting <= transition.welcoming:
            self._release(transition)

    def _release(self, transition: Transition) -> None:
        joiners, transition.welcoming = transition.welcoming, set()
        for user_id in sorted(joiners):
            self._unhold(user_id)

    def _unhold(self, user_id: str) -> None:
        """Send what was held for ``user_id``, unless another transition still holds it."""
        if user_id in self._held and not any(
            user_id in transition.welcoming for transition in self.transitions.values()
        ):
            for message in self._held.pop(user_id):
                self._out.append(Send(user_id, message))

    def _execute(self, transition: Transition) -> None:
        """Op 22 to every participant still here (WP:188)."""
        if self.transitions.pop(transition.transition_id, None) is None:
            return
        # On a timeout the Welcome goes now, and op 22 after it.
        self._release(transition)
        self._recent.append(transition.transition_id)
        self._bump("transitions")
        execute = DaveExecuteTransition(transition_id=transition.transition_id)
        for user_id in sorted(transition.participants):
            member = self.members.get(user_id)
            if member is not None:
                self._send(member, execute)

    def _forget_in_transitions(self, user_id: str) -> None:
        """``user_id`` will not send op 23 (it left, or it resets): transitions stop waiting."""
        for transition in list(self.transitions.values()):
            transition.participants.discard(user_id)
            transition.awaiting.discard(user_id)
            transition.welcoming.discard(user_id)
            self._welcome_when_ready(transition)
            if not transition.awaiting:
                self._execute(transition)
        # A joiner that resets while its Welcome waits gets it now, as a slow link would.
        self._unhold(user_id)

    def _new_transition_id(self) -> int:
        """A fresh u16 transition id, never 0 (0 means "now", DAVE.md §4.2)."""
        candidate = self._last_transition_id
        while True:
            candidate = candidate % 0xFFFF + 1
            if candidate not in self.transitions and candidate != self._upgrade_transition:
                self._last_transition_id = candidate
                return candidate

    # --- helpers -------------------------------------------------------------------------

    def _group_members(self) -> list[Member]:
        """Members at a leaf of the established group, in leaf order."""
        return [
            m
            for m in (self.members.get(user) for user in self.leaves if user is not None)
            if m is not None and m.state is MemberState.MEMBER and m.leaf is not None
        ]

    def _send(self, member: Member, message: Message) -> None:
        held = self._held.get(member.user_id)
        if held is not None:
            held.append(message)
        else:
            self._out.append(Send(member.user_id, message))

    def _enter(self, state: GroupState) -> None:
        if state is not self.state and state not in GROUP_TRANSITIONS[self.state]:
            raise RuntimeError(f"DAVE group: no transition {self.state} -> {state}")
        self.state = state

    def _flush(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    def _bump(self, name: str) -> None:
        setattr(self.counters, name, getattr(self.counters, name) + 1)
        if self._node_counters is not None:
            setattr(self._node_counters, name, getattr(self._node_counters, name) + 1)

    def _count_ignored(self, reason: str) -> None:
        self.counters.ignored[reason] += 1
        if self._node_counters is not None:
            self._node_counters.ignored[reason] += 1


def _append(proposals: list[mls.Proposal]) -> MlsProposals:
    return MlsProposals(operation_type=APPEND, proposals=mls.proposals_append(proposals))


def _move(member: Member, state: MemberState) -> None:
    if state not in MEMBER_TRANSITIONS[member.state]:
        raise RuntimeError(f"DAVE member {member.user_id}: no transition {member.state} -> {state}")
    member.state = state
