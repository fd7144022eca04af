"""The DAVE group machine against real member implementations, with no sockets.

Each member is a davey session (what discord.py and discord.js run) or a libdave session
(Discord's own, through dave.py), driven as those clients drive them (tests/server/
dave_call.py); the machine is the server's, unchanged. Every order of DAVE.md §4 runs for
davey-only, libdave-only and mixed groups, and each ends with the same epoch authenticator
on every member and an Opus frame each member encrypts and every other decrypts.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.server.dave_call import DavePeer, DaveyPeer, InProcessCall, LibdavePeer
from voxgate.protocol import mls
from voxgate.protocol.messages import (
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
)
from voxgate.protocol.opcodes import CloseCode
from voxgate.server.dave import READY_TIMEOUT_S, DaveGroup, GroupState, MemberState

CHANNEL = 927310423890473011
KINDS = {"davey": DaveyPeer, "libdave": LibdavePeer}
#: Which implementation each of the first members runs, per parametrisation.
MIXES = {
    "davey": ["davey"] * 5,
    "libdave": ["libdave"] * 5,
    "mixed": ["davey", "libdave", "libdave", "davey", "libdave"],
}

Make = Callable[[], DavePeer]


@pytest.fixture
def call() -> InProcessCall:
    return InProcessCall(DaveGroup(CHANNEL, mls.ExternalSender()))


@pytest.fixture(params=list(MIXES))
def peer(request: pytest.FixtureRequest) -> Make:
    """Makes the next member, its implementation from the parametrised mix."""
    kinds = iter(MIXES[request.param])
    ids = iter(range(1001, 1100))

    def make() -> DavePeer:
        return KINDS[next(kinds, "davey")](str(next(ids)), CHANNEL)

    return make


def _settle(call: InProcessCall) -> None:
    """Let every transition's op 23 arrive (they do, unless a test holds them)."""
    call.pump()
    assert not call.group.transitions, call.group.transitions


def _assert_call(call: InProcessCall) -> bytes:
    """One group, its leaves as every davey member sees its own, media both ways."""
    group = call.group
    assert group.state is GroupState.ESTABLISHED
    authenticator = call.assert_one_group()
    call.assert_media_flows()
    for peer in call.dave_peers():
        assert peer.failures == [], (peer, peer.failures)
        assert group.members[peer.user_id].state is MemberState.MEMBER
        if isinstance(peer, DaveyPeer):
            assert peer.epoch == group.epoch
            assert group.leaves[peer.leaf] == peer.user_id  # type: ignore[index]
    assert sorted(user for user in group.leaves if user) == sorted(
        peer.user_id for peer in call.dave_peers()
    )
    return authenticator


def _received(peer: DavePeer, kind: type) -> list:
    return [message for message in peer.inbox if isinstance(message, kind)]


def _queued(call: InProcessCall, peer: DavePeer, kind: type) -> list:
    """Messages of ``kind`` sent to ``peer`` that it has not read yet (it is held)."""
    return [message for message in call.inbound[peer.user_id] if isinstance(message, kind)]


# --- §4.1 - §4.3: alone, the initial group, a join ---------------------------------------


def test_first_member_alone_is_pending_and_gets_no_proposals(call, peer) -> None:
    a = peer()
    call.join(a)
    group = call.group
    assert group.state is GroupState.PENDING and group.epoch == 0
    assert group.members[a.user_id].state is MemberState.PENDING
    assert _received(a, MlsExternalSender) and not _received(a, MlsProposals)
    assert not a.ready and a.epoch_authenticator is None
    if isinstance(a, DaveyPeer):
        assert a.epoch == 0  # davey's pending group at epoch 0


