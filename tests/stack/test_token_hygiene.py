"""Token hygiene: expiry, revocation, rotation, prefixes, timing-safe lookup, last use.

The first tests run ``chalicelib.auth.authenticate`` on an in-memory store with an injected
clock (exact boundaries); the ``*_over_http`` tests run the same cases through the real
authorizer of the local API server against the emulator's tables.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import hmac
import inspect
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest

from chalicelib import auth
from chalicelib.auth import LAST_USED_RESOLUTION, authenticate, hash_token, issue_token
from chalicelib.errors import Conflict, Forbidden, InvalidRequest, Unauthorized
from chalicelib.models import Token, User, utcnow
from chalicelib.storage.memory import MemoryStore
from neblina_admin import operations as admin


class CountingStore(MemoryStore):
    """A MemoryStore that records every call the authenticator makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def get_token(self, token_hash: str) -> Token | None:
        self.calls.append(("get_token", (token_hash,)))
        return super().get_token(token_hash)

    def get_user(self, user_id: str) -> User | None:
        self.calls.append(("get_user", (user_id,)))
        return super().get_user(user_id)

    def touch_token(self, token_hash: str, used_at: Any, resolution: timedelta) -> bool:
        wrote = super().touch_token(token_hash, used_at, resolution)
        self.calls.append(("touch_token" if wrote else "touch_token (no write)", (token_hash,)))
        return wrote


@pytest.fixture
def memory() -> CountingStore:
    s = CountingStore()
    s.put_user(User(user_id="alice", created_at=utcnow()))
    return s


def bearer(secret: str) -> str:
    return f"Bearer {secret}"


# expiry and revocation ---------------------------------------------------------------------
def test_an_expired_token_is_refused_from_its_expiry_instant(memory: CountingStore) -> None:
    now = utcnow()
    issued = issue_token("alice", expires_in=timedelta(hours=1), now=now)
    memory.put_token(issued.record)
    expiry = now + timedelta(hours=1)
    assert authenticate(memory, bearer(issued.secret), expiry - timedelta(microseconds=1))
    for at in (expiry, expiry + timedelta(days=400)):
        with pytest.raises(Forbidden, match="API token expired"):
            authenticate(memory, bearer(issued.secret), at)


def test_a_revoked_token_is_refused_whatever_its_expiry(memory: CountingStore) -> None:
    issued = issue_token("alice", expires_in=timedelta(days=1))
    memory.put_token(dataclasses.replace(issued.record, revoked=True))
    with pytest.raises(Forbidden, match="API token revoked"):
        authenticate(memory, bearer(issued.secret))


def test_tokens_expire_by_default_and_live_forever_only_on_request(stack: Any, store: Any) -> None:
    del stack
    user = f"ttl-{time.time_ns()}"
    admin.add_user(store, user)
    default = admin.add_token(store, user).record
    assert default.expires_at is not None
    assert default.expires_at - default.created_at == timedelta(days=90)
    chosen = admin.add_token(store, user, timedelta(hours=12)).record
    assert chosen.expires_at is not None
    assert chosen.expires_at - chosen.created_at == timedelta(hours=12)
    forever = admin.add_token(store, user, never_expires=True).record
    assert forever.expires_at is None
    with pytest.raises(InvalidRequest, match="not both"):
        admin.add_token(store, user, timedelta(days=1), never_expires=True)


# rotation ------------------------------------------------------------------------------------
def test_rotation_without_grace_revokes_the_old_token_at_once(stack: Any, store: Any) -> None:
    del stack
    user = f"rot-{time.time_ns()}"
    admin.add_user(store, user)
    old = admin.add_token(store, user)
    rotation = admin.rotate_token(store, old.record.token_id)
    assert rotation.old.revoked and rotation.issued.record.user_id == user
    assert rotation.issued.secret != old.secret
    with pytest.raises(Forbidden, match="revoked"):
        authenticate(store, bearer(old.secret))
    assert authenticate(store, bearer(rotation.issued.secret)).user_id == user
    with pytest.raises(Conflict, match="revoked"):  # a dead token is not rotated again
        admin.rotate_token(store, old.record.token_id)


