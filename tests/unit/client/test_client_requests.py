"""Each client method sends the request of docs/api.md and reads its response."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd
import pytest

from neblina_client import (
    ArchivedQuery,
    Budget,
    Client,
    Cost,
    DatasetInfo,
    NeblinaError,
    QueryResult,
    __version__,
)

if TYPE_CHECKING:
    from fake_server import FakeServer


def table(dtypes: dict[str, str], *records: dict[str, Any]) -> dict[str, Any]:
    """A table as the server sends it."""
    return {"type": "table", "columns": list(dtypes), "dtypes": dtypes, "records": list(records)}


CREATED = "2026-11-25T12:00:00.000000+00:00"
SQL = "SELECT COUNT(*) AS n FROM df"
COST = {"epsilon": "1", "delta": "0.000014999949999983109"}
RESULT_TABLE = table({"n": "int64"}, {"n": 345})


def query_response(**overrides: Any) -> dict[str, Any]:
    body = {
        "query_id": "q" * 32,
        "dataset": "PENGUIN",
        "engine": "smartnoise_sql",
        "dummy": False,
        "replayed": False,
        "cost": COST,
        "created_at": CREATED,
        "result": RESULT_TABLE,
    }
    body.update(overrides)
    return body


def record(query_id: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "query_id": query_id,
        "dataset": "PENGUIN",
        "engine": "smartnoise_sql",
        "state": "done",
        "request": {"engine": "smartnoise_sql", "query": SQL, "epsilon": 1.0, "delta": 1e-5},
        "cost": {"epsilon": "0.1", "delta": "0"},
        "created_at": CREATED,
        "finished_at": "2026-11-25T12:00:01.500000+00:00",
        "result": RESULT_TABLE,
        "error": None,
    }
    body.update(overrides)
    return body


def path_and_params(request: httpx.Request) -> tuple[str, dict[str, str]]:
    return request.url.path, dict(request.url.params)


# One call per route, with a valid response for it.
CALLS: dict[str, tuple[Callable[[Client], Any], Any]] = {
    "datasets": (lambda c: c.datasets(), {"datasets": []}),
    "metadata": (lambda c: c.metadata(), {"dataset": "PENGUIN", "metadata": {}}),
    "dummy": (lambda c: c.dummy(), {"table": table({})}),
    "budget": (
        lambda c: c.budget(),
        {"initial": COST, "spent": COST, "remaining": COST},
    ),
    "cost": (lambda c: c.sql.cost(SQL, 1.0, 1e-5), {"cost": COST}),
    "query": (lambda c: c.sql.query(SQL, 1.0, 1e-5), query_response()),
    "history": (lambda c: c.history(), {"queries": [], "next_cursor": None}),
    "result": (lambda c: c.result("q" * 32), record("q" * 32)),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_route_sends_the_bearer_token(server: FakeServer, name: str) -> None:
    call, response = CALLS[name]
    server.reply(200, response)
    call(server.client())
    (request,) = server.requests
    assert request.headers["Authorization"] == f"Bearer {server.token}"
    assert request.headers["User-Agent"] == f"neblina-client/{__version__}"
    assert request.url.host == "neblina.test"


def test_datasets(server: FakeServer) -> None:
    server.reply(
        200,
        {
            "datasets": [
                {"name": "PENGUIN", "description": "Palmer penguins", "rows": 344},
                {"name": "IRIS", "description": "", "rows": 150},
            ]
        },
    )
    assert server.client().datasets() == [
        DatasetInfo(name="PENGUIN", description="Palmer penguins", rows=344),
        DatasetInfo(name="IRIS", description="", rows=150),
    ]
    assert server.requests[0].method == "GET"
    assert path_and_params(server.requests[0]) == ("/v1/datasets", {})


def test_metadata_returns_the_metadata_object(server: FakeServer) -> None:
    metadata = {"max_ids": 1, "rows": 344, "row_privacy": True, "columns": {"x": {}}}
    server.reply(200, {"dataset": "PENGUIN", "metadata": metadata})
    assert server.client().metadata() == metadata
    assert path_and_params(server.requests[0]) == ("/v1/datasets/PENGUIN/metadata", {})


def test_dummy_sends_rows_and_seed_and_decodes_the_table(server: FakeServer) -> None:
    wire = table(
        {"species": "object", "bill_length_mm": "float64", "year": "int64"},
        {"species": "Adelie", "bill_length_mm": 39.1, "year": 2007},
        {"species": None, "bill_length_mm": None, "year": 2008},
    )
    server.reply(200, {"dataset": "PENGUIN", "rows": 2, "seed": 7, "table": wire})
    frame = server.client().dummy(rows=2, seed=7)
    assert path_and_params(server.requests[0]) == (
        "/v1/datasets/PENGUIN/dummy",
        {"rows": "2", "seed": "7"},
    )
    assert list(frame.columns) == ["species", "bill_length_mm", "year"]
    assert frame["year"].dtype == "int64"
    assert frame["species"].tolist() == ["Adelie", None]


def test_dummy_defaults(server: FakeServer) -> None:
    server.reply(200, {"table": table({"x": "int64"})})
    server.client().dummy()
    assert dict(server.requests[0].url.params) == {"rows": "100", "seed": "42"}


def test_budget_amounts_are_exact(server: FakeServer) -> None:
    server.reply(
        200,
        {
            "dataset": "PENGUIN",
            "initial": {"epsilon": "10", "delta": "0.0001"},
            "spent": {"epsilon": "0.3", "delta": "0.000014999949999983109"},
            "remaining": {"epsilon": "9.7", "delta": "0.000085000050000016891"},
        },
    )
    budget = server.client().budget()
    assert path_and_params(server.requests[0]) == ("/v1/datasets/PENGUIN/budget", {})
    assert budget == Budget(
        initial=Cost(epsilon=Decimal("10"), delta=Decimal("0.0001")),
        spent=Cost(epsilon=Decimal("0.3"), delta=Decimal("0.000014999949999983109")),
        remaining=Cost(epsilon=Decimal("9.7"), delta=Decimal("0.000085000050000016891")),
    )
    assert budget.spent + budget.remaining == budget.initial


def test_cost_request_and_exact_answer(server: FakeServer) -> None:
    server.reply(200, {"dataset": "PENGUIN", "engine": "smartnoise_sql", "cost": COST})
    cost = server.client().sql.cost(SQL, epsilon=1.0, delta=1e-5, mechanisms={"count": "gaussian"})
    request = server.requests[0]
    assert request.method == "POST"
    assert path_and_params(request) == ("/v1/datasets/PENGUIN/cost", {})
    assert request.headers["Content-Type"] == "application/json"
    assert server.body() == {
        "engine": "smartnoise_sql",
        "query": SQL,
        "epsilon": 1.0,
        "delta": 1e-5,
        "mechanisms": {"count": "gaussian"},
    }
    assert cost == Cost(epsilon=Decimal(1), delta=Decimal("0.000014999949999983109"))
    assert isinstance(cost.delta, Decimal)


def test_costs_add_up_exactly(server: FakeServer) -> None:
    server.reply(200, {"cost": {"epsilon": "0.1", "delta": "0"}})
    server.reply(200, {"cost": {"epsilon": "0.2", "delta": "0"}})
    client = server.client()
    total = client.sql.cost(SQL, 0.1, 0) + client.sql.cost(SQL, 0.2, 0)
    assert total.epsilon == Decimal("0.3")


@pytest.mark.parametrize(
    ("epsilon", "delta", "raw"),
    [
        (0.1, 1e-5, '"epsilon":0.1,"delta":1e-05'),  # floats by repr, as JSON numbers
        (1, 0, '"epsilon":1,"delta":0'),
        (Decimal("0.1"), Decimal("0.00001"), '"epsilon":"0.1","delta":"0.00001"'),
        ("0.5", "1e-6", '"epsilon":"0.5","delta":"1e-6"'),
        (0.30000000000000004, 0.0, '"epsilon":0.30000000000000004,"delta":0.0'),
    ],
)
def test_amounts_are_sent_without_rounding(
    server: FakeServer, epsilon: Any, delta: Any, raw: str
) -> None:
    server.reply(200, {"cost": COST})
    server.client().sql.cost(SQL, epsilon, delta)
    assert raw in server.requests[0].content.decode()


@pytest.mark.parametrize(
    ("epsilon", "error"),
    [
        (True, TypeError),
        (None, TypeError),
        ([1], TypeError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (Decimal("NaN"), ValueError),
        (Decimal("-Infinity"), ValueError),
    ],
)
def test_unsendable_amounts_fail_before_any_request(
    server: FakeServer, epsilon: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="epsilon"):
        server.client().sql.cost(SQL, epsilon, 1e-5)
    assert server.requests == []


def test_query_request_and_result(server: FakeServer) -> None:
    server.reply(200, query_response())
    answer = server.client().sql.query(SQL, epsilon=1.0, delta=1e-5)
    request = server.requests[0]
    assert request.method == "POST"
    assert path_and_params(request) == ("/v1/datasets/PENGUIN/queries", {})
    body = server.body()
    assert re.fullmatch(r"[0-9a-f]{32}", body.pop("query_id"))
    assert body == {
        "engine": "smartnoise_sql",
        "query": SQL,
        "epsilon": 1.0,
        "delta": 1e-5,
        "postprocess": True,
        "dummy": False,
    }
    assert isinstance(answer, QueryResult)
    assert (answer.query_id, answer.dataset, answer.engine) == (
        "q" * 32,
        "PENGUIN",
        "smartnoise_sql",
    )
    assert answer.cost == Cost(epsilon=Decimal(1), delta=Decimal("0.000014999949999983109"))
    assert (answer.dummy, answer.replayed) == (False, False)
    assert answer.created_at == datetime(2026, 11, 25, 12, tzinfo=UTC)
    pd.testing.assert_frame_equal(answer.result, pd.DataFrame({"n": [345]}))


def test_query_ids_are_fresh_per_call(server: FakeServer) -> None:
    server.reply(200, query_response()).reply(200, query_response())
    client = server.client()
    client.sql.query(SQL, 1.0, 1e-5)
    client.sql.query(SQL, 1.0, 1e-5)
    assert server.body(0)["query_id"] != server.body(1)["query_id"]


def test_query_with_every_option(server: FakeServer) -> None:
    server.reply(200, query_response(dummy=True, result=None))
    answer = server.client().sql.query(
        SQL,
        Decimal("0.5"),
        0,
        {"count": "laplace"},
        postprocess=False,
        dummy=True,
        query_id="my-query_0001",
        dummy_rows=10,
        dummy_seed=3,
    )
    assert server.body() == {
        "engine": "smartnoise_sql",
        "query": SQL,
        "epsilon": "0.5",
        "delta": 0,
        "mechanisms": {"count": "laplace"},
        "query_id": "my-query_0001",
        "postprocess": False,
        "dummy": True,
        "dummy_rows": 10,
        "dummy_seed": 3,
    }
    assert answer.dummy is True
    assert answer.result is None


def test_history_follows_cursors_newest_first(server: FakeServer) -> None:
    server.reply(200, {"queries": [record("q3"), record("q2")], "next_cursor": "c1"})
    server.reply(200, {"queries": [record("q1")], "next_cursor": None})
    history = server.client().history()
    assert [q.query_id for q in history] == ["q3", "q2", "q1"]
    assert [path_and_params(r) for r in server.requests] == [
        ("/v1/datasets/PENGUIN/queries", {"limit": "100"}),
        ("/v1/datasets/PENGUIN/queries", {"limit": "100", "cursor": "c1"}),
    ]
    assert sum((q.cost for q in history), Cost.zero()).epsilon == Decimal("0.3")


def test_history_limit_stops_early_and_asks_only_for_what_is_left(server: FakeServer) -> None:
    server.reply(200, {"queries": [record("q5"), record("q4")], "next_cursor": "c1"})
    server.reply(200, {"queries": [record("q3")], "next_cursor": "c2"})
    history = server.client().history(limit=3)
    assert [q.query_id for q in history] == ["q5", "q4", "q3"]
    assert [dict(r.url.params) for r in server.requests] == [
        {"limit": "3"},
        {"limit": "1", "cursor": "c1"},
    ]


def test_history_limit_zero_sends_nothing(server: FakeServer) -> None:
    assert server.client().history(limit=0) == []
    assert server.requests == []
    with pytest.raises(ValueError, match="limit"):
        server.client().history(limit=-1)


def test_history_refuses_a_repeated_cursor(server: FakeServer) -> None:
    server.reply(200, {"queries": [record("q2")], "next_cursor": "c1"})
    server.reply(200, {"queries": [record("q1")], "next_cursor": "c1"})
    with pytest.raises(NeblinaError) as caught:
        server.client().history()
    assert caught.value.code == "invalid_response"


def test_result_reads_one_record(server: FakeServer) -> None:
    server.reply(
        200,
        record(
            "q1",
            state="failed",
            finished_at=None,
            result=None,
            error={"error": "engine_error", "message": "fixed text"},
        ),
    )
    archived = server.client().result("q1")
    assert path_and_params(server.requests[0]) == ("/v1/datasets/PENGUIN/queries/q1", {})
    assert isinstance(archived, ArchivedQuery)
    assert archived.state == "failed"
    assert archived.request["query"] == SQL
    assert archived.cost == Cost(epsilon=Decimal("0.1"), delta=Decimal(0))
    assert archived.created_at == datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert archived.finished_at is None
    assert archived.result is None
    assert archived.error == {"error": "engine_error", "message": "fixed text"}


def test_result_of_a_done_query_has_its_table(server: FakeServer) -> None:
    server.reply(200, record("q1"))
    archived = server.client().result("q1")
    assert archived.finished_at == datetime(2026, 11, 25, 12, 0, 1, 500000, tzinfo=UTC)
    pd.testing.assert_frame_equal(archived.result, pd.DataFrame({"n": [345]}))


def test_path_segments_are_escaped(server: FakeServer) -> None:
    server.reply(200, record("a/b?c"))
    server.client(dataset="MY DATA/1").result("a/b?c")
    assert server.requests[0].url.raw_path == b"/v1/datasets/MY%20DATA%2F1/queries/a%2Fb%3Fc"


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>proxy page</html>"),
        httpx.Response(200, json={"unexpected": True}),
        httpx.Response(200, json=["a", "list"]),
        httpx.Response(200, json={"cost": {"epsilon": "NaN", "delta": "0"}}),
    ],
    ids=["not-json", "missing-field", "wrong-shape", "bad-decimal"],
)
def test_malformed_success_bodies_raise_invalid_response(
    server: FakeServer, response: httpx.Response
) -> None:
    server.replies.append(response)
    with pytest.raises(NeblinaError) as caught:
        server.client().sql.cost(SQL, 1.0, 1e-5)
    assert caught.value.code == "invalid_response"


def test_context_manager_closes_the_connection(server: FakeServer) -> None:
    with server.client() as client:
        assert not client._http.is_closed
    assert client._http.is_closed