def test_second_member_creates_the_group_with_competing_commits(call, peer) -> None:
    a, b = peer(), peer()
    call.join(a)
    call.join(b)
    _settle(call)
    group = call.group
    assert group.epoch == 1 and group.counters.commits_accepted == 1
    # Both committed; the first valid commit of epoch 0 won, the other was stale.
    assert a.commits_sent == 1 and b.commits_sent == 1
    assert group.counters.commits_rejected == {"epoch": 1}
    # The winner got op 29, the other op 30; nobody got both (op 29 only to members).
    winner, other = (a, b) if _received(a, MlsAnnounceCommitTransition) else (b, a)
    assert _received(winner, MlsAnnounceCommitTransition) and not _received(winner, MlsWelcome)
    assert _received(other, MlsWelcome) and not _received(other, MlsAnnounceCommitTransition)
    assert group.leaves == [winner.user_id, other.user_id]
    # op 23 from both, then op 22 to both, with the commit's transition id (never 0).
    (announce,) = _received(winner, MlsAnnounceCommitTransition)
    assert announce.transition_id != 0
    for member in (a, b):
        assert _received(member, DaveExecuteTransition) == [
            DaveExecuteTransition(transition_id=announce.transition_id)
        ]
    _assert_call(call)


def test_the_commit_that_arrives_first_wins_whoever_sent_it(call, peer) -> None:
    a, b = peer(), peer()
    call.join(a)
    call.hold_replies(a.user_id)  # a's commit reaches the server late
    call.join(b)
    call.release(a.user_id)
    _settle(call)
    assert call.group.leaves == [b.user_id, a.user_id]
    assert _received(a, MlsWelcome) and not _received(a, MlsAnnounceCommitTransition)
    assert call.group.counters.commits_rejected == {"epoch": 1}
    _assert_call(call)


def test_three_pending_members_form_one_group(call, peer) -> None:
    a, b, c = peer(), peer(), peer()
    call.hold(a.user_id)
    call.hold(b.user_id)
    call.join(a)
    call.join(b)
    # c gets the Adds of a and b at once and commits both; a and b, reading their inboxes
    # late, commit too: against a group that already exists.
    call.join(c)
    call.release(a.user_id)
    call.release(b.user_id)
    _settle(call)
    group = call.group
    assert group.epoch == 1
    assert group.leaves[0] == c.user_id and len(group.leaves) == 3
    assert group.counters.commits_rejected["epoch"] >= 2
    _assert_call(call)


def test_member_joins_an_established_group(call, peer) -> None:
    a, b, c = peer(), peer(), peer()
    call.join(a)
    call.join(b)
    _settle(call)
    before = len(a.inbox), len(b.inbox)
    call.join(c)
    _settle(call)
    group = call.group
    assert group.epoch == 2 and group.leaves[2] == c.user_id
    # The Add went to the members, not to c (it would commit to itself).
    assert not _received(c, MlsProposals)
    assert any(isinstance(m, MlsProposals) for m in a.inbox[before[0] :])
    # op 29 to both members (committer included), op 30 to c only.
    assert len(_received(a, MlsAnnounceCommitTransition)) + len(_received(a, MlsWelcome)) == 2
    assert _received(c, MlsWelcome) and not _received(c, MlsAnnounceCommitTransition)
    _assert_call(call)


def test_non_creator_wins_the_join_commit(call, peer) -> None:
    a, b, c = peer(), peer(), peer()
    call.join(a)
    call.join(b)
    _settle(call)
    creator = call.group.leaves[0]
    call.hold_replies(creator)
    call.join(c)
    call.release(creator)
    _settle(call)
    assert call.group.epoch == 2 and call.group.leaves[2] == c.user_id
    _assert_call(call)


def test_the_welcome_waits_until_the_members_have_read_the_commit(call, peer) -> None:
    # A joiner encrypts to the new epoch once it has read its Welcome, and davey (discord.js,
    # discord.py, py-cord) drops the frames of a sender it has no key for: a member still
    # reading the commit would lose the joiner's first words.
    a, b = _group_of(call, peer, 2)
    c = peer()
    call.hold(a.user_id)
    call.hold(c.user_id)
    call.join(c)  # its key package reaches the server, b commits the Add
    call.hold_replies(c.user_id)
    assert not _queued(call, c, MlsWelcome)
    call.held.discard(a.user_id)  # a reads op 29 and answers op 23
    call.pump()
    assert _queued(call, c, MlsWelcome)
    call.held.discard(c.user_id)  # c reads its Welcome; its op 23 still on the way
    call.pump()
    assert call.group.transitions and not _received(a, DaveExecuteTransition)[1:]
    opus = b"\xfc\xff\xfe first words"
    frame = c.encrypt(opus)
    assert a.decrypt(c.user_id, frame) == opus and b.decrypt(c.user_id, frame) == opus
    call.release(c.user_id)
    _settle(call)
    _assert_call(call)


