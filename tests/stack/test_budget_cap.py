"""GET .../budget shows what the caller can really spend: the grant, the dataset's cap, and
which one binds (issue 11 §2), over HTTP and through the client."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import yaml

from chalicelib.models import PrivacyCost
from neblina_admin import operations as admin
from neblina_client import BudgetExhaustedError, Client, Cost

ROOT = Path(__file__).resolve().parents[2]
COUNT = "SELECT COUNT(*) AS n FROM df"


def test_a_cap_tighter_than_the_grant_is_what_the_budget_shows(  # type: ignore[no-untyped-def]
    stack, store, make_researcher
) -> None:
    meta = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
    name = f"CAPPED{uuid.uuid4().hex[:6]}"
    admin.add_dataset(store, name, str(ROOT / "localstack/data/penguins.csv"), meta)
    admin.set_cap(store, name, PrivacyCost(epsilon="3", delta="0.01"))
    other = make_researcher({name: ("10", "0.001")})
    who = make_researcher({name: ("10", "0.001")})
    with Client(url=stack.api_url, token=other.token, dataset=name) as c:
        spent = c.sql.query(COUNT, 1.0, 1e-5).cost  # another researcher spends from the cap
    assert spent.epsilon == 1

    with httpx.Client(base_url=stack.api_url, timeout=60) as http:
        answer = http.get(
            f"/v1/datasets/{name}/budget", headers={"Authorization": f"Bearer {who.token}"}
        ).json()
    cap_left = {"epsilon": "2", "delta": str(Decimal("0.01") - spent.delta)}
    assert answer == {
        "dataset": name,
        "initial": {"epsilon": "10", "delta": "0.001"},
        "spent": {"epsilon": "0", "delta": "0"},
        "remaining": {"epsilon": "10", "delta": "0.001"},  # the grant, unchanged
        "cap": {"limit": {"epsilon": "3", "delta": "0.01"}, "remaining": cap_left},
        "available": {"epsilon": "2", "delta": "0.001"},
        "limited_by": {"epsilon": "cap", "delta": "grant"},
    }

    with Client(url=stack.api_url, token=who.token, dataset=name) as c:
        budget = c.budget()
        assert budget.remaining == Cost(Decimal(10), Decimal("0.001"))
        assert budget.available == Cost(Decimal(2), Decimal("0.001"))
        assert budget.cap_limit == Cost(Decimal(3), Decimal("0.01"))
        assert budget.cap_remaining == Cost(Decimal(2), Decimal("0.01") - spent.delta)
        assert budget.limited_by == {"epsilon": "cap", "delta": "grant"}
        # what the budget says is what a query meets: more than `available` is refused
        with pytest.raises(BudgetExhaustedError):
            c.sql.query(COUNT, 2.5, 1e-5)
        assert c.budget() == budget


def test_without_a_cap_the_grant_is_all_there_is(stack, make_researcher) -> None:  # type: ignore[no-untyped-def]
    who = make_researcher({"PENGUIN": ("4", "0.001")})
    with Client(url=stack.api_url, token=who.token, dataset="PENGUIN") as c:
        budget = c.budget()
    assert budget.available == budget.remaining == Cost(Decimal(4), Decimal("0.001"))
    assert budget.cap_limit is None and budget.cap_remaining is None
    assert budget.limited_by == {"epsilon": "grant", "delta": "grant"}
