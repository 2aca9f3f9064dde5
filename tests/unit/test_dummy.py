"""Dummy data comes from metadata only, is reproducible, and respects the declared schema."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from chalicelib import metadata as M
from chalicelib.dummy import make_dummy

ROOT = Path(__file__).resolve().parents[2]
PENGUIN = M.validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))
ALL_TYPES = M.validate(
    {
        "max_ids": 2,
        "rows": 1000,
        "row_privacy": False,
        "columns": {
            "pid": {"type": "int", "lower": 0, "upper": 500, "private_id": True},
            "code": {"type": "int", "categories": [3, 5, 7], "nullable": True},
            "small": {"type": "int", "lower": -5, "upper": 5, "precision": 32},
            "score": {
                "type": "float",
                "lower": -1.5,
                "upper": 2.5,
                "precision": 32,
                "nullable": True,
            },
            "flag": {"type": "boolean", "nullable": True},
            "flag2": {"type": "boolean"},
            "note": {"type": "string"},
            "seen": {"type": "datetime", "lower": "2020-01-01", "upper": "2020-12-31"},
        },
    }
)


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    a, b = make_dummy(PENGUIN, 200, 7), make_dummy(PENGUIN, 200, 7)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(make_dummy(PENGUIN, 200, 8))


@pytest.mark.parametrize("metadata", [PENGUIN, ALL_TYPES])
def test_values_respect_types_bounds_categories_and_nullability(metadata: dict) -> None:
    frame = make_dummy(metadata, 2000, 3)
    assert list(frame.columns) == list(metadata["columns"])
    assert len(frame) == 2000
    for name, spec in metadata["columns"].items():
        column = frame[name]
        values = column.dropna()
        if spec["nullable"]:
            assert 0 < column.isna().sum() < len(column) * 0.2, name
        else:
            assert column.notna().all(), name
        if "categories" in spec:
            assert set(values) <= set(spec["categories"]), name
        elif spec["type"] in ("int", "float"):
            assert values.min() >= spec["lower"] and values.max() <= spec["upper"], name
        if spec["type"] == "int":
            assert pd.api.types.is_integer_dtype(column.dtype), name
            if spec.get("precision") == 32:
                assert column.dtype.itemsize == 4, name
        elif spec["type"] == "float":
            assert pd.api.types.is_float_dtype(column.dtype), name
        elif spec["type"] == "boolean":
            assert pd.api.types.is_bool_dtype(column.dtype), name
        elif spec["type"] == "datetime":
            assert values.min() >= pd.Timestamp(spec["lower"])
            assert values.max() <= pd.Timestamp(spec["upper"])
        elif spec["type"] == "string" and "categories" not in spec:
            assert values.map(lambda v: isinstance(v, str) and 4 <= len(v) <= 10).all()


def test_a_column_does_not_change_when_another_is_added() -> None:
    extended = dict(
        PENGUIN,
        columns={
            **PENGUIN["columns"],
            "extra": {"type": "boolean", "nullable": False, "private_id": False},
        },
    )
    base, more = make_dummy(PENGUIN, 100, 1), make_dummy(extended, 100, 1)
    pd.testing.assert_frame_equal(base, more[base.columns])


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/Los_Angeles"])
def test_dummy_datetimes_stay_within_their_bounds_whatever_the_hosts_time_zone(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounds are read as the loader reads them (naive is UTC), never in the host's zone."""
    metadata = M.validate(
        {
            "max_ids": 1,
            "rows": 10,
            "row_privacy": True,
            "columns": {
                "seen": {
                    "type": "datetime",
                    "lower": "2020-01-01",
                    "upper": "2020-01-01T02:00:00+01:00",  # 01:00 UTC
                }
            },
        }
    )
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        values = make_dummy(metadata, 500, 1)["seen"]
    finally:
        monkeypatch.undo()
        time.tzset()
    seconds = (values - pd.Timestamp("2020-01-01")).dt.total_seconds()
    assert seconds.min() >= 0 and seconds.max() <= 3600
    assert seconds.max() - seconds.min() > 3000  # spread over the hour


@pytest.mark.parametrize(
    ("lower", "upper", "first", "last"),
    [
        ("0001-01-01", "9999-12-31T23:59:59", "1677-09-21T00:12:44", "2262-04-11T23:47:16"),
        ("1500-01-01", "1690-01-01", "1677-09-21T00:12:44", "1690-01-01"),
        (
            "2020-01-01T00:00:00.5",  # truncating 0.5 .. 1 s would go below
            "2020-01-01T00:00:02.5",
            "2020-01-01T00:00:01",
            "2020-01-01T00:00:02",
        ),
    ],
)
def test_dummy_datetimes_with_bounds_beyond_nanoseconds_stay_within_both(
    lower: str, upper: str, first: str, last: str
) -> None:
    """Wide bounds were an OutOfBoundsDatetime (a 500); now drawn where both ranges meet.

    Draws are whole seconds inside the bounds: in the last case, truncating 300 draws over
    0.5..2.5 s put one below 1 s except with probability 0.75**300 < 1e-37.
    """
    spec = {"type": "datetime", "lower": lower, "upper": upper}
    metadata = M.validate({"max_ids": 1, "rows": 10, "row_privacy": True, "columns": {"w": spec}})
    values = make_dummy(metadata, 300, 2)["w"]
    assert values.notna().all()
    assert values.min() >= pd.Timestamp(first) and values.max() <= pd.Timestamp(last)