def test_a_joiner_that_resets_while_its_welcome_waits_is_held_no_longer(call, peer) -> None:
    a, _ = _group_of(call, peer, 2)
    call.hold(a.user_id)
    c = peer()
    call.hold(c.user_id)
    call.join(c)
    (transition_id,) = call.group.transitions
    call.send_from(c.user_id, MlsInvalidCommitWelcome(transition_id=transition_id))
    # What was held for it goes (a slow link delivers it late, never not at all), and what
    # follows is not held back behind a Welcome nobody waits for.
    assert not call.group._held
    assert _queued(call, c, MlsWelcome)
    call.leave(c.user_id)
    call.release(a.user_id)
    _settle(call)
    _assert_call(call)


def test_a_member_that_never_reads_the_commit_delays_the_welcome_to_the_ready_timeout(
    call, peer
) -> None:
    a, _ = _group_of(call, peer, 2)
    call.hold(a.user_id)
    c = peer()
    call.join(c)
    assert not _received(c, MlsWelcome)
    call.advance(READY_TIMEOUT_S + 0.1)
    # The Welcome, then op 22, in that order; what else goes to c keeps its place after.
    kinds = [type(m) for m in c.inbox]
    assert kinds.index(MlsWelcome) < kinds.index(DaveExecuteTransition)
    call.release(a.user_id)
    _settle(call)
    _assert_call(call)


# --- §4.4: leaving -------------------------------------------------------------------


def _group_of(call: InProcessCall, make: Make, size: int) -> list[DavePeer]:
    members = [make() for _ in range(size)]
    for member in members:
        call.join(member)
        _settle(call)
    assert call.group.epoch == size - 1
    return members


def test_leave_with_two_remaining_removes_the_leaf(call, peer) -> None:
    a, b, c = _group_of(call, peer, 3)
    leaf_b = call.group.leaves.index(b.user_id)
    authenticator = call.assert_one_group()
    welcomes = len(_received(a, MlsWelcome)), len(_received(c, MlsWelcome))
    announces = len(_received(a, MlsAnnounceCommitTransition))
    call.leave(b.user_id)
    _settle(call)
    group = call.group
    assert group.epoch == 3
    assert b.user_id not in group.leaves
    # A remove-only commit welcomes nobody: op 29 to both who stay.
    assert (len(_received(a, MlsWelcome)), len(_received(c, MlsWelcome))) == welcomes
    assert len(_received(a, MlsAnnounceCommitTransition)) == announces + 1
    assert _assert_call(call) != authenticator
    # Then a joiner takes the freed leaf (§3.4: the blank one, or the end after truncation).
    d = peer()
    call.join(d)
    _settle(call)
    assert call.group.leaves.index(d.user_id) == leaf_b
    _assert_call(call)


def test_sole_member_reset_then_a_new_group(call, peer) -> None:
    a, b = _group_of(call, peer, 2)
    call.leave(b.user_id)
    group = call.group
    # op 24 {1, epoch 1} then op 21 {1, transition 0}: a resets and is pending again.
    assert _received(a, DavePrepareEpoch)[-1].epoch == 1
    assert _received(a, DavePrepareTransition)[-1] == DavePrepareTransition(
        protocol_version=1, transition_id=0
    )
    assert group.state is GroupState.PENDING and group.epoch == 0 and group.leaves == []
    assert group.members[a.user_id].state is MemberState.PENDING  # its new key package
    c = peer()
    call.join(c)
    _settle(call)
    assert call.group.epoch == 1
    _assert_call(call)


def test_pending_member_leaving_has_its_add_revoked(call, peer) -> None:
    a, b = _group_of(call, peer, 2)
    authenticator = call.assert_one_group()
    rejected_before = call.group.counters.commits_rejected.copy()
    c = peer()
    call.hold(a.user_id)
    call.hold(b.user_id)
    call.join(c)  # Add(c) waits in a's and b's inboxes
    call.leave(c.user_id)  # then op 13 and the revoke
    call.release(a.user_id)
    call.release(b.user_id)
    _settle(call)
    group = call.group
    assert [m.operation_type for m in _received(a, MlsProposals)][-2:] == [0, 1]
    assert group.epoch == 1
    # Their commits of Add(c) were for proposals since revoked; libdave's empty commit
    # after the revoke is dropped too (DAVE.md §4.4 step 4).
    assert set(group.counters.commits_rejected - rejected_before) <= {
        "proposal_set",
        "no_proposals",
    }
    assert call.assert_one_group() == authenticator
    call.assert_media_flows()
    # The group goes on: the next joiner gets in.
    d = peer()
    call.join(d)
    _settle(call)
    assert call.group.epoch == 2
    _assert_call(call)


