"""The MLS pieces of DAVE (protocol/mls.py): golden vectors, builds, checks, properties.

Golden vectors are davey's captured Discord messages (tests/protocol/mls_vectors.py):
they must parse, verify and re-encode byte for byte. Every parser gets a round-trip
property and an arbitrary-bytes property (only MlsError may escape).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocol.mls_vectors import APPENDING_PROPOSALS, EXTERNAL_SENDER, REVOKING_PROPOSALS
from voxgate.protocol import mls
from voxgate.protocol.errors import MlsError

CHANNEL_ID = 927310423890473011
OTHER_USER_ID = 158533742254751744


def test_golden_external_sender_parses_and_reencodes() -> None:
    signature_key, credential = mls.parse_external_sender(EXTERNAL_SENDER)
    assert len(signature_key) == 65 and signature_key[0] == 4
    assert credential == mls.Credential(mls.BASIC_CREDENTIAL, b"\x00")
    assert mls.build_external_sender(signature_key, credential) == EXTERNAL_SENDER
    mls.load_signature_key(signature_key)


def test_golden_appending_proposal_is_an_external_add_at_epoch_0_that_verifies() -> None:
    (proposal,) = mls.parse_proposals_append(APPENDING_PROPOSALS)
    assert proposal.group_id == mls.group_id_of(CHANNEL_ID)
    assert (proposal.epoch, proposal.sender_type, proposal.sender_index) == (0, 2, 0)
    assert proposal.kind == "add" and proposal.key_package is not None
    assert proposal.key_package.user_id == OTHER_USER_ID
    assert proposal.signature[0] == 0x30  # DER
    signature_key, _ = mls.parse_external_sender(EXTERNAL_SENDER)
    mls.verify_proposal(proposal.message, signature_key)
    mls.verify_key_package(proposal.key_package, OTHER_USER_ID)
    assert mls.proposals_append([proposal.message]) == APPENDING_PROPOSALS
    assert mls.build_key_package(proposal.key_package) == proposal.key_package.raw
    assert mls.build_public_message(mls.parse_public_message(proposal.message)) == proposal.message


def test_golden_revoke_names_the_ref_of_the_appended_add() -> None:
    (proposal,) = mls.parse_proposals_append(APPENDING_PROPOSALS)
    refs = mls.parse_proposals_revoke(REVOKING_PROPOSALS)
    assert refs == (proposal.ref,)
    assert mls.proposal_ref_of(proposal.message) == proposal.ref
    assert mls.proposals_revoke(refs) == REVOKING_PROPOSALS


def test_golden_proposal_fails_under_another_key_or_when_tampered() -> None:
    (proposal,) = mls.parse_proposals_append(APPENDING_PROPOSALS)
    with pytest.raises(MlsError, match="bad proposal signature"):
        mls.verify_proposal(proposal.message, mls.ExternalSender().public_key)
    signature_key, _ = mls.parse_external_sender(EXTERNAL_SENDER)
    tampered = bytearray(proposal.message)
    tampered[20] ^= 1  # inside the FramedContent (epoch)
    with pytest.raises(MlsError, match="bad proposal signature"):
        mls.verify_proposal(bytes(tampered), signature_key)


# -- builds and checks ------------------------------------------------------------------


def _real_key_package(user_id: int = OTHER_USER_ID) -> mls.KeyPackage:
    (proposal,) = mls.parse_proposals_append(APPENDING_PROPOSALS)
    assert proposal.key_package is not None
    return proposal.key_package


def test_varint_boundaries_are_minimal_and_non_minimal_forms_are_rejected() -> None:
    for n, encoded in ((0, "00"), (63, "3f"), (64, "4040"), (16383, "7fff"), (16384, "80004000")):
        assert mls.encode_varint(n).hex() == encoded
        assert mls.Reader(bytes.fromhex(encoded)).pull_varint() == n
    assert mls.encode_varint(mls.MAX_VARINT).hex() == "bfffffff"
    for bad, reason in (("4001", "non-minimal"), ("80000001", "non-minimal"), ("c0", "prefix")):
        with pytest.raises(MlsError, match=reason):
            mls.Reader(bytes.fromhex(bad)).pull_varint()
    with pytest.raises(MlsError, match="too long"):
        mls.encode_varint(2**30)


def test_external_sender_package_is_op25_layout_and_its_proposals_verify() -> None:
    sender = mls.ExternalSender()
    package = sender.package()
    assert package[:2] == b"\x40\x41" and package[2] == 4 and package[67:] == b"\x00\x01\x01\x00"
    assert mls.parse_external_sender(package) == (sender.public_key, mls.Credential(1, b"\x00"))
    group_id = mls.group_id_of(CHANNEL_ID)
    kp = _real_key_package()
    add = sender.propose_add(group_id, 7, kp)
    parsed = mls.parse_proposal_message(add.message)
    assert (parsed.kind, parsed.epoch, parsed.group_id, parsed.ref) == ("add", 7, group_id, add.ref)
    assert parsed.key_package == kp and parsed.key_package.raw == kp.raw
    mls.verify_proposal(add.message, sender.public_key)
    remove = sender.propose_remove(group_id, 3, 2)
    parsed = mls.parse_proposal_message(remove.message)
    assert (parsed.kind, parsed.removed_leaf, parsed.epoch) == ("remove", 2, 3)
    mls.verify_proposal(remove.message, sender.public_key)
    with pytest.raises(MlsError, match="bad proposal signature"):
        mls.verify_proposal(remove.message, mls.ExternalSender().public_key)
    # the same key, another identity: the op 25 bytes carry it
    assert mls.ExternalSender(sender.private_key, b"\x00\x01").package()[-3:] == b"\x02\x00\x01"


def test_proposals_append_and_revoke_round_trip_through_their_parsers() -> None:
    sender = mls.ExternalSender()
    group_id = mls.group_id_of(1)
    proposals = [sender.propose_remove(group_id, 1, leaf) for leaf in range(3)]
    payload = mls.proposals_append(proposals)
    assert mls.proposals_append([p.message for p in proposals]) == payload
    parsed = mls.parse_proposals_append(payload)
    assert [p.ref for p in parsed] == [p.ref for p in proposals]
    revoke = mls.proposals_revoke([p.ref for p in proposals])
    assert revoke[:2] == (0x4000 | 99).to_bytes(2, "big") and revoke[2] == 32
    assert mls.parse_proposals_revoke(revoke) == tuple(p.ref for p in proposals)
    assert mls.proposals_append([]) == b"\x00" and mls.proposals_revoke([]) == b"\x00"


@pytest.mark.parametrize(
    ("user_id", "mutate", "reason"),
    [
        (OTHER_USER_ID + 1, None, "identity mismatch"),
        (OTHER_USER_ID, {"cipher_suite": 1}, "wrong cipher suite"),
        # bytes 2-3 of a bare suite-5 key package read like an MLSMessage's wire format
        (OTHER_USER_ID, {"cipher_suite": 5}, "wrong cipher suite"),
        (OTHER_USER_ID, {"version": 2}, "unsupported MLS version"),
        (OTHER_USER_ID, {"signature": b"\x30\x00"}, "bad key package signature"),
        (OTHER_USER_ID, {"init_key": b"\x04" + bytes(64)}, "bad init key"),
    ],
)
def test_verify_key_package_rejects(
    user_id: int, mutate: dict[str, object] | None, reason: str
) -> None:
    kp = _real_key_package()
    if mutate:
        kp = mls.parse_key_package(mls.build_key_package(dataclasses.replace(kp, **mutate)))  # type: ignore[arg-type]
    with pytest.raises(MlsError, match=reason):
        mls.verify_key_package(kp, user_id)


def test_verify_key_package_rejects_a_changed_leaf() -> None:
    kp = _real_key_package()
    leaf = kp.leaf_node
    for changed, reason in (
        (
            dataclasses.replace(leaf, credential=mls.Credential(2, leaf.credential.identity)),
            "not basic",
        ),
        (dataclasses.replace(leaf, lifetime=(1, 2**64 - 1)), "bad lifetime"),
        (
            dataclasses.replace(leaf, extensions=(mls.Extension(9, b"x"),)),
            "bad leaf node signature",
        ),
        (dataclasses.replace(leaf, signature_key=b"\x04" + bytes(64)), "bad signature key"),
    ):
        rebuilt = mls.parse_key_package(
            mls.build_key_package(dataclasses.replace(kp, leaf_node=changed))
        )
        with pytest.raises(MlsError, match=reason):
            mls.verify_key_package(rebuilt, OTHER_USER_ID)


def test_key_package_in_an_mlsmessage_parses_like_the_bare_one() -> None:
    kp = _real_key_package()
    wrapped = mls.parse_key_package(b"\x00\x01\x00\x05" + kp.raw)
    assert wrapped == kp and wrapped.raw == kp.raw
    assert mls.key_package_ref(wrapped) == mls.key_package_ref(kp)
    assert len(mls.key_package_ref(kp)) == 32
    with pytest.raises(MlsError, match="trailing"):
        mls.parse_key_package(kp.raw + b"\x00")


def test_targeted_welcome_keeps_only_the_secret_of_that_key_package() -> None:
    secrets = tuple(mls.WelcomeSecret(bytes([i]) * 32, b"k" * 65, b"c" * 60) for i in range(3))
    welcome = mls.parse_welcome(mls.build_welcome(mls.Welcome(2, secrets, b"g" * 100)))
    targeted = mls.parse_welcome(mls.targeted_welcome(welcome, bytes([1]) * 32))
    assert targeted.secrets == (secrets[1],) and targeted.encrypted_group_info == b"g" * 100
    with pytest.raises(MlsError, match="no secret"):
        mls.targeted_welcome(welcome, b"\xff" * 32)


def test_split_commit_welcome_rejects_proposals_and_trailing_bytes() -> None:
    sender = mls.ExternalSender()
    remove = sender.propose_remove(mls.group_id_of(1), 1, 0)
    with pytest.raises(MlsError, match="not a commit"):
        mls.split_commit_welcome(remove.message)
    with pytest.raises(MlsError):
        mls.split_commit_welcome(b"")
    commit = mls.build_public_message(
        mls.PublicMessage(
            mls.group_id_of(1), 4, 1, 2, b"", 3,
            mls.CommitContent((mls.ProposalOrRef(2, remove.ref),), None),
            b"s" * 70, b"t" * 32, b"m" * 32,
        )
    )  # fmt: skip
    parsed, welcome = mls.split_commit_welcome(commit)
    assert (parsed.epoch, parsed.sender_leaf, parsed.proposal_refs, welcome) == (
        4,
        2,
        (remove.ref,),
        None,
    )
    assert parsed.raw == commit and not parsed.has_inline_proposals
    with pytest.raises(MlsError, match="truncated"):
        mls.split_commit_welcome(commit + b"\x00")


# -- properties: parse is the inverse of build; hostile bytes raise only MlsError --------

_u16 = st.integers(0, 2**16 - 1)
_u32 = st.integers(0, 2**32 - 1)
_u64 = st.integers(0, 2**64 - 1)
_opaque = st.binary(max_size=80)
_big_opaque = st.one_of(_opaque, st.binary(min_size=64, max_size=300))
_u16s = st.lists(_u16, max_size=4).map(tuple)

credentials = st.builds(mls.Credential, st.sampled_from([1, 2]), _opaque)
extensions = st.lists(st.builds(mls.Extension, _u16, _opaque), max_size=3).map(tuple)
capabilities = st.builds(mls.Capabilities, _u16s, _u16s, _u16s, _u16s, _u16s)


@st.composite
def leaf_nodes(draw: st.DrawFn) -> mls.LeafNode:
    source = draw(st.sampled_from([1, 2, 3]))
    return mls.LeafNode(
        draw(_big_opaque),
        draw(_opaque),
        draw(credentials),
        draw(capabilities),
        source,
        draw(st.tuples(_u64, _u64)) if source == 1 else None,
        draw(_opaque) if source == 3 else None,
        draw(extensions),
        draw(_opaque),
    )


def _extensions_body(items: tuple[mls.Extension, ...]) -> bytes:
    writer = mls.Writer()
    for item in items:
        mls.push_extension(writer, item)
    return writer.data


key_packages = st.builds(
    mls.KeyPackage,
    _u16,
    _u16,
    _opaque,
    leaf_nodes(),
    extensions.map(_extensions_body),
    _opaque,
)


@st.composite
def inline_proposals(draw: st.DrawFn) -> mls.InlineProposal:
    kind = draw(st.sampled_from([1, 2, 3, 6, 7]))
    if kind == 1:
        kp = draw(key_packages)
        return mls.InlineProposal(1, mls.build_key_package(kp), key_package=kp)
    if kind == 2:
        return mls.InlineProposal(2, mls.build_leaf_node(draw(leaf_nodes())))
    if kind == 3:
        leaf = draw(_u32)
        return mls.InlineProposal(3, leaf.to_bytes(4, "big"), removed_leaf=leaf)
    if kind == 6:
        return mls.InlineProposal(6, mls.encode_varint(5) + b"kem!!")
    writer = mls.Writer()
    mls.push_extensions(writer, draw(extensions))
    return mls.InlineProposal(7, writer.data)


proposal_or_refs = st.one_of(
    st.builds(mls.ProposalOrRef, st.just(2), st.binary(min_size=32, max_size=32)),
    inline_proposals().map(lambda p: mls.ProposalOrRef(1, None, proposal=p)),
)


@st.composite
def update_paths(draw: st.DrawFn) -> mls.UpdatePath:
    writer = mls.Writer()
    for _ in range(draw(st.integers(0, 3))):
        writer.push_vector(draw(_opaque))
        secrets = mls.Writer()
        for _ in range(draw(st.integers(0, 2))):
            secrets.push_vector(draw(_opaque))
            secrets.push_vector(draw(_opaque))
        writer.push_vector(secrets.data)
    return mls.UpdatePath(draw(leaf_nodes()), writer.data)


@st.composite
def public_messages(draw: st.DrawFn) -> mls.PublicMessage:
    sender_type = draw(st.sampled_from([1, 2, 3, 4]))
    content_type = draw(st.sampled_from([1, 2, 3]))
    content: mls.InlineProposal | mls.CommitContent | bytes
    if content_type == 1:
        content = draw(_opaque)
    elif content_type == 2:
        content = draw(inline_proposals())
    else:
        content = mls.CommitContent(
            tuple(draw(st.lists(proposal_or_refs, max_size=4))),
            draw(st.one_of(st.none(), update_paths())),
        )
    return mls.PublicMessage(
        draw(_opaque),
        draw(_u64),
        sender_type,
        draw(_u32) if sender_type in (1, 2) else 0,
        draw(_opaque),
        content_type,
        content,
        draw(_opaque),
        draw(_opaque) if content_type == 3 else None,
        draw(_opaque) if sender_type == 1 else None,
    )


welcomes = st.builds(
    mls.Welcome,
    _u16,
    st.lists(st.builds(mls.WelcomeSecret, _opaque, _opaque, _opaque), max_size=4).map(tuple),
    _big_opaque,
)


@given(leaf_nodes())
def test_leaf_node_parse_inverts_build(leaf: mls.LeafNode) -> None:
    encoded = mls.build_leaf_node(leaf)
    parsed = mls.parse_leaf_node(encoded)
    assert parsed == leaf and parsed.raw == encoded
    assert encoded == parsed.tbs + mls.encode_varint(len(leaf.signature)) + leaf.signature


@given(key_packages)
def test_key_package_parse_inverts_build(kp: mls.KeyPackage) -> None:
    encoded = mls.build_key_package(kp)
    parsed = mls.parse_key_package(encoded) if encoded[2:4] != b"\x00\x05" else None
    if parsed is not None:
        assert parsed == kp and parsed.raw == encoded
        assert mls.build_key_package(parsed) == encoded


@given(public_messages())
def test_public_message_parse_inverts_build(message: mls.PublicMessage) -> None:
    encoded = mls.build_public_message(message)
    parsed = mls.parse_public_message(encoded)
    assert parsed == message and parsed.raw == encoded
    if message.content_type == 3:
        commit, welcome = mls.split_commit_welcome(encoded)
        assert welcome is None and commit.raw == encoded and commit.epoch == message.epoch
        assert mls.parse_commit(encoded) == commit


@given(public_messages().filter(lambda m: m.content_type == 3), welcomes)
def test_op28_split_inverts_commit_then_welcome(
    message: mls.PublicMessage, welcome: mls.Welcome
) -> None:
    commit_bytes = mls.build_public_message(message)
    welcome_bytes = mls.build_welcome(welcome)
    commit, parsed = mls.split_commit_welcome(commit_bytes + welcome_bytes)
    assert commit.raw == commit_bytes and parsed == welcome and parsed.raw == welcome_bytes


@given(welcomes)
def test_welcome_parse_inverts_build(welcome: mls.Welcome) -> None:
    encoded = mls.build_welcome(welcome)
    assert mls.parse_welcome(encoded) == welcome
    for secret in welcome.secrets:
        first = next(s for s in welcome.secrets if s.new_member == secret.new_member)
        targeted = mls.parse_welcome(mls.targeted_welcome(welcome, secret.new_member))
        assert targeted.secrets == (first,)


@given(_opaque, credentials)
def test_external_sender_parse_inverts_build(key: bytes, credential: mls.Credential) -> None:
    assert mls.parse_external_sender(mls.build_external_sender(key, credential)) == (
        key,
        credential,
    )


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=20))
def test_revoke_parse_inverts_build(refs: list[bytes]) -> None:
    assert mls.parse_proposals_revoke(mls.proposals_revoke(refs)) == tuple(refs)


PARSERS = {
    "key_package": mls.parse_key_package,
    "leaf_node": mls.parse_leaf_node,
    "external_sender": mls.parse_external_sender,
    "public_message": mls.parse_public_message,
    "proposal_message": mls.parse_proposal_message,
    "proposals_append": mls.parse_proposals_append,
    "proposals_revoke": mls.parse_proposals_revoke,
    "commit": mls.parse_commit,
    "welcome": mls.parse_welcome,
    "split_commit_welcome": mls.split_commit_welcome,
}


def _only_mls_errors(parse: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(MlsError):
        parse(data)


@pytest.mark.parametrize("name", PARSERS)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_mls_error(name: str, data: bytes) -> None:
    _only_mls_errors(PARSERS[name], data)


_SEEDS = [
    APPENDING_PROPOSALS,
    APPENDING_PROPOSALS[2:],
    EXTERNAL_SENDER,
    REVOKING_PROPOSALS,
    _real_key_package().raw,
]


@st.composite
def mutated_seeds(draw: st.DrawFn) -> bytes:
    """A real message with bytes flipped, cut or inserted: deep paths, not just the first."""
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and position < len(data):
            data[position] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[position : position + draw(st.integers(1, 8))]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_seeds())
def test_mutated_real_messages_raise_only_mls_error(data: bytes) -> None:
    for parse in PARSERS.values():
        _only_mls_errors(parse, data)
    with contextlib.suppress(MlsError):
        mls.verify_key_package(mls.parse_key_package(data), OTHER_USER_ID)
    with contextlib.suppress(MlsError):
        (proposal,) = mls.parse_proposals_append(data)
        mls.verify_proposal(proposal.message, mls.parse_external_sender(EXTERNAL_SENDER)[0])


@given(key_packages, st.integers(0, 2**64 - 1))
def test_verify_key_package_of_any_structure_raises_only_mls_error(
    kp: mls.KeyPackage, user_id: int
) -> None:
    with contextlib.suppress(MlsError):
        mls.verify_key_package(mls.parse_key_package(mls.build_key_package(kp)), user_id)


def test_a_huge_declared_length_is_refused_before_anything_is_read() -> None:
    # A 1 GiB vector claimed by 4 bytes: rejected as truncated, nothing allocated.
    with pytest.raises(MlsError, match="truncated"):
        mls.parse_proposals_append(b"\xbf\xff\xff\xff")
    # Many tiny entries: parsing stays linear (a 200 kB revoke of 6,000 refs parses).
    refs = [bytes([i % 256]) * 32 for i in range(6000)]
    assert len(mls.parse_proposals_revoke(mls.proposals_revoke(refs))) == 6000
