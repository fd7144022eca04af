"""The client's DAVE member against the gateway's side played in-process (no sockets).

The test is the voice gateway: it signs external proposals with voxgate's own
:class:`~voxgate.protocol.mls.ExternalSender`, splits the commits the members send and
forwards them as DAVE.md §4 orders it. Each member is a real
:class:`~voxgate.client.gateway.ClientGateway` fed the server's frames as bytes and strings,
so the frames it answers with are the ones a server would read. Every scenario ends with
equal epoch authenticators and privacy codes on all members and Opus that one member
encrypts and every other opens.
"""

from __future__ import annotations

import json

import pytest

from voxgate.client.connection import strip_padding
from voxgate.client.dave import DaveMember, DaveState
from voxgate.client.gateway import ClientGateway, VoiceJoin
from voxgate.protocol import mls
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
    decode_client_frame,
    encode,
)

CHANNEL = "927310423890473011"
OPUS = bytes(range(1, 41))  # 40 bytes that are not silence


class Member:
    """One client: a ClientGateway the test sends server messages to, as frames."""

    def __init__(self, user_id: str, *, dave: bool = True) -> None:
        self.user_id = user_id
        join = VoiceJoin("41771983423143937", CHANNEL, user_id, "s", "t", "voice.test:443")
        self.gateway = ClientGateway(join, dave=dave)
        self.seq = 0
        self.key_package: mls.KeyPackage | None = None

    @property
    def dave(self) -> DaveMember:
        return self.gateway.dave

    def send(self, message: ServerMessage) -> list[ClientMessage]:
        """Deliver one server message; returns the client messages it answered with."""
        self.seq += 1
        self.gateway.receive(encode(message, seq=self.seq))
        return [decode_client_frame(frame) for frame in self.gateway.frames_to_send()]


class Gateway:
    """The voice gateway's DAVE duties for one channel, written out by hand."""

    def __init__(self) -> None:
        self.sender = mls.ExternalSender()
        self.group_id = mls.group_id_of(int(CHANNEL))
        self.epoch = 0
        self.next_transition = 1

    def connect(self, member: Member, others: list[Member]) -> None:
        """op 4 (version 1), op 25, op 11 both ways: the member's key package is kept."""
        replies = member.send(
            SessionDescription(
                mode="aead_aes256_gcm_rtpsize", secret_key=[7] * 32, dave_protocol_version=1
            )
        )
        assert len(replies) == 1 and isinstance(replies[0], MlsKeyPackage)
        member.key_package = mls.parse_key_package(replies[0].key_package)
        mls.verify_key_package(member.key_package, int(member.user_id))
        assert member.send(MlsExternalSender(external_sender=self.sender.package())) == []
        if others:
            assert member.send(ClientsConnect(user_ids=[o.user_id for o in others])) == []
        for other in others:
            assert other.send(ClientsConnect(user_ids=[member.user_id])) == []

    def add(self, joiner: Member) -> mls.Proposal:
        assert joiner.key_package is not None
        return self.sender.propose_add(self.group_id, self.epoch, joiner.key_package)

    def remove(self, leaf: int) -> mls.Proposal:
        return self.sender.propose_remove(self.group_id, self.epoch, leaf)

    def propose(self, member: Member, proposals: list[mls.Proposal]) -> bytes | None:
        """Op 27 append; returns the member's op 28 payload (commit ‖ welcome), if any."""
        payload = mls.proposals_append(proposals)
        replies = member.send(MlsProposals(operation_type=0, proposals=payload))
        if not replies:
            return None
        assert len(replies) == 1 and isinstance(replies[0], MlsCommitWelcome)
        return replies[0].commit_welcome

    def announce(self, commit_welcome: bytes, members: list[Member], joiners: list[Member]) -> int:
        """The winning commit: op 29 to members, op 30 to joiners; all answer op 23 T; op 22."""
        commit, welcome = mls.split_commit_welcome(commit_welcome)
        transition = self.next_transition
        self.next_transition += 1
        for member in members:
            message = MlsAnnounceCommitTransition(transition_id=transition, commit=commit.raw)
            assert member.send(message) == [DaveTransitionReady(transition_id=transition)]
        for joiner in joiners:
            assert welcome is not None
            message = MlsWelcome(transition_id=transition, welcome=welcome.raw)
            assert joiner.send(message) == [DaveTransitionReady(transition_id=transition)]
        for member in [*members, *joiners]:
            assert member.send(DaveExecuteTransition(transition_id=transition)) == []
        self.epoch += 1
        return transition


