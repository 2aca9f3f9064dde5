"""The front and its engine workers: the hop's wire format, its errors, the split of duties.

The front (app, service, hop) must serve every route with pandas and the DP libraries
forbidden; the worker prices and runs; a hop that fails settles the record it carried.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib import errors, hop
from chalicelib.config import from_environ
from chalicelib.datasets import DatasetLoader
from chalicelib.engines import FACTORIES
from chalicelib.errors import (
    InternalError,
    NeblinaError,
    RateLimited,
    ResultTooLarge,
    WorkerUnavailable,
)
from chalicelib.hop import HopFailed, InProcessWorkers, LambdaWorkers
from chalicelib.models import Dataset, PrivacyCost, QueryRecord, QueryState, User, utcnow
from chalicelib.service import Service
from chalicelib.storage.memory import MemoryStore
from chalicelib.worker import Worker
from chalicelib.workers import DUMMY_WORKER, ENGINE_WORKERS, families

ROOT = Path(__file__).resolve().parents[2]
META = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
COUNT = {
    "engine": "smartnoise_sql",
    "query": "SELECT COUNT(*) AS n FROM df",
    "epsilon": 1,
    "delta": 0,
}
HEAVY = {"pandas", "numpy", "snsql", "opendp", "polars", "duckdb", "sklearn", "scipy", "pyarrow"}


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.put_user(User(user_id="alice", created_at=utcnow()))
    from chalicelib import metadata

    source = str(ROOT / "localstack/data/penguins.csv")
    s.put_dataset(Dataset("PENGUIN", source, metadata.validate(META), utcnow()))
    s.create_grant("alice", "PENGUIN", PrivacyCost(epsilon=5, delta="0.001"))
    return s


def remaining(store: MemoryStore) -> PrivacyCost:
    grant = store.get_grant("alice", "PENGUIN")
    assert grant is not None
    return grant.remaining


# --- the map ---------------------------------------------------------------------------
def test_every_engine_has_a_worker_and_every_worker_an_engine_or_the_dummy_table() -> None:
    assert set(ENGINE_WORKERS) == set(FACTORIES)
    assert families() == set(ENGINE_WORKERS.values()) | {DUMMY_WORKER}
    assert {"sql", "opendp", "polars"} <= families()


# --- wire format -----------------------------------------------------------------------
def test_a_record_and_a_dataset_cross_the_hop_unchanged_through_json() -> None:
    now = utcnow()
    record = QueryRecord(
        query_id="q-1",
        user_id="alice",
        dataset="PENGUIN",
        engine="opendp",
        payload_hash="ab" * 32,
        request={"engine": "opendp", "pipeline": {"nodes": []}},
        cost=PrivacyCost(epsilon=Decimal("0.10000000000000001"), delta=Decimal("1e-20")),
        state=QueryState.RUNNING,
        created_at=now,
        lease_expires_at=now + timedelta(seconds=900),
    )
    dataset = Dataset(
        "PENGUIN",
        "s3://b/k.csv",
        META,
        now,
        per_query_cap=PrivacyCost(epsilon=1, delta=0),
        hardened=True,
        latency_bucket_ms=250,
        columnar={  # the Parquet copy reaches the worker (else it reads the CSV)
            "uri": "s3://b/k.csv.parquet",
            "etag": '"e"',
            "source_version": '"s":null',
            "metadata_digest": "d",
        },
    )
    wire = json.loads(json.dumps(hop.record_to_wire(record)))
    assert hop.record_from_wire(wire) == record
    assert hop.dataset_from_wire(json.loads(json.dumps(hop.dataset_to_wire(dataset)))) == dataset


def every_error() -> list[NeblinaError]:
    made: list[NeblinaError] = []
    for cls in vars(errors).values():
        if not (isinstance(cls, type) and issubclass(cls, NeblinaError)):
            continue
        if cls is RateLimited:
            made.append(RateLimited("slow down", 17))
        elif cls is ResultTooLarge:
            made.append(ResultTooLarge(1000, spent=True))
        else:
            try:
                made.append(cls("a message"))
            except TypeError:  # fixed-message errors take no argument
                made.append(cls())
    return made


@pytest.mark.parametrize("error", every_error(), ids=lambda e: type(e).__name__)
def test_an_error_raised_in_the_worker_is_raised_on_the_front_as_the_same_error(
    error: NeblinaError,
) -> None:
    envelope = json.loads(json.dumps(hop.error_envelope(error)))
    with pytest.raises(NeblinaError) as raised:
        hop.unwrap(envelope)
    rebuilt = raised.value
    assert type(rebuilt) is type(error)
    assert (rebuilt.status_code, rebuilt.code, rebuilt.message) == (
        error.status_code,
        error.code,
        error.message,
    )
    assert rebuilt.headers() == error.headers()


def test_an_unknown_error_type_is_rebuilt_by_its_code_and_a_garbled_answer_is_a_failed_hop() -> (
    None
):
    with pytest.raises(errors.BudgetExhausted):
        hop.unwrap({"ok": False, "error": {"code": "budget_exhausted", "type": "Gone"}})
    with pytest.raises(HopFailed):
        hop.unwrap({"surprise": 1})


def test_workers_config_reads_inprocess_and_json_and_refuses_the_rest() -> None:
    assert hop.workers_config(None) is None and hop.workers_config("inprocess") is None
    config = '{"sql": {"function": "neblina-worker-sql", "endpoint": "http://127.0.0.1:9"}}'
    assert hop.workers_config(config) == {
        "sql": {"function": "neblina-worker-sql", "endpoint": "http://127.0.0.1:9"}
    }
    with pytest.raises(ValueError):
        hop.workers_config('{"sql": "neblina-worker-sql"}')


def test_a_synchronous_run_is_invoked_without_botocore_retries_and_a_price_with_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "x")
    workers = LambdaWorkers(
        {"sql": {"function": "f", "endpoint": "http://127.0.0.1:9"}}, (from_environ())
    )
    run = workers._client("sql", retries=False).meta.config.retries
    price = workers._client("sql", retries=True).meta.config.retries
    assert run["total_max_attempts"] == 1
    assert price.get("total_max_attempts", 3) > 1 and price["mode"] == "standard"


# --- the worker --------------------------------------------------------------------------
def test_a_worker_of_one_family_refuses_an_engine_of_another(store: MemoryStore) -> None:
    settings = from_environ()
    worker = Worker(store, settings, DatasetLoader(settings), family="opendp")
    dataset = store.get_dataset("PENGUIN")
    assert dataset is not None
    answer = worker.handle(
        {"op": "price", "engine": "smartnoise_sql", "dataset": hop.dataset_to_wire(dataset),
         "body": COUNT}
    )  # fmt: skip
    assert answer["ok"] is False and answer["error"]["code"] == "internal_error"
    assert worker.handle({"op": "nope"})["error"]["code"] == "invalid_request"


def test_a_run_whose_body_is_not_the_reserved_request_refunds_before_any_read(
    store: MemoryStore,
) -> None:
    service = Service(store, from_environ(), DatasetLoader(from_environ()))
    reads: list[str] = []
    real = service.loader.load
    service.loader.load = lambda d: reads.append(d.name) or real(d)  # type: ignore[method-assign,func-returns-value]
    calls: list[dict[str, Any]] = []

    class Tampering(InProcessWorkers):
        def call(self, worker: str, payload: dict[str, Any]) -> dict[str, Any]:
            if payload["op"] == "run":
                payload = {**payload, "body": {**COUNT, "epsilon": 0.01}}
                calls.append(payload)
            return super().call(worker, payload)

    assert service.local is not None
    service.workers = Tampering(service.local)
    before = remaining(store)
    with pytest.raises(InternalError):
        service.query("alice", "PENGUIN", {**COUNT, "query_id": "q-tampered"})
    record = store.get_query("q-tampered")
    assert calls and reads == []
    assert record is not None and record.state is QueryState.REFUNDED
    assert remaining(store) == before


# --- a failed hop ----------------------------------------------------------------------
class Unreachable:
    """A transport whose hop fails; ``delivered`` says whether the worker may have run."""

    def __init__(self, inner: InProcessWorkers, *, delivered: bool, ops: set[str]) -> None:
        self.inner, self.delivered, self.ops = inner, delivered, ops

    def call(self, worker: str, payload: dict[str, Any]) -> dict[str, Any]:
        if payload["op"] in self.ops:
            raise HopFailed("no route to the worker", delivered=self.delivered)
        return self.inner.call(worker, payload)

    def submit(self, worker: str, payload: dict[str, Any]) -> None:
        raise HopFailed("no route to the worker", delivered=self.delivered)


def unreachable(store: MemoryStore, *, delivered: bool, ops: set[str]) -> Service:
    service = Service(store, from_environ(), DatasetLoader(from_environ()))
    assert service.local is not None
    service.workers = Unreachable(InProcessWorkers(service.local), delivered=delivered, ops=ops)
    return service


def test_a_run_that_never_reached_its_worker_is_refunded_and_answered_503(
    store: MemoryStore,
) -> None:
    service = unreachable(store, delivered=False, ops={"run"})
    before = remaining(store)
    with pytest.raises(WorkerUnavailable):
        service.query("alice", "PENGUIN", {**COUNT, "query_id": "q-undelivered-1"})
    record = store.get_query("q-undelivered-1")
    assert record is not None and record.state is QueryState.REFUNDED
    assert record.error is not None and record.error["error"] == "worker_unavailable"
    assert remaining(store) == before


def test_a_run_that_may_have_reached_its_worker_fails_its_record_and_the_spend_stands(
    store: MemoryStore,
) -> None:
    service = unreachable(store, delivered=True, ops={"run"})
    before = remaining(store)
    with pytest.raises(InternalError):
        service.query("alice", "PENGUIN", {**COUNT, "query_id": "q-maybe-1"})
    record = store.get_query("q-maybe-1")
    assert record is not None and record.state is QueryState.FAILED
    assert remaining(store) == before - record.cost and record.cost.epsilon == 1


@pytest.mark.parametrize("delivered", [True, False])
def test_a_price_that_cannot_reach_its_worker_is_503_and_debits_nothing(
    store: MemoryStore, delivered: bool
) -> None:
    service = unreachable(store, delivered=delivered, ops={"price"})
    before = remaining(store)
    with pytest.raises(WorkerUnavailable):
        service.query("alice", "PENGUIN", {**COUNT, "query_id": "q-unpriced"})
    with pytest.raises(WorkerUnavailable):
        service.cost("alice", "PENGUIN", COUNT)
    assert store.get_query("q-unpriced") is None and remaining(store) == before


def test_a_repeated_query_is_priced_by_its_worker_once(store: MemoryStore) -> None:
    service = Service(store, from_environ(), DatasetLoader(from_environ()))
    assert service.local is not None
    ops: list[str] = []

    class Counting(InProcessWorkers):
        def call(self, worker: str, payload: dict[str, Any]) -> dict[str, Any]:
            ops.append(payload["op"])
            return super().call(worker, payload)

    service.workers = Counting(service.local)
    for n in range(3):
        service.query("alice", "PENGUIN", {**COUNT, "query_id": f"q-repeat-{n}"})
    service.cost("alice", "PENGUIN", COUNT)
    assert ops == ["price", "run", "run", "run"]


# --- the front carries no DP library ---------------------------------------------------
class _Forbidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"the front imported {name}")
        return None


@contextmanager
def fresh_front() -> Iterator[None]:
    """Import the front's modules afresh with pandas and the DP libraries forbidden."""
    mine = [m for m in sys.modules if m == "app" or m.split(".")[0] in {"chalicelib"} | HEAVY]
    saved = {name: sys.modules.pop(name) for name in mine}
    finder = _Forbidden()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [m for m in sys.modules if m == "app" or m.split(".")[0] == "chalicelib"]:
            del sys.modules[name]
        sys.modules.update(saved)


