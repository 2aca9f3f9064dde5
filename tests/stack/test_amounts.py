"""Privacy amounts: the ledger's grid, clean SmartNoise charges, exact OpenDP charges.

The rule (docs/ledger.md, "Amounts"): every charge is the engine's exact charge rounded UP to
17 significant digits and never finer than 1e-20, at most 1e9; what ``/cost`` shows, what is
archived and what is debited are that same number.
"""

from __future__ import annotations

import math
import uuid
from decimal import Decimal

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opendp_pipelines import DATASET, body, gaussian_count, laplace_count
from snsql.sql.private_reader import PrivateReader
from test_cli import admin_env  # noqa: F401 - the CLI tests' fixture, used below

from chalicelib.engines import opendp_engine as od
from chalicelib.engines import smartnoise_engine as sn
from chalicelib.errors import InvalidRequest
from chalicelib.models import (
    AMOUNT_QUANTUM,
    MAX_AMOUNT,
    AmountOutOfRange,
    Dataset,
    charge,
    exact_decimal,
    float_down,
    on_grid,
    utcnow,
)
from neblina_admin import operations as admin

META = DATASET.metadata
EIGHT_COUNTS = (
    "SELECT species, COUNT(*) AS n, COUNT(bill_length_mm) AS c0, COUNT(bill_depth_mm) AS c1,"
    " COUNT(flipper_length_mm) AS c2, COUNT(body_mass_g) AS c3, COUNT(sex) AS c4,"
    " COUNT(island) AS i, COUNT(study_year) AS y FROM df GROUP BY species"
)


def sql_request(query: str, epsilon: object, delta: object, **extra: object) -> sn.SqlRequest:
    return sn.ENGINE.parse(
        {"engine": "smartnoise_sql", "query": query, "epsilon": epsilon, "delta": delta, **extra}
    )


# --- the rounding rule --------------------------------------------------------------------
@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    mantissa=st.integers(1, 10**40),
    exponent=st.integers(-340, 3),
)
def test_a_charge_is_never_below_the_exact_amount_and_always_on_the_grid(
    mantissa: int, exponent: int
) -> None:
    value = Decimal(mantissa).scaleb(exponent - 40)
    charged = charge(value)
    assert charged >= value
    assert on_grid(charged)
    assert len(charged.as_tuple().digits) <= 17
    # and the smallest such: one grid step less is below the amount
    step = max(AMOUNT_QUANTUM, Decimal(1).scaleb(charged.adjusted() - 16))
    assert charged - step < value


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.floats(min_value=1e-300, max_value=1e3, allow_nan=False))
def test_a_float_charge_is_rounded_up_from_its_exact_binary_value(value: float) -> None:
    exact = exact_decimal(value)
    assert charge(exact) >= exact >= Decimal(0)
    # at most one step of the grid above: a relative over-charge below 1e-16
    assert charge(exact) - max(AMOUNT_QUANTUM, Decimal(1).scaleb(exact.adjusted() - 16)) < exact


def test_the_amounts_the_issues_named_get_clean_charges() -> None:
    assert charge(exact_decimal(1.0000000000000001e-39)) == Decimal("1e-20")
    assert charge(exact_decimal(1e-200)) == Decimal("1e-20")
    assert str(charge(exact_decimal(0.1))) == "0.10000000000000001"
    assert charge(Decimal("0.3")) == Decimal("0.3")
    assert charge(Decimal(0)) == 0
    with pytest.raises(AmountOutOfRange):
        charge(Decimal("1000000000.00000000000000000001"))
    assert charge(MAX_AMOUNT) == MAX_AMOUNT


def test_a_mechanism_is_never_calibrated_above_the_decimal_requested() -> None:
    for text in ("0.1", "0.3", "1", "0.7", "1e-5", "0.1234567890123456789012345678901234567891"):
        value = Decimal(text)
        below = float_down(value)
        assert Decimal(below) <= value < Decimal(math.nextafter(below, math.inf))


