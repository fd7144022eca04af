"""voxgate's MLS pieces against the real DAVE implementations: davey and libdave (dave.py).

Our bytes must be what real members accept, and real members' bytes what we parse: key
packages parse and verify, our op 25 and external Adds make real members produce a commit
and Welcome that :func:`split_commit_welcome` reads, whose refs are our ProposalRefs;
Removes and revokes are accepted; a tampered signature is refused. Each group ends with
equal epoch authenticators and Opus that one member encrypts and the others decrypt.
"""

from __future__ import annotations

import itertools

import pytest

from tests.support.dave_peers import (
    IMPLEMENTATIONS,
    DavePeer,
    DavePeerError,
    DaveyPeer,
    Implementation,
    make_peer,
)
from voxgate.protocol import mls
from voxgate.protocol.dave import is_dave_frame, parse_dave_frame

CHANNEL_ID = 927310423890473011
GROUP_ID = mls.group_id_of(CHANNEL_ID)
OPUS = bytes(range(1, 41))
PAIRS = list(itertools.product(IMPLEMENTATIONS, repeat=2))


def _assert_one_group(members: list[DavePeer]) -> None:
    authenticators = {member.epoch_authenticator() for member in members}
    assert len(authenticators) == 1 and None not in authenticators
    codes = {member.privacy_code for member in members}
    assert len(codes) == 1 and len(next(iter(codes)) or "") == 30
    for sender in members:
        frame = sender.encrypt_opus(OPUS)
        assert is_dave_frame(frame) and frame != OPUS
        for receiver in members:
            if receiver is not sender:
                assert receiver.decrypt(sender.user_id, frame) == OPUS


def _establish(
    sender: mls.ExternalSender, committer: DavePeer, joiners: list[DavePeer]
) -> tuple[mls.Commit, mls.Welcome | None, list[mls.Proposal]]:
    """Initial group: the committer gets an Add per joiner at epoch 0 (DAVE.md §4.2)."""
    everyone = [committer, *joiners]
    for member in everyone:
        member.set_external_sender(sender.package())
        member.users_connected(m.user_id for m in everyone if m is not member)
    adds = []
    for joiner in joiners:
        kp = mls.parse_key_package(joiner.key_package())
        mls.verify_key_package(kp, joiner.user_id)
        adds.append(sender.propose_add(GROUP_ID, 0, kp))
    op28 = committer.process_proposals(0, mls.proposals_append(adds))
    assert op28 is not None
    commit, welcome = mls.split_commit_welcome(op28)
    committer.process_commit(commit.raw)
    assert welcome is not None
    for joiner, add in zip(joiners, adds, strict=True):
        assert add.key_package is not None
        joiner.process_welcome(mls.targeted_welcome(welcome, mls.key_package_ref(add.key_package)))
    return commit, welcome, adds


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_real_key_packages_parse_verify_and_reencode(implementation: Implementation) -> None:
    peer = make_peer(implementation, 158049329150427136, CHANNEL_ID)
    peer.set_external_sender(mls.ExternalSender().package())
    raw = peer.key_package()
    assert raw[:4] == b"\x00\x01\x00\x02"  # bare, DAVE.md §2
    kp = mls.parse_key_package(raw)
    assert kp.raw == raw and mls.build_key_package(kp) == raw
    assert kp.user_id == 158049329150427136 and kp.leaf_node.lifetime == mls.LIFETIME_ANY
    mls.verify_key_package(kp, 158049329150427136)
    with pytest.raises(mls.MlsError, match="identity mismatch"):
        mls.verify_key_package(kp, 158049329150427137)
    tampered = bytearray(raw)
    tampered[-5] ^= 1  # inside the KeyPackage signature
    with pytest.raises(mls.MlsError, match="signature"):
        mls.verify_key_package(mls.parse_key_package(bytes(tampered)), 158049329150427136)