def test_rotation_with_grace_lets_the_old_token_work_until_then_never_longer(
    stack: Any, store: Any
) -> None:
    del stack
    user = f"rot-{time.time_ns()}"
    admin.add_user(store, user)
    old = admin.add_token(store, user, timedelta(days=30))
    before = utcnow()
    rotation = admin.rotate_token(store, old.record.token_id, grace=timedelta(minutes=10))
    assert not rotation.old.revoked and rotation.old.expires_at is not None
    assert (
        before + timedelta(minutes=10)
        <= rotation.old.expires_at
        <= utcnow() + timedelta(minutes=10)
    )
    grace_end = rotation.old.expires_at
    assert authenticate(store, bearer(old.secret), grace_end - timedelta(seconds=1))
    with pytest.raises(Forbidden, match="expired"):
        authenticate(store, bearer(old.secret), grace_end)
    assert authenticate(store, bearer(rotation.issued.secret), grace_end).user_id == user
    # a grace longer than the old token's own life never extends it
    short = admin.add_token(store, user, timedelta(minutes=5))
    again = admin.rotate_token(store, short.record.token_id, grace=timedelta(days=7))
    assert again.old.expires_at == short.record.expires_at


# prefixes and malformed tokens -----------------------------------------------------------------
@pytest.mark.parametrize(
    "candidate",
    [
        "tok_" + "a" * 43,  # another product's prefix
        "NBL_" + "a" * 43,  # the prefix is case-sensitive
        "nbl-" + "a" * 43,
        "ghp_" + "a" * 40,
        "a" * 47,  # no prefix at all
        "nbl_" + "a" * 42,  # one character short
        "nbl_" + "a" * 42 + "=",  # not URL-safe base64
    ],
)
def test_a_wrong_prefix_or_shape_is_401_without_any_lookup(
    memory: CountingStore, candidate: str
) -> None:
    with pytest.raises(Unauthorized, match="malformed API token"):
        authenticate(memory, bearer(candidate))
    assert memory.calls == []  # refused before the memory is asked anything


