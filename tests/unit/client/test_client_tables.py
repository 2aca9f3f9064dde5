"""The wire format of tables: DataFrames survive the trip through strict JSON."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
from hypothesis import given

from neblina_client import decode_table, encode_table


def through_json(frame: pd.DataFrame) -> pd.DataFrame:
    """Encode, serialise as strict JSON (no NaN/Infinity literals), parse, decode."""
    text = json.dumps(encode_table(frame), allow_nan=False)
    return decode_table(json.loads(text))


FRAMES: dict[str, pd.DataFrame] = {
    "numbers": pd.DataFrame(
        {
            "n": pd.Series([152, 124, 68], dtype="int64"),
            "mass": [3700.5, np.nan, -np.inf],
            "ratio": [0.1, 1e-300, np.inf],
            "small": pd.Series([1, 2, 255], dtype="uint8"),
            "i32": pd.Series([-(2**31), 0, 2**31 - 1], dtype="int32"),
            "f32": pd.Series([0.1, None, 3.5], dtype="float32"),
            "big": pd.Series([2**63 - 1, -(2**63), 0], dtype="int64"),
        }
    ),
    "nullable": pd.DataFrame(
        {
            "Int64": pd.Series([1, None, 3], dtype="Int64"),
            "boolean": pd.Series([True, None, False], dtype="boolean"),
            "string": pd.Series(["x", None, "z"], dtype="string"),
            "Float64": pd.Series([0.5, None, 1.5], dtype="Float64"),
        }
    ),
    "text_and_bools": pd.DataFrame(
        {
            "species": ["Adelie", None, "Gentoo"],
            "flag": [True, False, True],
            "unicode": ["é", "\u2603", "line\nbreak"],
            "mixed": [1, "two", None],
            "category": pd.Series(["a", "b", "a"], dtype="category"),
        }
    ),
    "datetimes": pd.DataFrame(
        {
            "naive": pd.to_datetime(
                ["2024-01-01", None, "2024-02-29 23:59:59.999999999"], format="ISO8601"
            ),
            "utc": pd.to_datetime(["2024-01-01T00:00:00Z", None, "2024-07-01T12:00:00Z"]),
            "zurich": pd.to_datetime(
                ["2024-01-01T01:00:00+01:00", "2024-07-01T02:00:00+02:00", None], utc=True
            ).tz_convert("Europe/Zurich"),
            "us": pd.to_datetime(["2024-01-01", "2024-01-02", None]).astype("datetime64[us]"),
        }
    ),
    "columns_out_of_alphabetical_order": pd.DataFrame({"z": [1], "a": [2.0], "m": ["x"]}),
    "empty_with_dtypes": pd.DataFrame(
        {
            "n": pd.Series([], dtype="int64"),
            "s": pd.Series([], dtype="object"),
            "t": pd.Series([], dtype="datetime64[ns]"),
            "b": pd.Series([], dtype="bool"),
        }
    ),
    "rows_without_columns": pd.DataFrame(index=pd.RangeIndex(3)),
    "all_null_float": pd.DataFrame({"x": [np.nan, np.nan]}),
}


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_round_trip(name: str) -> None:
    frame = FRAMES[name]
    back = through_json(frame)
    pd.testing.assert_frame_equal(back, frame, check_exact=True)
    assert list(back.columns) == list(frame.columns)
    assert [str(d) for d in back.dtypes] == [str(d) for d in frame.dtypes]


def test_index_is_not_sent() -> None:
    frame = pd.DataFrame({"x": [1, 2]}, index=["a", "b"])
    back = through_json(frame)
    assert list(back.index) == [0, 1]
    assert list(back["x"]) == [1, 2]


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20))
def test_any_float_round_trips_bit_for_bit(values: list[float]) -> None:
    frame = pd.DataFrame({"x": pd.Series(values, dtype="float64")})
    back = through_json(frame)
    for sent, received in zip(values, back["x"], strict=True):
        assert (math.isnan(sent) and math.isnan(received)) or sent == received


@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=20))
def test_any_int64_column_round_trips(values: list[int | None]) -> None:
    dtype = "Int64" if None in values else "int64"
    frame = pd.DataFrame({"x": pd.Series(values, dtype=dtype)})
    pd.testing.assert_frame_equal(through_json(frame), frame, check_exact=True)


def test_encoding_matches_the_documented_format() -> None:
    frame = pd.DataFrame(
        {"species": ["Adelie", "Gentoo"], "n": [152, 124], "mean_mass": [3700.5, np.nan]}
    )
    assert encode_table(frame) == {
        "type": "table",
        "columns": ["species", "n", "mean_mass"],
        "dtypes": {"species": "object", "n": "int64", "mean_mass": "float64"},
        "records": [
            {"species": "Adelie", "n": 152, "mean_mass": 3700.5},
            {"species": "Gentoo", "n": 124, "mean_mass": None},
        ],
    }


def test_encoded_values_are_plain_python() -> None:
    frame = FRAMES["numbers"]
    for record in encode_table(frame)["records"]:
        for value in record.values():
            assert value is None or type(value) in (int, float, str, bool), type(value)


def wire(dtypes: dict[str, str], *records: dict[str, Any]) -> dict[str, Any]:
    return {"type": "table", "columns": list(dtypes), "dtypes": dtypes, "records": list(records)}


def test_null_in_an_int64_column_falls_back_to_nullable() -> None:
    frame = decode_table(
        wire({"n": "int64", "u": "uint16", "b": "bool"}, {"n": 1, "u": 2, "b": True}, {})
    )
    assert {c: str(d) for c, d in frame.dtypes.items()} == {
        "n": "Int64",
        "u": "UInt16",
        "b": "boolean",
    }
    assert frame["n"].tolist() == [1, pd.NA]
    assert frame["b"].tolist() == [True, pd.NA]


def test_missing_key_in_a_record_means_null() -> None:
    frame = decode_table(wire({"a": "float64", "b": "object"}, {"a": 1.0}, {"b": "x"}))
    assert math.isnan(frame["a"][1])
    assert frame["b"].tolist() == [None, "x"]


def test_infinities_travel_as_strings() -> None:
    table = encode_table(pd.DataFrame({"x": [np.inf, -np.inf, 1.0]}))
    assert [r["x"] for r in table["records"]] == ["Infinity", "-Infinity", 1.0]


def test_dates_in_object_columns_are_sent_as_iso_strings() -> None:
    frame = pd.DataFrame({"d": [dt.date(2024, 1, 2), dt.datetime(2024, 1, 2, 3, 4, 5)]})
    assert [r["d"] for r in encode_table(frame)["records"]] == [
        "2024-01-02",
        "2024-01-02T03:04:05",
    ]


def test_unknown_or_unusable_dtype_leaves_the_column_inferred() -> None:
    frame = decode_table(
        wire(
            {"a": "no-such-dtype", "b": "int64"}, {"a": 1, "b": "not a number"}, {"a": 2, "b": "x"}
        )
    )
    assert frame["a"].tolist() == [1, 2]
    assert frame["b"].tolist() == ["not a number", "x"]


def test_numpy_string_dtype_keeps_nulls() -> None:
    frame = decode_table(wire({"s": "<U5"}, {"s": "abc"}, {"s": None}))
    assert frame["s"].tolist() == ["abc", None]


def test_column_without_dtype_is_inferred() -> None:
    frame = decode_table({"type": "table", "columns": ["x"], "records": [{"x": 1}, {"x": 2}]})
    assert str(frame["x"].dtype) == "int64"


def test_duplicate_columns_are_refused() -> None:
    frame = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(ValueError, match="unique"):
        encode_table(frame)
    with pytest.raises(ValueError, match="unique"):
        decode_table(wire({"a": "int64"}) | {"columns": ["a", "a"]})


def test_values_without_a_json_form_are_refused() -> None:
    with pytest.raises(TypeError, match="Decimal"):
        encode_table(pd.DataFrame({"x": [Decimal("1.5")]}))


def test_non_table_is_refused() -> None:
    with pytest.raises(ValueError, match="not a table"):
        decode_table({"type": "scalar", "value": 1})