@pytest.mark.parametrize(("committer_impl", "joiner_impl"), PAIRS)
def test_external_add_yields_a_commit_and_welcome_we_parse(
    committer_impl: Implementation, joiner_impl: Implementation
) -> None:
    sender = mls.ExternalSender()
    committer = make_peer(committer_impl, 1001, CHANNEL_ID)
    joiner = make_peer(joiner_impl, 1002, CHANNEL_ID)
    commit, welcome, (add,) = _establish(sender, committer, [joiner])
    assert (commit.group_id, commit.epoch) == (GROUP_ID, 0)
    assert (commit.sender_type, commit.sender_leaf) == (mls.SenderType.MEMBER, 0)
    assert commit.proposal_refs == (add.ref,) and not commit.has_inline_proposals
    assert add.key_package is not None and welcome is not None
    assert welcome.cipher_suite == mls.CIPHER_SUITE
    assert welcome.new_members == (mls.key_package_ref(add.key_package),)
    assert mls.build_public_message(commit.message) == commit.raw
    assert mls.build_welcome(welcome) == welcome.raw
    _assert_one_group([committer, joiner])


@pytest.mark.parametrize("implementations", [("davey", "libdave", "davey"), ("libdave",) * 3])
def test_join_then_remove_in_an_established_group(
    implementations: tuple[Implementation, ...],
) -> None:
    sender = mls.ExternalSender()
    a, b, c = (make_peer(impl, 2001 + i, CHANNEL_ID) for i, impl in enumerate(implementations))
    _establish(sender, a, [b])
    # C joins at epoch 1: both members get the Add, B commits (DAVE.md §4.3).
    c.set_external_sender(sender.package())
    c.users_connected([a.user_id, b.user_id])
    for member in (a, b):
        member.users_connected([c.user_id])
    add = sender.propose_add(GROUP_ID, 1, mls.parse_key_package(c.key_package()))
    a.process_proposals(0, mls.proposals_append([add]))
    op28 = b.process_proposals(0, mls.proposals_append([add]))
    assert op28 is not None
    commit, welcome = mls.split_commit_welcome(op28)
    assert (commit.epoch, commit.sender_leaf, commit.proposal_refs) == (1, 1, (add.ref,))
    assert welcome is not None
    for member in (a, b):
        member.process_commit(commit.raw)
    c.process_welcome(welcome.raw)
    _assert_one_group([a, b, c])
    # A leaves: Remove(leaf 0) at epoch 2; a remove-only commit has no Welcome, and an
    # UpdatePath whose leaf is the committer's.
    remove = sender.propose_remove(GROUP_ID, 2, 0)
    for member in (b, c):
        member.user_disconnected(a.user_id)
    b.process_proposals(0, mls.proposals_append([remove]))
    op28 = c.process_proposals(0, mls.proposals_append([remove]))
    assert op28 is not None
    commit, welcome = mls.split_commit_welcome(op28)
    assert (commit.epoch, commit.sender_leaf, commit.proposal_refs, welcome) == (
        2,
        2,
        (remove.ref,),
        None,
    )
    assert commit.update_path_leaf is not None
    assert commit.update_path_leaf.credential == mls.Credential(1, mls.user_identity(c.user_id))
    for member in (b, c):
        member.process_commit(commit.raw)
    _assert_one_group([b, c])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_revoking_the_only_add_leaves_nothing_to_commit(implementation: Implementation) -> None:
    sender = mls.ExternalSender()
    committer = make_peer(implementation, 3001, CHANNEL_ID)
    joiner = make_peer("davey", 3002, CHANNEL_ID)
    committer.set_external_sender(sender.package())
    add = sender.propose_add(GROUP_ID, 0, mls.parse_key_package(joiner.key_package()))
    assert committer.process_proposals(0, mls.proposals_append([add]), [3002]) is not None
    op28 = committer.process_proposals(1, mls.proposals_revoke([add.ref]), [3002])
    if op28 is not None:  # libdave: an empty commit, which a gateway drops (DAVE.md §4.4)
        commit, welcome = mls.split_commit_welcome(op28)
        assert commit.proposal_refs == () and welcome is None