def test_member_leaving_while_a_commit_is_pending(call, peer) -> None:
    a, b, c = _group_of(call, peer, 3)
    leaf_c = call.group.leaves.index(c.user_id)
    d = peer()
    for member in (a, b, c):
        call.hold_replies(member.user_id)  # their commits of Add(d) wait
    call.join(d)
    call.leave(c.user_id)  # Remove(c) joins the epoch's proposals
    call.release(a.user_id)
    call.release(b.user_id)
    _settle(call)
    group = call.group
    # Stale commits (Add(d) without Remove(c)) were ignored; one commit did both.
    assert group.counters.commits_rejected["proposal_set"] >= 1
    assert group.epoch == 3
    # Removes first, then the Add into the leftmost blank leaf: c's.
    assert c.user_id not in group.leaves and group.leaves.index(d.user_id) == leaf_c
    _assert_call(call)


def test_every_member_leaving_but_a_joiner_makes_it_pending_alone(call, peer) -> None:
    a, b = _group_of(call, peer, 2)
    c = peer()
    call.hold(a.user_id)
    call.hold(b.user_id)
    call.join(c)
    call.leave(a.user_id)
    call.leave(b.user_id)
    group = call.group
    assert group.state is GroupState.PENDING and group.epoch == 0
    assert group.members[c.user_id].state is MemberState.PENDING
    d = peer()
    call.join(d)
    _settle(call)
    _assert_call(call)


# --- §4.6: op 31 ---------------------------------------------------------------------


class _CorruptNextWelcome:
    """Spoil the next Welcome ``peer`` processes, as a lost or mangled one would be."""

    def __init__(self, peer: DavePeer) -> None:
        self.peer = peer
        self.original = peer.process_welcome
        peer.process_welcome = self  # type: ignore[method-assign]

    def __call__(self, welcome: bytes) -> None:
        self.peer.process_welcome = self.original  # type: ignore[method-assign]
        self.original(welcome[:-40] + bytes(40))


def test_op31_recovery_of_a_joiner_whose_welcome_failed(call, peer) -> None:
    _group_of(call, peer, 2)
    c = peer()
    _CorruptNextWelcome(c)
    call.join(c)
    _settle(call)
    group = call.group
    assert len(c.failures) == 1 and group.counters.recoveries == 1
    assert len(_received(c, MlsWelcome)) == 2  # the spoiled one, then the one that worked
    # c was at leaf 2 after the commit it could not join; its Remove and its new Add went
    # into one commit, so it is back at a leaf.
    assert group.epoch == 3
    c.failures.clear()
    _assert_call(call)


def test_op31_in_a_group_of_two_resets_both(call, peer) -> None:
    a = peer()
    call.join(a)
    b = peer()
    _CorruptNextWelcome(b)
    call.hold_replies(b.user_id)  # a's commit wins, b gets the (spoiled) Welcome
    call.join(b)
    call.release(b.user_id)
    _settle(call)
    group = call.group
    assert group.counters.recoveries == 1
    # b out of the group leaves a alone in it: the sole member reset, then b and a form a
    # new group.
    assert _received(a, DavePrepareEpoch)
    b.failures.clear()
    assert group.epoch == 1
    _assert_call(call)


def test_op31_for_an_unknown_transition_is_ignored_and_counted(call, peer) -> None:
    a, _ = _group_of(call, peer, 2)
    call.send_from(a.user_id, MlsInvalidCommitWelcome(transition_id=4242))
    call.send_from(a.user_id, DaveTransitionReady(transition_id=4242))
    group = call.group
    assert group.counters.ignored["unknown_transition"] == 2
    assert group.counters.recoveries == 0
    _assert_call(call)


# --- transitions -------------------------------------------------------------------


