"""The client's accuracy: on prices (``cost.accuracy``) and releases (``result.accuracy``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
