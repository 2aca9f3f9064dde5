"""MongoDB without transactions: a crash between any two writes leaves a consistent ledger.

Each test stops a reservation, refund or cap set between two of its writes (the process
"dies": the exception is not caught), then checks what the ledger says before and after
``reconcile``. Runs on mongomock and, with ``MONGODB_URI``, on a real server.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mongo_backends import mongo_database
from test_store_contract import assert_balanced, cost, granted, new_dataset, now, record

from chalicelib.errors import InternalError
from chalicelib.models import PrivacyCost, QueryState


class Crash(BaseException):
    """The process died here."""


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["mongomock", "mongodb"])
def mongo(request: pytest.FixtureRequest) -> Any:
    from chalicelib.storage.mongo import MongoStore

    database = mongo_database(request.param)
    store = MongoStore(database, f"r{uuid.uuid4().hex[:8]}-", grace=timedelta(minutes=15))
    store.clock = Clock()
    store.create_schema()
    return store


def crash_in(monkeypatch: pytest.MonkeyPatch, store: Any, method: str) -> None:
    def die(*args: Any, **kwargs: Any) -> None:
        raise Crash()

    monkeypatch.setattr(store, method, die)


def later(store: Any, minutes: int) -> None:
    store.clock.now += timedelta(minutes=minutes)


def pending(store: Any, user: str, dataset: str) -> list[Any]:
    return store._grants.find_one({"user_id": user, "dataset": dataset})["pending"]


def test_crash_after_the_debit_before_the_record_gives_the_budget_back(
    mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, dataset = granted(mongo, "1")
    lost = record(user, dataset, cost("0.4"))
    crash_in(monkeypatch, mongo, "_insert_record")
    with pytest.raises(Crash):
        mongo.reserve(lost)
    monkeypatch.undo()
    held = mongo.get_grant(user, dataset)
    assert held.spent == cost("0.4")  # held, never over: no engine can have run
    assert mongo.get_query(lost.query_id) is None
    assert mongo.reconcile() == 0  # too recent: it could be a live request
    assert mongo.get_grant(user, dataset).spent == cost("0.4")
    later(mongo, 16)
    assert mongo.reconcile() == 1
    grant = mongo.get_grant(user, dataset)
    assert grant.spent == PrivacyCost.zero() and grant.remaining == cost(1)
    assert pending(mongo, user, dataset) == []
    assert mongo.reconcile() == 0  # nothing is settled twice
    assert mongo.get_grant(user, dataset).remaining == cost(1)
    assert_balanced(mongo, user, dataset)


def test_crash_after_the_record_keeps_the_debit(
    mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, dataset = granted(mongo, "1")
    kept = record(user, dataset, cost("0.4"))
    crash_in(monkeypatch, mongo, "_settle")
    with pytest.raises(Crash):
        mongo.reserve(kept)
    monkeypatch.undo()
    later(mongo, 16)
    assert mongo.reconcile() == 1
    assert mongo.get_grant(user, dataset).spent == cost("0.4")  # the debit stands
    assert mongo.get_query(kept.query_id).state is QueryState.RUNNING
    assert pending(mongo, user, dataset) == []
    assert_balanced(mongo, user, dataset)


def test_an_exhausted_grant_first_releases_stale_reservations(
    mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, dataset = granted(mongo, "1")
    crash_in(monkeypatch, mongo, "_insert_record")
    with pytest.raises(Crash):
        mongo.reserve(record(user, dataset, cost("0.7")))
    monkeypatch.undo()
    later(mongo, 16)
    mongo.reserve(record(user, dataset, cost("0.7")))  # fits once the orphan is released
    assert mongo.get_grant(user, dataset).spent == cost("0.7")
    assert_balanced(mongo, user, dataset)


def test_crash_after_a_capped_debit_releases_grant_and_cap(
    mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = new_dataset(mongo)
    user, _ = granted(mongo, "5", dataset=dataset)
    mongo.set_cap(dataset, cost(3))
    crash_in(monkeypatch, mongo, "_insert_record")
    with pytest.raises(Crash):
        mongo.reserve(record(user, dataset, cost(2)))
    monkeypatch.undo()
    assert mongo.get_cap(dataset).spent == cost(2)
    later(mongo, 16)
    assert mongo.reconcile() == 2
    assert mongo.get_cap(dataset).spent == PrivacyCost.zero()
    assert mongo.get_grant(user, dataset).spent == PrivacyCost.zero()


def test_crash_in_a_refund_before_its_decision_point_keeps_the_cost(
    mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, dataset = granted(mongo, "1")
    query = record(user, dataset, cost("0.5"))
    mongo.reserve(query)
    crash_in(monkeypatch, mongo, "_mark_refunded")
    with pytest.raises(Crash):
        mongo.refund(query, now(), {"error": "x", "message": "y"})
    monkeypatch.undo()
    assert mongo.get_grant(user, dataset).spent == PrivacyCost.zero()  # credited, undecided
    later(mongo, 16)
    assert mongo.reconcile() == 1
    # the record never became refunded: it ends as an interrupted query whose cost stands
    assert mongo.get_query(query.query_id).state is QueryState.RUNNING
    assert mongo.get_grant(user, dataset).spent == cost("0.5")
    assert_balanced(mongo, user, dataset)


def test_crash_in_a_refund_after_its_decision_point_keeps_the_refund(
    mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, dataset = granted(mongo, "1")
    query = record(user, dataset, cost("0.5"))
    mongo.reserve(query)
    crash_in(monkeypatch, mongo, "_settle")
    with pytest.raises(Crash):
        mongo.refund(query, now(), {"error": "x", "message": "y"})
    monkeypatch.undo()
    later(mongo, 16)
    assert mongo.reconcile() == 1
    assert mongo.get_query(query.query_id).state is QueryState.REFUNDED
    assert mongo.get_grant(user, dataset).spent == PrivacyCost.zero()
    with pytest.raises(InternalError):  # and it cannot be refunded twice
        mongo.refund(query, now(), {"error": "x", "message": "y"})
    assert mongo.get_grant(user, dataset).spent == PrivacyCost.zero()
    assert_balanced(mongo, user, dataset)


def test_crash_while_bringing_a_grant_under_a_cap_is_conservative_then_resumed(
    mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = new_dataset(mongo)
    user, _ = granted(mongo, "5", dataset=dataset)
    mongo.reserve(record(user, dataset, cost(2)))
    crash_in(monkeypatch, mongo, "_flag_grant")
    with pytest.raises(Crash):
        mongo.set_cap(dataset, cost(4))
    monkeypatch.undo()
    interrupted = mongo.get_cap(dataset)
    assert interrupted.spent == cost(2) and not interrupted.complete  # counted, not flagged
    later(mongo, 16)
    assert mongo.reconcile() == 1  # the grant never joined: its spend is taken back out
    assert mongo.get_cap(dataset).spent == PrivacyCost.zero()
    resumed = mongo.set_cap(dataset, cost(4))  # running it again finishes the job
    assert resumed.spent == cost(2) and resumed.complete
    assert mongo.get_grant(user, dataset).capped