# --- SmartNoise: basic composition from the requested decimals ---------------------------
@pytest.mark.parametrize(
    ("query", "epsilon", "mechanisms", "expected"),
    [
        ("SELECT COUNT(*) AS n FROM df", "0.1", {}, ("0.1", "0.00001")),
        (
            "SELECT species, COUNT(*) AS n, AVG(bill_length_mm) AS b FROM df GROUP BY species",
            "0.1",
            {},
            ("0.3", "0.00001"),
        ),
        ("SELECT SUM(body_mass_g) AS s FROM df", "0.7", {}, ("0.7", "0")),
        (EIGHT_COUNTS, "0.01", {"count": "gaussian"}, ("0.08", "0.00008")),
    ],
)
def test_smartnoise_charges_are_exact_multiples_of_the_requested_epsilon(
    query: str, epsilon: str, mechanisms: dict[str, str], expected: tuple[str, str]
) -> None:
    cost = sn.ENGINE.cost(DATASET, sql_request(query, epsilon, "0.00001", mechanisms=mechanisms))
    assert (cost.charged().epsilon, cost.charged().delta) == tuple(map(Decimal, expected))


def test_a_sql_query_without_delta_costs_no_delta() -> None:
    cost = sn.ENGINE.cost(DATASET, sql_request("SELECT SUM(body_mass_g) AS s FROM df", 1, 0))
    assert cost.charged().delta == 0 and cost.charged().epsilon == 1


def test_smartnoise_odometer_misses_the_gaussian_threshold_delta_and_the_charge_does_not() -> None:
    """Measured: censor_dims true, 8 Gaussian counts (key count included) at ε 0.01, δ 0.1.

    SmartNoise's odometer takes advanced composition (ε ≈ 0.044), whose slack δ/2 it then
    spends, and charges δ = 1 - (1 - δ/2)(1 - δ)^8 ≈ 0.591: the δ/2 of the Gaussian key
    count's threshold is not counted. The charge here is basic composition: ε = 8 × 0.01 and
    δ = 8 × 0.1 + 0.1/2, exactly.
    """
    censored = Dataset("PENGUIN", "unused", {**META, "censor_dims": True}, utcnow())
    gaussian = {"count": "gaussian", "threshold": "gaussian"}
    request = sql_request(EIGHT_COUNTS, "0.01", "0.1", mechanisms=gaussian)
    metadata = sn.metadata_for("PENGUIN", censored.metadata)
    reader = PrivateReader(sn.MetadataOnlyReader(metadata), metadata, privacy=request.privacy())
    odometer_epsilon, odometer_delta = reader.get_privacy_cost(EIGHT_COUNTS)
    tolerance = 0.1 / 2
    mechanisms_delta = 1 - (1 - 0.1) ** 8
    needed = 1 - (1 - tolerance) * (1 - mechanisms_delta) + 0.1 / 2  # + the threshold
    assert odometer_epsilon < 0.08 and odometer_delta < needed - 0.04  # short by ≈ δ/2
    cost = sn.ENGINE.cost(censored, request).charged()
    assert cost.epsilon == Decimal("0.08") and cost.delta == Decimal("0.85")
    # a Laplace key count's δ is its threshold's: nothing to add
    laplace_keys = sql_request(EIGHT_COUNTS, "0.01", "0.1", mechanisms={"count": "gaussian"})
    assert sn.ENGINE.cost(censored, laplace_keys).charged().delta == Decimal("0.8")
    laplace = sn.ENGINE.cost(censored, sql_request(EIGHT_COUNTS, "0.01", "0.1")).charged()
    assert laplace.delta == Decimal("0.1")


def test_smartnoise_charge_is_never_below_its_odometer_epsilon() -> None:
    for query in (EIGHT_COUNTS, "SELECT COUNT(*) AS n FROM df"):
        for epsilon in ("0.01", "0.3", "1.7", "0.1234567890123456789"):
            request = sql_request(query, epsilon, "0.00001")
            metadata = sn.metadata_for("PENGUIN", META)
            reader = PrivateReader(
                sn.MetadataOnlyReader(metadata), metadata, privacy=request.privacy()
            )
            odometer_epsilon, _ = reader.get_privacy_cost(query)
            charged = sn.ENGINE.cost(DATASET, request).charged()
            assert charged.epsilon >= exact_decimal(float(odometer_epsilon))


