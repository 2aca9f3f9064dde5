"""The SmartNoise plan memo: a repeated query skips parse and rewrite, never the noise."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from snsql.sql.parse import QueryParser

from chalicelib import metadata as M
from chalicelib.datasets import LoadedDataset, coerce_types
from chalicelib.engines import smartnoise_engine as sn
from chalicelib.models import Dataset, utcnow

ROOT = Path(__file__).resolve().parents[2]
META = M.validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))
FRAME = coerce_types(pd.read_csv(ROOT / "localstack/data/penguins.csv"), META)
ENGINE = sn.ENGINE
COUNT = "SELECT COUNT(*) AS n FROM df"
GROUP = "SELECT sex, COUNT(*) AS n, AVG(bill_length_mm) AS b FROM df GROUP BY sex"
SUM = "SELECT SUM(bill_length_mm) AS s FROM df"


def request(query: str, **extra: object) -> sn.SqlRequest:
    body = {"engine": "smartnoise_sql", "query": query, "epsilon": 1.0, "delta": 1e-5}
    return ENGINE.parse({**body, **extra})


def loaded(meta: dict[str, Any] = META, version: str = "v1") -> LoadedDataset:
    return LoadedDataset("PENGUIN", version, meta, FRAME)


@pytest.fixture(autouse=True)
def empty_memo() -> Iterator[None]:
    sn.PLANS.discard(lambda _: False)
    yield
    sn.PLANS.discard(lambda _: False)


@pytest.fixture
def exact_aggregates(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """Every exact (pre-noise) aggregate table the private copy answers, in order."""
    seen: list[list[Any]] = []
    original = sn.RoutingReader._execute_ast

    def recorded(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        rows = original(self, query, *args, **kwargs)
        seen.append([list(row) for row in rows])
        return rows

    monkeypatch.setattr(sn.RoutingReader, "_execute_ast", recorded)
    return seen


def mechanisms(plan: sn.SqlPlan) -> list[tuple[Any, ...]]:
    return [
        (type(m).__name__, m.epsilon, m.delta, m.lower, m.upper, m.scale)
        for m in (s.mechanism for s in plan.subquery._select_symbols)
        if m
    ]


@pytest.mark.parametrize("query", [COUNT, GROUP])
def test_a_repeated_query_is_parsed_and_rewritten_only_once(
    query: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    original = QueryParser.queries

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(QueryParser, "queries", counted)
    req, data = request(query), loaded()
    ENGINE.execute(data, req)
    first = len(calls)
    assert first > 0
    for _ in range(3):
        ENGINE.execute(data, req)
    assert len(calls) == first  # before the memo: three parses on every execute


@pytest.mark.parametrize("query", [COUNT, GROUP, SUM])
def test_a_memoised_plan_runs_the_same_exact_aggregates_at_the_same_cost(
    query: str, exact_aggregates: list[list[Any]]
) -> None:
    req, data = request(query), loaded()
    dataset = Dataset("PENGUIN", "unused", META, utcnow())
    cost = ENGINE.cost(dataset, req)
    ENGINE.execute(data, req)  # builds the plan
    ENGINE.execute(data, req)  # runs it from the memo
    # SmartNoise's own path (no plan): parse and rewrite on this request
    reader = sn.DomainKeysReader(
        ENGINE._reader(data),
        sn.metadata_for("PENGUIN", META),
        privacy=req.privacy(),
        columns=META["columns"],
        complete=not META["censor_dims"],
    )
    reader.execute(req.query)
    built, memoised, unplanned = exact_aggregates
    assert built == memoised == unplanned
    plan = sn.sql_plan("PENGUIN", META, req)
    assert mechanisms(plan) == mechanisms(sn.build_plan("PENGUIN", META, req))
    assert ENGINE.cost(dataset, req) == cost
    assert cost.epsilon == len(mechanisms(plan)) * Decimal(1)


def test_every_release_from_a_memoised_plan_draws_fresh_noise_at_its_scale(
    exact_aggregates: list[list[Any]],
) -> None:
    """200 raw COUNT releases from one plan: all distinct, and their mean |noise| is the
    Laplace scale b (E|X| = b). The mean of 200 Exp(b) lies outside [0.5 b, 1.6 b] with
    probability below e^-26 (Chernoff); a cached release (noise reused) or a release at a
    tenth of the scale fails."""
    req, data = request(COUNT, postprocess=False), loaded()
    runs = 200
    released = [ENGINE.execute(data, req) for _ in range(runs)]
    (scale,) = {m[-1] for m in mechanisms(sn.sql_plan("PENGUIN", META, req))}
    assert len(sn.PLANS) == 1
    exact = {rows[1][0] for rows in exact_aggregates}
    assert len(exact) == 1
    (truth,) = exact
    noisy = [float(table["records"][0]["res_0"]) for table in released]
    assert len(set(noisy)) == runs
    mean_deviation = sum(abs(v - truth) for v in noisy) / runs
    assert 0.5 * scale <= mean_deviation <= 1.6 * scale
    assert math.isfinite(scale) and scale > 0


def test_a_new_metadata_version_gets_its_own_plan() -> None:
    req = request(SUM)
    narrower = copy.deepcopy(META)
    narrower["columns"]["bill_length_mm"]["upper"] = 50.0
    ENGINE.execute(loaded(), req)
    ENGINE.execute(loaded(narrower, "v2"), req)
    old, new = sn.sql_plan("PENGUIN", META, req), sn.sql_plan("PENGUIN", narrower, req)
    assert len(sn.PLANS) == 2 and old is not new
    assert mechanisms(new) == mechanisms(sn.build_plan("PENGUIN", narrower, req))
    assert {m[4] for m in mechanisms(new)} == {50.0}
    assert {m[4] for m in mechanisms(old)} == {65.0}
