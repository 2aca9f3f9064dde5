"""Response bodies to client values.

Malformed input raises KeyError, TypeError or ValueError; :func:`parse_response` turns
those into a NeblinaError (``invalid_response``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import pandas as pd

from ._exceptions import NeblinaError
from ._tables import decode_table
from ._types import (
    ArchivedQuery,
    Budget,
    Cost,
    DatasetInfo,
    JobStatus,
    QueryResult,
    Release,
)

T = TypeVar("T")


def parse_response(parser: Callable[[Any], T], body: Any) -> T:
    """``parser(body)``, with a malformed response body reported as a NeblinaError."""
    try:
        return parser(body)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise NeblinaError(
            f"unexpected response from the server: {type(exc).__name__}: {exc}",
            code="invalid_response",
        ) from exc


def parse_decimal(value: Any) -> Decimal:
    """An exact decimal from a decimal string (or, leniently, a JSON number)."""
    if isinstance(value, bool):
        raise TypeError(f"expected a decimal, got {value!r}")
    if isinstance(value, float):
        value = repr(value)  # the shortest string that reads back to this float
    if not isinstance(value, (str, int)):
        raise TypeError(f"expected a decimal, got {value!r}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"expected a decimal, got {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"expected a finite decimal, got {value!r}")
    return number


def parse_cost(data: Mapping[str, Any]) -> Cost:
    """A ``{"epsilon": "...", "delta": "..."}`` object."""
    return Cost(epsilon=parse_decimal(data["epsilon"]), delta=parse_decimal(data["delta"]))


def parse_datetime(value: str) -> datetime:
    """An ISO 8601 timestamp (``Z`` accepted for UTC)."""
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 string, got {value!r}")
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    return datetime.fromisoformat(value)


def parse_budget(data: Mapping[str, Any]) -> Budget:
    """The body of ``GET .../budget``."""
    cap = data.get("cap")
    available = data.get("available")
    limited_by = data.get("limited_by") or {}
    return Budget(
        initial=parse_cost(data["initial"]),
        spent=parse_cost(data["spent"]),
        remaining=parse_cost(data["remaining"]),
        available=parse_cost(available) if available is not None else None,
        cap_limit=parse_cost(cap["limit"]) if cap else None,
        cap_remaining=parse_cost(cap["remaining"]) if cap else None,
        limited_by={
            "epsilon": str(limited_by.get("epsilon", "grant")),
            "delta": str(limited_by.get("delta", "grant")),
        },
    )


def parse_dataset(data: Mapping[str, Any]) -> DatasetInfo:
    """One entry of ``GET /v1/datasets``."""
    rows = data.get("rows")
    return DatasetInfo(
        name=str(data["name"]),
        description=str(data.get("description") or ""),
        rows=None if rows is None else int(rows),
    )


def parse_query_result(data: Mapping[str, Any]) -> QueryResult:
    """The body of ``POST .../queries``."""
    # A Polars release carries OpenDP's own summary inside the result; other releases the
    # stated accuracy beside it. (Never `a or b`: a DataFrame has no truth value.)
    accuracy = parse_accuracy(data.get("result"))
    if accuracy is None:
        accuracy = parse_stated_accuracy(data.get("accuracy"))
    return QueryResult(
        query_id=str(data["query_id"]),
        dataset=str(data["dataset"]),
        engine=str(data["engine"]),
        cost=parse_cost(data["cost"]),
        result=parse_release(data.get("result")),
        dummy=bool(data.get("dummy", False)),
        replayed=bool(data.get("replayed", False)),
        reused=bool(data.get("reused", False)),
        created_at=parse_datetime(data["created_at"]),
        accuracy=accuracy,
    )


def parse_accuracy(value: Any) -> pd.DataFrame | None:
    """The ``accuracy`` of an OpenDP Polars release, as a DataFrame (None elsewhere)."""
    accuracy = value.get("accuracy") if isinstance(value, Mapping) else None
    if not isinstance(accuracy, Mapping):
        return None
    frame = pd.DataFrame(list(accuracy.get("columns") or []))
    frame.attrs["alpha"] = accuracy.get("alpha")
    return frame


def parse_stated_accuracy(value: Any) -> pd.DataFrame | None:
    """The ``accuracy`` of a price or a release (docs/api.md, "Accuracy"), as a DataFrame
    indexed by output column; None when the answer has none. ``attrs``: ``level`` and, when
    the engine has no analytic answer, ``reason`` (the frame is then empty)."""
    if not isinstance(value, Mapping):
        return None
    columns = value.get("columns")
    fields = ["column", "aggregate", "distribution", "scale", "accuracy", "reason", "components"]
    frame = pd.DataFrame(list(columns or []), columns=fields)
    frame.index = pd.Index(frame["column"].astype(str).tolist(), name=None)
    frame.attrs["level"] = value.get("level")
    frame.attrs["reason"] = value.get("reason")
    return frame


def parse_archived_query(data: Mapping[str, Any]) -> ArchivedQuery:
    """One archive record."""
    finished_at = data.get("finished_at")
    return ArchivedQuery(
        query_id=str(data["query_id"]),
        dataset=str(data["dataset"]),
        engine=str(data["engine"]),
        state=str(data["state"]),
        request=dict(data.get("request") or {}),
        cost=parse_cost(data["cost"]),
        created_at=parse_datetime(data["created_at"]),
        finished_at=None if finished_at is None else parse_datetime(finished_at),
        result=parse_release(data.get("result")),
        error=None if data.get("error") is None else dict(data["error"]),
        accuracy=parse_stated_accuracy(data.get("accuracy")),
    )


def parse_job_status(data: Mapping[str, Any]) -> JobStatus:
    """A query record read as a job's status (``GET .../queries/{id}``, or the 202 body)."""
    finished_at = data.get("finished_at")
    phase = data.get("phase")
    if phase is not None and not isinstance(phase, str):
        raise TypeError(f"expected a phase name, got {phase!r}")
    return JobStatus(
        query_id=str(data["query_id"]),
        dataset=str(data["dataset"]),
        engine=str(data["engine"]),
        state=str(data["state"]),
        phase=phase,
        progress=parse_progress(data.get("progress")),
        cost=parse_cost(data["cost"]),
        created_at=parse_datetime(data["created_at"]),
        finished_at=None if finished_at is None else parse_datetime(finished_at),
        error=None if data.get("error") is None else dict(data["error"]),
    )


def parse_progress(value: Any) -> float | None:
    """A fraction of work done, clamped to [0, 1]; None when the server gives none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a fraction, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite fraction, got {value!r}")
    return min(max(float(value), 0.0), 1.0)


def parse_release(value: Any) -> Release:
    """A result: ``{"type": "table", ...}`` → DataFrame, ``{"type": "value", "value": v}`` → v."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "value":
        released: Release = value["value"]
        return released
    if kind == "table":
        return decode_table(value)
    if kind == "model":  # a fitted model's parameters (client.diffprivlib rebuilds it)
        return dict(value)
    raise ValueError(f"unknown result type {kind!r}")
