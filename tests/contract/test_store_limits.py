"""The Store contract for token hygiene, rate limits, dataset policy and the lease rule.

Every test runs on every backend (``backend`` in ``conftest.py``): DynamoDB on the
single-threaded emulator, MongoDB on mongomock, and a real MongoDB when ``MONGODB_URI`` is set.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from test_store_contract import (
    META,
    assert_balanced,
    cost,
    granted,
    new_id,
    new_user,
    now,
    record,
    skip_without_atomicity,
)

from chalicelib.errors import InternalError
from chalicelib.models import INTERRUPTED, Dataset, PrivacyCost, QueryState, Token
from chalicelib.storage import ItemNotFound


def new_token(store: Any, **fields: Any) -> Token:
    token = Token(uuid.uuid4().hex, new_id("t")[:12], new_user(store), now(), **fields)
    store.put_token(token)
    return token


# tokens -------------------------------------------------------------------------------------
def test_touch_token_writes_at_most_once_per_resolution(backend: Any) -> None:
    token = new_token(backend)
    start, minute = now(), timedelta(minutes=1)
    assert backend.touch_token(token.token_hash, start, minute)  # never used: written
    assert backend.get_token(token.token_hash).last_used_at == start
    for seconds in (0, 1, 59):  # within the resolution: nothing written
        assert not backend.touch_token(token.token_hash, start + timedelta(seconds=seconds), minute)
    assert backend.get_token(token.token_hash).last_used_at == start
    later = start + timedelta(seconds=60)
    assert backend.touch_token(token.token_hash, later, minute)
    assert backend.get_token(token.token_hash).last_used_at == later
    assert not backend.touch_token("no-such-token", later, minute)  # never creates a token
    assert backend.get_token("no-such-token") is None


def test_expire_token_only_shortens_a_lifetime(backend: Any) -> None:
    start = now()
    forever = new_token(backend)
    backend.expire_token(forever.token_hash, start + timedelta(minutes=10))
    assert backend.get_token(forever.token_hash).expires_at == start + timedelta(minutes=10)
    backend.expire_token(forever.token_hash, start + timedelta(days=1))  # later: ignored
    assert backend.get_token(forever.token_hash).expires_at == start + timedelta(minutes=10)
    backend.expire_token(forever.token_hash, start)  # earlier: applied
    stored = backend.get_token(forever.token_hash)
    assert stored.expires_at == start and stored.is_expired(start)
    assert not stored.revoked and stored.user_id == forever.user_id  # nothing else changed
    with pytest.raises(ItemNotFound):
        backend.expire_token("no-such-token", start)


# rate limits --------------------------------------------------------------------------------
def test_take_request_counts_each_user_and_window_up_to_the_limit(backend: Any) -> None:
    alice, bob = new_id("u"), new_id("u")
    window = now().replace(second=0)
    taken = [backend.take_request(alice, window, 60, 3) for _ in range(5)]
    assert taken == [True, True, True, False, False]
    assert backend.take_request(bob, window, 60, 3)  # another user has their own counter
    next_window = window + timedelta(seconds=60)
    assert backend.take_request(alice, next_window, 60, 3)  # a new window starts at zero
    assert not backend.take_request(alice, window, 60, 3)  # the old one stays full


def test_take_request_counts_a_block_only_while_the_whole_block_fits(backend: Any) -> None:
    user, window = new_id("u"), now().replace(second=0)
    assert not backend.take_request(user, window, 60, 3, 4)  # never more than the limit
    assert backend.take_request(user, window, 60, 5, 2)
    assert backend.take_request(user, window, 60, 5, 2)
    assert not backend.take_request(user, window, 60, 5, 2)  # 4 counted: 2 more would be 6
    assert backend.take_request(user, window, 60, 5, 1)  # the last one still fits
    assert not backend.take_request(user, window, 60, 5, 1)


def test_concurrent_requests_never_exceed_the_rate_limit(
    backend: Any, request: pytest.FixtureRequest
) -> None:
    """8 threads x 20 requests of one user against a limit of 50: exactly 50 counted."""
    skip_without_atomicity(request)
    user, window = new_id("u"), now().replace(second=0)
    outcomes: Counter[bool] = Counter()
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            taken = backend.take_request(user, window, 60, 50)
            with lock:
                outcomes[taken] += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == Counter({True: 50, False: 110})


# datasets -----------------------------------------------------------------------------------
def test_dataset_policy_round_trips(backend: Any) -> None:
    plain = Dataset(new_id("D"), "s3://b/k.csv", META, now())
    backend.put_dataset(plain)
    assert backend.get_dataset(plain.name) == plain
    assert plain.per_query_cap is None and not plain.hardened
    strict = dataclasses.replace(
        plain,
        per_query_cap=cost("0.5", "0.0000010000000000001"),
        hardened=True,
        latency_bucket_ms=250,
    )
    backend.put_dataset(strict, create_only=False)
    assert backend.get_dataset(plain.name) == strict  # exact decimals, flag and bucket
    backend.put_dataset(plain, create_only=False)
    assert backend.get_dataset(plain.name) == plain  # and back


def test_a_datasets_parquet_copy_record_round_trips(backend: Any) -> None:
    plain = Dataset(new_id("D"), "s3://b/k.csv", META, now())
    copy = {
        "uri": "s3://b/k.csv.parquet",
        "etag": '"9b2cf535f27731c974343645a3985328"',
        "source_version": '"0f343b0931126a20f133d67c2b018a3b":3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY',
        "metadata_digest": "ab" * 32,
    }
    backend.put_dataset(dataclasses.replace(plain, columnar=copy))
    assert backend.get_dataset(plain.name).columnar == copy
    backend.put_dataset(plain, create_only=False)
    assert backend.get_dataset(plain.name).columnar is None


# the lease rule -----------------------------------------------------------------------------
def test_expire_query_settles_only_running_records_past_their_lease(backend: Any) -> None:
    user, dataset = granted(backend, "3")
    start = now()
    crashed = record(user, dataset, cost(1), created_at=start)  # lease: 15 minutes
    finished = record(user, dataset, cost(1), created_at=start)
    for r in (crashed, finished):
        backend.reserve(r)
    backend.finish(finished.query_id, QueryState.DONE, start, result={"type": "value", "value": 1})
    during = start + timedelta(minutes=14)
    assert not backend.expire_query(crashed.query_id, during, INTERRUPTED)  # lease still on
    assert backend.get_query(crashed.query_id).state is QueryState.RUNNING
    after = start + timedelta(minutes=15)
    assert backend.expire_query(crashed.query_id, after, INTERRUPTED)
    assert not backend.expire_query(crashed.query_id, after, INTERRUPTED)  # once only
    assert not backend.expire_query(finished.query_id, after, INTERRUPTED)  # never a done one
    assert not backend.expire_query("no-such-query", after, INTERRUPTED)
    stored = backend.get_query(crashed.query_id)
    assert (stored.state, stored.error, stored.finished_at) == (
        QueryState.FAILED,
        INTERRUPTED,
        after,
    )
    # the spend stands, and a request that outlived its lease can no longer complete it
    assert backend.get_grant(user, dataset).spent == cost(2)
    with pytest.raises(InternalError):
        backend.finish(crashed.query_id, QueryState.DONE, after, result={"type": "value"})
    assert backend.get_query(crashed.query_id).result is None
    assert backend.get_grant(user, dataset).remaining == PrivacyCost(epsilon=1, delta=0)
    assert_balanced(backend, user, dataset)


def test_a_refund_of_a_many_digit_cost_leaves_the_grant_usable(backend: Any) -> None:
    """SmartNoise's δ slack has 31 digits: refunding it brings spent back to exactly 0.

    On the emulator this used to store ``0E-31``, which moto could not add to any more, so
    the user could never be debited again after one refund (fixed in localstack/emulator.py
    by storing Numbers in DynamoDB's normal form).
    """
    user, dataset = granted(backend, "10", "0.001")
    amount = cost("0.5", "0.0000000000000009992007221626409")
    first = record(user, dataset, amount)
    backend.reserve(first)
    backend.refund(first, now(), {"error": "x", "message": "y"})
    assert backend.get_grant(user, dataset).spent == PrivacyCost.zero()
    for _ in range(3):
        backend.reserve(record(user, dataset, amount))
    grant = backend.get_grant(user, dataset)
    assert grant.spent == cost("1.5", "0.0000000000000029976021664879227")
    assert_balanced(backend, user, dataset)
