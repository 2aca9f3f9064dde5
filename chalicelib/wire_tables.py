"""Tables on the wire: a pandas DataFrame as JSON records with dtypes.

Format (the client decodes the same)::

    {"type": "table", "columns": ["species", "n"],
     "dtypes": {"species": "object", "n": "int64"},
     "records": [{"species": "Adelie", "n": 150}, ...]}

Missing values are ``null``; datetimes are ISO 8601 strings; numpy scalars become plain
JSON numbers, booleans or strings.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def frame_to_table(frame: pd.DataFrame) -> dict[str, Any]:
    """Encode a DataFrame (column names become strings)."""
    columns = [str(c) for c in frame.columns]
    values = frame.to_numpy(dtype=object, na_value=None).tolist()
    records = [
        {column: _plain(value) for column, value in zip(columns, row, strict=True)}
        for row in values
    ]
    return {
        "type": "table",
        "columns": columns,
        "dtypes": {str(c): str(t) for c, t in frame.dtypes.items()},
        "records": records,
    }
