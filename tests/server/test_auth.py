"""Voice tokens: what verifies, what does not, and the reason each refusal gives."""

from __future__ import annotations

import time

import jwt
import pytest

from voxgate.server.auth import InvalidToken, TokenAuthority, VoiceGrant

SECRET = b"s" * 32


def test_minted_token_verifies_to_the_same_grant() -> None:
    authority = TokenAuthority(SECRET)
    token, grant = authority.mint("g1", "c1", "u1", "sess")
    assert grant == VoiceGrant("g1", "c1", "u1", "sess")
    assert authority.verify(token) == grant


def test_mint_makes_a_distinct_session_id_when_none_is_given() -> None:
    authority = TokenAuthority(SECRET)
    first = authority.mint("g", "c", "u")[1].session_id
    second = authority.mint("g", "c", "u")[1].session_id
    assert first != second and len(first) == 32


def test_token_signed_with_another_secret_is_refused() -> None:
    token, _ = TokenAuthority(b"x" * 32).mint("g", "c", "u")
    with pytest.raises(InvalidToken, match="signature"):
        TokenAuthority(SECRET).verify(token)


def test_token_expires_after_its_lifetime() -> None:
    authority = TokenAuthority(SECRET, ttl_s=60)
    minted_at = time.time()
    token, grant = authority.mint("g", "c", "u", now=minted_at)
    assert authority.verify(token, now=minted_at + 59) == grant
    with pytest.raises(InvalidToken, match="expired"):
        authority.verify(token, now=minted_at + 60)
    expired, _ = authority.mint("g", "c", "u", now=minted_at - 120)
    with pytest.raises(InvalidToken, match="expired"):
        authority.verify(expired)


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "u", "channel_id": "c", "session_id": "s"},
        {"sub": "u", "guild_id": "g", "session_id": "s"},
        {"sub": "u", "guild_id": "g", "channel_id": "c"},
        {"sub": "u", "guild_id": 5, "channel_id": "c", "session_id": "s"},
    ],
)
def test_token_without_a_full_voice_grant_is_refused(claims: dict[str, object]) -> None:
    token = jwt.encode({**claims, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="lacks"):
        TokenAuthority(SECRET).verify(token)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "é" * 10])
def test_garbage_is_refused_with_a_reason(token: str) -> None:
    with pytest.raises(InvalidToken) as caught:
        TokenAuthority(SECRET).verify(token)
    assert caught.value.reason


def test_unsigned_token_is_refused() -> None:
    token = jwt.encode(
        {"sub": "u", "guild_id": "g", "channel_id": "c", "session_id": "s", "exp": 2**40},
        None,
        algorithm="none",
    )
    with pytest.raises(InvalidToken):
        TokenAuthority(SECRET).verify(token)


def test_short_secret_is_rejected() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TokenAuthority(b"short")


def test_endpoint_claim_round_trips() -> None:
    authority = TokenAuthority(SECRET)
    token, grant = authority.mint("g", "c", "u", "s", endpoint="10.0.0.1:8444")
    assert grant.endpoint == "10.0.0.1:8444"
    assert authority.verify(token) == grant
    assert authority.endpoint_of(token) == "10.0.0.1:8444"


def test_token_without_an_endpoint_claim_still_verifies_for_any_node() -> None:
    # What `voxgate token` and third-party minting services made before the claim existed.
    token = jwt.encode(
        {"sub": "u", "guild_id": "g", "channel_id": "c", "session_id": "s", "exp": 2**40},
        SECRET,
        algorithm="HS256",
    )
    authority = TokenAuthority(SECRET)
    assert authority.verify(token) == VoiceGrant("g", "c", "u", "s", None)
    assert authority.endpoint_of(token) is None


def test_endpoint_claim_is_read_from_an_expired_token_for_resume() -> None:
    authority = TokenAuthority(SECRET, ttl_s=60)
    token, _ = authority.mint("g", "c", "u", endpoint="h:1", now=time.time() - 3600)
    with pytest.raises(InvalidToken, match="expired"):
        authority.verify(token)
    assert authority.endpoint_of(token) == "h:1"
    assert TokenAuthority(b"x" * 32).endpoint_of(token) is None


def test_endpoint_claim_of_the_wrong_type_is_refused() -> None:
    claims = {"sub": "u", "guild_id": "g", "channel_id": "c", "session_id": "s"}
    token = jwt.encode({**claims, "endpoint": 8443, "exp": 2**40}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="endpoint"):
        TokenAuthority(SECRET).verify(token)
