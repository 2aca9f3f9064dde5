"""The administrator's strict check of a dataset's source against its metadata.

At query time the loader (:func:`chalicelib.datasets.coerce_types`) is lenient: a value that
does not parse becomes missing, so that whether a query succeeds never depends on the
private data. Registration is the place to be strict: ``datasets add``, ``update``,
``check`` and ``apply`` parse the source with the engines' own reader
(:meth:`DatasetLoader.read_source`) and refuse it, naming every problem with a sample row,
when its columns are not exactly the declared ones, a value does not parse as its declared
type, a ``nullable: false`` column has empty cells, or a value lies outside the declared
categories (the loader would read it as missing). Only the administrator, who owns the
data, sees these messages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from chalicelib.datasets import coerce_types

_HINTS = {
    "int": "whole numbers",
    "float": "numbers with a '.' decimal point",
    "boolean": "true or false, not yes/no",
    "datetime": "ISO 8601 dates, e.g. 2021-05-13 or 2021-05-13T08:30:00",
}
_INT32 = (-(2**31), 2**31 - 1)


def _where(position: int, fmt: str) -> str:
    row = position + 1
    return f"row {row} (line {row + 1})" if fmt == "csv" else f"row {row}"


def _iso(value: object) -> bool:
    if isinstance(value, datetime | pd.Timestamp | np.datetime64):
        return True
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.strip())
    except ValueError:
        return False
    return True


def _bool_like(value: object) -> bool:
    if isinstance(value, bool | np.bool_):
        return True
    if isinstance(value, str):  # CSV text read as booleans once no other value is left
        return value.strip().lower() in ("true", "false")
    return isinstance(value, int | float | np.integer | np.floating) and value in (0, 1)


def unparsable(series: pd.Series, spec: dict[str, Any]) -> pd.Series:
    """Rows whose value is present but does not parse as the column's declared type."""
    present = series.notna()
    kind = spec["type"]
    if kind in ("int", "float"):
        numbers = pd.to_numeric(series, errors="coerce")
        bad = present & numbers.isna()
        if kind == "int":
            whole = numbers.where(numbers.notna(), 0)
            bad |= present & (whole % 1 != 0)
            if spec.get("precision") == 32:
                bad |= present & ((whole < _INT32[0]) | (whole > _INT32[1]))
        return bad
    if kind == "boolean":
        if pd.api.types.is_bool_dtype(series.dtype):
            return pd.Series(False, index=series.index)
        return present & ~series.map(_bool_like).astype(bool)
    if kind == "datetime":
        if pd.api.types.is_datetime64_any_dtype(series.dtype):
            return pd.Series(False, index=series.index)
        return present & ~series.map(_iso).astype(bool)
    return pd.Series(False, index=series.index)


def _sample(series: pd.Series, mask: pd.Series, fmt: str, *, show: bool = True) -> str:
    """``3 value(s)``, and where the first is (with the value itself unless ``show`` is off)."""
    positions = np.flatnonzero(mask.to_numpy())
    first = int(positions[0])
    value = series.iloc[first]
    shown = f": {(value.item() if hasattr(value, 'item') else value)!r}" if show else ""
    return f"{len(positions)} value(s); first at {_where(first, fmt)}{shown}"


def problems(frame: pd.DataFrame, metadata: dict[str, Any], fmt: str) -> list[str]:
    """Every way the parsed source ``frame`` disagrees with the metadata (empty: none)."""
    found: list[str] = []
    columns: dict[str, Any] = metadata["columns"]
    names = [str(c) for c in frame.columns]
    missing = [c for c in columns if c not in names]
    extra = [c for c in names if c not in columns]
    if missing:
        found.append(
            f"the source lacks declared column(s) {', '.join(missing)} "
            f"(its columns: {', '.join(names)})"
        )
    if extra:
        found.append(f"the source has column(s) the metadata does not declare: {', '.join(extra)}")
    bad_by_column: dict[str, pd.Series] = {}
    for name, spec in columns.items():
        if name not in names:
            continue
        series = frame[name]
        bad = unparsable(series, spec)
        bad_by_column[name] = bad
        if bad.any():
            found.append(
                f"column {name}: not {spec['type']} (use {_HINTS[spec['type']]}): "
                f"{_sample(series, bad, fmt)}"
            )
        nulls = series.isna()
        if not spec.get("nullable", False) and nulls.any():
            found.append(
                f"column {name}: empty, but the metadata says nullable: false: "
                f"{_sample(series, nulls, fmt, show=False)}"
            )
    if missing or any(bad.any() for bad in bad_by_column.values()):
        return found
    try:
        coerced = coerce_types(frame, metadata)
    except Exception as exc:  # what the engines' loader would refuse at query time
        found.append(f"the engines' loader cannot read it: {exc}")
        return found
    # rows without a private_id are left out by the loader (reported above if not nullable)
    kept = np.arange(len(frame))
    identifier = next((n for n, spec in columns.items() if spec.get("private_id")), None)
    if identifier is not None:
        kept = np.flatnonzero(frame[identifier].notna().to_numpy())
    if len(kept) != len(coerced):  # pragma: no cover - the loader drops no other row
        found.append("the engines' loader reads a different number of rows than the source has")
        return found
    for name, spec in columns.items():
        series = frame[name]
        lost = np.zeros(len(frame), dtype=bool)
        lost[kept] = series.notna().to_numpy()[kept] & coerced[name].isna().to_numpy()
        if not lost.any():
            continue
        mask = pd.Series(lost, index=series.index)
        why = (
            "outside the declared categories"
            if "categories" in spec
            else f"not readable as {spec['type']} together with the column's other values"
        )
        found.append(
            f"column {name}: {why} (queries would read them as missing): "
            f"{_sample(series, mask, fmt)}"
        )
    return found
