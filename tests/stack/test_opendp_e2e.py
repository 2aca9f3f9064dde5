"""OpenDP end to end: the real client over HTTP against the real API server and emulator."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import httpx
import opendp.prelude as dp
import pytest
import yaml
from opendp_pipelines import (
    ROOT,
    gaussian_count,
    laplace_count,
    laplace_mean,
    laplace_sum,
    space,
)

from chalicelib.models import charge, exact_decimal
from neblina_client import Client, Cost, InvalidRequestError, ServerError
from neblina_client._opendp import pipeline_nodes

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated function:DeprecationWarning")


@pytest.fixture
def ghost(store) -> str:  # type: ignore[no-untyped-def]
    """A dataset with PENGUIN's metadata whose private object does not exist."""
    from neblina_admin import operations as admin

    meta = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
    name = f"GHOSTDP{uuid.uuid4().hex[:6]}"
    admin.add_dataset(store, name, "s3://neblina-datasets/ghost/opendp-missing.csv", meta)
    return name


@pytest.fixture
def researcher(make_researcher, ghost):  # type: ignore[no-untyped-def]
    return make_researcher({"PENGUIN": ("10", "0.001"), ghost: ("10", "0.001")})


def connect(stack: Any, token: str, dataset: str = "PENGUIN") -> Client:
    return Client(url=stack.api_url, token=token, dataset=dataset, max_retries=0)


def test_laplace_pipelines_are_charged_their_privacy_map_exactly(stack, researcher) -> None:  # type: ignore[no-untyped-def]
    with connect(stack, researcher.token) as client:
        # the space built from the server's metadata is the one the pipelines start from
        assert dp.serialize(client.opendp.space("species")) == dp.serialize(space("species"))
        before = client.budget()
        charged = Cost.zero()
        for measurement in (laplace_count(), laplace_sum(), laplace_mean()):
            # the map's exact value rounded up to the ledger's grid (docs/ledger.md)
            epsilon = charge(exact_decimal(measurement.map(1)))
            expected = Cost(epsilon=epsilon, delta=Decimal(0))
            assert client.opendp.cost(measurement) == expected
            answer = client.opendp.query(measurement)
            assert answer.cost == expected and answer.engine == "opendp"
            assert isinstance(answer.result, int | float)
            archived = client.result(answer.query_id)
            assert archived.state == "done" and archived.result == answer.result
            charged = charged + answer.cost
        after = client.budget()
        assert after.remaining == before.remaining - charged
        assert after.spent + after.remaining == after.initial


def test_gaussian_needs_fixed_delta_and_charges_it(stack, researcher) -> None:  # type: ignore[no-untyped-def]
    with connect(stack, researcher.token) as client:
        before = client.budget()
        with pytest.raises(InvalidRequestError) as raised:
            client.opendp.query(gaussian_count())
        assert raised.value.status_code == 400 and "fixed_delta" in str(raised.value)
        assert client.budget() == before
        answer = client.opendp.query(gaussian_count(), fixed_delta=1e-6)
        assert answer.cost.delta == Decimal("0.000001")
        assert client.budget().remaining.delta == before.remaining.delta - Decimal("0.000001")


def test_dummy_runs_are_free_and_retries_replay(stack, researcher) -> None:  # type: ignore[no-untyped-def]
    with connect(stack, researcher.token) as client:
        before = client.budget()
        dummy = client.opendp.query(laplace_mean(), dummy=True, dummy_rows=300)
        assert dummy.dummy and isinstance(dummy.result, float)
        assert client.budget() == before
        first = client.opendp.query(laplace_count(), query_id=f"odp-{uuid.uuid4().hex}")
        again = client.opendp.query(laplace_count(), query_id=first.query_id)
        assert again.replayed and again.result == first.result
        assert client.budget().remaining == before.remaining - first.cost


def hostile_bodies() -> dict[str, dict[str, Any]]:
    tree = json.loads(dp.serialize(laplace_count()))

    def tampered(**changes: Any) -> str:
        copy = json.loads(json.dumps(tree))
        copy["__kwargs__"]["measurement1"].update(changes)
        return json.dumps(copy)

    vector = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance())
    wrong_domain = (
        vector >> dp.t.then_clamp((0.0, 1.0)) >> dp.t.then_sum() >> dp.m.then_laplace(1.0)
    )
    return {
        "constructor off the allowlist": {
            "pipeline": tampered(__function__="make_user_measurement")
        },
        "module other than OpenDP's": {
            "pipeline": tampered(__module__="builtins", __function__="eval")
        },
        "unexpected key": {"pipeline": tampered(__reduce__="os.system")},
        "input domain that does not match": {"pipeline": pipeline_nodes(wrong_domain)},
    }


@pytest.mark.parametrize("case", sorted(hostile_bodies()))
def test_refused_pipelines_are_4xx_debit_nothing_and_read_nothing(
    stack, researcher, ghost, case: str
) -> None:  # type: ignore[no-untyped-def]
    body = {"engine": "opendp", **hostile_bodies()[case]}
    headers = {"Authorization": f"Bearer {researcher.token}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as http:
        for dataset in ("PENGUIN", ghost):
            before = http.get(f"/v1/datasets/{dataset}/budget").json()
            cost = http.post(f"/v1/datasets/{dataset}/cost", json=body)
            query_id = f"hostile-{uuid.uuid4().hex}"
            query = http.post(
                f"/v1/datasets/{dataset}/queries", json={**body, "query_id": query_id}
            )
            for response in (cost, query):
                assert response.status_code == 400, response.text
                assert response.json()["error"] == "invalid_query"
            assert http.get(f"/v1/datasets/{dataset}/budget").json() == before
            assert http.get(f"/v1/datasets/{dataset}/queries/{query_id}").status_code == 404
    # GHOST's object does not exist: had any refused query been loaded, it would have been a
    # 500; an accepted one shows that (and is refunded)
    with connect(stack, researcher.token, ghost) as client, pytest.raises(ServerError):
        client.opendp.query(laplace_count())