# timing-safe comparison --------------------------------------------------------------------------
def test_the_lookup_by_hash_is_the_only_comparison_of_a_secret(memory: CountingStore) -> None:
    """However many leading characters a guess shares with a real token, the work is the same.

    The memory is asked once, by the SHA-256 of the guess; the stored hash is found by key
    (a hash-table lookup in DynamoDB or MongoDB, not a byte-by-byte comparison of
    secrets), and the final check is ``hmac.compare_digest``. A guess sharing 42 of 43
    characters with a real token hashes to an unrelated digest, so how close it was
    cannot change what the memory does.
    """
    real = issue_token("alice")
    memory.put_token(real.record)
    body = real.secret.removeprefix("nbl_")
    guesses = {}
    for shared in (0, 1, 10, 21, 42):
        flipped = "A" if body[shared] != "A" else "B"
        guesses[shared] = "nbl_" + body[:shared] + flipped + body[shared + 1 :]
    traces = {}
    for shared, guess in guesses.items():
        memory.calls.clear()
        with pytest.raises(Unauthorized, match="invalid API token"):
            authenticate(memory, bearer(guess))
        traces[shared] = memory.calls[:]
        assert memory.calls == [("get_token", (hash_token(guess),))]
        digest = hash_token(guess)
        common = len(_common_prefix(digest, real.record.token_hash))
        assert common < 8, (shared, common)  # unrelated digests: < 8 hex digits in common
        assert guess not in repr(memory.calls)  # the secret itself never reaches storage
    assert {len(trace) for trace in traces.values()} == {1}


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def test_the_final_check_is_compare_digest_and_nothing_else_compares_secrets(
    memory: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Structural: ``authenticate`` compares no secret, digest or stored hash with ``==``."""
    tree = ast.parse(inspect.getsource(auth.authenticate))
    sensitive = {"secret", "digest", "header", "candidate"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            names = {n.id for o in operands for n in ast.walk(o) if isinstance(n, ast.Name)}
            attrs = {a.attr for o in operands for a in ast.walk(o) if isinstance(a, ast.Attribute)}
            assert not names & sensitive, ast.unparse(node)
            assert "token_hash" not in attrs, ast.unparse(node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in {"startswith", "endswith", "find", "index"}, ast.unparse(
                node
            )
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(auth, "hmac", _HmacSpy(seen))
    real = issue_token("alice")
    memory.put_token(real.record)
    authenticate(memory, bearer(real.secret))
    assert seen == [(real.record.token_hash, hashlib.sha256(real.secret.encode()).hexdigest())]


class _HmacSpy:
    """Stands in for the ``hmac`` module inside ``chalicelib.auth``: records each comparison."""

    def __init__(self, seen: list[tuple[str, str]]) -> None:
        self.seen = seen

    def compare_digest(self, a: str, b: str) -> bool:
        self.seen.append((a, b))
        return hmac.compare_digest(a, b)


# last use ------------------------------------------------------------------------------------
def test_last_use_is_written_at_most_once_a_minute_per_token(memory: CountingStore) -> None:
    issued = issue_token("alice")
    memory.put_token(issued.record)
    start = utcnow()
    for second in range(0, 120, 2):  # 60 requests over two minutes
        authenticate(memory, bearer(issued.secret), start + timedelta(seconds=second))
    writes = [name for name, _ in memory.calls if name == "touch_token"]
    assert len(writes) == 2  # at 0 s and at 60 s
    assert memory.get_token(issued.record.token_hash).last_used_at == start + timedelta(seconds=60)
    # the token just read says whether a write is due: most requests do not even try one
    assert [n for n, _ in memory.calls].count("touch_token (no write)") == 0
    assert timedelta(minutes=1) == LAST_USED_RESOLUTION


def test_a_failed_last_use_write_never_fails_the_request(memory: CountingStore) -> None:
    issued = issue_token("alice")
    memory.put_token(issued.record)

    def broken(*args: Any) -> bool:
        raise ConnectionError("the tokens table is unreachable for writes")

    memory.touch_token = broken  # type: ignore[method-assign]
    assert authenticate(memory, bearer(issued.secret)).user_id == "alice"


# the same over HTTP, through the real authorizer ------------------------------------------------
def http_status(stack: Any, secret: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(
        f"{stack.api_url}/v1/datasets", headers={"Authorization": bearer(secret)}, timeout=30
    )
    return response.status_code, response.json()


def test_expired_revoked_rotated_and_wrong_prefix_tokens_over_http(
    stack: Any, store: Any, make_researcher: Any
) -> None:
    who = make_researcher()
    assert http_status(stack, who.token)[0] == 200

    past = utcnow() - timedelta(days=2)
    expired = issue_token(who.user_id, expires_in=timedelta(days=1), now=past)
    store.put_token(expired.record)
    assert http_status(stack, expired.secret) == (
        403,
        {"error": "forbidden", "message": "API token expired"},
    )

    revoked = admin.add_token(store, who.user_id)
    admin.revoke_token(store, revoked.record.token_id)
    assert http_status(stack, revoked.secret) == (
        403,
        {"error": "forbidden", "message": "API token revoked"},
    )

    rotation = admin.rotate_token(store, hash_token(who.token)[:12])
    assert http_status(stack, who.token) == (
        403,
        {"error": "forbidden", "message": "API token revoked"},
    )
    assert http_status(stack, rotation.issued.secret)[0] == 200

    graced = admin.rotate_token(store, rotation.issued.record.token_id, grace=timedelta(seconds=1))
    assert http_status(stack, rotation.issued.secret)[0] == 200  # within the grace period
    assert http_status(stack, graced.issued.secret)[0] == 200
    deadline = time.monotonic() + 30
    while http_status(stack, rotation.issued.secret)[0] == 200:  # poll until the grace ends
        assert time.monotonic() < deadline, "the grace period never ended"
        time.sleep(0.1)
    assert http_status(stack, rotation.issued.secret) == (
        403,
        {"error": "forbidden", "message": "API token expired"},
    )

    for wrong in ("tok_" + who.token[4:], who.token.upper(), who.token[4:]):
        assert http_status(stack, wrong) == (
            401,
            {"error": "unauthorized", "message": "missing or invalid API token"},
        )


def test_the_authorizer_records_last_use_over_http(
    stack: Any, store: Any, make_researcher: Any
) -> None:
    who = make_researcher()
    digest = hash_token(who.token)
    assert store.get_token(digest).last_used_at is None
    before = utcnow()
    for _ in range(5):
        assert http_status(stack, who.token)[0] == 200
    used = store.get_token(digest).last_used_at
    assert used is not None and before <= used <= utcnow()
    listed = {t.token_id: t for t in store.list_tokens(who.user_id)}
    assert listed[digest[:12]].last_used_at == used  # what `tokens list` shows
