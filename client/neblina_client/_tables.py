"""Tables on the wire: the JSON form of a pandas DataFrame (shared with the server).

A table is one JSON object::

    {"type": "table",
     "columns": ["species", "n", "mean_mass"],
     "dtypes": {"species": "object", "n": "int64", "mean_mass": "float64"},
     "records": [{"species": "Adelie", "n": 152, "mean_mass": 3700.5},
                 {"species": "Gentoo", "n": 124, "mean_mass": null}]}

- ``columns``: the column names, as strings, in order; unique.
- ``dtypes``: for each column, ``str(frame[column].dtype)`` (``int64``, ``float64``,
  ``object``, ``bool``, ``boolean``, ``Int64``, ``string``, ``category``,
  ``datetime64[ns]``, ``datetime64[ns, UTC]``, ...).
- ``records``: one object per row, keyed by column name. A key left out means null.

Values: ``null`` for a missing value (None, NaN, NA, NaT); JSON booleans; JSON numbers for
integers and finite floats (a float is written as its shortest ``repr``, so it reads back
to the same float); the strings ``"Infinity"`` and ``"-Infinity"`` for infinite floats;
datetimes as ISO 8601 strings (with their UTC offset when tz-aware); strings as strings.
Dates and times inside an ``object`` column are written as ISO 8601 strings and read back
as strings. The index is not sent: a decoded frame has a ``RangeIndex``.

Decoding applies each column's dtype. An integer column holding nulls becomes the
matching nullable dtype (``int64`` -> ``Int64``), a ``bool`` one becomes ``boolean``; a
dtype pandas cannot apply leaves the column with the dtype pandas infers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from typing import Any

import numpy as np
import pandas as pd

_INFINITIES = {"Infinity": math.inf, "-Infinity": -math.inf}


def encode_table(frame: pd.DataFrame) -> dict[str, Any]:
    """The JSON-ready form of ``frame`` (see the module docstring)."""
    columns = [str(name) for name in frame.columns]
    if len(set(columns)) != len(columns):
        raise ValueError(f"column names must be unique as strings, got {columns}")
    dtypes = {name: str(dtype) for name, dtype in zip(columns, frame.dtypes, strict=True)}
    values = [_encode_column(frame.iloc[:, i]) for i in range(len(columns))]
    if values:
        records = [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]
    else:
        records = [{} for _ in range(len(frame))]
    return {"type": "table", "columns": columns, "dtypes": dtypes, "records": records}


def decode_table(table: Mapping[str, Any]) -> pd.DataFrame:
    """The DataFrame sent as ``table`` (see the module docstring)."""
    if table.get("type") != "table":
        raise ValueError(f"not a table: type={table.get('type')!r}")
    columns = [str(name) for name in table["columns"]]
    if len(set(columns)) != len(columns):
        raise ValueError(f"column names must be unique, got {columns}")
    dtypes: Mapping[str, str] = table.get("dtypes") or {}
    records: Sequence[Mapping[str, Any]] = table["records"]
    if not columns:
        return pd.DataFrame(index=pd.RangeIndex(len(records)))
    data = {
        name: _decode_column([record.get(name) for record in records], dtypes.get(name))
        for name in columns
    }
    return pd.DataFrame(data, columns=columns)


def _encode_column(series: pd.Series) -> list[Any]:
    if series.dtype.kind == "M":
        return [None if pd.isna(value) else value.isoformat() for value in series]
    return [_encode_value(value) for value in series.tolist()]


def _encode_value(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (datetime, date, time)):
        return None if pd.isna(value) else value.isoformat()
    raise TypeError(f"cannot encode a {type(value).__name__} in a table: {value!r}")


def _decode_column(values: list[Any], dtype_name: str | None) -> pd.Series:
    if dtype_name is None:
        return pd.Series(values)
    try:
        dtype = pd.api.types.pandas_dtype(dtype_name)
    except TypeError:
        return pd.Series(values)
    if isinstance(dtype, np.dtype) and dtype.kind in "US":
        dtype = np.dtype(object)  # fixed-width numpy strings would turn None into "None"
    has_nulls = any(value is None for value in values)
    try:
        if dtype.kind == "M":
            return _decode_datetimes(values, dtype)
        if dtype.kind == "f":
            values = [_INFINITIES.get(value, value) for value in values]
        elif has_nulls and isinstance(dtype, np.dtype) and dtype.kind in "iub":
            dtype = _nullable(dtype)
        return pd.Series(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        return pd.Series(values)


def _nullable(dtype: np.dtype[Any]) -> str:
    """The nullable dtype of the same width: int64 -> Int64, uint8 -> UInt8, bool -> boolean."""
    if dtype.kind == "b":
        return "boolean"
    name = str(dtype.name)
    return "U" + name[1:].capitalize() if dtype.kind == "u" else name.capitalize()


def _decode_datetimes(values: list[Any], dtype: Any) -> pd.Series:
    tz = getattr(dtype, "tz", None)
    parsed = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601", utc=tz is not None)
    if tz is not None:
        parsed = parsed.dt.tz_convert(tz)
    return parsed.astype(dtype)
