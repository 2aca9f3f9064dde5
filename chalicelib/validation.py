"""Validation of untrusted request fields (plain functions, 400 on anything wrong)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from chalicelib.errors import InvalidRequest
from chalicelib.models import to_decimal

QUERY_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
DATASET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def require_object(body: object) -> dict[str, Any]:
    """The body must be a JSON object."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def refuse_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    """400 naming any field that is not in ``allowed``."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(unknown)}")


def epsilon(value: object, field: str = "epsilon") -> Decimal:
    """ε: a finite number > 0."""
    if value is None:
        raise InvalidRequest(f"{field} is required")
    try:
        result = to_decimal(value)
    except ValueError as exc:
        raise InvalidRequest(f"{field} must be a finite number > 0") from exc
    if result <= 0:
        raise InvalidRequest(f"{field} must be a finite number > 0")
    return result


def delta(value: object, field: str = "delta") -> Decimal:
    """δ: a finite number in [0, 1)."""
    if value is None:
        raise InvalidRequest(f"{field} is required")
    try:
        result = to_decimal(value)
    except ValueError as exc:
        raise InvalidRequest(f"{field} must be a number in [0, 1)") from exc
    if not (0 <= result < 1):
        raise InvalidRequest(f"{field} must be a number in [0, 1)")
    return result


def boolean(value: object, field: str, default: bool) -> bool:
    """An optional JSON boolean."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"{field} must be true or false")
    return value


def integer(value: object, field: str, default: int, lower: int, upper: int) -> int:
    """An optional integer in [lower, upper]; strings of digits are accepted (query params)."""
    if value is None or value == "":
        return default
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,12}", value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{field} must be an integer")
    if not (lower <= value <= upper):
        raise InvalidRequest(f"{field} must be between {lower} and {upper}")
    return value


def query_id(value: object) -> str:
    """A client-chosen query id: 8 to 64 characters of [A-Za-z0-9_-]."""
    if not isinstance(value, str) or not QUERY_ID.match(value):
        raise InvalidRequest("query_id must be 8 to 64 characters of [A-Za-z0-9_-]")
    return value


def dataset_name(value: str) -> str:
    """A dataset name as it appears in a path."""
    if not DATASET_NAME.match(value):
        raise InvalidRequest("invalid dataset name")
    return value
