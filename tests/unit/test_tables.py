"""The table wire format: the server's encoder and the client's decoder round-trip frames."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from chalicelib.wire_tables import frame_to_table
from neblina_client._tables import decode_table


def roundtrip(frame: pd.DataFrame) -> pd.DataFrame:
    return decode_table(json.loads(json.dumps(frame_to_table(frame))))


def test_common_dtypes_round_trip() -> None:
    frame = pd.DataFrame(
        {
            "s": ["a", None, "c"],
            "i": np.array([1, 2, 3], dtype="int64"),
            "f": [1.5, np.nan, -2.25],
            "b": [True, False, True],
            "nb": pd.array([True, None, False], dtype="boolean"),
            "ni": pd.array([1, None, 3], dtype="Int64"),
            "t": pd.to_datetime(["2020-01-01 00:00", "2021-06-30 12:00", None]),
        }
    )
    back = roundtrip(frame)
    assert list(back.columns) == list(frame.columns)
    assert back["i"].tolist() == [1, 2, 3] and str(back["i"].dtype) == "int64"
    assert back["f"].isna().tolist() == [False, True, False]
    assert back["s"].tolist()[0] == "a" and back["s"].isna().tolist()[1]
    assert str(back["nb"].dtype) == "boolean" and back["nb"].isna().tolist() == [False, True, False]
    assert str(back["ni"].dtype) == "Int64" and back["ni"].tolist()[0] == 1
    assert back["t"].iloc[1] == pd.Timestamp("2021-06-30 12:00")


def test_numpy_scalars_and_non_finite_values_become_plain_json() -> None:
    table = frame_to_table(
        pd.DataFrame({"x": [np.float64(np.inf), np.int64(3)], "y": [np.nan, 1.0]})
    )
    text = json.dumps(table, allow_nan=False)  # raises if a NaN or inf slipped through
    assert json.loads(text)["records"][0] == {"x": None, "y": None}
