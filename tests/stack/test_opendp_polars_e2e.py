"""OpenDP Polars queries end to end: ``client.opendp.context`` over HTTP, real API and emulator."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx
import opendp.prelude as dp
import pandas as pd
import polars as pl
import pytest
import yaml
from opendp_pipelines import META, ROOT

from chalicelib.engines.polars_engine import ENGINE, calibrate
from chalicelib.models import charge
from neblina_client import Client, Cost, ServerError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
BILL = pl.col("bill_length_mm").fill_null(45.0)


@pytest.fixture
def ghost(store) -> str:  # type: ignore[no-untyped-def]
    """A dataset with PENGUIN's metadata whose private object does not exist."""
    from neblina_admin import operations as admin

    meta = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
    name = f"GHOSTPL{uuid.uuid4().hex[:6]}"
    admin.add_dataset(store, name, "s3://neblina-datasets/ghost/polars-missing.csv", meta)
    return name


@pytest.fixture
def researcher(make_researcher, ghost):  # type: ignore[no-untyped-def]
    return make_researcher({"PENGUIN": ("10", "0.001"), ghost: ("10", "0.001")})


def connect(stack: Any, token: str, dataset: str = "PENGUIN") -> Client:
    return Client(url=stack.api_url, token=token, dataset=dataset, max_retries=0)


def test_counts_sums_means_group_bys_and_quantiles_are_charged_their_map_exactly(
    stack, researcher
) -> None:  # type: ignore[no-untyped-def]
    with connect(stack, researcher.token) as client:
        context = client.opendp.context(privacy_loss=2.5, split_evenly_over=5)
        queries = {
            "count": context.query().select(dp.len()),
            "sum": context.query().select(BILL.dp.sum((30.0, 65.0))),
            "mean": context.query().select(BILL.dp.mean((30.0, 65.0))),
            "group-by": context.query().group_by("sex").agg(dp.len(), BILL.dp.mean((30.0, 65.0))),
            "quantile": context.query().select(BILL.dp.quantile(0.5, [35.0, 40.0, 45.0, 50.0])),
        }
        before = client.budget()
        charged = Cost.zero()
        for name, query in queries.items():
            # the map of the measurement the server runs, at max_ids, rounded up to the grid
            exact = calibrate(META, ENGINE.parse(query.body())).cost.epsilon
            expected = Cost(epsilon=charge(exact), delta=Decimal(0))
            assert Decimal("0.49") < exact <= Decimal("0.5"), name
            assert query.cost() == expected, name
            answer = query.release()
            assert answer.cost == expected and answer.engine == "opendp_polars", name
            assert isinstance(answer.result, pd.DataFrame) and len(answer.result) >= 1
            assert answer.accuracy is not None and len(answer.accuracy) >= 1
            charged = charged + answer.cost
            if name == "group-by":
                assert list(answer.result["sex"]) == ["female", "male"]  # the public keys
                # OpenDP's local summary (its own scale search: ~2 s, so only once here)
                summary = query.summarize(alpha=0.05)
                assert list(answer.accuracy["aggregate"]) == list(summary["aggregate"])
            archived = client.result(answer.query_id)
            assert archived.state == "done"
        assert client.budget().remaining == before.remaining - charged
        with pytest.raises(ValueError, match="spent"):
            context.query().select(dp.len()).release()  # split_evenly_over=5: all used


def test_a_dummy_release_is_free_and_a_retry_replays(stack, researcher) -> None:  # type: ignore[no-untyped-def]
    with connect(stack, researcher.token) as client:
        query = client.opendp.context(privacy_loss=1.0).query().group_by("species").agg(dp.len())
        before = client.budget()
        dummy = query.release(dummy=True)
        assert dummy.dummy and list(dummy.result["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
        assert client.budget() == before
        first = query.release(query_id=f"pl-{uuid.uuid4().hex}")
        again = (
            client.opendp.context(privacy_loss=1.0)
            .query()
            .group_by("species")
            .agg(dp.len())
            .release(query_id=first.query_id)
        )
        assert again.replayed and again.result.equals(first.result)
        assert client.budget().remaining == before.remaining - first.cost


COUNT = {"fn": "dp.len", "args": []}
HOSTILE: dict[str, list[Any]] = {
    "python udf": [{"select": [{"fn": "map_batches", "args": [{"col": "species"}]}]}],
    "foreign scan": [{"scan_parquet": "s3://elsewhere/data.parquet"}, {"select": [COUNT]}],
    "sink": [{"select": [COUNT]}, {"sink_csv": "/tmp/out.csv"}],
    "unknown node": [{"select": [{"FfiPlugin": {"lib": "/tmp/evil.so", "symbol": "x"}}]}],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_refused_plans_are_400_debit_nothing_and_read_nothing(
    stack, researcher, ghost, case: str
) -> None:  # type: ignore[no-untyped-def]
    body = {"engine": "opendp_polars", "plan": HOSTILE[case], "epsilon": 1.0}
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
    # GHOST's object does not exist: an accepted query reaches the load and fails there
    with connect(stack, researcher.token, ghost) as client, pytest.raises(ServerError):
        client.opendp.context(privacy_loss=1.0).query().select(dp.len()).release()
