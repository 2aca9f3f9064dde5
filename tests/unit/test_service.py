"""The service's query path on an in-memory store: order of checks, refund rule, replays."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib import engines
from chalicelib.config import from_environ
from chalicelib.datasets import DatasetLoader
from chalicelib.errors import (
    BudgetExhausted,
    DatasetNotFound,
    DatasetUnavailableError,
    EngineFailed,
    InvalidQuery,
    InvalidRequest,
    NoGrant,
    QueryFailed,
    QueryIdConflict,
    QueryInProgress,
    QueryNotFound,
)
from chalicelib.models import Dataset, PrivacyCost, QueryState, User, utcnow
from chalicelib.service import Service
from chalicelib.storage.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
META = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
COUNT = {
    "engine": "smartnoise_sql",
    "query": "SELECT COUNT(*) AS n FROM df",
    "epsilon": 1,
    "delta": 0,
}


class ExplodingEngine:
    """Prices every query at (1, 0) and fails when it runs: a failure after data access."""

    name = "exploding"

    def __init__(self) -> None:
        self.runs = 0

    @dataclasses.dataclass(frozen=True)
    class Request:
        def canonical(self) -> dict[str, Any]:
            return {}

    def parse(self, body: dict[str, Any]) -> Request:
        return self.Request()

    def cost(self, dataset: Dataset, request: Any) -> PrivacyCost:
        return PrivacyCost(epsilon=1, delta=0)

    def execute(self, loaded: Any, request: Any) -> dict[str, Any]:
        self.runs += 1
        raise ZeroDivisionError("secret row 17 has value 42")


@pytest.fixture
def exploding(service: Service) -> ExplodingEngine:
    engine = ExplodingEngine()
    factories = {**engines.FACTORIES, "exploding": lambda _settings: engine}
    service.engines = engines.Engines(service.settings, factories)
    service.engine_workers["exploding"] = "sql"
    return engine


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.put_user(User(user_id="alice", created_at=utcnow()))
    s.put_user(User(user_id="bob", created_at=utcnow()))
    from chalicelib import metadata

    s.put_dataset(
        Dataset(
            "PENGUIN", str(ROOT / "localstack/data/penguins.csv"), metadata.validate(META), utcnow()
        )
    )
    s.put_dataset(
        Dataset("GONE", str(ROOT / "no/such/file.csv"), metadata.validate(META), utcnow())
    )
    for dataset in ("PENGUIN", "GONE"):
        s.create_grant("alice", dataset, PrivacyCost(epsilon=5, delta="0.001"))
    return s


@pytest.fixture
def service(store: MemoryStore) -> Service:
    settings = from_environ()
    return Service(store, settings, DatasetLoader(settings))


def remaining(store: MemoryStore, dataset: str = "PENGUIN") -> PrivacyCost:
    grant = store.get_grant("alice", dataset)
    assert grant is not None
    return grant.remaining


def test_a_query_debits_its_cost_and_archives_its_release(
    service: Service, store: MemoryStore
) -> None:
    answer = service.query("alice", "PENGUIN", {**COUNT, "query_id": "q-00000001"})
    cost = PrivacyCost(**answer["cost"])
    # basic composition of pure-ε mechanisms: no δ (SmartNoise's odometer would add 1e-15)
    assert cost == PrivacyCost(epsilon=1, delta=0)
    assert remaining(store) == PrivacyCost(epsilon=5, delta="0.001") - cost
    record = store.get_query("q-00000001")
    assert record is not None and record.state is QueryState.DONE
    assert record.result == answer["result"]
    assert record.request["query"] == COUNT["query"]


def test_retry_with_same_payload_replays_for_free(service: Service, store: MemoryStore) -> None:
    first = service.query("alice", "PENGUIN", {**COUNT, "query_id": "q-00000002"})
    again = service.query("alice", "PENGUIN", {**COUNT, "query_id": "q-00000002"})
    assert again["replayed"] and not first["replayed"]
    assert again["result"] == first["result"]
    assert remaining(store).epsilon == Decimal(4)


def test_same_id_with_another_payload_or_user_is_409(service: Service, store: MemoryStore) -> None:
    service.query("alice", "PENGUIN", {**COUNT, "query_id": "q-00000003"})
    with pytest.raises(QueryIdConflict):
        service.query("alice", "PENGUIN", {**COUNT, "epsilon": 2, "query_id": "q-00000003"})
    store.create_grant("bob", "PENGUIN", PrivacyCost(epsilon=5, delta=0))
    with pytest.raises(QueryIdConflict):
        service.query("bob", "PENGUIN", {**COUNT, "query_id": "q-00000003"})
    assert remaining(store).epsilon == Decimal(4)


def test_order_of_checks_dataset_then_grant_then_query(
    service: Service, store: MemoryStore
) -> None:
    bad_sql = {**COUNT, "query": "SELECT COUNT(wingspan) FROM df", "query_id": "q-00000004"}
    with pytest.raises(DatasetNotFound):
        service.query("alice", "NOPE", bad_sql)
    with pytest.raises(NoGrant):  # bob has no grant: he learns nothing about the columns
        service.query("bob", "PENGUIN", bad_sql)
    with pytest.raises(InvalidQuery):
        service.query("alice", "PENGUIN", bad_sql)
    with pytest.raises(InvalidRequest):
        service.query("alice", "PENGUIN", {**COUNT, "query_id": "short"})
    assert remaining(store).epsilon == Decimal(5)
    assert store.queries == {}


def test_over_budget_is_409_and_debits_nothing(service: Service, store: MemoryStore) -> None:
    with pytest.raises(BudgetExhausted):
        service.query("alice", "PENGUIN", {**COUNT, "epsilon": 6, "query_id": "q-00000005"})
    assert remaining(store).epsilon == Decimal(5)
    assert store.get_query("q-00000005") is None


def test_failure_before_data_is_read_refunds(service: Service, store: MemoryStore) -> None:
    with pytest.raises(DatasetUnavailableError):
        service.query("alice", "GONE", {**COUNT, "query_id": "q-00000006"})
    assert remaining(store, "GONE") == PrivacyCost(epsilon=5, delta="0.001")
    record = store.get_query("q-00000006")
    assert record is not None and record.state is QueryState.REFUNDED


def test_a_refunded_query_may_run_again_under_its_id(service: Service, store: MemoryStore) -> None:
    with pytest.raises(DatasetUnavailableError):
        service.query("alice", "GONE", {**COUNT, "query_id": "q-00000007"})
    store.datasets["GONE"] = dataclasses.replace(
        store.datasets["GONE"], source=str(ROOT / "localstack/data/penguins.csv")
    )
    answer = service.query("alice", "GONE", {**COUNT, "query_id": "q-00000007"})
    assert not answer["replayed"]
    assert remaining(store, "GONE").epsilon == Decimal(4)


def test_failure_after_data_is_read_keeps_the_spend_and_says_nothing(
    service: Service, store: MemoryStore, exploding: ExplodingEngine
) -> None:
    body = {"engine": "exploding", "query_id": "q-00000008"}
    with pytest.raises(EngineFailed) as raised:
        service.query("alice", "PENGUIN", body)
    assert "42" not in raised.value.message and "17" not in raised.value.message
    assert remaining(store).epsilon == Decimal(4)
    record = store.get_query("q-00000008")
    assert record is not None and record.state is QueryState.FAILED
    # a retry neither re-runs the mechanism nor charges again
    with pytest.raises(QueryFailed):
        service.query("alice", "PENGUIN", body)
    assert exploding.runs == 1
    assert remaining(store).epsilon == Decimal(4)


def test_an_expired_lease_counts_as_failed(service: Service, store: MemoryStore) -> None:
    from datetime import timedelta

    from chalicelib.models import QueryRecord

    now = utcnow()
    stuck = QueryRecord(
        query_id="q-00000009",
        user_id="alice",
        dataset="PENGUIN",
        engine="smartnoise_sql",
        payload_hash="x",
        request={},
        cost=PrivacyCost(epsilon=1, delta=0),
        state=QueryState.RUNNING,
        created_at=now - timedelta(hours=2),
        lease_expires_at=now - timedelta(hours=1),
    )
    store.reserve(stuck)
    shown = service.get_query("alice", "PENGUIN", "q-00000009")
    assert shown["state"] == "failed" and shown["error"]["error"] == "interrupted"
    fresh = dataclasses.replace(
        stuck, query_id="q-00000010", lease_expires_at=now + timedelta(hours=1)
    )
    store.reserve(fresh)
    assert service.get_query("alice", "PENGUIN", "q-00000010")["state"] == "running"


def test_replay_of_a_running_query_is_in_progress(service: Service, store: MemoryStore) -> None:
    from datetime import timedelta

    from chalicelib.models import QueryRecord
    from chalicelib.service import payload_digest

    engine = engines.get_engine("smartnoise_sql")
    canonical = engine.parse(COUNT).canonical()
    now = utcnow()
    store.reserve(
        QueryRecord(
            query_id="q-00000011",
            user_id="alice",
            dataset="PENGUIN",
            engine="smartnoise_sql",
            payload_hash=payload_digest("PENGUIN", "smartnoise_sql", canonical),
            request={},
            cost=PrivacyCost(epsilon=1, delta=0),
            state=QueryState.RUNNING,
            created_at=now,
            lease_expires_at=now + timedelta(minutes=5),
        )
    )
    with pytest.raises(QueryInProgress):
        service.query("alice", "PENGUIN", {**COUNT, "query_id": "q-00000011"})


def test_dummy_queries_are_free_and_not_archived(service: Service, store: MemoryStore) -> None:
    answer = service.query(
        "alice", "PENGUIN", {**COUNT, "query_id": "q-00000012", "dummy": True, "dummy_rows": 50}
    )
    assert answer["dummy"] and answer["cost"]["epsilon"] == "1"
    assert remaining(store).epsilon == Decimal(5)
    assert store.get_query("q-00000012") is None


def test_cost_is_free(service: Service, store: MemoryStore) -> None:
    assert service.cost("alice", "GONE", COUNT)["cost"]["epsilon"] == "1"
    assert remaining(store, "GONE").epsilon == Decimal(5)


def test_other_users_queries_are_not_found(service: Service, store: MemoryStore) -> None:
    service.query("alice", "PENGUIN", {**COUNT, "query_id": "q-00000013"})
    store.create_grant("bob", "PENGUIN", PrivacyCost(epsilon=5, delta=0))
    with pytest.raises(QueryNotFound):
        service.get_query("bob", "PENGUIN", "q-00000013")
    assert service.history("bob", "PENGUIN", None, None)["queries"] == []
    assert [q["query_id"] for q in service.history("alice", "PENGUIN", None, None)["queries"]] == [
        "q-00000013"
    ]


def test_the_dataset_is_read_once_across_queries(service: Service) -> None:
    for i in range(3):
        service.query("alice", "PENGUIN", {**COUNT, "query_id": f"q-0000010{i}"})
    assert service.loader.reads == 1


def test_memoised_prices_follow_metadata_changes(service: Service, store: MemoryStore) -> None:
    group = {**COUNT, "query": "SELECT species, COUNT(*) AS n FROM df GROUP BY species"}
    price = service.cost("alice", "PENGUIN", group)["cost"]
    assert service.cost("alice", "PENGUIN", group)["cost"] == price  # memoised, same answer
    columns = dict(store.datasets["PENGUIN"].metadata["columns"])
    del columns["species"]
    narrowed = dict(store.datasets["PENGUIN"].metadata, columns=columns)
    store.datasets["PENGUIN"] = dataclasses.replace(store.datasets["PENGUIN"], metadata=narrowed)
    with pytest.raises(InvalidQuery):  # priced again against the new metadata, not remembered
        service.cost("alice", "PENGUIN", group)


class RecordingEngine:
    """The real SmartNoise engine, noting the metadata it priced with and the one it ran with."""

    name = "smartnoise_sql"

    def __init__(self) -> None:
        from chalicelib.engines import smartnoise_engine

        self.inner = smartnoise_engine.ENGINE
        self.priced: list[dict[str, Any]] = []
        self.ran: list[dict[str, Any]] = []

    def parse(self, body: dict[str, Any]) -> Any:
        return self.inner.parse(body)

    def cost(self, dataset: Dataset, request: Any) -> PrivacyCost:
        self.priced.append(dataset.metadata)
        return self.inner.cost(dataset, request)

    def execute(self, loaded: Any, request: Any) -> dict[str, Any]:
        self.ran.append(loaded.metadata)
        return self.inner.execute(loaded, request)


def test_a_warm_process_runs_with_exactly_the_metadata_it_priced(
    service: Service, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An administrator changes max_ids 1 -> 5, then censor_dims true -> false, between
    queries served by one process (same source version, so the loaded rows are warm): each
    query runs with the metadata it was priced with, never with the cached older one."""
    from chalicelib import metadata

    recorder = RecordingEngine()
    factories = {**engines.FACTORIES, "smartnoise_sql": lambda _settings: recorder}
    service.engines = engines.Engines(service.settings, factories)
    group = "SELECT species, island, COUNT(*) AS n FROM df GROUP BY species, island"
    updates = [
        {"censor_dims": True, "max_ids": 1},
        {"censor_dims": True, "max_ids": 5},
        {"censor_dims": False, "max_ids": 5},
    ]
    for i, update in enumerate(updates):
        meta = metadata.validate({**META, **update})
        store.datasets["PENGUIN"] = dataclasses.replace(store.datasets["PENGUIN"], metadata=meta)
        body = {**COUNT, "query": group, "delta": 1e-5, "query_id": f"q-0000020{i}"}
        answer = service.query("alice", "PENGUIN", body)
        assert recorder.ran[-1] == recorder.priced[-1] == meta
    # uncensored, every one of the 3 x 3 public keys is answered (censored: only those found)
    assert len(answer["result"]["records"]) == 9
    assert service.loader.reads == len(updates)  # new metadata, new entry (coerced anew)