def assert_one_group(members: list[Member], epoch: int) -> None:
    """Same epoch, authenticator and privacy code everywhere; every member hears every other."""
    assert {m.dave.state for m in members} == {DaveState.ACTIVE}
    assert {m.dave.epoch for m in members} == {epoch}
    assert len({m.dave.epoch_authenticator() for m in members}) == 1
    codes = {m.dave.privacy_code for m in members}
    assert len(codes) == 1 and None not in codes
    for sender in members:
        frame = sender.dave.encrypt(OPUS)
        assert frame is not None and is_dave_frame(frame) and OPUS not in frame
        for receiver in members:
            if receiver is not sender:
                assert receiver.dave.decrypt(sender.user_id, frame) == OPUS


def first_group(gateway: Gateway, a: Member, b: Member) -> None:
    """DAVE.md §4.1-4.2: A alone, then B; both commit, A's commit wins."""
    gateway.connect(a, [])
    gateway.connect(b, [a])
    a_commit = gateway.propose(a, [gateway.add(b)])
    b_commit = gateway.propose(b, [gateway.add(a)])
    assert a_commit is not None and b_commit is not None  # a race: both commit
    assert a.dave.state is DaveState.AWAITING_RESPONSE
    gateway.announce(a_commit, [a], [b])


def test_identify_offers_dave_and_op_4_answers_with_a_key_package_for_this_user() -> None:
    member = Member("158533742254751744")
    assert json.loads(member.gateway.identify())["d"]["max_dave_protocol_version"] == 1
    Gateway().connect(member, [])
    assert member.key_package is not None
    assert member.key_package.leaf_node.credential.identity == mls.user_identity(158533742254751744)
    # Alone in the call: a pending group of one, nothing to encrypt for (DAVE.md §4.1).
    assert member.dave.state is DaveState.PENDING and member.dave.epoch == 0
    assert member.dave.encrypt(OPUS) == OPUS
    assert member.dave.privacy_code is None


def test_without_dave_nothing_is_offered_and_nothing_is_answered() -> None:
    member = Member("5", dave=False)
    assert json.loads(member.gateway.identify())["d"]["max_dave_protocol_version"] == 0
    description = SessionDescription(
        mode="aead_aes256_gcm_rtpsize", secret_key=[7] * 32, dave_protocol_version=0
    )
    assert member.send(description) == []
    assert member.dave.state is DaveState.DISABLED
    assert member.dave.encrypt(OPUS) == OPUS


def test_two_members_form_the_first_group_and_hear_each_other() -> None:
    gateway, a, b = Gateway(), Member("1001"), Member("1002")
    first_group(gateway, a, b)
    assert_one_group([a, b], epoch=1)
    assert (a.dave.commits_processed, b.dave.welcomes_processed) == (1, 1)
    # The committer is leaf 0, the member it added leaf 1 (DAVE.md §3.4).
    assert sorted(a.dave.group_user_ids()) == ["1001", "1002"]
    # A verification code is the pair's: what A shows for B is what B shows for A.
    assert a.dave.verification_code("1002") == b.dave.verification_code("1001") is not None
    assert a.dave.verification_code("1003") is None


def test_a_commit_that_does_not_apply_is_answered_with_op_31_and_a_new_key_package() -> None:
    gateway, a, b = Gateway(), Member("2001"), Member("2002")
    gateway.connect(a, [])
    gateway.connect(b, [a])
    a_commit = gateway.propose(a, [gateway.add(b)])
    assert gateway.propose(b, [gateway.add(a)]) is not None
    assert a_commit is not None
    commit, _ = mls.split_commit_welcome(a_commit)
    # B's pending group is another group with the same id: A's commit fails there.
    replies = b.send(MlsAnnounceCommitTransition(transition_id=9, commit=commit.raw))
    assert [type(reply) for reply in replies] == [MlsInvalidCommitWelcome, MlsKeyPackage]
    assert replies[0] == MlsInvalidCommitWelcome(transition_id=9)
    assert b.dave.recoveries == 1 and b.dave.state is DaveState.PENDING
    assert isinstance(replies[1], MlsKeyPackage)
    b.key_package = mls.parse_key_package(replies[1].key_package)
    b.send(MlsExternalSender(external_sender=gateway.sender.package()))
    # DAVE.md §4.6: A's group has B's old leaf (1); the gateway removes it and adds the new
    # key package in one epoch, and B is welcomed into the group it failed to join.
    assert a.send(MlsAnnounceCommitTransition(transition_id=9, commit=commit.raw)) == [
        DaveTransitionReady(transition_id=9)
    ]
    gateway.epoch = 1
    again = gateway.propose(a, [gateway.remove(1), gateway.add(b)])
    assert again is not None
    gateway.announce(again, [a], [b])
    assert_one_group([a, b], epoch=2)


