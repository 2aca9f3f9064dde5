"""Hostile bodies and hostile privacy amounts over HTTP: a clear 4xx, nothing debited.

Every body-reading route (``POST .../cost`` and ``POST .../queries``) gets each hostile body;
the answer must be a 400 with a stable code, the grant must be untouched, nothing archived,
and the server must answer the next request.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

ROUTES = ("cost", "queries")
COUNT = "SELECT COUNT(*) AS n FROM df"


def sql(**fields: Any) -> dict[str, Any]:
    body = {"engine": "smartnoise_sql", "query": COUNT, "epsilon": 1.0, "delta": 1e-5}
    return {**body, **fields, "query_id": uuid.uuid4().hex}


def deep_object(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


# (name, raw body) pairs: each is malformed or hostile JSON, never a valid request.
HOSTILE_BODIES = [
    ("10,000 nested arrays", b"[" * 10_000 + b"]" * 10_000),
    (
        "a 5,000-deep object in pipeline",
        (
            '{"engine": "opendp", "query_id": "q-deep-pipeline", "pipeline": '
            + deep_object(5_000)
            + "}"
        ).encode(),
    ),
    (
        "a 5,000-deep array in mechanisms",
        ('{"engine": "smartnoise_sql", "mechanisms": ' + "[" * 5000 + "]" * 5000 + "}").encode(),
    ),
    (
        "300 nested objects (over the depth limit, under the recursion limit)",
        deep_object(300).encode(),
    ),
    ("epsilon 1e400 (a float overflow)", json.dumps(sql()).replace("1.0", "1e400").encode()),
    ("epsilon NaN", json.dumps(sql()).replace("1.0", "NaN").encode()),
    ("delta -Infinity", json.dumps(sql()).replace("1e-05", "-Infinity").encode()),
    ("a 5,000-digit integer", json.dumps(sql()).replace("1.0", "9" * 5000).encode()),
    ("invalid UTF-8", b'{"engine": "\xff\xfe"}'),
    ("a list as a mechanism", json.dumps(sql(mechanisms={"count": []})).encode()),
    ("an object as a mechanism", json.dumps(sql(mechanisms={"count": {"a": 1}})).encode()),
]


@pytest.fixture
def researcher(make_researcher):  # type: ignore[no-untyped-def]
    return make_researcher({"PENGUIN": ("10", "0.001")})


@pytest.fixture
def http(stack, researcher):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {researcher.token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as client:
        yield client


def untouched(http: httpx.Client) -> None:
    """The grant is whole and the archive empty."""
    budget = http.get("/v1/datasets/PENGUIN/budget").json()
    assert budget["spent"] == {"epsilon": "0", "delta": "0"}, budget
    assert http.get("/v1/datasets/PENGUIN/queries").json()["queries"] == []


@pytest.mark.parametrize(("name", "raw"), HOSTILE_BODIES, ids=[n for n, _ in HOSTILE_BODIES])
def test_hostile_json_bodies_get_a_400_on_every_body_reading_route(
    http: httpx.Client, name: str, raw: bytes
) -> None:
    for route in ROUTES:
        response = http.post(f"/v1/datasets/PENGUIN/{route}", content=raw)
        assert response.status_code == 400, (name, route, response.text[:300])
        assert response.json()["error"] == "invalid_request", (name, route, response.text)
        assert http.get("/health").status_code == 200  # the server answers the next request
    untouched(http)


# --- hostile privacy amounts -------------------------------------------------------------
FORTY_DIGITS = "0.1234567890123456789012345678901234567891"
HOSTILE_AMOUNTS: list[Any] = [
    "1e-400",
    "1e400",
    "-0",
    -0.0,
    "NaN",
    "Infinity",
    "-Infinity",
    FORTY_DIGITS,
    "0.00000000000000000000001",  # below the quantum
    1e-400,  # a JSON number that reads as 0.0
    10**400,  # a 401-digit JSON integer
    "1000000001",
    True,
    [],
    {},
]


def opendp_gaussian(**extra: Any) -> dict[str, Any]:
    from opendp_pipelines import body, gaussian_count

    return {**body(gaussian_count(3.0)), **extra, "query_id": uuid.uuid4().hex}


def amount_bodies() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for value in HOSTILE_AMOUNTS:
        label = repr(value)[:30]
        cases.append((f"smartnoise epsilon={label}", sql(epsilon=value)))
        cases.append((f"smartnoise delta={label}", sql(delta=value)))
        cases.append((f"opendp fixed_delta={label}", opendp_gaussian(fixed_delta=value)))
    return cases


def spent_equals_archive(http: httpx.Client) -> list[dict[str, Any]]:
    """spent == Σ archived costs, digit for digit, and every archived cost is on the grid."""
    from decimal import Decimal

    from chalicelib.models import on_grid

    records = http.get("/v1/datasets/PENGUIN/queries", params={"limit": 100}).json()["queries"]
    budget = http.get("/v1/datasets/PENGUIN/budget").json()
    for part in ("epsilon", "delta"):
        costs = [Decimal(r["cost"][part]) for r in records if r["state"] != "refunded"]
        assert all(on_grid(c) for c in costs), costs
        assert Decimal(budget["spent"][part]) == sum(costs, Decimal(0)), (budget, costs)
        assert Decimal(budget["spent"][part]) + Decimal(budget["remaining"][part]) == Decimal(
            budget["initial"][part]
        )
    return records


def test_hostile_amounts_in_every_amount_field_get_a_4xx_or_an_exact_rounded_up_charge(
    stack, make_researcher
) -> None:  # type: ignore[no-untyped-def]
    researcher = make_researcher({"PENGUIN": ("1000", "0.9")})
    headers = {"Authorization": f"Bearer {researcher.token}"}
    outcomes: dict[str, int] = {}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as http:
        for name, document in amount_bodies():
            quoted = http.post("/v1/datasets/PENGUIN/cost", json=document)
            ran = http.post("/v1/datasets/PENGUIN/queries", json=document)
            assert quoted.status_code < 500 and ran.status_code < 500, (name, ran.text[:300])
            assert quoted.status_code == ran.status_code or ran.status_code == 422, name
            if quoted.status_code >= 400:
                assert quoted.json()["error"] in ("invalid_request", "invalid_query"), name
            if ran.status_code == 200:
                assert ran.json()["cost"] == quoted.json()["cost"], name
            outcomes[name] = ran.status_code
        records = spent_equals_archive(http)
    print(f"\nhostile amounts: {len(outcomes)} bodies, outcomes {sorted(set(outcomes.values()))}")
    forty = f"smartnoise epsilon={FORTY_DIGITS!r}"[:48]
    name = next(n for n in outcomes if n.startswith(forty[:40]))
    assert outcomes[name] == 200  # 40 digits are accepted and charged rounded up:
    charged = [r for r in records if r["request"].get("epsilon") == FORTY_DIGITS]
    assert [r["cost"]["epsilon"] for r in charged] == ["0.12345678901234568"]
    assert len(records) == sum(1 for s in outcomes.values() if s in (200, 422))


# --- OpenDP pipelines that can never run ---------------------------------------------------
def never_runnable() -> tuple[list[tuple[str, Any]], Any]:
    import opendp.prelude as dp
    from opendp_pipelines import COLUMNS

    from neblina_client._opendp import input_space

    frame = input_space(COLUMNS, None)
    noise = dp.t.then_count() >> dp.m.then_laplace(1.0)
    return [
        ("a column selected as i32", frame >> dp.t.make_select_column("flipper_length_mm", int)),
        ("a column that does not exist", frame >> dp.t.make_select_column("wingspan", str)),
        (
            "a cast from a type the column is not",
            frame
            >> dp.t.then_df_cast_default(column_name="study_year", TIA=int, TOA=float)
            >> dp.t.make_select_column("study_year", float),
        ),
    ], noise


def test_pipelines_that_can_never_run_are_refused_before_the_debit(http: httpx.Client) -> None:
    from opendp_pipelines import body

    cases, noise = never_runnable()
    for name, steps in cases:
        document = {**body(steps >> noise), "query_id": uuid.uuid4().hex}
        for route in ROUTES:
            response = http.post(f"/v1/datasets/PENGUIN/{route}", json=document)
            assert response.status_code == 400, (name, route, response.text)
            assert response.json()["error"] == "invalid_query", (name, response.text)
            assert (
                "could never run" in response.json()["message"]
                or "does not have" in (response.json()["message"])
            ), name
    untouched(http)


def test_a_pipeline_that_casts_a_column_before_selecting_it_typed_is_accepted(
    http: httpx.Client,
) -> None:
    import opendp.prelude as dp
    from opendp_pipelines import COLUMNS, body

    from neblina_client._opendp import input_space

    cast_first = (
        input_space(COLUMNS, None)
        >> dp.t.then_df_cast_default(column_name="study_year", TIA=str, TOA=int)
        >> dp.t.make_select_column("study_year", int)
        >> dp.t.then_count()
        >> dp.m.then_laplace(1.0)
    )
    response = http.post("/v1/datasets/PENGUIN/cost", json=body(cast_first))
    assert response.status_code == 200, response.text
    assert response.json()["cost"] == {"epsilon": "1", "delta": "0"}