def test_davey_refuses_a_tampered_signature_a_foreign_key_and_a_wrong_epoch() -> None:
    sender = mls.ExternalSender()
    joiner = make_peer("davey", 4002, CHANNEL_ID)
    kp = mls.parse_key_package(joiner.key_package())
    good = sender.propose_add(GROUP_ID, 0, kp)
    tampered = bytearray(good.message)
    tampered[-10] ^= 1
    foreign = mls.ExternalSender().propose_add(GROUP_ID, 0, kp)
    wrong_epoch = sender.propose_add(GROUP_ID, 5, kp)
    for message in (bytes(tampered), foreign.message, wrong_epoch.message):
        committer = make_peer("davey", 4001, CHANNEL_ID)
        committer.set_external_sender(sender.package())
        with pytest.raises(DavePeerError):
            committer.process_proposals(0, mls.proposals_append([message]), [4002])
    committer = make_peer("davey", 4001, CHANNEL_ID)
    committer.set_external_sender(sender.package())
    assert committer.process_proposals(0, mls.proposals_append([good]), [4002]) is not None


def test_an_add_for_an_unexpected_user_is_refused_by_both() -> None:
    sender = mls.ExternalSender()
    kp = mls.parse_key_package(make_peer("davey", 5002, CHANNEL_ID).key_package())
    add = sender.propose_add(GROUP_ID, 0, kp)
    for implementation in IMPLEMENTATIONS:
        committer = make_peer(implementation, 5001, CHANNEL_ID)
        committer.set_external_sender(sender.package())
        try:
            result = committer.process_proposals(0, mls.proposals_append([add]), [5003])
        except DavePeerError:
            result = None
        assert result is None


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_real_dave_frames_parse_and_pass_the_frame_check(implementation: Implementation) -> None:
    sender = mls.ExternalSender()
    a = make_peer(implementation, 6001, CHANNEL_ID)
    b = make_peer("davey", 6002, CHANNEL_ID)
    _establish(sender, a, [b])
    for count in range(1, 301):
        frame = a.encrypt_opus(OPUS)
        parsed = parse_dave_frame(frame)
        assert parsed.nonce == count and parsed.unencrypted_ranges == ()
        assert len(parsed.ciphertext) == len(OPUS) and len(parsed.tag) == 8
        assert parsed.supplemental_size == (12 if count < 128 else 13)
        assert b.decrypt(a.user_id, frame) == OPUS
    assert a.encrypt_opus(b"\xf8\xff\xfe") == b"\xf8\xff\xfe"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_remove_and_adds_in_one_commit_fill_the_freed_leaf_in_commit_order(
    implementation: Implementation,
) -> None:
    """What a gateway's leaf table relies on (DAVE.md §3.4): whatever order the committer
    lists its refs in (davey puts Adds before Removes, libdave keeps op 27's order), the
    Removes apply first and the Adds then take the leftmost blank leaves in ref order."""
    sender = mls.ExternalSender()
    a = make_peer(implementation, 7001, CHANNEL_ID)
    b = make_peer("davey", 7002, CHANNEL_ID)
    c = make_peer("davey", 7003, CHANNEL_ID)
    d = make_peer("libdave", 7004, CHANNEL_ID)
    _establish(sender, a, [b])
    for peer in (c, d):
        peer.set_external_sender(sender.package())
        peer.users_connected([7001, 7002, 7003, 7004])
    a.users_connected([7003, 7004])
    kp_c = mls.parse_key_package(c.key_package())
    kp_d = mls.parse_key_package(d.key_package())
    proposals = [
        sender.propose_add(GROUP_ID, 1, kp_c),
        sender.propose_remove(GROUP_ID, 1, 1),
        sender.propose_add(GROUP_ID, 1, kp_d),
    ]
    op28 = a.process_proposals(0, mls.proposals_append(proposals))
    assert op28 is not None
    commit, welcome = mls.split_commit_welcome(op28)
    assert sorted(commit.proposal_refs) == sorted(p.ref for p in proposals)
    adds_in_commit_order = [
        kp
        for ref in commit.proposal_refs
        for p in proposals
        if p.ref == ref and (kp := p.key_package)
    ]
    assert welcome is not None
    assert welcome.new_members == tuple(mls.key_package_ref(kp) for kp in adds_in_commit_order)
    a.process_commit(commit.raw)
    c.process_welcome(welcome.raw)
    d.process_welcome(welcome.raw)
    first_added = c if adds_in_commit_order[0] is kp_c else d
    second_added = d if first_added is c else c
    assert isinstance(c, DaveyPeer)
    assert c.own_leaf_index == (1 if first_added is c else 2)
    assert {first_added.user_id, second_added.user_id} == {7003, 7004}
    _assert_one_group([a, c, d])
