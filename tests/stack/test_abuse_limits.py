"""Abuse limits: per-user rate limits (429 + Retry-After), per-query caps (403), body size (413).

Service tests run on an in-memory store with an injected clock (exact windows and
Retry-After); the administration tests run ``neblina-admin`` and the declarative file on
the emulator; the HTTP tests start an API server of their own with a low rate limit.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from api_process import api_server

from chalicelib import metadata
from chalicelib.config import from_environ
from chalicelib.datasets import DatasetLoader
from chalicelib.errors import InvalidRequest, QueryCapExceeded, RateLimited
from chalicelib.models import Dataset, PrivacyCost, User, utcnow
from chalicelib.service import Service
from chalicelib.storage.memory import MemoryStore
from neblina_admin import declarative
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
GROUP = {  # three aggregates: costs 3 x epsilon
    **COUNT,
    "query": "SELECT species, COUNT(*) AS n, AVG(bill_length_mm) AS b FROM df GROUP BY species",
}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def memory() -> MemoryStore:
    s = MemoryStore()
    for user in ("alice", "bob"):
        s.put_user(User(user_id=user, created_at=utcnow()))
    s.put_dataset(Dataset("PENGUIN", PENGUINS, META, utcnow()))
    s.put_dataset(
        Dataset(
            "CAPPED",
            PENGUINS,
            META,
            utcnow(),
            per_query_cap=PrivacyCost(epsilon="1", delta="0.00001"),
        )
    )
    for user in ("alice", "bob"):
        for dataset in ("PENGUIN", "CAPPED"):
            s.create_grant(user, dataset, PrivacyCost(epsilon=50, delta="0.01"))
    return s


def service_with(memory: MemoryStore, clock: Clock | None = None, **settings: Any) -> Service:
    configured = dataclasses.replace(from_environ(), **settings)
    return Service(memory, configured, DatasetLoader(configured), clock=clock or utcnow)


def query(service: Service, user: str, body: dict[str, Any], dataset: str = "PENGUIN") -> Any:
    return service.query(user, dataset, {**body, "query_id": uuid.uuid4().hex})


# rate limits ---------------------------------------------------------------------------------
def test_the_rate_limit_counts_query_and_cost_requests_per_user_and_window(
    memory: MemoryStore,
) -> None:
    clock = Clock(datetime(2026, 11, 25, 12, 0, 50, tzinfo=UTC))  # 10 s before the window ends
    service = service_with(memory, clock, rate_limit=3, rate_window_seconds=60)
    query(service, "alice", COUNT)
    service.cost("alice", "PENGUIN", COUNT)
    query(service, "alice", {**COUNT, "dummy": True})  # dummy queries count too
    spent = memory.get_grant("alice", "PENGUIN").spent
    for attempt in (
        lambda: query(service, "alice", COUNT),
        lambda: service.cost("alice", "PENGUIN", COUNT),
    ):
        with pytest.raises(RateLimited) as raised:
            attempt()
        assert raised.value.status_code == 429 and raised.value.code == "rate_limited"
        assert raised.value.headers() == {"Retry-After": "10"}  # the window's end
    assert memory.get_grant("alice", "PENGUIN").spent == spent  # a refused query costs nothing
    assert service.budget("alice", "PENGUIN")["spent"]  # reads are not counted
    service.history("alice", "PENGUIN", None, None)
    query(service, "bob", COUNT)  # another user has a window of their own
    clock.now += timedelta(seconds=10)  # the next window
    query(service, "alice", COUNT)
    clock.now += timedelta(seconds=59, microseconds=500_000)
    for _ in range(2):
        service.cost("alice", "PENGUIN", COUNT)
    with pytest.raises(RateLimited) as raised:
        service.cost("alice", "PENGUIN", COUNT)
    assert raised.value.headers() == {"Retry-After": "1"}  # never 0: at least one second


def test_a_rate_limit_of_zero_turns_it_off(memory: MemoryStore) -> None:
    service = service_with(memory, rate_limit=0)
    for _ in range(30):
        service.cost("alice", "PENGUIN", COUNT)
    assert memory.windows == {}  # nothing counted, nothing written


# per-query caps --------------------------------------------------------------------------------
def test_a_dataset_cap_refuses_a_costlier_query_before_anything_is_debited(
    memory: MemoryStore,
) -> None:
    service = service_with(memory)
    assert PrivacyCost(**query(service, "alice", COUNT, "CAPPED")["cost"]).epsilon == Decimal("0.5")
    before = memory.get_grant("alice", "CAPPED").spent
    for body, why in (
        (GROUP, "epsilon 1.5"),  # 3 x 0.5 > 1
        ({**COUNT, "delta": 2e-5, "mechanisms": {"count": "gaussian"}}, "delta 0.00002"),
        ({**GROUP, "dummy": True}, "epsilon 1.5"),  # dummy runs are held to the same cap
    ):
        query_id = uuid.uuid4().hex
        with pytest.raises(QueryCapExceeded) as raised:
            service.query("alice", "CAPPED", {**body, "query_id": query_id})
        assert raised.value.status_code == 403 and raised.value.code == "query_cap_exceeded"
        assert why in raised.value.message
        assert "at most epsilon 1, delta 0.00001" in raised.value.message
        assert memory.get_query(query_id) is None  # no record, no debit
    assert memory.get_grant("alice", "CAPPED").spent == before
    assert service.cost("alice", "CAPPED", GROUP)["cost"]["epsilon"] == "1.5"  # still priced
    assert PrivacyCost(**query(service, "alice", GROUP)["cost"]).epsilon == Decimal("1.5")


def test_the_deployment_cap_applies_everywhere_and_the_stricter_cap_wins(
    memory: MemoryStore,
) -> None:
    service = service_with(
        memory, max_epsilon_per_query=Decimal("0.75"), max_delta_per_query=Decimal("0.5")
    )
    query(service, "alice", COUNT)  # 0.5 fits
    with pytest.raises(QueryCapExceeded, match=r"on PENGUIN may cost at most epsilon 0\.75"):
        query(service, "alice", {**COUNT, "epsilon": 1})
    with pytest.raises(QueryCapExceeded, match=r"at most epsilon 0\.75, delta 0\.00001"):
        query(service, "alice", GROUP, "CAPPED")  # the dataset's delta, the deployment's epsilon


# administration --------------------------------------------------------------------------------
def test_caps_and_hardened_mode_through_the_cli_and_the_declarative_file(
    stack: Any, store: Any, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from neblina_admin.cli import app

    del stack
    name = f"POLICY{uuid.uuid4().hex[:6]}"
    admin.add_dataset(store, name, PENGUINS, META)
    run = CliRunner().invoke
    result = run(
        app,
        [
            "datasets",
            "update",
            name,
            "--per-query-epsilon",
            "2",
            "--per-query-delta",
            "0.00001",
            "--hardened",
            "--latency-bucket-ms",
            "250",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "per-query cap: ε 2, δ 0.00001" in result.output
        and "latency bucket 250 ms" in result.output
    )
    stored = store.get_dataset(name)
    assert (stored.per_query_cap, stored.hardened, stored.latency_bucket_ms) == (
        PrivacyCost(epsilon="2", delta="0.00001"),
        True,
        250,
    )
    shown = json.loads(run(app, ["datasets", "show", name, "--json"]).output)
    assert shown["per_query_cap"] == {"epsilon": "2", "delta": "0.00001"} and shown["hardened"]
    result = run(app, ["datasets", "update", name, "--no-per-query-cap", "--not-hardened"])
    assert result.exit_code == 0, result.output
    stored = store.get_dataset(name)
    assert (stored.per_query_cap, stored.hardened, stored.latency_bucket_ms) == (None, False, 250)
    for args, message in (
        (["--per-query-epsilon", "1"], "give both"),
        (["--per-query-epsilon", "0", "--per-query-delta", "0"], "epsilon above 0"),
        (["--latency-bucket-ms", "5"], "10..60000"),
        (["--per-query-epsilon", "1", "--per-query-delta", "0", "--no-per-query-cap"], "not both"),
    ):
        result = run(app, ["datasets", "update", name, *args])
        assert result.exit_code == 1 and message in result.output, (args, result.output)
    assert store.get_dataset(name) == stored  # refused: nothing changed

    # the declarative file, on tables of its own (apply removes what a file does not list)
    from chalicelib.config import get_settings
    from chalicelib.storage.dynamo import DynamoStore

    own = DynamoStore(
        dataclasses.replace(get_settings(), table_prefix=f"pol{uuid.uuid4().hex[:6]}-")
    )
    own.create_schema()
    (tmp_path / "penguin.yaml").write_text((ROOT / "localstack/data/penguin.yaml").read_text())
    entry = {"name": "PENGUIN_H", "source": PENGUINS, "metadata": "penguin.yaml"}
    policy = {
        "per_query_cap": {"epsilon": 1, "delta": "0.000001"},
        "hardened": True,
        "latency_bucket_ms": 300,
    }
    desired = declarative.parse({"datasets": [{**entry, **policy}]}, tmp_path)
    changes = declarative.apply(own, desired)
    assert [c.line() for c in changes] == [
        f"  + dataset PENGUIN_H: source {PENGUINS}; per_query_cap epsilon 1, delta 0.000001; "
        "hardened, bucket 300 ms"
    ]
    stored = own.get_dataset("PENGUIN_H")
    assert (stored.per_query_cap, stored.hardened, stored.latency_bucket_ms) == (
        PrivacyCost(epsilon="1", delta="0.000001"),
        True,
        300,
    )
    assert declarative.apply(own, desired) == []  # idempotent
    relaxed = declarative.parse({"datasets": [{**entry, "hardened": False}]}, tmp_path)
    assert [c.line() for c in declarative.apply(own, relaxed)] == [
        "  ~ dataset PENGUIN_H: per_query_cap 'epsilon 1, delta 0.000001' -> None; "
        "hardened True -> False; latency_bucket_ms 300 -> None"
    ]
    stored = own.get_dataset("PENGUIN_H")
    assert (stored.per_query_cap, stored.hardened, stored.latency_bucket_ms) == (None, False, None)
    for bad, message in (
        ({"per_query_cap": {"epsilon": 1}}, "per_query_cap must be"),
        ({"hardened": "yes"}, "hardened must be true or false"),
        ({"latency_bucket_ms": 5}, "10..60000"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            declarative.parse({"datasets": [{**entry, **bad}]}, tmp_path)


# over HTTP ------------------------------------------------------------------------------------
def wait_clear_of_the_window_edge(window: int, margin: float) -> None:
    """Poll the clock until the current fixed window has ``margin`` seconds left."""
    while window - time.time() % window < margin:
        time.sleep(0.2)


def test_rate_limit_over_http_is_429_with_retry_after(
    stack: Any, make_researcher: Any, tmp_path: Path
) -> None:
    alice = make_researcher()
    bob = make_researcher()
    window = 3600
    env = {"NEBLINA_RATE_LIMIT": "5", "NEBLINA_RATE_WINDOW_SECONDS": str(window)}
    with api_server(stack, env, tmp_path) as api:
        wait_clear_of_the_window_edge(window, margin=30)
        http = httpx.Client(base_url=api.url, timeout=60)
        auth = {"Authorization": f"Bearer {alice.token}"}
        for _ in range(5):
            assert (
                http.post("/v1/datasets/PENGUIN/cost", json=COUNT, headers=auth).status_code == 200
            )
        assert (
            http.get("/v1/datasets/PENGUIN/budget", headers=auth).status_code == 200
        )  # not counted
        spent = http.get("/v1/datasets/PENGUIN/budget", headers=auth).json()["spent"]
        response = http.post(
            "/v1/datasets/PENGUIN/queries",
            json={**COUNT, "query_id": uuid.uuid4().hex},
            headers=auth,
        )
        assert response.status_code == 429
        assert response.json()["error"] == "rate_limited"
        expected = window - time.time() % window
        assert abs(int(response.headers["Retry-After"]) - expected) <= 2
        assert http.get("/v1/datasets/PENGUIN/budget", headers=auth).json()["spent"] == spent
        other = {"Authorization": f"Bearer {bob.token}"}
        assert http.post("/v1/datasets/PENGUIN/cost", json=COUNT, headers=other).status_code == 200


def test_per_query_cap_and_body_limit_over_http(
    stack: Any, store: Any, make_researcher: Any
) -> None:
    name = f"CAP{uuid.uuid4().hex[:6]}"
    admin.add_dataset(store, name, "s3://neblina-datasets/PENGUIN/penguins.csv", META)
    admin.update_dataset(store, name, query_cap=PrivacyCost(epsilon="1", delta="0.001"))
    who = make_researcher({name: ("10", "0.001")})
    http = httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {who.token}"}, timeout=60
    )
    query_id = uuid.uuid4().hex
    response = http.post(f"/v1/datasets/{name}/queries", json={**GROUP, "query_id": query_id})
    assert response.status_code == 403 and response.json()["error"] == "query_cap_exceeded"
    assert http.get(f"/v1/datasets/{name}/budget").json()["spent"]["epsilon"] == "0"
    assert http.get(f"/v1/datasets/{name}/queries/{query_id}").status_code == 404
    assert (
        http.post(f"/v1/datasets/{name}/queries", json={**COUNT, "query_id": query_id}).status_code
        == 200
    )
    oversize = json.dumps({**COUNT, "query": "SELECT COUNT(*) AS n FROM df" + " " * 70_000})
    for route in ("cost", "queries"):
        response = http.post(
            f"/v1/datasets/{name}/{route}",
            content=oversize,
            headers={"Content-Type": "application/json"},
        )
        assert (response.status_code, response.json()["error"]) == (413, "payload_too_large")