# --- OpenDP --------------------------------------------------------------------------------
def test_opendp_fixed_delta_is_charged_as_requested_and_epsilon_read_below_it() -> None:
    request = od.ENGINE.parse(body(gaussian_count(3.0), fixed_delta="0.00001"))
    cost = od.ENGINE.cost(DATASET, request).charged()
    assert cost.delta == Decimal("0.00001")  # float(1e-5) is above 1e-5: never charged
    measurement = od.combinators.make_fix_delta(
        od.combinators.make_zCDP_to_approxDP(request.measurement()), float_down(cost.delta)
    )
    assert cost.epsilon >= exact_decimal(measurement.map(1)[0])


@pytest.mark.parametrize("value", [0, "0", "-0", "1", 1e-400, "1e-21", "NaN"])
def test_fixed_delta_has_one_range_and_one_message(value: object) -> None:
    with pytest.raises(InvalidRequest) as refused:
        od.ENGINE.parse(body(gaussian_count(3.0), fixed_delta=value))
    assert refused.value.message.startswith("fixed_delta must be a number in (0, 1): from 1e-20")


# --- the admin's amounts -------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1e-21", "1e400", "1000000001", "NaN", "-1", "0.1" + "1" * 30])
def test_grant_amounts_off_the_grid_are_refused(value: str) -> None:
    with pytest.raises(InvalidRequest):
        admin.budget(epsilon=value, delta="0")
    with pytest.raises(InvalidRequest):
        admin.budget(epsilon="1", delta=value)


def test_grant_amounts_on_the_grid_are_kept_digit_for_digit() -> None:
    assert (
        admin.budget(epsilon="1000000000", delta="0.00000000000000000001").delta == AMOUNT_QUANTUM
    )
    assert str(admin.budget(epsilon="-0", delta="-0").epsilon) == "0"


# --- over HTTP: the amounts of issue 10 §2 ---------------------------------------------------
@pytest.mark.parametrize("scale", [1e39, 1e200])
def test_an_opendp_charge_below_the_grid_is_rounded_up_and_debited_exactly(
    stack, make_researcher, scale: float
) -> None:  # type: ignore[no-untyped-def]
    researcher = make_researcher({"PENGUIN": ("1", "0")})
    headers = {"Authorization": f"Bearer {researcher.token}"}
    document = {**body(laplace_count(scale)), "query_id": uuid.uuid4().hex}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as http:
        quoted = http.post("/v1/datasets/PENGUIN/cost", json=document)
        assert quoted.status_code == 200, quoted.text
        assert quoted.json()["cost"] == {"epsilon": "0.00000000000000000001", "delta": "0"}
        ran = http.post("/v1/datasets/PENGUIN/queries", json=document)
        assert ran.status_code == 200, ran.text
        assert ran.json()["cost"] == quoted.json()["cost"]
        archived = http.get(f"/v1/datasets/PENGUIN/queries/{document['query_id']}").json()
        assert archived["cost"] == quoted.json()["cost"]
        budget = http.get("/v1/datasets/PENGUIN/budget").json()
    assert budget["spent"] == quoted.json()["cost"]
    assert budget["remaining"]["epsilon"] == "0.99999999999999999999"


def test_a_charge_above_the_ledger_range_is_a_400_and_nothing_is_debited(
    stack, make_researcher
) -> None:  # type: ignore[no-untyped-def]
    researcher = make_researcher({"PENGUIN": ("1000000000", "0.5")})
    headers = {"Authorization": f"Bearer {researcher.token}"}
    document = {  # two aggregates at 9e8 each: 1.8e9 is above the range
        "engine": "smartnoise_sql",
        "query": "SELECT species, COUNT(*) AS n, COUNT(sex) AS s FROM df GROUP BY species",
        "epsilon": "900000000",
        "delta": "0.00001",
        "query_id": uuid.uuid4().hex,
    }
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as http:
        for route in ("cost", "queries"):
            response = http.post(f"/v1/datasets/PENGUIN/{route}", json=document)
            assert response.status_code == 400, response.text
            assert "above the largest amount the ledger holds" in response.json()["message"]
        assert http.get("/v1/datasets/PENGUIN/budget").json()["spent"]["epsilon"] == "0"


