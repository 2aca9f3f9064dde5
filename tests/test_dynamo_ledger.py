"""The DynamoDB ledger on the single-threaded emulator: atomic debits, replays, refunds."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest

from chalicelib.config import get_settings
from chalicelib.errors import BudgetExhausted, InvalidRequest, NoGrant
from chalicelib.models import Dataset, PrivacyCost, QueryRecord, QueryState, User, utcnow
from chalicelib.storage import QueryIdTaken
from chalicelib.storage.dynamo import DynamoStore


@pytest.fixture(scope="module")
def ledger(stack: object) -> DynamoStore:
    settings = dataclasses.replace(get_settings(), table_prefix=f"ledger{uuid.uuid4().hex[:6]}-")
    store = DynamoStore(settings)
    store.create_schema()
    store.put_dataset(Dataset("D", "s3://b/k.csv", {"columns": {}}, utcnow()))
    return store


def new_user(ledger: DynamoStore, epsilon: str, delta: str = "0") -> str:
    user_id = f"u-{uuid.uuid4().hex[:8]}"
    ledger.put_user(User(user_id=user_id, created_at=utcnow()))
    ledger.create_grant(user_id, "D", PrivacyCost(epsilon=epsilon, delta=delta))
    return user_id


def record(
    user_id: str, cost: PrivacyCost, query_id: str | None = None, payload: str = "p"
) -> QueryRecord:
    now = utcnow()
    return QueryRecord(
        query_id=query_id or uuid.uuid4().hex,
        user_id=user_id,
        dataset="D",
        engine="e",
        payload_hash=payload,
        request={"q": 1},
        cost=cost,
        state=QueryState.RUNNING,
        created_at=now,
        lease_expires_at=now + timedelta(minutes=15),
    )


def test_reserve_debits_exactly_and_creates_the_record(ledger: DynamoStore) -> None:
    user = new_user(ledger, "1", "0.001")
    cost = PrivacyCost(epsilon="0.1", delta="0.0000150000000000001")
    for _ in range(3):
        ledger.reserve(record(user, cost))
    grant = ledger.get_grant(user, "D")
    assert grant is not None
    assert grant.spent == PrivacyCost(epsilon="0.3", delta="0.0000450000000000003")
    assert grant.remaining == PrivacyCost(epsilon="0.7", delta="0.0009549999999999997")
    assert grant.spent + grant.remaining == grant.initial


def test_reserve_refuses_over_budget_no_grant_and_taken_ids(ledger: DynamoStore) -> None:
    user = new_user(ledger, "1", "0")
    over = record(user, PrivacyCost(epsilon="1.0000001", delta=0))
    with pytest.raises(BudgetExhausted, match="remaining epsilon 1"):
        ledger.reserve(over)
    # the record was put first in the transaction: the failed grant update undid it
    assert ledger.get_query(over.query_id) is None
    with pytest.raises(BudgetExhausted):  # delta counts as much as epsilon
        ledger.reserve(record(user, PrivacyCost(epsilon="0.5", delta="0.000001")))
    with pytest.raises(NoGrant):
        ledger.reserve(record("nobody", PrivacyCost(epsilon=1, delta=0)))
    first = record(user, PrivacyCost(epsilon="0.5", delta=0), query_id="taken-0001")
    ledger.reserve(first)
    with pytest.raises(QueryIdTaken) as taken:
        ledger.reserve(record(user, PrivacyCost(epsilon="0.1", delta=0), query_id="taken-0001"))
    assert taken.value.existing.cost == first.cost
    grant = ledger.get_grant(user, "D")
    assert grant is not None and grant.remaining.epsilon == Decimal("0.5")
    # an exhausted budget still answers a retry of a known id with that id's record
    ledger.reserve(record(user, PrivacyCost(epsilon="0.5", delta=0)))
    with pytest.raises(QueryIdTaken):
        ledger.reserve(record(user, PrivacyCost(epsilon="0.5", delta=0), query_id="taken-0001"))


def test_finish_and_refund_are_conditional_on_running(ledger: DynamoStore) -> None:
    user = new_user(ledger, "2")
    done, refunded = (
        record(user, PrivacyCost(epsilon=1, delta=0)),
        record(user, PrivacyCost(epsilon=1, delta=0)),
    )
    ledger.reserve(done)
    ledger.reserve(refunded)
    ledger.finish(done.query_id, QueryState.DONE, utcnow(), result={"type": "table", "records": []})
    ledger.refund(refunded, utcnow(), {"error": "x", "message": "y"})
    grant = ledger.get_grant(user, "D")
    assert grant is not None and grant.remaining.epsilon == Decimal(1)
    from chalicelib.errors import InternalError

    with pytest.raises(InternalError):  # a second refund of the same record is impossible
        ledger.refund(refunded, utcnow(), {"error": "x", "message": "y"})
    with pytest.raises(InternalError):
        ledger.refund(done, utcnow(), {"error": "x", "message": "y"})
    grant = ledger.get_grant(user, "D")
    assert grant is not None and grant.remaining.epsilon == Decimal(1)
    stored = ledger.get_query(done.query_id)
    assert stored is not None and stored.state is QueryState.DONE and stored.result is not None


def test_a_refunded_record_can_be_reserved_again_with_the_same_payload(ledger: DynamoStore) -> None:
    user = new_user(ledger, "1")
    first = record(user, PrivacyCost(epsilon=1, delta=0), query_id="again-0001", payload="A")
    ledger.reserve(first)
    ledger.refund(first, utcnow(), {"error": "x", "message": "y"})
    with pytest.raises(QueryIdTaken):  # another payload may not take the id over
        ledger.reserve(
            record(user, PrivacyCost(epsilon=1, delta=0), query_id="again-0001", payload="B")
        )
    ledger.reserve(
        record(user, PrivacyCost(epsilon=1, delta=0), query_id="again-0001", payload="A")
    )
    grant = ledger.get_grant(user, "D")
    assert grant is not None and grant.remaining.epsilon == 0


def test_history_pages_newest_first_and_cursors_cannot_be_forged(ledger: DynamoStore) -> None:
    user = new_user(ledger, "100")
    ids = []
    for i in range(5):
        r = record(user, PrivacyCost(epsilon="0.1", delta=0), query_id=f"page-{user}-{i}")
        r = dataclasses.replace(r, created_at=r.created_at + timedelta(seconds=i))
        ledger.reserve(r)
        ids.append(r.query_id)
    page1, cursor = ledger.list_queries(user, "D", 2, None)
    page2, cursor2 = ledger.list_queries(user, "D", 2, cursor)
    page3, cursor3 = ledger.list_queries(user, "D", 2, cursor2)
    seen = [r.query_id for r in page1 + page2 + page3]
    assert seen == list(reversed(ids))
    assert cursor3 is None
    other = new_user(ledger, "1")
    with pytest.raises(InvalidRequest):
        ledger.list_queries(other, "D", 2, cursor)  # someone else's cursor
    with pytest.raises(InvalidRequest):
        ledger.list_queries(user, "D", 2, "not-base64-json")


@pytest.mark.parametrize("run", range(3))
def test_concurrent_debits_never_overspend(ledger: DynamoStore, run: int) -> None:
    """8 threads x 100 debits of 1 against a grant of 500: exactly 500 succeed."""
    user = new_user(ledger, "500", "0")
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(100):
            try:
                ledger.reserve(record(user, PrivacyCost(epsilon=1, delta=0)))
                outcome = "ok"
            except BudgetExhausted:
                outcome = "exhausted"
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grant = ledger.get_grant(user, "D")
    assert grant is not None
    assert outcomes == Counter({"ok": 500, "exhausted": 300})
    assert grant.remaining == PrivacyCost(epsilon=0, delta=0)
    assert grant.spent == PrivacyCost(epsilon=500, delta=0)
    records, cursor, total = [], None, 0
    while True:
        page, cursor = ledger.list_queries(user, "D", 100, cursor)
        total += len(page)
        records.extend(page)
        if cursor is None:
            break
    assert total == 500
    assert sum((r.cost for r in records), PrivacyCost.zero()) == grant.spent
