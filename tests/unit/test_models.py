"""Exact decimal amounts: the ledger never sees a float."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from chalicelib.models import (
    INTERRUPTED,
    PrivacyCost,
    QueryPhase,
    QueryRecord,
    QueryState,
    format_decimal,
    to_decimal,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.1, Decimal("0.1")),
        (1e-5, Decimal("0.00001")),
        (np.float64(1.4999949999983109e-05), Decimal("0.000014999949999983109")),
        ("0.30", Decimal("0.30")),
        (3, Decimal(3)),
        (Decimal("2.5"), Decimal("2.5")),
    ],
)
def test_to_decimal_goes_through_the_shortest_repr(value: object, expected: Decimal) -> None:
    assert to_decimal(value) == expected


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), "NaN", "Infinity", "abc", True, None, [1]]
)
def test_to_decimal_refuses_non_finite_and_non_numbers(value: object) -> None:
    with pytest.raises(ValueError):
        to_decimal(value)


def test_sums_are_exact() -> None:
    total = PrivacyCost(epsilon=0.1, delta=0) + PrivacyCost(epsilon=0.2, delta=0)
    assert total.epsilon == Decimal("0.3")
    assert PrivacyCost(epsilon="10", delta="0.001") - total == PrivacyCost(
        epsilon="9.7", delta="0.001"
    )


def test_partial_order_needs_both_components() -> None:
    small, wide = PrivacyCost(epsilon=1, delta=0), PrivacyCost(epsilon=2, delta="0.1")
    assert small <= wide
    assert not PrivacyCost(epsilon=1, delta="0.2") <= wide


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("10"), "10"),
        (Decimal("1E+1"), "10"),
        (Decimal("0.000015"), "0.000015"),
        (Decimal("1E-7"), "0.0000001"),
        (Decimal("0.10"), "0.1"),
        (Decimal("0"), "0"),
    ],
)
def test_format_decimal_never_uses_exponents(value: Decimal, text: str) -> None:
    assert format_decimal(value) == text


def test_privacy_costs_and_admin_amounts_take_epsilon_and_delta_by_keyword_only() -> None:
    # ε and δ are both decimals: a positional pair could be swapped without any error
    with pytest.raises(TypeError):
        PrivacyCost("1", "0.00001")  # type: ignore[misc]
    from neblina_admin import operations

    with pytest.raises(TypeError):
        operations.budget("1", "0.00001")  # type: ignore[misc]
    assert PrivacyCost(epsilon="1", delta="0.00001").delta == Decimal("0.00001")


def a_record(**changes: object) -> QueryRecord:
    created = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    fields: dict[str, object] = {
        "query_id": "q",
        "user_id": "u",
        "dataset": "D",
        "engine": "e",
        "payload_hash": "h",
        "request": {},
        "cost": PrivacyCost(epsilon=1, delta=0),
        "state": QueryState.RUNNING,
        "created_at": created,
        "lease_expires_at": created + timedelta(minutes=15),
    }
    return QueryRecord(**{**fields, **changes})  # type: ignore[arg-type]


def test_a_record_shows_its_phase_and_progress_and_null_without_them() -> None:
    assert a_record().to_json()["phase"] is None
    assert a_record().to_json()["progress"] is None
    shown = a_record(phase=QueryPhase.LOADING, progress=0.5).to_json()
    assert (shown["phase"], shown["progress"]) == ("loading", 0.5)


def test_a_record_past_its_lease_reads_as_interrupted_without_a_phase() -> None:
    job = a_record(phase=QueryPhase.RUNNING, progress=0.3)
    assert job.as_seen(job.lease_expires_at - timedelta(seconds=1)) == job
    seen = job.as_seen(job.lease_expires_at)
    assert (seen.state, seen.error) == (QueryState.FAILED, INTERRUPTED)
    assert (seen.phase, seen.progress) == (None, None)
