"""Privacy amounts are exact decimals, from the wire to sums on the client."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from neblina_client import Cost
from neblina_client._decode import parse_cost, parse_datetime, parse_decimal


def cost(epsilon: str, delta: str) -> Cost:
    return Cost(epsilon=Decimal(epsilon), delta=Decimal(delta))


def test_sums_are_exact() -> None:
    total = parse_cost({"epsilon": "0.1", "delta": "0"}) + parse_cost(
        {"epsilon": "0.2", "delta": "0"}
    )
    assert total.epsilon == Decimal("0.3")


def test_sums_keep_every_digit() -> None:
    # 10 + 1e-40 has 42 significant digits: the default decimal context (28) would round.
    total = cost("10", "0.000014999949999983109") + cost("1E-40", "0.000014999949999983109")
    assert total.epsilon == Decimal("10.0000000000000000000000000000000000000001")
    assert total.delta == Decimal("0.000029999899999966218")


def test_sum_of_many_costs() -> None:
    costs = [cost("0.1", "0.000001")] * 10
    assert sum(costs, Cost.zero()) == cost("1", "0.00001")


def test_differences_are_exact() -> None:
    remaining = cost("10", "0.001") - (
        cost("0.1", "0.000015") + cost("3", "0.000014999949999983109")
    )
    assert remaining == cost("6.9", "0.000970000050000016891")
    with pytest.raises(TypeError):
        cost("1", "0") - 1  # type: ignore[operator]


def test_partial_order() -> None:
    assert cost("1", "0.1") <= cost("1", "0.1")
    assert cost("0.5", "0") <= cost("1", "0.1")
    assert not cost("2", "0") <= cost("1", "0.1")  # ε too large
    assert not cost("0.5", "0.2") <= cost("1", "0.1")  # δ too large
    # Incomparable pairs exist: neither is below the other.
    a, b = cost("2", "0"), cost("1", "0.1")
    assert not a <= b and not b <= a


def test_cost_is_frozen_and_only_adds_costs() -> None:
    c = cost("1", "0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epsilon = Decimal(2)  # type: ignore[misc]
    with pytest.raises(TypeError):
        c + 1  # type: ignore[operator]
    with pytest.raises(TypeError):
        c <= 1  # type: ignore[operator]  # noqa: B015


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ("0.000014999949999983109", Decimal("0.000014999949999983109")),
        ("1", Decimal(1)),
        ("1e-5", Decimal("0.00001")),
        (2, Decimal(2)),
        (0.1, Decimal("0.1")),  # a JSON number read as its repr, never its binary value
    ],
)
def test_parse_decimal_is_exact(wire: object, expected: Decimal) -> None:
    assert parse_decimal(wire) == expected  # Decimal equality is exact: 0.1 != Decimal(0.1)


@pytest.mark.parametrize("wire", ["NaN", "Infinity", "abc", "", True, None, [1]])
def test_parse_decimal_refuses_non_numbers(wire: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        parse_decimal(wire)


def test_parse_datetime_keeps_the_offset() -> None:
    parsed = parse_datetime("2026-11-25T12:00:00.000000+00:00")
    assert parsed == datetime(2026, 11, 25, 12, 0, 0, tzinfo=parsed.tzinfo)
    assert parsed.utcoffset() == timedelta(0)
    assert parse_datetime("2026-11-25T12:00:00Z") == parsed
