"""OpenDP input prepared once per dataset version: the standard prefix is not re-run per query.

A pipeline that reads the data through ``make_split_dataframe >> make_select_column`` only
gets the prefix's output (kept inside OpenDP) and runs the rest of its chain on it. The
release must be the same function of the data (checked with noise far below one unit, so
the exact value shows) and the charge the whole measurement's map (the statistical test in
test_opendp_noise.py runs through this path).
"""

from __future__ import annotations

from typing import Any

import opendp.prelude as dp
import pandas as pd
import pytest
from opendp_pipelines import (
    COLUMNS,
    FRAME,
    META,
    ROOT,
    TRUE_COUNT,
    bill_length,
    body,
    laplace_count,
    laplace_mean,
    loaded,
    space,
    species_histogram,
)

from chalicelib.datasets import LoadedDataset, to_parquet
from chalicelib.engines import opendp_engine as oe
from chalicelib.engines.opendp_engine import ENGINE

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated function:DeprecationWarning")
TINY = 1e-9  # noise scale: the release is the exact value (an integer count: exactly)


def test_the_prefix_runs_once_per_dataset_version_whatever_the_number_of_releases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    original = oe._invoke_raw

    def counted(transformation: Any, argument: Any) -> Any:
        calls.append("prefix")
        return original(transformation, argument)

    monkeypatch.setattr(oe, "_invoke_raw", counted)
    data = loaded()
    request = ENGINE.parse(body(laplace_count(scale=1.0)))
    for _ in range(5):
        assert abs(ENGINE.execute(data, request)["value"] - TRUE_COUNT) < 22
    mean = ENGINE.parse(body(laplace_mean()))
    ENGINE.execute(data, mean)
    assert calls == ["prefix", "prefix"]  # species once, bill_length_mm once
    assert ENGINE.execute(loaded(), request)["type"] == "value"  # a new version: again
    assert len(calls) == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda: laplace_count(scale=TINY),
        lambda: species_histogram(scale=TINY),
        lambda: bill_length() >> dp.t.then_sum() >> dp.m.then_laplace(TINY),
        lambda: (
            space("study_year")
            >> dp.t.then_cast_default(int)
            >> dp.t.then_clamp((2000, 2010))
            >> dp.t.then_sum()
            >> dp.m.then_laplace(TINY)
        ),
    ],
)
def test_the_rest_of_the_chain_on_the_prepared_column_releases_what_the_whole_pipeline_does(
    make: Any,
) -> None:
    request = ENGINE.parse(body(make()))
    assert oe.prepared(request) is not None
    ours = ENGINE.execute(loaded(), request)["value"]
    whole = request.measurement()(oe.csv_text(FRAME))
    if isinstance(whole, float):
        assert ours == pytest.approx(whole, abs=1e-3)
    else:
        assert ours == whole


@pytest.mark.parametrize("column", COLUMNS)
def test_the_prepared_column_read_alone_is_the_column_the_whole_prefix_selects(
    column: str,
) -> None:
    """Every PENGUIN column (text, ints, floats, NULLs): the one-column text splits alike."""
    whole = dp.t.make_split_dataframe(",", COLUMNS) >> dp.t.make_select_column(column, str)
    one = dp.t.make_split_dataframe(",", [column]) >> dp.t.make_select_column(column, str)
    assert one(oe.csv_text(FRAME[[column]])) == whole(oe.csv_text(FRAME))


def test_a_parquet_copy_feeds_the_prepared_column_without_building_the_frame() -> None:
    raw = pd.read_csv(ROOT / "localstack/data/penguins.csv")
    copy = LoadedDataset("PENGUIN", "v2", META, parquet=to_parquet(raw, META))
    for make in (lambda: laplace_count(scale=TINY), lambda: species_histogram(scale=TINY)):
        request = ENGINE.parse(body(make()))
        assert ENGINE.execute(copy, request)["value"] == request.measurement()(oe.csv_text(FRAME))
    assert not copy.has_frame  # two columns read from the Parquet, nothing else
    pd.testing.assert_frame_equal(copy.column("bill_length_mm"), FRAME[["bill_length_mm"]])


def test_other_shapes_run_the_whole_pipeline_on_the_text() -> None:
    composed = dp.c.make_composition([laplace_count(scale=TINY), laplace_mean()])
    request = ENGINE.parse(body(composed))
    assert oe.prepared(request) is None  # two branches read the input
    count, mean = ENGINE.execute(loaded(), request)["value"]
    assert count == TRUE_COUNT and 30 <= mean <= 65


def test_the_prefix_is_only_used_when_rows_need_no_per_release_sampling() -> None:
    """row_privacy false: each release samples max_ids rows per person, so the text changes."""
    meta = {**META, "row_privacy": False, "max_ids": 2}
    meta["columns"] = {
        **META["columns"],
        "study_year": {**META["columns"]["study_year"], "private_id": True},
    }
    data = LoadedDataset("PENGUIN", "v1", meta, FRAME)
    request = ENGINE.parse(body(laplace_count(scale=TINY)))
    released = ENGINE.execute(data, request)["value"]
    assert released == 6  # three study years, two rows kept for each
    assert not any(key.startswith("opendp:column:") for key in data._derived)


def test_the_csv_text_is_written_cell_for_cell_as_before_only_faster() -> None:
    """Each column's cells equal ``_cell`` of each value (1, 1.0 and True kept apart)."""
    import math

    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(
        {
            "mixed": pd.Series([1, 1.0, True, "1", None, float("nan"), "a,b", 1], dtype=object),
            "f64": [0.1, float("nan"), 1e16, -0.0, 2.5, math.inf, 3.0, 1 / 3],
            "f32": np.array([0.1, 1.5, np.nan, 2, 3, 4, 5, 6], dtype="float32"),
            "i64": np.arange(8, dtype="int64") - 4,
            "nullable": pd.array([1, None, 3, 4, 5, 6, 7, 8], dtype="Int64"),
            "flag": pd.array([True, False, None, True, False, True, None, False], dtype="boolean"),
            "when": pd.to_datetime(["2020-01-02 03:04:05"] * 7 + [None]),
        }
    )
    for name in frame.columns:
        expected = [oe._cell(value) for value in frame[name].astype(object).tolist()]
        assert oe._cells(frame[name]) == expected, name
    assert oe.csv_text(FRAME).count("\n") == len(FRAME)