def test_a_joiner_is_added_to_an_established_group_then_a_member_leaves() -> None:
    gateway, a, b, c = Gateway(), Member("3001"), Member("3002"), Member("3003")
    first_group(gateway, a, b)
    # §4.3: C joins; A and B both commit its Add; B's commit wins this time.
    gateway.connect(c, [a, b])
    add_c = gateway.add(c)
    a_commit = gateway.propose(a, [add_c])
    b_commit = gateway.propose(b, [add_c])
    assert a_commit is not None and b_commit is not None
    gateway.announce(b_commit, [a, b], [c])
    assert_one_group([a, b, c], epoch=2)
    # §4.4: B (leaf 1) leaves: op 13, then its Remove; remove-only commits have no Welcome.
    for member in (a, c):
        assert member.send(ClientDisconnect(user_id=b.user_id)) == []
    remove_b = gateway.remove(1)
    c_commit = gateway.propose(c, [remove_b])
    assert c_commit is not None and mls.split_commit_welcome(c_commit)[1] is None
    assert gateway.propose(a, [remove_b]) is not None
    gateway.announce(c_commit, [a, c], [])
    assert_one_group([a, c], epoch=3)
    assert sorted(a.dave.group_user_ids()) == ["3001", "3003"]


def test_an_add_for_a_user_the_gateway_never_named_is_not_committed() -> None:
    gateway, a, b = Gateway(), Member("4001"), Member("4002")
    gateway.connect(a, [])
    # B's key package is proposed to A before any op 11 named B (DAVE.md §2): rejected.
    b.send(SessionDescription(mode="m", secret_key=[7] * 32, dave_protocol_version=1))
    gateway.connect(b, [])
    assert gateway.propose(a, [gateway.add(b)]) is None
    assert a.dave.proposals_rejected == 1 and a.dave.state is DaveState.PENDING


def test_revoked_proposals_leave_nothing_to_commit() -> None:
    gateway, a, b = Gateway(), Member("5001"), Member("5002")
    gateway.connect(a, [])
    gateway.connect(b, [a])
    add_b = gateway.add(b)
    assert gateway.propose(a, [add_b]) is not None
    # B left before anyone's commit was accepted: its Add is revoked (DAVE.md §4.4 step 4).
    a.send(ClientDisconnect(user_id=b.user_id))
    revoke = MlsProposals(operation_type=1, proposals=mls.proposals_revoke([add_b.ref]))
    assert a.send(revoke) == []
    assert a.dave.proposals_rejected == 0


def test_the_sole_member_reset_starts_a_new_pending_group_at_once() -> None:
    gateway, a, b = Gateway(), Member("6001"), Member("6002")
    first_group(gateway, a, b)
    a.send(ClientDisconnect(user_id=b.user_id))
    # §4.4 step 3: op 24 epoch 1 -> a new session and key package; op 21 T=0 -> no op 23.
    replies = a.send(DavePrepareEpoch(protocol_version=1, epoch=1))
    assert [type(reply) for reply in replies] == [MlsKeyPackage]
    assert a.send(DavePrepareTransition(protocol_version=1, transition_id=0)) == []
    a.send(MlsExternalSender(external_sender=gateway.sender.package()))
    assert a.dave.state is DaveState.PENDING and a.dave.epoch == 0
    assert a.dave.encrypt(OPUS) == OPUS


