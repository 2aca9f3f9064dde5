"""Hardened mode: fixed latency buckets and fixed bodies for data-dependent failures.

Service tests use an injected monotonic clock and sleep (exact arithmetic of the buckets);
one test runs real threads to show the wait holds no lock; the HTTP test runs a hardened
copy of PENGUIN on the local stack. The measured effect is in BENCHMARKS.md ("Hardened
mode", bench/hardened.py).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from chalicelib import metadata
from chalicelib.config import from_environ
from chalicelib.datasets import DatasetLoader
from chalicelib.errors import (
    BudgetExhausted,
    DatasetUnavailableError,
    EngineRefused,
    InvalidQuery,
    NeblinaError,
)
from chalicelib.models import DEFAULT_LATENCY_BUCKET_MS, Dataset, PrivacyCost, User, utcnow
from chalicelib.service import HARDENED_ENGINE_MESSAGE, Service
from chalicelib.storage.memory import MemoryStore
from neblina_admin import operations as admin

ROOT = Path(__file__).resolve().parents[2]
META = metadata.validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))
PENGUINS = str(ROOT / "localstack/data/penguins.csv")
COUNT = {
    "engine": "smartnoise_sql",
    "query": "SELECT COUNT(*) AS n FROM df",
    "epsilon": 0.5,
    "delta": 0,
}
REFUSED = {**COUNT, "query": "SELECT VAR(body_mass_g) AS v FROM df"}  # "noise scale too large"


class FakeTime:
    """A monotonic clock that only moves when told to (or when slept on)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def memory() -> MemoryStore:
    s = MemoryStore()
    s.put_user(User(user_id="alice", created_at=utcnow()))
    hardened = {"hardened": True, "latency_bucket_ms": 500}
    for name, source, policy in (
        ("PLAIN", PENGUINS, {}),
        ("HARD", PENGUINS, hardened),
        ("HARD_GONE", str(ROOT / "no/such/file.csv"), hardened),
    ):
        s.put_dataset(Dataset(name, source, META, utcnow(), **policy))
        s.create_grant("alice", name, PrivacyCost(epsilon=5, delta="0.001"))
    return s


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def service(memory: MemoryStore, clock: FakeTime) -> Service:
    settings = from_environ()
    return Service(memory, settings, DatasetLoader(settings), timer=clock, sleep=clock.sleep)


def run(service: Service, dataset: str, body: dict[str, Any]) -> Any:
    return service.query("alice", dataset, {**body, "query_id": uuid.uuid4().hex})


def slow_loads(service: Service, clock: FakeTime, seconds: float) -> None:
    """Make every dataset load take ``seconds`` on the fake clock."""
    real = type(service.loader).load

    def load(dataset: Dataset) -> Any:
        clock.now += seconds
        return real(service.loader, dataset)

    service.loader.load = load  # type: ignore[method-assign]


def test_answers_leave_at_the_end_of_their_bucket(service: Service, clock: FakeTime) -> None:
    run(service, "HARD", COUNT)
    assert clock.slept == [0.5]  # an instant answer waits a whole bucket
    for work, wait in ((0.2, 0.3), (0.7, 0.3), (1.0, 0.0), (1.01, 0.49)):
        clock.slept.clear()
        slow_loads(service, clock, work)
        start = clock.now
        run(service, "HARD", COUNT)
        assert clock.slept == ([wait] if wait else []), work
        assert round((clock.now - start) / 0.5, 6).is_integer()  # a multiple of the bucket
    clock.slept.clear()
    service.cost("alice", "HARD", COUNT)  # the cost route too
    assert clock.slept == [0.5]


def test_plain_datasets_are_not_delayed(service: Service, clock: FakeTime) -> None:
    run(service, "PLAIN", COUNT)
    service.cost("alice", "PLAIN", COUNT)
    with pytest.raises(EngineRefused):
        service.cost("alice", "PLAIN", REFUSED)
    assert clock.slept == []


