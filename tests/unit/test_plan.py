"""POST .../plan: each query's price and accuracy, the exact total, whether it fits; free."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import opendp_pipelines as pipes
import pytest
from test_service import COUNT, remaining
from test_service import service as service
from test_service import store as store

from chalicelib.errors import InvalidQuery, InvalidRequest
from chalicelib.models import PrivacyCost
from chalicelib.service import Service
from chalicelib.storage.memory import MemoryStore

AVG = {
    "engine": "smartnoise_sql",
    "query": "SELECT sex, AVG(bill_length_mm) AS b FROM df GROUP BY sex",
    "epsilon": "0.5",
    "delta": 0,
}


def test_a_plan_prices_each_query_as_cost_does_and_sums_them_exactly(
    service: Service, store: MemoryStore
) -> None:
    opendp = pipes.body(pipes.laplace_count(2.0))
    before = remaining(store)
    answer = service.plan("alice", "PENGUIN", {"queries": [COUNT, AVG, opendp]})
    assert remaining(store) == before and store.list_queries("alice", "PENGUIN", 10, None)[0] == []
    singles = [service.cost("alice", "PENGUIN", q) for q in (COUNT, AVG, opendp)]
    assert [q["cost"] for q in answer["queries"]] == [s["cost"] for s in singles]
    assert [q["accuracy"] for q in answer["queries"]] == [s["accuracy"] for s in singles]
    total = sum((PrivacyCost(**s["cost"]) for s in singles), PrivacyCost.zero())
    assert PrivacyCost(**answer["total"]) == total
    assert total.epsilon == Decimal("1") + Decimal("1") + Decimal("0.5")  # AVG = SUM + COUNT
    assert answer["fits"] == {"grant": True, "cap": None, "query_cap": True, "all": True}
    assert all(q["within_query_cap"] for q in answer["queries"])


def test_a_plan_over_the_remaining_budget_says_it_does_not_fit(service: Service) -> None:
    big = {**COUNT, "epsilon": 2}
    answer = service.plan("alice", "PENGUIN", {"queries": [big, big, big]})  # 6 > 5
    assert PrivacyCost(**answer["total"]) == PrivacyCost(epsilon=6, delta=0)
    assert answer["fits"]["grant"] is False and answer["fits"]["all"] is False
    assert PrivacyCost(**answer["remaining"]) == PrivacyCost(epsilon=5, delta="0.001")


def test_the_plan_level_applies_to_every_query_unless_one_asks_its_own(service: Service) -> None:
    answer = service.plan(
        "alice", "PENGUIN", {"queries": [COUNT, {**COUNT, "level": 0.5}], "level": 0.99}
    )
    assert [q["accuracy"]["level"] for q in answer["queries"]] == [0.99, 0.5]


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        ({"queries": []}, InvalidRequest, "queries must be a list"),
        ({"queries": COUNT}, InvalidRequest, "queries must be a list"),
        ({"queries": [COUNT] * 101}, InvalidRequest, "queries must be a list"),
        ({"queries": [COUNT], "extra": 1}, InvalidRequest, "unknown fields"),
        ({"queries": [COUNT], "level": 2}, InvalidRequest, "level"),
        (
            {"queries": [COUNT, {**COUNT, "query": "SELECT nope FROM df"}]},
            InvalidQuery,
            r"queries\[1\]",
        ),
        ({"queries": [{**COUNT, "query_id": "q-00000009"}]}, InvalidRequest, r"queries\[0\]"),
        ({"queries": [{"engine": "nope"}]}, InvalidRequest, r"queries\[0\]: unknown engine"),
    ],
)
def test_a_bad_plan_is_a_4xx_naming_the_query_and_debits_nothing(
    service: Service, store: MemoryStore, body: dict[str, Any], error: type, message: str
) -> None:
    before = remaining(store)
    with pytest.raises(error, match=message):
        service.plan("alice", "PENGUIN", body)
    assert remaining(store) == before
