"""The client's accuracy: on prices (``cost.accuracy``) and releases (``result.accuracy``)."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fake_server import FakeServer as FakeServerBase
from test_client_requests import COST, SQL, query_response

if TYPE_CHECKING:
    from fake_server import FakeServer

STATED = {
    "level": 0.99,
    "columns": [
        {
            "column": "n",
            "aggregate": "COUNT(*)",
            "distribution": "Laplace",
            "scale": 1.0,
            "accuracy": 5.0,
            "reason": None,
            "components": None,
        }
    ],
    "reason": None,
}


def test_a_price_carries_each_columns_accuracy_at_the_level_asked(server: FakeServer) -> None:
    server.reply(
        200, {"dataset": "PENGUIN", "engine": "smartnoise_sql", "cost": COST, "accuracy": STATED}
    )
    cost = server.client().sql.cost(SQL, epsilon=1.0, delta=0, level=0.99)
    assert server.body()["level"] == 0.99
    assert cost.accuracy is not None
    assert cost.accuracy.attrs["level"] == 0.99
    assert cost.accuracy.loc["n", "accuracy"] == 5.0
    assert cost.accuracy.loc["n", "distribution"] == "Laplace"


def test_a_release_carries_its_accuracy_aligned_with_the_result(server: FakeServer) -> None:
    server.reply(200, query_response(accuracy=STATED))
    answer: Any = server.client().sql.query(SQL, epsilon=1.0, delta=0, level=0.99)
    assert server.body()["level"] == 0.99
    assert list(answer.accuracy.index) == list(answer.result.columns)
    assert answer.accuracy.loc["n", "accuracy"] == 5.0


def test_an_engine_without_an_analytic_accuracy_gives_an_empty_frame_and_the_reason(
    server: FakeServer,
) -> None:
    none = {"level": 0.95, "columns": None, "reason": "no analytic accuracy"}
    server.reply(200, query_response(accuracy=none))
    answer: Any = server.client().sql.query(SQL, epsilon=1.0, delta=0)
    assert "level" not in server.body()
    assert answer.accuracy.empty and answer.accuracy.attrs["reason"] == "no analytic accuracy"


class PlanningServer(FakeServerBase):  # type: ignore[misc,valid-type]
    """Answers every plan like a COUNT under Laplace noise: half-width ln(1/α) / ε."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        body = json.loads(request.content)
        level = body.get("level", 0.95)
        queries = []
        for query in body["queries"]:
            epsilon = float(query["epsilon"])
            stated = {
                "level": level,
                "columns": [
                    {
                        "column": "n",
                        "aggregate": "COUNT(*)",
                        "distribution": "Laplace",
                        "scale": 1 / epsilon,
                        "accuracy": math.log(1 / (1 - level)) / epsilon,
                        "reason": None,
                        "components": None,
                    }
                ],
                "reason": None,
            }
            cost = {"epsilon": str(query["epsilon"]), "delta": "0"}
            queries.append(
                {
                    "engine": query["engine"],
                    "cost": cost,
                    "accuracy": stated,
                    "within_query_cap": True,
                }
            )
        answer = {
            "dataset": "PENGUIN",
            "level": level,
            "queries": queries,
            "total": {"epsilon": "1", "delta": "0"},
            "remaining": {"epsilon": "5", "delta": "0"},
            "cap_remaining": None,
            "fits": {"grant": True, "cap": None, "query_cap": True, "all": True},
        }
        return httpx.Response(200, json=answer)


def test_plan_sends_every_body_and_returns_one_row_per_query() -> None:
    server = PlanningServer()
    frame = server.client().plan(
        [{"engine": "smartnoise_sql", "query": SQL, "epsilon": e, "delta": 0} for e in (1, 2)],
        level=0.9,
    )
    assert server.body()["level"] == 0.9 and len(server.body()["queries"]) == 2
    assert list(frame["epsilon"]) == [Decimal(1), Decimal(2)]
    assert frame.attrs["fits"]["all"] is True
    assert frame["accuracy"][1].loc["n", "accuracy"] == pytest.approx(math.log(10) / 2)


@pytest.mark.parametrize(("target", "level"), [(3.0, 0.95), (0.5, 0.99), (40.0, 0.9)])
def test_epsilon_for_finds_the_smallest_epsilon_within_its_stated_precision(
    target: float, level: float
) -> None:
    server = PlanningServer()
    found = server.client().sql.epsilon_for(SQL, accuracy=target, level=level)
    exact = math.log(1 / (1 - level)) / target  # the smallest ε reaching the target
    assert exact <= found <= exact * 1.01
    assert len(server.requests) <= 5


def test_epsilon_for_says_when_no_epsilon_reaches_the_target() -> None:
    with pytest.raises(ValueError, match="no epsilon"):
        PlanningServer().client().sql.epsilon_for(SQL, accuracy=1e-9)


def test_reuse_is_sent_only_when_asked_and_the_answer_says_reused(server: FakeServer) -> None:
    server.reply(200, query_response(reused=True))
    answer: Any = server.client().sql.query(SQL, epsilon=1.0, delta=0, reuse=True)
    assert server.body()["reuse"] is True and answer.reused
    server.reply(200, query_response())
    fresh: Any = server.client().sql.query(SQL, epsilon=1.0, delta=0)
    assert "reuse" not in server.body() and not fresh.reused


def test_a_polars_release_decodes_with_opendps_summary_as_its_accuracy() -> None:
    """A Polars release carries OpenDP's summary inside ``result``; decoding it must not test
    a DataFrame for truth (it raised ``ValueError``, so every Polars release failed)."""
    from neblina_client._decode import parse_query_result

    summary = {"alpha": 0.05, "columns": [{"column": "len", "scale": 2.0, "accuracy": 6.0}]}
    body = {
        "query_id": "q-1",
        "dataset": "PENGUIN",
        "engine": "opendp_polars",
        "cost": COST,
        "created_at": "2026-11-29T12:00:00+00:00",
        "result": {
            "type": "table",
            "columns": ["len"],
            "dtypes": {"len": "int64"},
            "records": [{"len": 344}],
            "accuracy": summary,
        },
        "accuracy": STATED,
    }
    result = parse_query_result(body)
    assert result.accuracy is not None
    assert list(result.accuracy["column"]) == ["len"]
    assert result.accuracy.attrs["alpha"] == 0.05