def test_a_dummy_run_that_fails_names_opendps_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenDP's errors print as "\\n  Variant(...)": the first line was empty."""
    from opendp_pipelines import loaded

    def failing(_text: str) -> None:
        raise od.core.OpenDPException("FailedFunction", "the noise could not be sampled")

    request = od.ENGINE.parse(body(laplace_count()))
    monkeypatch.setattr(od.OpenDPRequest, "measurement", lambda self: failing)
    # the rest of the chain on the prepared column (docs/opendp.md, "Running") fails alike
    monkeypatch.setattr(od, "_measure_raw", lambda _rest, _column: failing(""))
    with pytest.raises(ValueError, match="FailedFunction: the noise could not be sampled"):
        od.ENGINE.execute(loaded(), request)
    monkeypatch.setattr(od, "prepared", lambda _request: None)  # the whole pipeline's path
    with pytest.raises(ValueError, match="FailedFunction: the noise could not be sampled"):
        od.ENGINE.execute(loaded(), request)


# --- the admin CLI: grant and cap amounts through its real entry point ----------------------
def test_the_admin_cli_refuses_grant_and_cap_amounts_the_ledger_cannot_hold(
    request: pytest.FixtureRequest,
) -> None:
    from test_cli import cli

    store = request.getfixturevalue("admin_env")
    store.put_dataset(Dataset("PENGUIN", "s3://b/k.csv", META, utcnow()))

    assert cli("users", "add", "amounts-user").exit_code == 0
    for value in ("1e-400", "1e400", "NaN", "Infinity", "1e-21", "1000000001", "0." + "1" * 40):
        for args in (
            ["grants", "add", "amounts-user", "PENGUIN", "-e", value, "-d", "0"],
            ["grants", "add", "amounts-user", "PENGUIN", "-e", "1", "-d", value],
            ["grants", "cap", "PENGUIN", "-e", value, "-d", "0"],
        ):
            result = cli(*args)
            assert result.exit_code == 1, (args, result.output)
            assert "epsilon must" in result.output or "delta must" in result.output, args
            assert "Traceback" not in result.output
    assert cli("grants", "show", "amounts-user", "PENGUIN").exit_code == 3  # nothing granted
    assert (
        cli("grants", "add", "amounts-user", "PENGUIN", "-e", "999999999", "-d", "0").exit_code == 0
    )
    topped = cli("grants", "top-up", "amounts-user", "PENGUIN", "-e", "2")
    assert topped.exit_code == 1 and "at most 1000000000" in topped.output, topped.output


def test_a_grant_without_delta_runs_pure_epsilon_sql_and_pays_no_delta(
    stack, make_researcher
) -> None:  # type: ignore[no-untyped-def]
    """SmartNoise's odometer charged every SQL query δ >= 1e-15: a δ = 0 grant could run none."""
    researcher = make_researcher({"PENGUIN": ("1", "0")})
    headers = {"Authorization": f"Bearer {researcher.token}"}
    document = {
        "engine": "smartnoise_sql",
        "query": "SELECT SUM(body_mass_g) AS m FROM df",
        "epsilon": "0.3",
        "delta": 0,
        "query_id": uuid.uuid4().hex,
    }
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as http:
        ran = http.post("/v1/datasets/PENGUIN/queries", json=document)
        assert ran.status_code == 200, ran.text
        assert ran.json()["cost"] == {"epsilon": "0.3", "delta": "0"}
        budget = http.get("/v1/datasets/PENGUIN/budget").json()
    assert budget["remaining"] == {"epsilon": "0.7", "delta": "0"}
