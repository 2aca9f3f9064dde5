"""The ledger's calls on DynamoDB are one round trip each (counted at botocore).

A warm query is the reserve and the finish (docs/architecture.md, "Round trips"): the grant
is checked inside the reserve's own conditional write, and read only to explain a refusal.
``tests/unit/test_lookup_cache.py`` counts the service's store calls; this counts what each
of those calls costs on the wire.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from chalicelib.errors import NoGrant
from chalicelib.models import Dataset, PrivacyCost, QueryRecord, QueryState, User, utcnow


@pytest.fixture(scope="module")
def dynamo(stack: object) -> Any:
    from chalicelib.config import get_settings
    from chalicelib.storage.dynamo import DynamoStore

    store = DynamoStore(
        dataclasses.replace(get_settings(), table_prefix=f"r{uuid.uuid4().hex[:8]}-")
    )
    store.create_schema()
    return store


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Every AWS operation botocore sends from this process, by name."""
    import botocore.client

    seen: Counter[str] = Counter()
    original = botocore.client.BaseClient._make_api_call

    def counted(self: Any, operation: str, params: Any) -> Any:
        seen[operation] += 1
        return original(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", counted)
    yield seen


def record(user: str, dataset: str, epsilon: str = "1") -> QueryRecord:
    now = utcnow()
    return QueryRecord(
        query_id=f"q-{uuid.uuid4().hex}",
        user_id=user,
        dataset=dataset,
        engine="smartnoise_sql",
        payload_hash="h",
        request={"engine": "smartnoise_sql"},
        cost=PrivacyCost(epsilon=epsilon, delta=0),
        state=QueryState.RUNNING,
        created_at=now,
        lease_expires_at=now + timedelta(seconds=900),
    )


def test_the_reserve_and_the_finish_are_one_dynamodb_call_each(
    dynamo: Any, calls: Counter[str]
) -> None:
    user, dataset = f"u-{uuid.uuid4().hex[:8]}", "PENGUIN"
    dynamo.put_user(User(user_id=user, created_at=utcnow()))
    if dynamo.get_dataset(dataset) is None:
        dynamo.put_dataset(Dataset(dataset, "s3://b/penguins.csv", {"columns": {}}, utcnow()))
    dynamo.create_grant(user, dataset, PrivacyCost(epsilon=5, delta=0))
    dynamo.reserve(record(user, dataset))  # learns whether the dataset is capped
    calls.clear()
    reserved = record(user, dataset)
    dynamo.reserve(reserved)
    assert calls == Counter({"TransactWriteItems": 1})
    dynamo.finish(reserved.query_id, QueryState.DONE, utcnow(), result={"n": 1})
    assert calls == Counter({"TransactWriteItems": 1, "UpdateItem": 1})
    calls.clear()
    assert dynamo.get_grant(user, dataset) is not None  # a budget read
    assert calls == Counter({"GetItem": 1})
    calls.clear()
    assert dynamo.take_request(user, utcnow().replace(second=0), 60, 600, 10)
    assert calls == Counter({"UpdateItem": 1})


def test_a_reserve_without_a_grant_reads_the_grant_only_to_explain_the_refusal(
    dynamo: Any, calls: Counter[str]
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    refused = record(user, "PENGUIN")
    with pytest.raises(NoGrant):
        dynamo.reserve(refused)
    assert calls["TransactWriteItems"] == 1 and calls["GetItem"] == 1
    assert dynamo.get_query(refused.query_id) is None  # nothing written
