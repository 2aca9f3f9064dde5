"""API tokens: issue, hash, check. Imports nothing heavy (the authorizer Lambda uses it).

A token is ``nbl_`` followed by 43 URL-safe base64 characters (256 random bits from the OS
CSPRNG). Only its SHA-256 is stored; the lookup is by hash, so no secret is ever compared
byte by byte (and the final check uses ``hmac.compare_digest``). A fast hash is right here:
the secret has 256 bits of entropy, so there is nothing to brute-force.

Last use is recorded by the authorizer at most once per :data:`LAST_USED_RESOLUTION` per
token: the token it has just read says when it was last recorded, so most requests write
nothing, and the write itself is conditional, so concurrent requests write once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from chalicelib.errors import Forbidden, Unauthorized
from chalicelib.models import Token, User, utcnow

log = logging.getLogger(__name__)

TOKEN_PREFIX = "nbl_"  # noqa: S105 - a public prefix, not a secret
LAST_USED_RESOLUTION = timedelta(minutes=1)
TOKEN_PATTERN = re.compile(r"^nbl_[A-Za-z0-9_-]{43}$")
_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)


class TokenLookup(Protocol):
    """What the authorizer needs from storage (a subset of ``Store``)."""

    def get_token(self, token_hash: str) -> Token | None: ...

    def get_user(self, user_id: str) -> User | None: ...

    def touch_token(self, token_hash: str, used_at: datetime, resolution: timedelta) -> bool: ...


@dataclass(frozen=True)
class IssuedToken:
    """A freshly issued token: ``secret`` is shown once and never stored."""

    secret: str
    record: Token


def hash_token(secret: str) -> str:
    """Hex SHA-256 of a token secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def issue_token(
    user_id: str, *, expires_in: timedelta | None = None, now: datetime | None = None
) -> IssuedToken:
    """A new random token for ``user_id`` and the record to store for it."""
    now = now or utcnow()
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = hash_token(secret)
    record = Token(
        token_hash=digest,
        token_id=digest[:12],
        user_id=user_id,
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    return IssuedToken(secret=secret, record=record)


def parse_authorization(header: str | None) -> str:
    """The token in an ``Authorization: Bearer <token>`` header; 401 if absent or malformed."""
    if not header:
        raise Unauthorized("missing API token: send 'Authorization: Bearer <token>'")
    match = _BEARER.match(header)
    candidate = match.group(1) if match else header.strip()
    if not TOKEN_PATTERN.match(candidate):
        raise Unauthorized("malformed API token")
    return candidate


def authenticate(store: TokenLookup, header: str | None, now: datetime | None = None) -> User:
    """The user a request's ``Authorization`` header belongs to.

    401 for a missing, malformed or unknown token; 403 for a revoked or expired token or a
    disabled user.
    """
    secret = parse_authorization(header)
    digest = hash_token(secret)
    token = store.get_token(digest)
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        raise Unauthorized("invalid API token")
    now = now or utcnow()
    if token.revoked:
        raise Forbidden("API token revoked")
    if token.is_expired(now):
        raise Forbidden("API token expired")
    user = store.get_user(token.user_id)
    if user is None or user.disabled:
        raise Forbidden("user disabled")
    record_use(store, token, now)
    return user


def record_use(store: TokenLookup, token: Token, now: datetime) -> None:
    """Record the token's last use if the recorded one is older than the resolution.

    Best effort: a failed write never fails the request it belongs to.
    """
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_RESOLUTION:
        return
    try:
        store.touch_token(token.token_hash, now, LAST_USED_RESOLUTION)
    except Exception:
        log.warning("could not record the last use of token %s", token.token_id, exc_info=True)
