"""Voice tokens: the JWT that VOICE_SERVER_UPDATE carries and Identify presents.

A token binds one user's one voice session to one guild and channel, is signed with the
node's secret (HS256, shared with whatever mints tokens, LiveKit-style) and expires a few
minutes after minting: it is a ticket to *start* a session, not to keep one. The server
checks the grant against Identify's ``server_id``, ``user_id`` and ``session_id``. A token
minted by a multi-worker node also names the one gateway (``endpoint``) its holder must use,
so that every member of a channel lands on the worker that hosts it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt

from voxgate.errors import VoxgateError

ALGORITHM = "HS256"
DEFAULT_TTL_S = 600.0
# Minimum secret length: HS256 keys shorter than the hash output weaken the MAC.
MIN_SECRET_BYTES = 32


class InvalidToken(VoxgateError):
    """A token that is forged, expired, malformed or does not carry a voice grant."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VoiceGrant:
    """Who may join where, as a verified token says."""

    guild_id: str
    channel_id: str
    user_id: str
    session_id: str
    #: ``host:port`` of the only gateway that accepts the token; None: any node sharing the
    #: secret (``voxgate token``, a third-party minting service).
    endpoint: str | None = None


def new_session_id() -> str:
    """A fresh voice session id, the 32 hex digits Discord's gateway uses."""
    return secrets.token_hex(16)


class TokenAuthority:
    """Mints and verifies voice tokens with one shared secret."""

    def __init__(self, secret: bytes, ttl_s: float = DEFAULT_TTL_S) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
        if ttl_s <= 0:
            raise ValueError("token lifetime must be positive")
        self._secret = secret
        self.ttl_s = ttl_s

    def mint(
        self,
        guild_id: str,
        channel_id: str,
        user_id: str,
        session_id: str | None = None,
        *,
        endpoint: str | None = None,
        now: float | None = None,
    ) -> tuple[str, VoiceGrant]:
        """Return a signed token and the grant it carries; a session id is made when absent.

        ``endpoint`` (``host:port``) binds the token to one gateway: any other node refuses it.
        """
        ids = {"guild_id": guild_id, "channel_id": channel_id, "user_id": user_id}
        for name, value in ids.items():
            if not value:
                raise ValueError(f"{name} must not be empty")
        if endpoint is not None and not endpoint:
            raise ValueError("endpoint must not be empty")
        grant = VoiceGrant(guild_id, channel_id, user_id, session_id or new_session_id(), endpoint)
        issued = time.time() if now is None else now
        claims = {
            "sub": grant.user_id,
            "guild_id": grant.guild_id,
            "channel_id": grant.channel_id,
            "session_id": grant.session_id,
            "iat": int(issued),
            "exp": int(issued + self.ttl_s),
        }
        if endpoint is not None:
            claims["endpoint"] = endpoint
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), grant

    def verify(self, token: str, *, now: float | None = None) -> VoiceGrant:
        """Return the grant of a valid token.

        Raises :class:`InvalidToken` with a short reason for a bad signature, an expired or
        malformed token, or one missing a claim.
        """
        try:
            # PyJWT reads the clock itself; given ``now``, expiry is checked here instead.
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "sub"], "verify_exp": now is None},
            )
            if now is not None and now >= float(claims["exp"]):
                raise InvalidToken("token expired")
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("token signature invalid") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"token invalid: {exc}") from None
        fields = {}
        for claim, field in (
            ("guild_id", "guild_id"),
            ("channel_id", "channel_id"),
            ("sub", "user_id"),
            ("session_id", "session_id"),
        ):
            value = claims.get(claim)
            if not isinstance(value, str) or not value:
                raise InvalidToken(f"token lacks {field}")
            fields[field] = value
        endpoint = claims.get("endpoint")
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint):
            raise InvalidToken("token endpoint invalid")
        return VoiceGrant(**fields, endpoint=endpoint)

    def endpoint_of(self, token: str) -> str | None:
        """The endpoint claim of a token signed with this secret, expired or not.

        Resume presents the token that opened the session, which may have expired since;
        None when the token is not ours, is malformed, or carries no claim.
        """
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], options={"verify_exp": False}
            )
        except jwt.PyJWTError:
            return None
        endpoint = claims.get("endpoint")
        return endpoint if isinstance(endpoint, str) and endpoint else None