def test_downgrade_then_upgrade() -> None:
    gateway, a, b = Gateway(), Member("7001"), Member("7002")
    first_group(gateway, a, b)
    old_frame = a.dave.encrypt(OPUS)
    assert old_frame is not None
    # §4.5: a member without DAVE joins. Op 21 to version 0: ready, passthrough on.
    for member in (a, b):
        replies = member.send(DavePrepareTransition(protocol_version=0, transition_id=40))
        assert replies == [DaveTransitionReady(transition_id=40)]
    # Until op 22 frames stay encrypted; a plain one is accepted already (passthrough).
    assert is_dave_frame(a.dave.encrypt(OPUS) or b"")
    assert b.dave.decrypt(a.user_id, OPUS) == OPUS and b.dave.frames_passed_through == 1
    for member in (a, b):
        assert member.send(DaveExecuteTransition(transition_id=40)) == []
    assert a.dave.state is DaveState.INACTIVE and a.dave.downgraded
    assert a.dave.encrypt(OPUS) == OPUS and a.dave.privacy_code is None
    assert b.dave.decrypt(a.user_id, OPUS) == OPUS
    assert b.dave.decrypt(a.user_id, old_frame) == OPUS  # old keys still open late frames
    # The member without DAVE left: op 24 epoch 1 -> every member resets, a new group.
    gateway.epoch = 0
    for member in (a, b):
        replies = member.send(DavePrepareEpoch(protocol_version=1, epoch=1))
        assert [type(reply) for reply in replies] == [MlsKeyPackage]
        assert isinstance(replies[0], MlsKeyPackage)
        member.key_package = mls.parse_key_package(replies[0].key_package)
        member.send(MlsExternalSender(external_sender=gateway.sender.package()))
    a_commit = gateway.propose(a, [gateway.add(b)])
    assert a_commit is not None
    gateway.propose(b, [gateway.add(a)])
    gateway.announce(a_commit, [a], [b])
    assert not a.dave.downgraded and a.dave.state is DaveState.ACTIVE
    assert_one_group([a, b], epoch=1)


def test_what_cannot_be_opened_is_dropped_and_counted_never_raised() -> None:
    gateway, a, b, c = Gateway(), Member("8001"), Member("8002"), Member("8003")
    first_group(gateway, a, b)
    gateway.connect(c, [a, b])
    add_c = gateway.add(c)
    a_commit = gateway.propose(a, [add_c])
    assert a_commit is not None and gateway.propose(b, [add_c]) is not None
    commit, welcome = mls.split_commit_welcome(a_commit)
    # A moved to epoch 2 and C was welcomed; B has not processed the commit yet.
    a.send(MlsAnnounceCommitTransition(transition_id=50, commit=commit.raw))
    assert welcome is not None
    c.send(MlsWelcome(transition_id=50, welcome=welcome.raw))
    from_c = c.dave.encrypt(OPUS)
    assert from_c is not None and is_dave_frame(from_c)
    # A sender whose ratchet B does not know yet.
    assert b.dave.decrypt(c.user_id, from_c) is None
    # A sender the server never named (no op 5 yet): its key cannot be chosen.
    assert b.dave.decrypt(None, from_c) is None
    # A DAVE frame with a broken tag.
    forged = bytearray(a.dave.encrypt(OPUS) or b"")
    forged[0] ^= 1
    assert c.dave.decrypt(a.user_id, bytes(forged)) is None
    assert b.dave.frames_dropped_undecryptable == 2
    assert c.dave.frames_dropped_undecryptable == 1
    # Silence is never encrypted and always passes.
    assert a.dave.encrypt(OPUS_SILENCE) == OPUS_SILENCE
    assert b.dave.decrypt(a.user_id, OPUS_SILENCE) == OPUS_SILENCE
    # Then B catches up and opens C's frames.
    replies = b.send(MlsAnnounceCommitTransition(transition_id=50, commit=commit.raw))
    assert replies == [DaveTransitionReady(transition_id=50)]
    for member in (a, b, c):
        member.send(DaveExecuteTransition(transition_id=50))
    assert b.dave.decrypt(c.user_id, from_c) == OPUS
    assert b.dave.decryption_counts(c.user_id)[0] == 1


def test_plain_opus_inside_an_encrypted_call_is_dropped_once_passthrough_ends() -> None:
    # @discordjs/voice 0.19.0 throws DecryptionFailed(UnencryptedWhenPassthroughDisabled)
    # here (discord.js #11419, #11445); voxgate drops the frame, counts it, and goes on.
    gateway, a, b = Gateway(), Member("9001"), Member("9002")
    first_group(gateway, a, b)
    session = b.dave._session
    assert session is not None
    session.set_passthrough_mode(False, 0)
    assert b.dave.decrypt(a.user_id, OPUS) is None
    assert b.dave.frames_dropped_unencrypted == 1
    frame = a.dave.encrypt(OPUS)
    assert frame is not None and b.dave.decrypt(a.user_id, frame) == OPUS


