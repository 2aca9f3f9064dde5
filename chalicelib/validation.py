"""Validation of untrusted request fields (plain functions, 400 on anything wrong)."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

from chalicelib.errors import InvalidRequest
from chalicelib.models import AMOUNT_QUANTUM, MAX_AMOUNT, to_decimal

QUERY_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
DATASET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# How deeply a request body may nest arrays and objects. Every body the API reads is shallow
# (an OpenDP pipeline in the client's node form: 6 levels); 256 leaves room for the deepest
# pipeline the engine accepts written inline (64 nested constructor calls, 3 levels each).
MAX_BODY_DEPTH = 256


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as inf
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_document(raw: bytes) -> Any:
    """A request body decoded as strict JSON (400 ``invalid_request`` on anything else).

    Refused: text that is not UTF-8 JSON, ``NaN``/``Infinity``, numbers that overflow a float
    (``1e400``), integers of more than 4300 digits, and nesting deeper than
    :data:`MAX_BODY_DEPTH` (the decoder recurses: a 20 KB body of nested arrays would
    otherwise exhaust the stack).
    """
    try:
        document = json.loads(raw, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidRequest(
            f"the request body nests arrays or objects more than {MAX_BODY_DEPTH} deep"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON ({str(exc)[:120]})") from None
    if _depth(document) > MAX_BODY_DEPTH:
        raise InvalidRequest(
            f"the request body nests arrays or objects more than {MAX_BODY_DEPTH} deep"
        )
    return document


def _depth(document: Any) -> int:
    """How deeply arrays and objects nest in a decoded document (iterative: no recursion)."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(document, 0)]
    while pending:
        value, level = pending.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level + 1)
        if deepest > MAX_BODY_DEPTH:
            return deepest
        pending.extend((child, level + 1) for child in children)
    return deepest


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


EPSILON_RANGE = "a finite number > 0, from 1e-20 to 1000000000"
DELTA_RANGE = "a number in [0, 1): 0, or from 1e-20 up to (not including) 1"


def _amount(value: object, field: str, expected: str) -> Decimal:
    if value is None:
        raise InvalidRequest(f"{field} is required")
    try:
        result = to_decimal(value)
    except ValueError as exc:
        raise InvalidRequest(f"{field} must be {expected} (got {str(value)[:60]!r})") from exc
    return abs(result) if result == 0 else result  # -0 is 0


def epsilon(value: object, field: str = "epsilon") -> Decimal:
    """ε: a finite number in [1e-20, 1e9] (the ledger's range: docs/ledger.md, "Amounts")."""
    result = _amount(value, field, EPSILON_RANGE)
    if not (AMOUNT_QUANTUM <= result <= MAX_AMOUNT):
        raise InvalidRequest(f"{field} must be {EPSILON_RANGE} (got {str(value)[:60]!r})")
    return result


def delta(value: object, field: str = "delta", *, positive: bool = False) -> Decimal:
    """δ: 0 or a number in [1e-20, 1); with ``positive``, 0 is refused (same message)."""
    expected = DELTA_RANGE.replace("[0, 1): 0, or", "(0, 1):") if positive else DELTA_RANGE
    result = _amount(value, field, expected)
    if not (result < 1 and (result >= AMOUNT_QUANTUM or (result == 0 and not positive))):
        raise InvalidRequest(f"{field} must be {expected} (got {str(value)[:60]!r})")
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
