"""Tokens: format, hashing, and every way authentication can fail."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

import pytest

from chalicelib.auth import TOKEN_PATTERN, authenticate, hash_token, issue_token
from chalicelib.errors import Forbidden, Unauthorized
from chalicelib.models import User, utcnow
from chalicelib.storage.memory import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.put_user(User(user_id="alice", created_at=utcnow()))
    return s


def test_tokens_are_prefixed_random_and_stored_only_as_a_hash() -> None:
    secrets_seen = set()
    for _ in range(200):
        issued = issue_token("alice")
        assert TOKEN_PATTERN.match(issued.secret)
        assert issued.secret.startswith("nbl_")
        assert issued.record.token_hash == hash_token(issued.secret)
        assert issued.secret not in repr(issued.record)
        assert re.fullmatch(r"[0-9a-f]{64}", issued.record.token_hash)
        secrets_seen.add(issued.secret)
    assert len(secrets_seen) == 200
    # 43 base64url characters carry 258 bits; the generator draws 32 random bytes (256 bits).
    assert len(issued.secret) - len("nbl_") == 43


def test_a_valid_token_authenticates_its_user(store: MemoryStore) -> None:
    issued = issue_token("alice")
    store.put_token(issued.record)
    assert authenticate(store, f"Bearer {issued.secret}").user_id == "alice"
    assert authenticate(store, f"bearer   {issued.secret}  ").user_id == "alice"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer nbl_short",
        "Basic dXNlcjpwYXNz",
        "Bearer tok_" + "a" * 43,
        "Bearer nbl_" + "a" * 42 + "!",
        "Bearer nbl_" + "a" * 44,
    ],
)
def test_missing_or_malformed_tokens_are_401(store: MemoryStore, header: str | None) -> None:
    with pytest.raises(Unauthorized):
        authenticate(store, header)


def test_unknown_token_is_401(store: MemoryStore) -> None:
    with pytest.raises(Unauthorized, match="invalid API token"):
        authenticate(store, "Bearer " + issue_token("alice").secret)


def test_revoked_expired_and_disabled_are_403(store: MemoryStore) -> None:
    now = utcnow()
    revoked = issue_token("alice")
    store.put_token(dataclasses.replace(revoked.record, revoked=True))
    expired = issue_token("alice", expires_in=timedelta(seconds=1), now=now - timedelta(hours=1))
    store.put_token(expired.record)
    with pytest.raises(Forbidden, match="revoked"):
        authenticate(store, f"Bearer {revoked.secret}")
    with pytest.raises(Forbidden, match="expired"):
        authenticate(store, f"Bearer {expired.secret}")

    valid = issue_token("alice", expires_in=timedelta(days=1))
    store.put_token(valid.record)
    assert authenticate(store, f"Bearer {valid.secret}").user_id == "alice"
    store.users["alice"] = dataclasses.replace(store.users["alice"], disabled=True)
    with pytest.raises(Forbidden, match="disabled"):
        authenticate(store, f"Bearer {valid.secret}")
