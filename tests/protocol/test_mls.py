"""The MLS pieces of DAVE (protocol/mls.py): golden vectors, builds, checks, properties.

Golden vectors are davey's captured Discord messages (tests/protocol/mls_vectors.py):
they must parse, verify and re-encode byte for byte. Every parser gets a round-trip
property and an arbitrary-bytes property (only MlsError may escape).
"""

from __future__ import annotations

import pytest

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