def test_transition_executes_on_timeout_without_every_ready(call, peer) -> None:
    a = peer()
    call.join(a)
    b = peer()
    call.hold_replies(a.user_id)  # a's commit and its op 23 do not arrive
    call.join(b)  # b's commit wins; b is ready at once
    (transition,) = call.group.transitions.values()
    assert transition.awaiting == {a.user_id}
    assert not _received(b, DaveExecuteTransition)
    call.advance(READY_TIMEOUT_S / 2)
    assert call.group.transitions  # still waiting for a's op 23
    call.advance(READY_TIMEOUT_S)
    assert not call.group.transitions
    assert call.group.counters.transition_timeouts == 1
    assert _received(b, DaveExecuteTransition)
    call.release(a.user_id)
    call.pump()
    _assert_call(call)


# --- §4.5: downgrade and upgrade ----------------------------------------------------


class LegacyPeer(DaveyPeer):
    """A client without DAVE: op 4 version 0, no DAVE messages expected at all."""

    def described(self, dave_protocol_version: int) -> list:
        assert dave_protocol_version == 0
        return []


def test_downgrade_when_a_member_without_dave_joins_and_upgrade_when_it_leaves(call, peer) -> None:
    a, b = _group_of(call, peer, 2)
    legacy = LegacyPeer("2001", CHANNEL)
    call.join(legacy, dave=False)
    group = call.group
    # op 21 {protocol_version 0, T} to the DAVE members, op 23 back, op 22: all plain now.
    for member in (a, b):
        prepare = _received(member, DavePrepareTransition)[-1]
        assert prepare.protocol_version == 0 and prepare.transition_id != 0
        assert member.protocol_version == 0
    assert group.state is GroupState.DOWNGRADED and group.protocol_version == 0
    assert group.filters_media
    assert group.description_version(legacy.user_id) == 0
    # The member without DAVE got nothing of DAVE (only op 11).
    assert all(type(m).__name__ == "ClientsConnect" for m in legacy.inbox)
    # A DAVE member joining the downgraded call is told DAVE (op 4: 1, op 25), then
    # downgraded by its own transition; its key package waits for the upgrade.
    c = peer()
    call.join(c)
    _settle(call)
    assert group.description_version(c.user_id) == 1
    assert _received(c, DavePrepareTransition)[-1].protocol_version == 0
    assert c.protocol_version == 0
    # The last member without DAVE leaves: op 24 {1, epoch 1, T'}; all re-create the group,
    # whose commit carries T', and op 22 T' ends the upgrade.
    call.leave(legacy.user_id)
    _settle(call)
    assert not group.filters_media
    prepare_epoch = _received(a, DavePrepareEpoch)[-1]
    assert prepare_epoch.protocol_version == 1 and prepare_epoch.epoch == 1
    upgrade = prepare_epoch.transition_id
    for member in (a, b, c):
        assert member.protocol_version == 1
        assert DaveExecuteTransition(transition_id=upgrade) in member.inbox
    assert group.epoch == 1
    _assert_call(call)


def test_a_call_of_only_members_without_dave_stays_plain(call) -> None:
    first, second = LegacyPeer("2001", CHANNEL), LegacyPeer("2002", CHANNEL)
    call.join(first, dave=False)
    call.join(second, dave=False)
    group = call.group
    assert group.protocol_version == 0 and not group.filters_media
    assert all(type(m).__name__ == "ClientsConnect" for m in first.inbox + second.inbox)


# --- what a member sends that the machine refuses ------------------------------------


def test_key_package_of_another_user_closes_that_member_only(call, peer) -> None:
    _group_of(call, peer, 2)
    authenticator = call.assert_one_group()
    mallory = DaveyPeer("3001", CHANNEL)
    call.join(mallory)
    _settle(call)
    forged = DaveyPeer("1001", CHANNEL).new_key_package()  # a's identity, mallory's session
    call.send_from(mallory.user_id, MlsKeyPackage(key_package=forged))
    assert call.closed[mallory.user_id] == (
        CloseCode.DECODE_ERROR,
        "invalid key package: identity mismatch",
    )
    assert call.group.counters.key_packages_rejected == {"identity mismatch": 1}
    _settle(call)
    # mallory had joined (epoch 3) and was removed on its close (epoch 4): the others'
    # group goes on.
    assert mallory.user_id not in call.group.leaves
    assert call.assert_one_group() != authenticator
    _assert_call(call)


