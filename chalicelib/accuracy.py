"""The accuracy that comes with every price and every release (docs/api.md, "Accuracy").

Computed by the engine's worker from the request and the metadata only (never the rows),
beside the price, and memoised with it by the front. The JSON shape is the same for every
engine::

    {"level": 0.95,
     "columns": [{"column": "n", "aggregate": "COUNT(*)", "distribution": "Laplace",
                  "scale": 2.0, "accuracy": 6.0, "reason": null, "components": null}, ...],
     "reason": null}

``accuracy`` is the half-width of a confidence interval at ``level``: the released value
lies within ``accuracy`` of the exact value with probability at least ``level`` (over the
noise only). A column without an analytic half-width (a group key, a ratio such as AVG,
a quantile) has ``accuracy`` null and a ``reason``; for a derived column, ``components``
gives each noisy aggregate it is computed from. An engine without an analytic answer
gives ``columns`` null and a ``reason``: never a guess.

This module imports no DP library (the front imports it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from chalicelib.errors import InvalidRequest

log = logging.getLogger(__name__)

DEFAULT_LEVEL = 0.95
MIN_LEVEL, MAX_LEVEL = 0.5, 0.999999


def level(value: object) -> float:
    """The requested confidence level (default 0.95), a number in [0.5, 0.999999] (400)."""
    if value is None:
        return DEFAULT_LEVEL
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest("level must be a number (the accuracy's confidence level)")
    number = float(value)
    if not MIN_LEVEL <= number <= MAX_LEVEL:
        raise InvalidRequest(f"level must be between {MIN_LEVEL} and {MAX_LEVEL}")
    return number


def alpha(at: float) -> float:
    """``1 - level`` without binary rounding (1 - 0.95 is 0.050000000000000044 in floats)."""
    return float(Decimal(1) - Decimal(repr(at)))


def column(
    name: str,
    aggregate: str | None,
    *,
    distribution: str | None = None,
    scale: float | None = None,
    accuracy: float | None = None,
    reason: str | None = None,
    components: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One output column's entry (see the module docstring)."""
    return {
        "column": name,
        "aggregate": aggregate,
        "distribution": distribution,
        "scale": scale,
        "accuracy": accuracy,
        "reason": None if accuracy is not None else (reason or "no analytic half-width"),
        "components": components,
    }


def unavailable(at: float, reason: str) -> dict[str, Any]:
    """The answer of an engine (or a request) without an analytic accuracy."""
    return {"level": at, "columns": None, "reason": reason}


def answer(at: float, columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {"level": at, "columns": columns, "reason": None}


def computed(at: float, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``, or an explicit null if it fails: the price never fails for accuracy."""
    try:
        return compute()
    except Exception:
        log.exception("accuracy could not be computed")
        return unavailable(at, "the accuracy of this request could not be computed")
