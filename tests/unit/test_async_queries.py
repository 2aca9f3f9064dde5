"""Queries run as jobs ("wait": false): 202, the claim, the phases, a failed hand-over."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from chalice.test import Client as ChaliceClient

import app
from chalicelib import auth, engines, hop, storage
from chalicelib.config import from_environ, get_settings
from chalicelib.datasets import DatasetLoader
from chalicelib.errors import WorkerUnavailable
from chalicelib.hop import HopFailed, InProcessWorkers
from chalicelib.models import Dataset, PrivacyCost, QueryRecord, QueryState, User, utcnow
from chalicelib.service import Accepted, Service
from chalicelib.storage.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
META = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
COUNT = {
    "engine": "smartnoise_sql",
    "query": "SELECT COUNT(*) AS n FROM df",
    "epsilon": 1,
    "delta": 0,
}


class PhaseLog(MemoryStore):
    """A memory store that notes every phase a record passes through."""

    def __init__(self) -> None:
        super().__init__()
        self.phases: list[tuple[str, float | None]] = []

    def claim(self, query_id: str, now: Any) -> QueryRecord | None:
        claimed = super().claim(query_id, now)
        if claimed is not None:
            self.phases.append(("loading", None))
        return claimed

    def set_progress(self, query_id: str, phase: str, progress: float | None) -> None:
        self.phases.append((phase, progress))
        super().set_progress(query_id, phase, progress)


@pytest.fixture
def store() -> PhaseLog:
    s = PhaseLog()
    s.put_user(User(user_id="alice", created_at=utcnow()))
    from chalicelib import metadata

    source = str(ROOT / "localstack/data/penguins.csv")
    s.put_dataset(Dataset("PENGUIN", source, metadata.validate(META), utcnow()))
    s.create_grant("alice", "PENGUIN", PrivacyCost(epsilon=5, delta="0.001"))
    return s


@pytest.fixture
def service(store: PhaseLog) -> Service:
    return Service(store, from_environ(), DatasetLoader(from_environ()))


def remaining(store: MemoryStore) -> PrivacyCost:
    grant = store.get_grant("alice", "PENGUIN")
    assert grant is not None
    return grant.remaining


class CountingEngine:
    """The real SQL engine, counting its runs and reporting a fraction while it runs."""

    reports_progress = True

    def __init__(self, real: Any) -> None:
        self.real, self.name, self.runs = real, real.name, 0

    def parse(self, body: dict[str, Any]) -> Any:
        return self.real.parse(body)

    def cost(self, dataset: Any, request: Any) -> PrivacyCost:
        cost: PrivacyCost = self.real.cost(dataset, request)
        return cost

    def execute(self, loaded: Any, request: Any, progress: Any = None) -> dict[str, Any]:
        self.runs += 1
        if progress is not None:
            progress(0.5)
        result: dict[str, Any] = self.real.execute(loaded, request)
        return result


@pytest.fixture
def counting(service: Service) -> CountingEngine:
    engine = CountingEngine(engines.get_engine("smartnoise_sql"))
    factories = {**engines.FACTORIES, "smartnoise_sql": lambda _settings: engine}
    service.engines = engines.Engines(service.settings, factories)
    return engine


def submit(service: Service, query_id: str) -> Accepted:
    answer = service.query("alice", "PENGUIN", {**COUNT, "query_id": query_id, "wait": False})
    assert isinstance(answer, Accepted)
    return answer


def test_a_query_with_wait_false_is_accepted_queued_and_debited_then_done(
    service: Service, store: PhaseLog, counting: CountingEngine
) -> None:
    before = remaining(store)
    accepted = submit(service, "job-00000001")
    assert accepted.location == "/v1/datasets/PENGUIN/queries/job-00000001"
    body = accepted.body
    assert (body["state"], body["phase"], body["progress"]) == ("running", "queued", None)
    assert body["cost"] == {"epsilon": "1", "delta": "0"}
    assert remaining(store) == before - PrivacyCost(epsilon=1, delta=0)  # debited at submission
    assert isinstance(service.workers, InProcessWorkers)
    service.workers.join(timeout=60)
    record = service.get_query("alice", "PENGUIN", "job-00000001")
    assert record["state"] == "done" and record["result"]["type"] == "table"
    assert (record["phase"], record["progress"]) == (None, None)
    assert counting.runs == 1
    assert remaining(store) == before - PrivacyCost(epsilon=1, delta=0)
    assert store.phases == [
        ("loading", None),
        ("running", None),
        ("running", 0.5),
        ("archiving", None),
    ]


def test_a_job_gets_the_job_lease_and_a_waited_query_the_query_lease(
    store: PhaseLog, counting: CountingEngine
) -> None:
    settings = dataclasses.replace(from_environ(), job_lease_seconds=3333, query_lease_seconds=77)
    service = Service(store, settings, DatasetLoader(settings))
    service.engines = engines.Engines(settings, {"smartnoise_sql": lambda _s: counting})

    class Holding(InProcessWorkers):
        def submit(self, worker: str, payload: dict[str, Any]) -> None:
            pass  # the event sits in the queue

    assert service.local is not None
    service.workers = Holding(service.local)
    submit(service, "job-lease-1")
    service.query("alice", "PENGUIN", {**COUNT, "query_id": "sync-lease-1"})
    job, sync = store.get_query("job-lease-1"), store.get_query("sync-lease-1")
    assert job is not None and sync is not None
    assert job.lease_expires_at - job.created_at == timedelta(seconds=3333)
    assert sync.lease_expires_at - sync.created_at == timedelta(seconds=77)
    assert job.phase == "queued" and job.state is QueryState.RUNNING


def test_a_job_delivered_twice_runs_its_mechanism_once(
    service: Service, store: PhaseLog, counting: CountingEngine
) -> None:
    events: list[dict[str, Any]] = []

    class Queue(InProcessWorkers):
        def submit(self, worker: str, payload: dict[str, Any]) -> None:
            events.append(payload)

    assert service.local is not None
    worker = service.local
    service.workers = Queue(worker)
    before = remaining(store)
    submit(service, "job-twice-1")
    (event,) = events
    first = worker.handle(json.loads(json.dumps(event)))
    second = worker.handle(json.loads(json.dumps(event)))
    assert first["ok"] is True and first["result"]["type"] == "table"
    assert second == {"ok": True, "result": None, "claimed": False}
    assert counting.runs == 1
    record = store.get_query("job-twice-1")
    assert record is not None and record.state is QueryState.DONE
    assert remaining(store) == before - record.cost


def test_a_job_whose_lease_expired_in_the_queue_is_never_run(
    service: Service, store: PhaseLog, counting: CountingEngine
) -> None:
    events: list[dict[str, Any]] = []

    class Queue(InProcessWorkers):
        def submit(self, worker: str, payload: dict[str, Any]) -> None:
            events.append(payload)

    assert service.local is not None
    worker = service.local
    service.workers = Queue(worker)
    submit(service, "job-stale-1")
    worker.clock = lambda: utcnow() + timedelta(seconds=service.settings.job_lease_seconds + 1)
    assert worker.handle(events[0])["claimed"] is False
    assert counting.runs == 0


class Refusing(InProcessWorkers):
    """A queue that refuses the hand-over; with ``deliver`` it delivered it all the same."""

    def __init__(self, inner: Any, *, deliver: bool) -> None:
        super().__init__(inner)
        self.deliver = deliver

    def submit(self, worker: str, payload: dict[str, Any]) -> None:
        if self.deliver:
            self.handler.handle(payload)
        raise HopFailed("the queue timed out", delivered=True)


def test_a_job_that_cannot_be_handed_over_is_refunded_and_answered_503(
    service: Service, store: PhaseLog, counting: CountingEngine
) -> None:
    assert service.local is not None
    service.workers = Refusing(service.local, deliver=False)
    before = remaining(store)
    with pytest.raises(WorkerUnavailable):
        submit(service, "job-refused-1")
    record = store.get_query("job-refused-1")
    assert record is not None and record.state is QueryState.REFUNDED
    assert remaining(store) == before and counting.runs == 0


def test_a_hand_over_that_failed_after_a_worker_claimed_the_job_is_still_accepted(
    service: Service, store: PhaseLog, counting: CountingEngine
) -> None:
    assert service.local is not None
    service.workers = Refusing(service.local, deliver=True)
    before = remaining(store)
    accepted = submit(service, "job-arrived-1")
    assert accepted.body["state"] == "running"
    record = store.get_query("job-arrived-1")
    assert record is not None and record.state is QueryState.DONE and counting.runs == 1
    assert remaining(store) == before - record.cost


def test_a_dummy_query_with_wait_false_is_answered_at_once_and_free(
    service: Service, store: PhaseLog
) -> None:
    before = remaining(store)
    answer = service.query(
        "alice", "PENGUIN", {**COUNT, "query_id": "job-dummy-1", "dummy": True, "wait": False}
    )
    assert isinstance(answer, dict) and answer["dummy"] is True
    assert remaining(store) == before


def test_wait_must_be_a_boolean(service: Service) -> None:
    from chalicelib.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="wait"):
        service.query("alice", "PENGUIN", {**COUNT, "query_id": "job-badwait-1", "wait": "no"})


def test_the_route_answers_202_with_a_location_and_the_record_then_the_record_is_done(
    monkeypatch: pytest.MonkeyPatch, store: PhaseLog
) -> None:
    issued = auth.issue_token("alice")
    store.put_token(issued.record)
    service = Service(store, from_environ(), DatasetLoader(from_environ()))
    monkeypatch.setattr(app, "_SERVICE", [service])
    monkeypatch.setattr(storage, "_STORE", [store])
    get_settings.cache_clear()
    headers = {"Authorization": f"Bearer {issued.secret}", "Content-Type": "application/json"}
    body = json.dumps({**COUNT, "query_id": "job-route-1", "wait": False}).encode()
    with ChaliceClient(app.app) as client:
        answer = client.http.post("/v1/datasets/PENGUIN/queries", headers=headers, body=body)
        assert answer.status_code == 202
        location = answer.headers["Location"]
        assert location == "/v1/datasets/PENGUIN/queries/job-route-1"
        record = json.loads(answer.body)
        assert (record["query_id"], record["state"], record["phase"]) == (
            "job-route-1",
            "running",
            "queued",
        )
        assert isinstance(service.workers, InProcessWorkers)
        service.workers.join(timeout=60)
        done = json.loads(client.http.get(location, headers=headers).body)
    get_settings.cache_clear()
    assert done["state"] == "done" and done["result"]["type"] == "table"


def test_a_202_on_a_hardened_dataset_leaves_at_the_end_of_its_latency_bucket(
    store: PhaseLog,
) -> None:
    dataset = store.get_dataset("PENGUIN")
    assert dataset is not None
    store.datasets["PENGUIN"] = dataclasses.replace(dataset, hardened=True, latency_bucket_ms=400)
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    service = Service(
        store,
        from_environ(),
        DatasetLoader(from_environ()),
        timer=lambda: now[0],
        sleep=sleep,
    )

    class Slow(InProcessWorkers):
        def submit(self, worker: str, payload: dict[str, Any]) -> None:
            now[0] += 0.05  # the hand-over takes 50 ms

    assert service.local is not None
    service.workers = Slow(service.local)
    submit(service, "job-hardened-1")
    assert slept == [pytest.approx(0.35)]


def test_the_hop_carries_a_job_record_with_its_phase() -> None:
    now = utcnow()
    record = QueryRecord(
        query_id="q-1",
        user_id="alice",
        dataset="PENGUIN",
        engine="opendp",
        payload_hash="ab" * 32,
        request={"engine": "opendp"},
        cost=PrivacyCost(epsilon=1, delta=0),
        state=QueryState.RUNNING,
        created_at=now,
        lease_expires_at=now,
        phase="queued",
        progress=None,
    )
    assert hop.record_from_wire(json.loads(json.dumps(hop.record_to_wire(record)))) == record