def test_undecodable_key_package_and_commit_close_with_4002(call, peer) -> None:
    _group_of(call, peer, 2)
    x, y = DaveyPeer("3001", CHANNEL), DaveyPeer("3002", CHANNEL)
    call.join(x)
    call.join(y)
    _settle(call)
    call.send_from(x.user_id, MlsKeyPackage(key_package=b"\x00\x01\x00\x02garbage"))
    call.send_from(y.user_id, MlsCommitWelcome(commit_welcome=b"\x00\x01\x00\x01\xff"))
    assert call.closed[x.user_id][0] == CloseCode.DECODE_ERROR
    assert call.closed[x.user_id][1].startswith("invalid key package: ")
    assert call.closed[y.user_id][0] == CloseCode.DECODE_ERROR
    assert call.closed[y.user_id][1].startswith("invalid commit: ")
    _settle(call)
    _assert_call(call)


def test_replayed_commit_of_an_earlier_epoch_is_ignored(call, peer) -> None:
    a = peer()
    call.join(a)
    b = peer()
    call.join(b)
    _settle(call)
    first_commit = next(
        m for member in (a, b) for m in member.inbox if isinstance(m, MlsAnnounceCommitTransition)
    )
    winner = call.group.leaves[0]
    call.send_from(winner, MlsCommitWelcome(commit_welcome=first_commit.commit))
    assert call.group.counters.commits_rejected["epoch"] == 2
    assert call.group.epoch == 1
    _assert_call(call)


# --- any order at all ----------------------------------------------------------------

_STEP = st.one_of(
    st.tuples(st.just("join"), st.sampled_from(["davey", "libdave", "legacy"])),
    st.tuples(st.just("leave"), st.integers(0, 7)),
    st.tuples(st.just("hold"), st.integers(0, 7)),
    st.tuples(st.just("release"), st.integers(0, 7)),
    st.tuples(st.just("fail"), st.integers(0, 7)),
    st.tuples(st.just("advance"), st.sampled_from([0.5, READY_TIMEOUT_S + 0.1])),
)


def _fail(call: InProcessCall, peer: DavePeer) -> None:
    """The member cannot process the next commit or Welcome it gets (op 31, reset, op 26)."""
    peer.fail_next = True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, max_size=24))
# A member fails its Welcome and sends op 31 after the call was downgraded: it still owes
# op 23 to the downgrade's op 21 and must get op 22 (it once was left out of it).
@example(steps=[("join", "davey"), ("hold", 0), ("fail", 0), ("join", "davey"), ("join", "legacy")])
def test_any_order_of_joins_leaves_failures_and_delays_ends_in_one_group(steps) -> None:
    call = InProcessCall(DaveGroup(CHANNEL, mls.ExternalSender()))
    ids = iter(range(5001, 5100))
    for step, arg in steps:
        present = list(call.peers.values())
        if step == "join":
            user = str(next(ids))
            if arg == "legacy":
                call.join(LegacyPeer(user, CHANNEL), dave=False)
            else:
                call.join(KINDS[arg](user, CHANNEL))
        elif present and step == "leave":
            call.leave(present[arg % len(present)].user_id)
        elif present and step == "hold":
            call.hold(present[arg % len(present)].user_id)
        elif present and step == "release":
            call.release(present[arg % len(present)].user_id)
        elif present and step == "fail":
            _fail(call, present[arg % len(present)])
        elif step == "advance":
            call.advance(arg)
    for user in list(call.held):
        call.release(user)
    for _ in range(3):
        call.advance(READY_TIMEOUT_S + 0.1)
    group = call.group
    assert group.counters.ignored["internal_error"] == 0
    assert not group._held  # nothing waits for a Welcome once every transition has ended
    dave = call.dave_peers()
    legacy = [p for p in call.peers.values() if group.is_legacy(p.user_id)]
    assert not group.transitions
    if legacy:
        assert group.state is GroupState.DOWNGRADED
        assert group.filters_media == bool(dave)
        assert all(peer.protocol_version == 0 for peer in dave)
    elif len(dave) >= 2:
        for peer in dave:
            peer.failures.clear()  # the ones the test made
        _assert_call(call)
    elif dave:
        assert group.members[dave[0].user_id].state in (MemberState.PENDING, MemberState.MEMBER)
