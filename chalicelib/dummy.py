"""Dummy datasets: fake rows generated from the public metadata only, reproducible by seed.

Nothing here ever sees the private data, so a dummy frame cannot leak it: values are drawn
uniformly within the declared bounds or among the declared categories. Each column has its
own generator seeded by ``(seed, column position)``.
"""

from __future__ import annotations

import math
import string
from datetime import UTC
from typing import Any

import numpy as np
import pandas as pd

from chalicelib.metadata import parse_datetime_bound

NULL_RATE = 0.05
# the first and last whole seconds a datetime64[ns] can hold (1677-09-21 .. 2262-04-11)
_FIRST_SECOND = pd.Timestamp.min.value // 10**9 + 1
_LAST_SECOND = pd.Timestamp.max.value // 10**9
_ALPHABET = np.array(list(string.ascii_lowercase))


def _utc_seconds(bound: Any) -> float:
    """A declared datetime bound as seconds since the epoch, read as the loader reads it."""
    parsed = parse_datetime_bound(bound)
    if parsed is None:  # pragma: no cover - metadata.validate refuses it
        raise ValueError(f"not an ISO datetime: {bound!r}")
    return parsed.replace(tzinfo=UTC).timestamp()


def _strings(rng: np.random.Generator, rows: int) -> np.ndarray:
    lengths = rng.integers(4, 11, size=rows)
    letters = rng.choice(_ALPHABET, size=(rows, 10))
    return np.array(["".join(letters[i, : lengths[i]]) for i in range(rows)], dtype=object)


def _column(spec: dict[str, Any], rng: np.random.Generator, rows: int) -> pd.Series:
    kind = spec["type"]
    nullable = spec.get("nullable", False)
    if kind == "string":
        if "categories" in spec:
            values = rng.choice(np.array(spec["categories"], dtype=object), size=rows)
        else:
            values = _strings(rng, rows)
        series = pd.Series(values, dtype=object)
    elif kind == "int":
        dtype = "int32" if spec.get("precision") == 32 else "int64"
        if "categories" in spec:
            values = rng.choice(np.array(spec["categories"]), size=rows)
        else:
            values = rng.integers(spec["lower"], spec["upper"], size=rows, endpoint=True)
        series = pd.Series(values.astype(dtype))
        if nullable:
            series = series.astype(dtype.capitalize())
    elif kind == "float":
        dtype = "float32" if spec.get("precision") == 32 else "float64"
        values = rng.uniform(spec["lower"], spec["upper"], size=rows)
        series = pd.Series(values.astype(dtype))
    elif kind == "boolean":
        series = pd.Series(rng.random(rows) < 0.5)
        if nullable:
            series = series.astype("boolean")
    elif kind == "datetime":
        # the loaded column is datetime64[ns]: bounds beyond its range are drawn within it
        lower = max(_utc_seconds(spec["lower"]), _FIRST_SECOND)
        upper = min(_utc_seconds(spec["upper"]), _LAST_SECOND)
        first, last = math.ceil(lower), math.floor(upper)
        if first > last:  # no whole second of the declared range fits: all missing
            series = pd.Series(pd.NaT, index=range(rows), dtype="datetime64[ns]")
        else:
            seconds = rng.uniform(lower, upper, size=rows).astype("int64").clip(first, last)
            series = pd.Series(pd.to_datetime(seconds, unit="s"))
    else:  # pragma: no cover - metadata.validate refuses other types
        raise ValueError(f"unknown column type {kind!r}")
    if nullable and rows:
        mask = rng.random(rows) < NULL_RATE
        series = series.mask(mask)
    return series


def make_dummy(metadata: dict[str, Any], rows: int, seed: int) -> pd.DataFrame:
    """``rows`` fake rows with the dataset's columns, types, bounds, categories and nulls."""
    columns = {}
    for position, (name, spec) in enumerate(metadata["columns"].items()):
        rng = np.random.default_rng([seed, position])
        columns[name] = _column(spec, rng, rows)
    return pd.DataFrame(columns)