def test_data_dependent_failures_get_fixed_bodies_and_wait_too(
    service: Service, clock: FakeTime, memory: MemoryStore
) -> None:
    plain_message = _error(lambda: service.cost("alice", "PLAIN", REFUSED)).message
    assert plain_message != HARDENED_ENGINE_MESSAGE  # the engine's own words elsewhere
    failures = [
        lambda: service.cost("alice", "HARD", REFUSED),  # engine refusal while pricing
        lambda: run(service, "HARD", REFUSED),
    ]
    for failure in failures:
        clock.slept.clear()
        error = _error(failure)
        assert (error.status_code, error.code, error.message) == (
            422,
            "engine_error",
            HARDENED_ENGINE_MESSAGE,
        )
        assert clock.slept == [0.5]
    clock.slept.clear()
    error = _error(lambda: run(service, "HARD_GONE", COUNT))  # refunded after a load failure
    # already a fixed body, about the source and not the query: kept, so clients stop retrying
    assert (error.status_code, error.code) == (503, "dataset_unavailable")
    assert error.message == DatasetUnavailableError.FIXED_MESSAGE and clock.slept == [0.5]
    assert memory.get_grant("alice", "HARD_GONE").spent == PrivacyCost.zero()


def test_failures_that_depend_on_the_request_alone_keep_their_words(
    service: Service, clock: FakeTime
) -> None:
    with pytest.raises(InvalidQuery, match="wingspan"):  # metadata-only validation
        run(service, "HARD", {**COUNT, "query": "SELECT AVG(wingspan) FROM df"})
    with pytest.raises(BudgetExhausted, match="not enough budget"):
        run(service, "HARD", {**COUNT, "epsilon": 50})
    dummy_error = _error(lambda: run(service, "HARD", {**REFUSED, "dummy": True}))
    assert dummy_error.message != HARDENED_ENGINE_MESSAGE  # dummy rows are public
    assert clock.slept == [0.5, 0.5, 0.5]  # all padded all the same


def _error(call: Any) -> NeblinaError:
    with pytest.raises(NeblinaError) as raised:
        call()
    return raised.value


def test_the_default_bucket(memory: MemoryStore) -> None:
    dataset = dataclasses.replace(memory.datasets["HARD"], latency_bucket_ms=None)
    assert dataset.bucket_seconds == DEFAULT_LATENCY_BUCKET_MS / 1000 == 0.5


def test_the_wait_holds_no_lock(memory: MemoryStore) -> None:
    """Four hardened requests at once on real threads take one bucket, not four."""
    memory.datasets["HARD"] = dataclasses.replace(memory.datasets["HARD"], latency_bucket_ms=400)
    settings = dataclasses.replace(from_environ(), rate_limit=0)
    service = Service(memory, settings, DatasetLoader(settings))
    run(service, "PLAIN", COUNT)  # warm: imports, the dataset and its reader
    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(service, "HARD", COUNT)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 1.2, elapsed  # serialised waits would take at least 1.6 s


@pytest.mark.stack
def test_a_hardened_dataset_over_http(stack: Any, store: Any, make_researcher: Any) -> None:
    name = f"HARD{uuid.uuid4().hex[:6]}"
    admin.add_dataset(store, name, "s3://neblina-datasets/PENGUIN/penguins.csv", META)
    admin.update_dataset(store, name, hardened=True, bucket_ms=300)
    who = make_researcher({name: ("10", "0.001"), "PENGUIN": ("10", "0.001")})
    http = httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {who.token}"}, timeout=60
    )
    for sql in (COUNT["query"], "SELECT species, COUNT(*) AS n FROM df GROUP BY species"):
        started = time.monotonic()
        response = http.post(
            f"/v1/datasets/{name}/queries",
            json={**COUNT, "query": sql, "query_id": uuid.uuid4().hex},
        )
        assert response.status_code == 200
        assert time.monotonic() - started >= 0.3  # never before the end of the first bucket
    started = time.monotonic()
    response = http.post(f"/v1/datasets/{name}/cost", json=REFUSED)
    assert time.monotonic() - started >= 0.3
    assert response.json() == {"error": "engine_error", "message": HARDENED_ENGINE_MESSAGE}
    plain = http.post("/v1/datasets/PENGUIN/cost", json=REFUSED).json()
    assert plain["error"] == "engine_error" and plain["message"] != HARDENED_ENGINE_MESSAGE
