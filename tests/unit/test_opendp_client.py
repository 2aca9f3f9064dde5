"""client.opendp against a scripted server: what it sends, what it decodes, what it imports."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import opendp.prelude as dp
import pandas as pd
import pytest
from opendp_pipelines import COLUMNS, META, gaussian_count, laplace_count

from neblina_client import Client, Cost, NeblinaError
from neblina_client._opendp import expand, pipeline_nodes

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated function:DeprecationWarning")
URL = "http://neblina.test"
TOKEN = "nbl_" + "a" * 43


class Server:
    """Replies in order; records the JSON bodies it received."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return httpx.Response(200, json=self.replies.pop(0))

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)

    def client(self) -> Client:
        transport = httpx.MockTransport(self)
        return Client(url=URL, token=TOKEN, dataset="PENGUIN", transport=transport, max_retries=0)


def answer(result: Any, **extra: Any) -> dict[str, Any]:
    return {
        "query_id": "q1" * 8,
        "dataset": "PENGUIN",
        "engine": "opendp",
        "dummy": False,
        "replayed": False,
        "cost": {"epsilon": "0.5", "delta": "0"},
        "created_at": "2026-11-25T12:00:00+00:00",
        "result": result,
        **extra,
    }


def test_cost_sends_the_node_form_and_fixed_delta() -> None:
    server = Server(
        {"dataset": "PENGUIN", "engine": "opendp", "cost": {"epsilon": "1.5", "delta": "0.000001"}}
    )
    cost = server.client().opendp.cost(gaussian_count(), fixed_delta=1e-6)
    assert cost == Cost(epsilon=Decimal("1.5"), delta=Decimal("0.000001"))
    sent = server.body()
    assert server.requests[0].url.path == "/v1/datasets/PENGUIN/cost"
    assert sent["engine"] == "opendp" and sent["fixed_delta"] == 1e-6
    assert expand(sent["pipeline"]) == json.loads(dp.serialize(gaussian_count()))
    assert set(sent) == {"engine", "pipeline", "fixed_delta"}


def test_query_sends_an_id_and_decodes_a_number() -> None:
    server = Server(answer({"type": "value", "value": 347}))
    result = server.client().opendp.query(laplace_count())
    sent = server.body()
    assert server.requests[0].url.path == "/v1/datasets/PENGUIN/queries"
    assert len(sent["query_id"]) == 32 and sent["dummy"] is False
    assert "fixed_delta" not in sent
    assert result.result == 347 and result.cost == Cost(epsilon=Decimal("0.5"), delta=Decimal(0))


def test_dummy_queries_and_given_ids_are_sent() -> None:
    server = Server(answer({"type": "value", "value": [1, 2.5, [3]]}, dummy=True))
    result = server.client().opendp.query(
        laplace_count(), dummy=True, query_id="my-own-id-1", dummy_rows=10, dummy_seed=7
    )
    sent = server.body()
    assert sent["query_id"] == "my-own-id-1"
    assert (sent["dummy"], sent["dummy_rows"], sent["dummy_seed"]) == (True, 10, 7)
    assert result.result == [1, 2.5, [3]] and result.dummy


def test_tables_are_still_dataframes_and_unknown_results_are_errors() -> None:
    table = {"type": "table", "columns": ["n"], "dtypes": {"n": "int64"}, "records": [{"n": 3}]}
    server = Server(answer(table), answer({"type": "pickle", "value": "gASV"}))
    client = server.client()
    frame = client.opendp.query(laplace_count()).result
    pd.testing.assert_frame_equal(frame, pd.DataFrame({"n": [3]}))
    with pytest.raises(NeblinaError, match="unknown result type 'pickle'"):
        client.opendp.query(laplace_count())


def test_space_is_built_from_the_metadata() -> None:
    server = Server(
        {"dataset": "PENGUIN", "metadata": META}, {"dataset": "PENGUIN", "metadata": META}
    )
    client = server.client()
    frame = client.opendp.space()
    assert frame.input_domain == dp.atom_domain(T=str)
    recipe = json.loads(dp.serialize(frame))["__kwargs__"]
    assert recipe["separator"] == "," and recipe["col_names"] == COLUMNS
    with pytest.raises(ValueError, match="no column 'wingspan'"):
        client.opendp.space("wingspan")


def test_only_opendp_objects_can_be_sent() -> None:
    with pytest.raises(TypeError, match="expected an OpenDP Measurement"):
        pipeline_nodes(3.0)
    with pytest.raises(TypeError, match="cannot send object objects"):
        pipeline_nodes([object()])
    with pytest.raises(ValueError, match="fixed_delta must be finite"):
        Server().client().opendp.cost(laplace_count(), fixed_delta=float("nan"))
