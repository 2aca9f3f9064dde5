"""Issue 18 over HTTP (the real API server, its worker processes, the emulator): accuracy on
prices and releases, the plan route and epsilon_for, identical-query reuse."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from neblina_client import Client, Cost

COUNT = "SELECT COUNT(*) AS n FROM df"
GROUP = "SELECT species, COUNT(*) AS n, AVG(bill_length_mm) AS b FROM df GROUP BY species"


@pytest.fixture
def client(stack, make_researcher):  # type: ignore[no-untyped-def]
    researcher = make_researcher({"PENGUIN": ("10", "0.001")})
    with Client(url=stack.api_url, token=researcher.token, dataset="PENGUIN", max_retries=0) as c:
        yield c


def test_prices_and_releases_carry_their_accuracy_over_http(client: Client) -> None:
    cost = client.sql.cost(GROUP, epsilon=1.0, delta=0, level=0.99)
    assert cost.accuracy is not None and cost.accuracy.attrs["level"] == 0.99
    n = cost.accuracy.loc["n"]
    assert n["distribution"] == "Laplace" and n["accuracy"] == math.ceil(
        n["scale"] * math.log(100) - 1e-9
    )
    assert cost.accuracy.loc["b", "accuracy"] is None or math.isnan(
        cost.accuracy.loc["b", "accuracy"]
    )
    assert len(cost.accuracy.loc["b", "components"]) == 2
    res = client.sql.query(GROUP, epsilon=1.0, delta=0, level=0.99)
    assert list(res.accuracy.index) == list(res.result.columns)
    assert res.accuracy.loc["n", "accuracy"] == n["accuracy"]


def test_a_plan_prices_a_workload_and_epsilon_for_finds_the_budget_for_a_target(
    client: Client,
) -> None:
    before = client.budget().remaining
    bodies = [
        {"engine": "smartnoise_sql", "query": COUNT, "epsilon": e, "delta": 0} for e in (1, 2)
    ]
    plan = client.plan(bodies)
    assert list(plan["epsilon"]) == [Decimal(1), Decimal(2)]
    assert plan.attrs["total"] == Cost(epsilon=Decimal(3), delta=Decimal(0))
    assert plan.attrs["fits"]["all"] is True
    eps = client.sql.epsilon_for(COUNT, accuracy=10.0, level=0.95)
    stated = client.sql.cost(COUNT, epsilon=eps, delta=0).accuracy
    assert stated is not None and stated.loc["n", "accuracy"] <= 10.0
    slightly_less = client.sql.cost(COUNT, epsilon=eps / 1.02, delta=0).accuracy
    assert slightly_less is not None and slightly_less.loc["n", "accuracy"] > 10.0
    assert client.budget().remaining == before  # planning is free


def test_asking_again_returns_the_same_release_free(client: Client) -> None:
    first = client.sql.query(COUNT, epsilon=0.5, delta=0, reuse=True)
    spent = client.budget().remaining
    again = client.sql.query(COUNT, epsilon=0.5, delta=0, reuse=True)
    assert again.reused and not first.reused and again.query_id == first.query_id
    assert again.result.equals(first.result)
    assert client.budget().remaining == spent
    fresh = client.sql.query(COUNT, epsilon=0.5, delta=0)  # the default: a fresh draw
    assert not fresh.reused and client.budget().remaining.epsilon == spent.epsilon - Decimal("0.5")