def test_binary_frames_advance_seq_ack_with_the_json_ones() -> None:
    member = Member("10001")
    member.seq = 0xFFFE
    Gateway().connect(member, [])  # op 4 (JSON, seq 0xFFFF), then op 25 (binary, seq 0)
    assert member.gateway.seq_ack == 0x10000
    assert json.loads(member.gateway.heartbeat(1))["d"]["seq_ack"] == 0x10000


@pytest.mark.parametrize("operation_type", [2, 255])
def test_proposals_with_an_unknown_operation_type_are_ignored(operation_type: int) -> None:
    gateway, a = Gateway(), Member("11001")
    gateway.connect(a, [])
    assert a.send(MlsProposals(operation_type=operation_type, proposals=b"\x00")) == []
    assert a.dave.proposals_rejected == 1


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (OPUS + b"\x00\x00\x03", OPUS),
        (OPUS + b"\x01", OPUS),
        (b"\x01", b""),
        (OPUS + b"\x00", None),  # a count of 0 is not padding
        (b"\x00" * 3 + b"\x09", None),  # more padding than payload
        (b"", None),
    ],
)
def test_rtp_padding_is_removed_before_the_dave_frame_is_looked_for(
    payload: bytes, expected: bytes | None
) -> None:
    assert strip_padding(payload) == expected


def test_a_padded_dave_frame_opens_once_its_padding_is_gone() -> None:
    gateway, a, b = Gateway(), Member("12001"), Member("12002")
    first_group(gateway, a, b)
    frame = a.dave.encrypt(OPUS)
    assert frame is not None
    padded = frame + b"\x00\x00\x00\x04"
    assert not is_dave_frame(padded)
    assert b.dave.decrypt(a.user_id, strip_padding(padded) or b"") == OPUS


def test_a_processed_commit_awaits_its_execution_before_the_new_key_is_everyones() -> None:
    gateway, a, b = Gateway(), Member("13001"), Member("13002")
    gateway.connect(a, [])
    gateway.connect(b, [a])
    commit_welcome = gateway.propose(a, [gateway.add(b)])
    assert commit_welcome is not None
    commit, welcome = mls.split_commit_welcome(commit_welcome)
    assert welcome is not None
    a.send(MlsAnnounceCommitTransition(transition_id=7, commit=commit.raw))
    b.send(MlsWelcome(transition_id=7, welcome=welcome.raw))
    # Both encrypt with the new key already (davey 0.1): the connection holds frames until...
    assert (a.dave.awaiting_execute, b.dave.awaiting_execute) == (7, 7)
    for member in (a, b):
        member.send(DaveExecuteTransition(transition_id=7))
    # ...op 22, which says every member has the key.
    assert (a.dave.awaiting_execute, b.dave.awaiting_execute) == (None, None)
    assert a.dave.transitions_executed == 1


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (MlsExternalSender(external_sender=b"\x00garbage"), []),
        (MlsProposals(operation_type=0, proposals=b"\x05\x00\x01\x02\x03\x04"), []),
        (MlsProposals(operation_type=1, proposals=b"\x40\x20" + bytes(32)), []),
        (
            MlsAnnounceCommitTransition(transition_id=3, commit=b"\x00\x01\x00\x01junk"),
            [MlsInvalidCommitWelcome, MlsKeyPackage],
        ),
        (MlsWelcome(transition_id=4, welcome=b""), [MlsInvalidCommitWelcome, MlsKeyPackage]),
        (DaveExecuteTransition(transition_id=999), []),
        (ClientsConnect(user_ids=["not-a-snowflake", "-1", "1" * 30]), []),
    ],
)
def test_garbage_from_the_server_never_breaks_the_member(
    message: ServerMessage, expected: list[type]
) -> None:
    gateway, a, b = Gateway(), Member("14001"), Member("14002")
    first_group(gateway, a, b)
    code = a.dave.privacy_code
    replies = a.send(message)
    assert [type(reply) for reply in replies] == expected
    if not expected:
        # Ignored: the member keeps its group and its audio.
        assert a.dave.privacy_code == code
        frame = a.dave.encrypt(OPUS)
        assert frame is not None and b.dave.decrypt(a.user_id, frame) == OPUS
    assert a.dave.connected_users == {"14002"}


def test_ids_that_cannot_be_mls_identities_join_without_dave() -> None:
    member = Member("alice")
    assert member.dave.state is DaveState.DISABLED
    assert json.loads(member.gateway.identify())["d"]["max_dave_protocol_version"] == 0
    assert member.dave.decrypt("bob", OPUS) == OPUS
