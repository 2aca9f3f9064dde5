"""OpenDP queries through the service: the same ledger as SQL, and refusals that touch nothing."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import opendp.prelude as dp
import pytest
from opendp_pipelines import (
    META,
    ROOT,
    body,
    gaussian_count,
    laplace_count,
    laplace_mean,
    laplace_sum,
)

from chalicelib.config import from_environ
from chalicelib.datasets import DatasetLoader
from chalicelib.errors import InvalidQuery, InvalidRequest, NeblinaError
from chalicelib.models import (
    Dataset,
    PrivacyCost,
    QueryState,
    User,
    charge,
    exact_decimal,
    format_decimal,
    to_decimal,
    utcnow,
)
from chalicelib.service import Service
from chalicelib.storage.memory import MemoryStore

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated function:DeprecationWarning")
GRANT = PrivacyCost(epsilon=5, delta="0.001")


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.put_user(User(user_id="alice", created_at=utcnow()))
    s.put_dataset(Dataset("PENGUIN", str(ROOT / "localstack/data/penguins.csv"), META, utcnow()))
    # registered, but its private object does not exist: loading it can only fail
    s.put_dataset(Dataset("GHOST", str(ROOT / "no/such/penguins.csv"), META, utcnow()))
    for name in ("PENGUIN", "GHOST"):
        s.create_grant("alice", name, GRANT)
    return s


@pytest.fixture
def service(store: MemoryStore) -> Service:
    settings = from_environ()
    return Service(store, settings, DatasetLoader(settings))


def remaining(store: MemoryStore, dataset: str = "PENGUIN") -> PrivacyCost:
    grant = store.get_grant("alice", dataset)
    assert grant is not None
    return grant.remaining


@pytest.mark.parametrize("make", [laplace_count, laplace_sum, laplace_mean])
def test_a_laplace_query_is_charged_its_privacy_map_exactly(
    service: Service, store: MemoryStore, make: Any
) -> None:
    measurement = make()
    epsilon = charge(exact_decimal(measurement.map(1)))  # rounded up: docs/ledger.md
    assert epsilon >= exact_decimal(measurement.map(1))
    quoted = service.cost("alice", "PENGUIN", body(measurement))
    answer = service.query("alice", "PENGUIN", body(measurement, query_id="q-opendp-1"))
    assert quoted["cost"] == answer["cost"] == {"epsilon": format_decimal(epsilon), "delta": "0"}
    assert remaining(store) == GRANT - PrivacyCost(epsilon=epsilon, delta=0)
    record = store.get_query("q-opendp-1")
    assert record is not None and record.state is QueryState.DONE
    assert record.result == answer["result"] and answer["result"]["type"] == "value"
    assert record.request["engine"] == "opendp" and record.request["pipeline"]["nodes"]


def test_gaussian_without_fixed_delta_is_400_and_with_it_charges_that_delta(
    service: Service, store: MemoryStore
) -> None:
    with pytest.raises(InvalidRequest, match="fixed_delta"):
        service.query("alice", "PENGUIN", body(gaussian_count(), query_id="q-gauss-00"))
    assert remaining(store) == GRANT and store.queries == {}
    answer = service.query(
        "alice", "PENGUIN", body(gaussian_count(), fixed_delta=1e-6, query_id="q-gauss-01")
    )
    assert answer["cost"]["delta"] == "0.000001"
    assert remaining(store).delta == Decimal("0.001") - Decimal("0.000001")


def refusals() -> dict[str, tuple[dict[str, Any], type[NeblinaError]]]:
    tree = json.loads(dp.serialize(laplace_count()))
    off_list = json.loads(json.dumps(tree))
    off_list["__kwargs__"]["measurement1"]["__function__"] = "make_user_measurement"
    other_module = json.loads(json.dumps(tree))
    other_module["__kwargs__"]["measurement1"].update(__module__="subprocess", __function__="run")
    tampered = json.loads(json.dumps(tree))
    tampered["__kwargs__"]["measurement1"]["__reduce__"] = "os.system"
    vector = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance())
    wrong_domain = (
        vector >> dp.t.then_clamp((0.0, 1.0)) >> dp.t.then_sum() >> dp.m.then_laplace(1.0)
    )
    opendp = {"engine": "opendp"}
    return {
        "constructor off the allowlist": (
            {**opendp, "pipeline": json.dumps(off_list)},
            InvalidQuery,
        ),
        "module other than OpenDP's": (
            {**opendp, "pipeline": json.dumps(other_module)},
            InvalidQuery,
        ),
        "tampered node with an unexpected key": (
            {**opendp, "pipeline": json.dumps(tampered)},
            InvalidQuery,
        ),
        "input domain that does not match": (body(wrong_domain), InvalidQuery),
        "a transformation alone": (body(_transformation()), InvalidQuery),
        "gaussian without fixed_delta": (body(gaussian_count()), InvalidRequest),
    }


def _transformation() -> Any:
    from opendp_pipelines import bill_length

    return bill_length() >> dp.t.then_sum()


@pytest.mark.parametrize("dataset", ["PENGUIN", "GHOST"])
@pytest.mark.parametrize("case", sorted(refusals()))
def test_refused_pipelines_debit_nothing_and_load_nothing(
    service: Service, store: MemoryStore, case: str, dataset: str
) -> None:
    request, error = refusals()[case]
    with pytest.raises(error):
        service.cost("alice", dataset, request)
    with pytest.raises(error):
        service.query("alice", dataset, {**request, "query_id": "q-refused-1"})
    assert service.loader.reads == 0  # the private data was never read
    assert remaining(store, dataset) == GRANT  # nothing debited
    assert store.queries == {}  # nothing reserved, nothing archived


def test_the_loader_does_read_for_an_accepted_query(service: Service, store: MemoryStore) -> None:
    # the counter the refusal test relies on does move when a query runs
    service.query("alice", "PENGUIN", body(laplace_count(), query_id="q-reads-01"))
    assert service.loader.reads == 1
    with pytest.raises(NeblinaError):  # and GHOST can indeed not be loaded
        service.query("alice", "GHOST", body(laplace_count(), query_id="q-reads-02"))
    assert remaining(store, "GHOST") == GRANT  # refunded: the load failed before any engine ran


def test_dummy_runs_and_cost_quotes_are_free(service: Service, store: MemoryStore) -> None:
    quoted = service.cost("alice", "GHOST", body(laplace_mean()))
    assert quoted["cost"]["epsilon"] == format_decimal(charge(exact_decimal(laplace_mean().map(1))))
    dummy = service.query(
        "alice", "GHOST", body(laplace_mean(), query_id="q-dummy-01", dummy=True, dummy_rows=50)
    )
    assert dummy["dummy"] and isinstance(dummy["result"]["value"], float)
    # a mean of values clamped to [30, 65], plus Laplace noise of scale 0.5:
    # P(|noise| > 10.5) = e^-21 < 1e-9
    assert 30.0 - 10.5 < dummy["result"]["value"] < 65.0 + 10.5
    assert remaining(store, "GHOST") == GRANT and store.queries == {}
    assert service.loader.reads == 0


def test_a_retry_replays_the_release_for_free(service: Service, store: MemoryStore) -> None:
    first = service.query("alice", "PENGUIN", body(laplace_count(), query_id="q-replay-1"))
    again = service.query("alice", "PENGUIN", body(laplace_count(), query_id="q-replay-1"))
    assert again["replayed"] and again["result"] == first["result"]
    assert remaining(store) == GRANT - PrivacyCost(
        epsilon=to_decimal(laplace_count().map(1)), delta=0
    )
    # the same id with the tree form of the same pipeline is the same payload
    tree = {"engine": "opendp", "pipeline": dp.serialize(laplace_count()), "query_id": "q-replay-1"}
    assert service.query("alice", "PENGUIN", tree)["replayed"]
