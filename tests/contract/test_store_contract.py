"""The Store contract: every operation and the ledger invariants, on every backend."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.errors import BudgetExhausted, InternalError, InvalidRequest, NoGrant
from chalicelib.models import Dataset, PrivacyCost, QueryRecord, QueryState, Token, User
from chalicelib.storage import (
    AlreadyExists,
    BelowSpent,
    ConcurrentChange,
    ItemNotFound,
    QueryIdTaken,
)

META = {
    "max_ids": 1,
    "rows": 10,
    "row_privacy": True,
    "columns": {"x": {"type": "float", "lower": 0.5, "upper": 1e6, "nullable": False}},
}


def now() -> datetime:
    """Whole seconds: MongoDB keeps milliseconds, DynamoDB microseconds."""
    return datetime.now(UTC).replace(microsecond=0)


def cost(epsilon: Any, delta: Any = 0) -> PrivacyCost:
    return PrivacyCost(epsilon=epsilon, delta=delta)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def new_dataset(store: Any) -> str:
    name = new_id("D")
    store.put_dataset(Dataset(name, "s3://b/k.csv", META, now()))
    return name


def new_user(store: Any) -> str:
    user_id = new_id("u")
    store.put_user(User(user_id=user_id, created_at=now()))
    return user_id


def granted(
    store: Any, epsilon: Any, delta: Any = 0, dataset: str | None = None
) -> tuple[str, str]:
    dataset = dataset or new_dataset(store)
    user = new_user(store)
    store.create_grant(user, dataset, cost(epsilon, delta))
    return user, dataset


def record(
    user: str,
    dataset: str,
    amount: PrivacyCost,
    query_id: str | None = None,
    payload: str = "p",
    created_at: datetime | None = None,
) -> QueryRecord:
    created = created_at or now()
    return QueryRecord(
        query_id=query_id or uuid.uuid4().hex,
        user_id=user,
        dataset=dataset,
        engine="e",
        payload_hash=payload,
        request={"q": "SELECT 1", "epsilon": "0.1", "nested": [1, 2.5, None]},
        cost=amount,
        state=QueryState.RUNNING,
        created_at=created,
        lease_expires_at=created + timedelta(minutes=15),
        extra={"attempt": "a1"},
    )


def assert_balanced(store: Any, user: str, dataset: str) -> None:
    """spent + remaining == initial, and spent == the cost of every non-refunded record."""
    grant = store.get_grant(user, dataset)
    assert grant.spent + grant.remaining == grant.initial
    records = list(store.iter_queries(user_id=user, dataset=dataset))
    charged = [r.cost for r in records if r.state is not QueryState.REFUNDED]
    assert sum(charged, PrivacyCost.zero()) == grant.spent


# users, tokens, datasets ------------------------------------------------------------------
def test_users(backend: Any) -> None:
    user = User(user_id=new_id("u"), created_at=now(), description="first")
    backend.put_user(user)
    assert backend.get_user(user.user_id) == user
    with pytest.raises(AlreadyExists):
        backend.put_user(dataclasses.replace(user, description="again"))
    assert backend.get_user(user.user_id) == user  # create-only changed nothing
    disabled = dataclasses.replace(user, disabled=True)
    backend.put_user(disabled, create_only=False)
    assert backend.get_user(user.user_id) == disabled
    assert user.user_id in [u.user_id for u in backend.list_users()]
    ids = [u.user_id for u in backend.list_users()]
    assert ids == sorted(ids)
    backend.delete_user(user.user_id)
    assert backend.get_user(user.user_id) is None
    with pytest.raises(ItemNotFound):
        backend.delete_user(user.user_id)


def test_tokens(backend: Any) -> None:
    alice, bob = new_user(backend), new_user(backend)
    created = now()
    tokens = [
        Token(f"{uuid.uuid4().hex}{i}", f"id{i}", who, created + timedelta(seconds=i))
        for i, who in enumerate((alice, alice, bob))
    ]
    expiring = dataclasses.replace(tokens[1], expires_at=created + timedelta(days=1))
    tokens[1] = expiring
    for token in tokens:
        backend.put_token(token)
    with pytest.raises(AlreadyExists):
        backend.put_token(tokens[0])
    assert backend.get_token(expiring.token_hash) == expiring
    assert backend.get_token("nope") is None
    assert backend.list_tokens(alice) == tokens[:2]  # oldest first, only alice's
    assert {t.token_hash for t in tokens} <= {t.token_hash for t in backend.list_tokens()}
    backend.revoke_token(tokens[0].token_hash)
    backend.revoke_token(tokens[0].token_hash)  # idempotent
    assert backend.get_token(tokens[0].token_hash).revoked
    assert not backend.get_token(tokens[2].token_hash).revoked
    with pytest.raises(ItemNotFound):
        backend.revoke_token("unknown-hash")


def test_datasets(backend: Any) -> None:
    dataset = Dataset(new_id("D"), "https://example.org/d.parquet", META, now(), "d", "parquet")
    backend.put_dataset(dataset)
    assert backend.get_dataset(dataset.name) == dataset  # metadata round-trips exactly
    with pytest.raises(AlreadyExists):
        backend.put_dataset(dataclasses.replace(dataset, source="/tmp/other.csv"))
    changed = dataclasses.replace(dataset, metadata={**META, "rows": 99}, source="/data/d.csv")
    backend.put_dataset(changed, create_only=False)
    assert backend.get_dataset(dataset.name) == changed
    assert dataset.name in [d.name for d in backend.list_datasets()]
    backend.set_cap(dataset.name, cost(1))
    backend.delete_dataset(dataset.name)
    assert backend.get_dataset(dataset.name) is None
    assert backend.get_cap(dataset.name) is None  # the cap goes with its dataset
    with pytest.raises(ItemNotFound):
        backend.delete_dataset(dataset.name)


# grants -------------------------------------------------------------------------------
def test_create_list_and_delete_grants(backend: Any) -> None:
    dataset, other = new_dataset(backend), new_dataset(backend)
    alice, bob = new_user(backend), new_user(backend)
    grant = backend.create_grant(alice, dataset, cost("1.5", "0.0000150000000000001"))
    assert grant.initial == grant.remaining == cost("1.5", "0.0000150000000000001")
    assert grant.spent == PrivacyCost.zero() and not grant.capped
    assert backend.get_grant(alice, dataset) == grant
    with pytest.raises(AlreadyExists):
        backend.create_grant(alice, dataset, cost(9))
    assert backend.get_grant(alice, dataset) == grant
    with pytest.raises(ItemNotFound, match="unknown user"):
        backend.create_grant("nobody-at-all", dataset, cost(1))
    with pytest.raises(ItemNotFound, match="unknown dataset"):
        backend.create_grant(alice, "NO_SUCH_DATASET", cost(1))
    backend.create_grant(alice, other, cost(2))
    backend.create_grant(bob, dataset, cost(3))
    assert [g.dataset for g in backend.list_grants(alice)] == sorted([dataset, other])
    assert [g.user_id for g in backend.list_grants(dataset=dataset)] == sorted([alice, bob])
    assert {(alice, dataset), (bob, dataset)} <= {
        (g.user_id, g.dataset) for g in backend.list_grants()
    }
    backend.delete_grant(alice, dataset)
    assert backend.get_grant(alice, dataset) is None
    with pytest.raises(ItemNotFound):
        backend.delete_grant(alice, dataset)


def test_grants_change_but_never_below_spent(backend: Any) -> None:
    user, dataset = granted(backend, "1", "0.001")
    backend.reserve(record(user, dataset, cost("0.75", "0.0004")))
    topped = backend.change_grant(user, dataset, cost("0.5", "0.0001"))
    assert topped.initial == cost("1.5", "0.0011")
    assert topped.spent == cost("0.75", "0.0004")
    assert topped.remaining == cost("0.75", "0.0007")
    with pytest.raises(BelowSpent, match=r"spent \(epsilon 0.75, delta 0.0004\)"):
        backend.change_grant(user, dataset, cost("-0.76", 0))
    with pytest.raises(BelowSpent):
        backend.change_grant(user, dataset, cost(0, "-0.0008"))
    assert backend.get_grant(user, dataset) == topped  # refused changes changed nothing
    with pytest.raises(ConcurrentChange):
        backend.change_grant(user, dataset, cost(1, 0), expected_initial=cost(1, "0.001"))
    exact = backend.change_grant(
        user, dataset, cost("-0.75", "-0.0007"), expected_initial=topped.initial
    )
    assert exact.initial == exact.spent == cost("0.75", "0.0004")
    assert exact.remaining == PrivacyCost.zero()
    with pytest.raises(BudgetExhausted):
        backend.reserve(record(user, dataset, cost("0.0001")))
    with pytest.raises(ItemNotFound):
        backend.change_grant("nobody-at-all", dataset, cost(1))
    assert_balanced(backend, user, dataset)


# ledger -------------------------------------------------------------------------------
def test_reserve_debits_exactly_and_creates_the_record(backend: Any) -> None:
    user, dataset = granted(backend, "1", "0.001")
    amount = cost("0.1", "0.0000150000000000001")
    first = record(user, dataset, amount)
    for r in (first, record(user, dataset, amount), record(user, dataset, amount)):
        backend.reserve(r)
    grant = backend.get_grant(user, dataset)
    assert grant.spent == cost("0.3", "0.0000450000000000003")
    assert grant.remaining == cost("0.7", "0.0009549999999999997")
    stored = backend.get_query(first.query_id)
    assert stored == first  # every field, exact amounts, the request as sent
    assert_balanced(backend, user, dataset)


def test_reserve_refuses_over_budget_no_grant_and_taken_ids(backend: Any) -> None:
    user, dataset = granted(backend, "1")
    over = record(user, dataset, cost("1.0000001"))
    with pytest.raises(BudgetExhausted, match="remaining epsilon 1"):
        backend.reserve(over)
    assert backend.get_query(over.query_id) is None  # nothing written
    with pytest.raises(BudgetExhausted):  # delta counts as much as epsilon
        backend.reserve(record(user, dataset, cost("0.5", "0.000001")))
    with pytest.raises(NoGrant):
        backend.reserve(record("nobody-at-all", dataset, cost(1)))
    first = record(user, dataset, cost("0.5"), query_id=new_id("taken"))
    backend.reserve(first)
    with pytest.raises(QueryIdTaken) as taken:
        backend.reserve(record(user, dataset, cost("0.1"), query_id=first.query_id))
    assert taken.value.existing == first
    assert backend.get_grant(user, dataset).remaining.epsilon == Decimal("0.5")
    backend.reserve(record(user, dataset, cost("0.5")))
    # an exhausted budget still answers a retry of a known id with that id's record
    with pytest.raises(QueryIdTaken):
        backend.reserve(record(user, dataset, cost("0.5"), query_id=first.query_id))
    assert_balanced(backend, user, dataset)


def test_reserve_checks_the_grant_itself_so_a_grant_removed_after_use_is_refused(
    backend: Any,
) -> None:
    """The service does not read the grant before a warm query (docs/architecture.md, "Round
    trips"): the reserve's own condition refuses a grant removed since, debiting nothing."""
    user, dataset = granted(backend, "5")
    backend.reserve(record(user, dataset, cost(1)))
    backend.delete_grant(user, dataset)
    late = record(user, dataset, cost(1))
    with pytest.raises(NoGrant):
        backend.reserve(late)
    assert backend.get_query(late.query_id) is None
    assert backend.get_grant(user, dataset) is None


def test_a_retried_reserve_is_recognised_by_the_store_and_debited_once(backend: Any) -> None:
    """The same write sent twice (a lost response, an SDK retry) is the store's own: the
    second succeeds without a second debit, even with no budget left for one; another
    call under the same id is refused with the record it found."""
    user, dataset = granted(backend, "0.25")
    first = record(user, dataset, cost("0.25"))
    backend._reserve(first, "attempt-1")
    backend._reserve(first, "attempt-1")
    grant = backend.get_grant(user, dataset)
    assert grant.spent == cost("0.25") and grant.remaining == PrivacyCost.zero()
    with pytest.raises(QueryIdTaken) as taken:
        backend.reserve(first)  # a new call is a new attempt
    assert taken.value.existing.query_id == first.query_id
    assert_balanced(backend, user, dataset)


def test_finish_and_refund_are_conditional_on_running(backend: Any) -> None:
    user, dataset = granted(backend, "2")
    done, refunded, failed = (record(user, dataset, cost(1)) for _ in range(2)), None, None
    done, refunded = list(done)
    backend.reserve(done)
    backend.reserve(refunded)
    result = {"type": "table", "records": [{"n": 1.5}]}
    backend.finish(done.query_id, QueryState.DONE, now(), result=result)
    backend.refund(refunded, now(), {"error": "x", "message": "y"})
    assert backend.get_grant(user, dataset).remaining.epsilon == 1  # the refund came back
    with pytest.raises(InternalError):  # a second refund of the same record is impossible
        backend.refund(refunded, now(), {"error": "x", "message": "y"})
    with pytest.raises(InternalError):  # and so is refunding a released query
        backend.refund(done, now(), {"error": "x", "message": "y"})
    with pytest.raises(InternalError):  # finish only moves a running record
        backend.finish(done.query_id, QueryState.FAILED, now(), error={"error": "z"})
    assert backend.get_grant(user, dataset).remaining.epsilon == 1
    stored = backend.get_query(done.query_id)
    assert stored.state is QueryState.DONE and stored.result == result
    failed = record(user, dataset, cost(1))
    backend.reserve(failed)
    backend.finish(failed.query_id, QueryState.FAILED, now(), error={"error": "engine"})
    assert backend.get_query(failed.query_id).state is QueryState.FAILED
    assert backend.get_grant(user, dataset).remaining.epsilon == 0  # a failure's cost stands
    assert backend.get_query(refunded.query_id).state is QueryState.REFUNDED
    assert_balanced(backend, user, dataset)


def test_a_refunded_record_can_be_reserved_again_with_the_same_payload(backend: Any) -> None:
    user, dataset = granted(backend, "1")
    query_id = new_id("again")
    first = record(user, dataset, cost(1), query_id=query_id, payload="A")
    backend.reserve(first)
    backend.refund(first, now(), {"error": "x", "message": "y"})
    with pytest.raises(QueryIdTaken):  # another payload may not take the id over
        backend.reserve(record(user, dataset, cost(1), query_id=query_id, payload="B"))
    other_user, _ = granted(backend, "1", dataset=dataset)
    with pytest.raises(QueryIdTaken):  # nor another user
        backend.reserve(record(other_user, dataset, cost(1), query_id=query_id, payload="A"))
    backend.reserve(record(user, dataset, cost(1), query_id=query_id, payload="A"))
    assert backend.get_grant(user, dataset).remaining.epsilon == 0
    assert backend.get_query(query_id).state is QueryState.RUNNING
    assert_balanced(backend, user, dataset)


def test_history_pages_newest_first_and_cursors_cannot_be_forged(backend: Any) -> None:
    user, dataset = granted(backend, "100")
    start = now()
    ids = []
    for i in range(5):
        r = record(user, dataset, cost("0.1"), created_at=start + timedelta(seconds=i))
        backend.reserve(r)
        ids.append(r.query_id)
    page1, cursor = backend.list_queries(user, dataset, 2, None)
    page2, cursor2 = backend.list_queries(user, dataset, 2, cursor)
    page3, cursor3 = backend.list_queries(user, dataset, 2, cursor2)
    assert [r.query_id for r in page1 + page2 + page3] == list(reversed(ids))
    assert cursor3 is None
    other, _ = granted(backend, "1", dataset=dataset)
    with pytest.raises(InvalidRequest):
        backend.list_queries(other, dataset, 2, cursor)  # someone else's cursor
    with pytest.raises(InvalidRequest):
        backend.list_queries(user, dataset, 2, "not-base64-json")
    exported = [r.query_id for r in backend.iter_queries(user_id=user)]
    assert exported == ids  # the export is oldest first
    assert [r.query_id for r in backend.iter_queries(dataset=dataset)] == ids
    assert [r.query_id for r in backend.iter_queries(user_id=other)] == []


# dataset caps -------------------------------------------------------------------------
def test_a_cap_counts_past_spend_and_limits_every_user_together(backend: Any) -> None:
    dataset = new_dataset(backend)
    alice, _ = granted(backend, "10", "0.01", dataset=dataset)
    bob, _ = granted(backend, "10", "0.01", dataset=dataset)
    backend.reserve(record(alice, dataset, cost("1.5", "0.001")))
    assert backend.get_cap(dataset) is None
    with pytest.raises(BelowSpent, match="below what its grants already spent"):
        backend.set_cap(dataset, cost("1", "0.01"))
    assert backend.get_cap(dataset) is None
    cap = backend.set_cap(dataset, cost("4", "0.005"))
    assert cap.spent == cost("1.5", "0.001") and cap.complete
    assert cap.remaining == cost("2.5", "0.004")
    assert all(g.capped for g in backend.list_grants(dataset=dataset))
    carol = new_user(backend)
    assert backend.create_grant(carol, dataset, cost(5)).capped  # new grants join the cap
    backend.reserve(record(bob, dataset, cost("2", "0.001")))
    # bob still has 8 of his own, but the dataset has only 0.5 left
    blocked = record(bob, dataset, cost(1))
    with pytest.raises(BudgetExhausted, match="dataset"):
        backend.reserve(blocked)
    assert backend.get_query(blocked.query_id) is None
    assert backend.get_grant(bob, dataset).spent == cost("2", "0.001")  # untouched
    refunded = record(alice, dataset, cost("0.5"))
    backend.reserve(refunded)
    assert backend.get_cap(dataset).remaining == cost(0, "0.003")
    backend.refund(refunded, now(), {"error": "x", "message": "y"})  # back to both
    assert backend.get_cap(dataset).spent == cost("3.5", "0.002")
    assert backend.get_grant(alice, dataset).spent == cost("1.5", "0.001")
    backend.delete_grant(bob, dataset)  # revoking a grant never gives the dataset back spend
    assert backend.get_cap(dataset).spent == cost("3.5", "0.002")
    with pytest.raises(BelowSpent):
        backend.set_cap(dataset, cost(3, 1))
    raised = backend.set_cap(dataset, cost(10, "0.01"))
    assert raised.remaining == cost("6.5", "0.008")
    unlimited = backend.set_cap(dataset, None)  # no limit, still counted
    assert unlimited.limit is None and unlimited.remaining is None
    backend.reserve(record(carol, dataset, cost(5)))
    assert backend.get_cap(dataset).spent == cost("8.5", "0.002")
    assert backend.set_cap(dataset, cost(9, 1)).remaining == cost("0.5", "0.998")
    for user in (alice, carol):
        assert_balanced(backend, user, dataset)


def test_set_cap_needs_a_dataset(backend: Any) -> None:
    with pytest.raises(ItemNotFound):
        backend.set_cap("NO_SUCH_DATASET", cost(1))


# concurrency --------------------------------------------------------------------------
def hammer(backend: Any, users: list[str], dataset: str, threads: int, per_thread: int) -> Counter:
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(index: int) -> None:
        user = users[index % len(users)]
        for _ in range(per_thread):
            try:
                backend.reserve(record(user, dataset, cost(1)))
                outcome = "ok"
            except BudgetExhausted:
                outcome = "exhausted"
            with lock:
                outcomes[outcome] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return outcomes


def skip_without_atomicity(request: pytest.FixtureRequest) -> None:
    if "mongomock" in request.node.callspec.id:
        pytest.skip(
            "mongomock applies updates without the server's per-document atomicity, so a "
            "concurrency test on it proves nothing; proved on the single-threaded DynamoDB "
            "emulator (and on a real MongoDB when MONGODB_URI is set)"
        )


@pytest.mark.parametrize("run", range(3))
def test_concurrent_debits_never_overspend(
    backend: Any, request: pytest.FixtureRequest, run: int
) -> None:
    """8 threads x 100 debits of 1 against a grant of 500: exactly 500 succeed, three times
    (a race that loses one debit in a thousand shows up across the runs)."""
    skip_without_atomicity(request)
    user, dataset = granted(backend, "500")
    outcomes = hammer(backend, [user], dataset, threads=8, per_thread=100)
    assert outcomes == Counter({"ok": 500, "exhausted": 300})
    grant = backend.get_grant(user, dataset)
    assert grant.remaining == PrivacyCost.zero() and grant.spent == cost(500)
    history, cursor = [], None
    while True:  # the paginated history holds every debit once
        page, cursor = backend.list_queries(user, dataset, 100, cursor)
        history.extend(page)
        if cursor is None:
            break
    assert len({r.query_id for r in history}) == len(history) == 500
    assert sum((r.cost for r in history), PrivacyCost.zero()) == grant.spent
    assert_balanced(backend, user, dataset)


def test_concurrent_debits_never_overspend_a_dataset_cap(
    backend: Any, request: pytest.FixtureRequest
) -> None:
    """Two users with 150 each, a dataset cap of 200, 8 threads: exactly 200 succeed."""
    skip_without_atomicity(request)
    dataset = new_dataset(backend)
    users = [granted(backend, "150", dataset=dataset)[0] for _ in range(2)]
    backend.set_cap(dataset, cost(200))
    outcomes = hammer(backend, users, dataset, threads=8, per_thread=40)
    assert outcomes == Counter({"ok": 200, "exhausted": 120})
    assert backend.get_cap(dataset).spent == cost(200)
    assert sum((backend.get_grant(u, dataset).spent for u in users), PrivacyCost.zero()) == cost(
        200
    )
    for user in users:
        assert_balanced(backend, user, dataset)


def test_find_release_returns_only_the_callers_done_release_under_that_key(backend: Any) -> None:
    user, dataset = granted(backend, "10")
    other = new_user(backend)
    backend.create_grant(other, dataset, cost(10))
    other_dataset = new_dataset(backend)
    backend.create_grant(user, other_dataset, cost(10))
    key = "k" + uuid.uuid4().hex

    def reserved(owner: str, on: str, reuse_key: str, state: QueryState) -> QueryRecord:
        rec = record(owner, on, cost(1))
        rec = dataclasses.replace(rec, extra={**rec.extra, "reuse_key": reuse_key})
        backend.reserve(rec)
        if state is QueryState.DONE:
            backend.finish(rec.query_id, state, now(), result={"type": "value", "value": 1})
        elif state is QueryState.FAILED:
            backend.finish(rec.query_id, state, now(), error={"error": "engine"})
        return rec

    assert backend.find_release(user, dataset, key) is None
    reserved(user, dataset, key, QueryState.RUNNING)  # not done yet
    reserved(user, dataset, key, QueryState.FAILED)  # failed: nothing to reuse
    reserved(other, dataset, key, QueryState.DONE)  # another user's
    reserved(user, other_dataset, key, QueryState.DONE)  # another dataset
    reserved(user, dataset, key + "-v2", QueryState.DONE)  # another version or request
    assert backend.find_release(user, dataset, key) is None
    mine = reserved(user, dataset, key, QueryState.DONE)
    found = backend.find_release(user, dataset, key)
    assert found is not None and found.query_id == mine.query_id
    assert found.state is QueryState.DONE and found.result == {"type": "value", "value": 1}
    assert found.extra["reuse_key"] == key