class StubWorkers:
    """Answers as a worker would (a fixed price and release): the front's side only."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def call(self, worker: str, payload: dict[str, Any]) -> dict[str, Any]:
        if payload["op"] == "price":
            return {"cost": {"epsilon": "1", "delta": "0"}, "canonical": {"query": "q"}}
        if payload["op"] == "run":
            result = {"type": "value", "value": 3}
            query_id = payload["record"]["query_id"]
            done = sys.modules["chalicelib.models"].QueryState.DONE  # the fresh module's
            self.store.finish(query_id, done, utcnow(), result=result)
            return {"result": {"type": "value", "value": 3}}
        return {"table": {"type": "table", "columns": [], "dtypes": {}, "records": []}}

    def submit(self, worker: str, payload: dict[str, Any]) -> None:
        raise AssertionError("not used")


def test_the_front_serves_every_route_with_pandas_and_the_dp_libraries_forbidden() -> None:
    with fresh_front():
        import app  # noqa: F401  (the handler module, as the API Lambda imports it)
        from chalicelib import deps
        from chalicelib.config import from_environ as settings_now
        from chalicelib.models import Dataset as FrontDataset
        from chalicelib.models import PrivacyCost as Cost
        from chalicelib.models import User as FrontUser
        from chalicelib.service import Service as FrontService
        from chalicelib.storage.memory import MemoryStore as FrontStore

        store = FrontStore()
        store.put_user(FrontUser(user_id="alice", created_at=utcnow()))
        store.put_dataset(FrontDataset("PENGUIN", "s3://b/p.csv", META, utcnow()))
        store.create_grant("alice", "PENGUIN", Cost(epsilon=5, delta=0))
        service = FrontService(store, settings_now(), workers=StubWorkers(store))
        assert service.budget("alice", "PENGUIN")["remaining"]["epsilon"] == "5"
        assert service.cost("alice", "PENGUIN", COUNT)["cost"]["epsilon"] == "1"
        answer = service.query("alice", "PENGUIN", {**COUNT, "query_id": "q-front-1"})
        assert answer["result"] == {"type": "value", "value": 3}
        assert service.get_query("alice", "PENGUIN", "q-front-1")["state"] == "done"
        assert len(service.history("alice", "PENGUIN", None, None)["queries"]) == 1
        assert service.dummy("alice", "PENGUIN", "5", "1")["table"]["type"] == "table"
        config = '{"sql": {"function": "f"}, "opendp": {"function": "g"}}'
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("NEBLINA_WORKERS", config)
            patch.setattr("chalicelib.storage.get_store", lambda: store)
            built = deps.build_service(settings_now())
        assert isinstance(built.workers, sys.modules["chalicelib.hop"].LambdaWorkers)
        assert built.local is None
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
        assert leaked == []


def test_a_spark_job_with_no_spark_worker_deployed_is_refunded_and_answered_503(
    store: MemoryStore,
) -> None:
    """NEBLINA_WORKERS without the spark family: nothing ran, so the debit is given back
    (before, the front raised a 500 and the job stayed queued until its lease ran out)."""
    from chalicelib import metadata

    spark_meta = metadata.validate({**META, "executor": "spark"})
    store.put_dataset(Dataset("BIG", "s3://data/big.parquet", spark_meta, utcnow(), "", "parquet"))
    store.create_grant("alice", "BIG", PrivacyCost(epsilon=5, delta="0.001"))
    service = Service(store, from_environ(), DatasetLoader(from_environ()))
    assert service.local is not None
    sql_only = LambdaWorkers({"sql": {"function": "neblina-worker-sql"}}, from_environ())

    class PriceHere(InProcessWorkers):  # prices in this process; runs through Lambda config
        def submit(self, worker: str, payload: dict[str, Any]) -> None:
            sql_only.submit(worker, payload)

    service.workers = PriceHere(service.local)
    before = store.get_grant("alice", "BIG")
    with pytest.raises(WorkerUnavailable):
        service.query("alice", "BIG", {**COUNT, "query_id": "q-no-spark-1"})
    record = store.get_query("q-no-spark-1")
    assert record is not None and record.state is QueryState.REFUNDED
    after = store.get_grant("alice", "BIG")
    assert before is not None and after is not None and after.remaining == before.remaining
