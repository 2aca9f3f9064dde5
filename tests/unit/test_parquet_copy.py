"""The Parquet copy written at registration (issue 14): typed, unclamped, read by DuckDB.

A copy holds the source's values as typed from the metadata, out-of-domain values and NULLs
included; DuckDB reading it keeps values inside the declared domain exactly as the CSV path
does (row for row), the pandas frame is built only when an engine asks for it, and the loader
reads the copy only while it is the copy of the source version and metadata it names.
"""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from chalicelib import datasets as datasets_module
from chalicelib import metadata as M
from chalicelib.datasets import (
    DatasetLoader,
    LoadedDataset,
    coerce_types,
    read_csv,
    read_parquet,
    to_parquet,
)
from chalicelib.engines import duckdb_sql
from chalicelib.engines import smartnoise_engine as sn
from chalicelib.models import Dataset, metadata_digest, utcnow

META = M.validate(
    {
        "max_ids": 2,
        "row_privacy": False,
        "censor_dims": False,
        "rows": 10,
        "columns": {
            "pid": {"type": "int", "private_id": True, "lower": 0, "upper": 9, "nullable": True},
            "g": {"type": "string", "categories": ["b", "a", "1"], "nullable": True},
            "code": {"type": "int", "categories": [1, 2], "nullable": True},
            "k": {"type": "int", "lower": 0, "upper": 3, "nullable": True},
            "x": {"type": "float", "lower": -1.5, "upper": 2.5, "nullable": True},
            "y": {"type": "float", "lower": 0.1, "upper": 0.7, "precision": 32, "nullable": True},
            "free": {"type": "float", "lower": -1.0, "upper": 1.0, "nullable": True},
            "flag": {"type": "boolean", "nullable": True},
            "note": {"type": "string", "nullable": True},
            "t": {
                "type": "datetime",
                "lower": "2020-01-01",
                "upper": "2020-12-31T12:00:00",
                "nullable": True,
            },
        },
    }
)
# Every kind of value the domain rule touches: outside categories (zz, 3), outside bounds
# (k -4 and 9, x 7.25 and -inf, y 0.05, t in 2019 and 2021), NaN/inf text, NULL everywhere,
# a row without a private id (left out), a numeric-looking category ("1").
CSV = (
    "pid,g,code,k,x,y,free,flag,note,t\n"
    "1,a,1,2,0.5,0.3,1.25,true,hello,2020-03-01 10:00:00\n"
    "1,zz,3,-4,7.25,0.05,nan,false,,2019-05-05\n"
    "2,1,2,9,-inf,0.9,inf,,x y,2021-01-01T00:00:00\n"
    "2,,,,,,,,,\n"
    ",b,1,1,1.0,0.2,-2,true,orphan,2020-06-01\n"
    '3,b,2,3,nan,,-inf,False,"a,b",2020-12-31T23:59:59\n'
)


def _csv_frame() -> pd.DataFrame:
    return coerce_types(read_csv(CSV.encode(), META), META)


def _rows(connection: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    rows = connection.execute("SELECT * FROM df").fetchall()
    return sorted(rows, key=repr)


def test_the_copy_holds_the_typed_source_values_unclamped_with_their_nulls() -> None:
    copy = read_parquet(to_parquet(read_csv(CSV.encode(), META), META))
    assert list(copy.columns) == list(META["columns"])
    assert copy["g"].tolist()[:3] == ["a", "zz", "1"]  # outside the categories: kept
    assert copy["code"].tolist()[:3] == [1, 3, 2]
    assert copy["k"].tolist()[:3] == [2, -4, 9]  # outside the bounds: kept
    assert copy["x"].tolist()[1:3] == [7.25, -math.inf]
    assert copy["pid"].isna().tolist() == [False] * 4 + [True, False]  # the orphan row kept
    assert copy.iloc[3, 1:].isna().all()  # the empty row: NULL in every column
    assert str(copy["y"].dtype) == "float32" and str(copy["t"].dtype) == "datetime64[ns]"


def test_a_large_copy_is_cut_into_row_groups_duckdb_reads_in_parallel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fastparquet

    monkeypatch.setattr(datasets_module, "ROW_GROUP_ROWS", 2)
    copy = to_parquet(read_csv(CSV.encode(), META), META)
    assert len(fastparquet.ParquetFile(io.BytesIO(copy)).row_groups) == 3  # 6 rows
    from_copy = duckdb_sql.connect_parquet(copy, META, [])
    assert _rows(from_copy) == _rows(duckdb_sql.connect(_csv_frame(), META, []))


def test_duckdb_reading_the_copy_holds_the_rows_the_csv_path_holds() -> None:
    names = ["people"]
    from_csv = duckdb_sql.connect(_csv_frame(), META, names)
    copy = to_parquet(read_csv(CSV.encode(), META), META)
    from_copy = duckdb_sql.connect_parquet(copy, META, names)
    assert len(_rows(from_csv)) == 5  # the orphan row left out
    assert _rows(from_copy) == _rows(from_csv)
    grouped = "SELECT g, code, COUNT(*), SUM(k), SUM(x), SUM(y), COUNT(free), SUM(free) FROM df GROUP BY ALL"
    assert sorted(from_copy.execute(grouped).fetchall(), key=repr) == sorted(
        from_csv.execute(grouped).fetchall(), key=repr
    )


def test_the_frame_of_a_copy_is_built_only_when_asked_and_equals_the_csv_frame() -> None:
    loaded = LoadedDataset(
        "people", "v1", META, parquet=to_parquet(read_csv(CSV.encode(), META), META)
    )
    assert not loaded.has_frame
    pd.testing.assert_frame_equal(loaded.frame, _csv_frame())
    assert loaded.has_frame


def test_duckdb_on_a_copy_can_read_no_file_nor_undo_its_hardening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    path = tmp_path / "other.parquet"
    path.write_bytes(to_parquet(read_csv(CSV.encode(), META), META))
    connection = duckdb_sql.connect_parquet(path.read_bytes(), META, ["people"])
    assert not list(scratch.iterdir())  # the copy's temporary file is gone once loaded
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        connection.execute(f"SELECT * FROM read_parquet('{path}')")  # noqa: S608
    with pytest.raises(duckdb.Error, match="locked"):
        connection.execute("SET enable_external_access = true")
    assert duckdb_sql.run(connection, "SELECT COUNT(*) FROM people")[1] == (5,)
    # a load over 2 s would otherwise draw a progress bar on the worker's stdout
    shown = "SELECT current_setting('enable_progress_bar')"
    assert connection.execute(shown).fetchone() == (False,)
    assert duckdb_sql.connect(_csv_frame(), META, []).execute(shown).fetchone() == (False,)


# --- the loader ----------------------------------------------------------------------------


class FakeS3:
    """head_object / get_object (with IfMatch) over a dict of versioned objects."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.gets: list[str] = []

    def put(self, bucket: str, key: str, data: bytes) -> str:
        etag = f'"{len(self.objects)}-{hash(data) & 0xFFFF:x}"'
        self.objects[(bucket, key)] = (data, etag)
        return etag

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        return {"ETag": self.objects[(Bucket, Key)][1], "VersionId": "null"}

    def get_object(self, Bucket: str, Key: str, IfMatch: str | None = None) -> dict[str, Any]:
        data, etag = self.objects[(Bucket, Key)]
        if IfMatch is not None and IfMatch != etag:
            raise RuntimeError("PreconditionFailed")
        self.gets.append(Key)
        return {"Body": io.BytesIO(data)}


def _registered(s3: FakeS3) -> Dataset:
    """A dataset whose CSV source is in the fake bucket, with its copy recorded."""
    s3.put("b", "people.csv", CSV.encode())
    dataset = Dataset("people", "s3://b/people.csv", META, utcnow())
    loader = DatasetLoader(_settings(), s3=lambda: s3)
    etag = s3.put("b", "people.csv.parquet", to_parquet(loader.read_source(dataset), META))
    record = {
        "uri": "s3://b/people.csv.parquet",
        "etag": etag,
        "source_version": loader.version(dataset),
        "metadata_digest": metadata_digest(META),
    }
    s3.gets.clear()
    return Dataset("people", "s3://b/people.csv", META, utcnow(), columnar=record)


def _settings() -> Any:
    from chalicelib.config import from_environ

    return from_environ()


COUNT = "SELECT COUNT(*) AS n FROM df"


def _exact_count(loaded: LoadedDataset) -> Any:
    engine = sn.SmartnoiseSqlEngine(executor="duckdb")
    reader = engine._reader(loaded)
    return duckdb_sql.run(reader.duckdb, "SELECT COUNT(*), SUM(k) FROM df")


def test_the_loader_reads_the_copy_and_the_sql_engine_never_builds_the_frame() -> None:
    s3 = FakeS3()
    dataset = _registered(s3)
    loaded = DatasetLoader(_settings(), s3=lambda: s3).load(dataset)
    assert s3.gets == ["people.csv.parquet"] and loaded.parquet is not None
    engine = sn.SmartnoiseSqlEngine(executor="duckdb")
    request = engine.parse({"query": COUNT, "epsilon": "1", "delta": "0.00001"})
    engine.cost(dataset, request)
    engine.execute(loaded, request)
    assert not loaded.has_frame  # DuckDB read the Parquet: no pandas copy held besides
    csv_loaded = LoadedDataset("people", "v0", META, _csv_frame())
    assert _exact_count(loaded) == _exact_count(csv_loaded)


@pytest.mark.parametrize("change", ["source replaced", "copy replaced", "metadata changed"])
def test_a_copy_that_is_not_of_this_source_version_and_metadata_is_not_read(change: str) -> None:
    s3 = FakeS3()
    dataset = _registered(s3)
    if change == "source replaced":
        s3.put("b", "people.csv", CSV.replace("1,a,1,2,", "1,a,1,3,").encode())
    elif change == "copy replaced":
        s3.put("b", "people.csv.parquet", s3.objects[("b", "people.csv.parquet")][0])
    else:
        columns = {**META["columns"], "k": {**META["columns"]["k"], "upper": 2}}
        dataset = Dataset(
            "people",
            dataset.source,
            M.validate({**META, "columns": columns}),
            utcnow(),
            columnar=dataset.columnar,
        )
    loaded = DatasetLoader(_settings(), s3=lambda: s3).load(dataset)
    assert loaded.parquet is None and loaded.has_frame
    assert s3.gets[-1] == "people.csv"  # the source itself, as for a dataset without a copy


def test_a_nan_stored_as_a_value_in_a_copy_is_missing_as_on_the_csv_path() -> None:
    """fastparquet writes NaN as NULL; a copy written otherwise (NaN as a value) reads alike."""
    pyarrow = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    typed = read_parquet(to_parquet(read_csv(CSV.encode(), META), META))
    table = pyarrow.Table.from_pandas(typed, preserve_index=False)
    nan = float("nan")
    table = table.set_column(
        table.schema.get_field_index("x"),
        "x",
        pyarrow.array([0.5, nan, nan, None, 1.0, nan], type=pyarrow.float64(), from_pandas=False),
    )
    buffer = io.BytesIO()
    parquet.write_table(table, buffer)
    assert pd.read_parquet(io.BytesIO(buffer.getvalue()))["x"].isna().sum() == 4
    from_copy = duckdb_sql.connect_parquet(buffer.getvalue(), META, ["people"])
    nan_free = _csv_frame().assign(x=[0.5, None, None, None, None])  # the orphan row left out
    from_csv = duckdb_sql.connect(nan_free, META, ["people"])
    assert _rows(from_copy) == _rows(from_csv)
    assert from_copy.execute("SELECT COUNT(x) FROM df").fetchone() == (1,)


def test_declared_categories_are_stored_dictionary_encoded_and_read_back_as_plain_text() -> None:
    """DuckDB reads dictionary-encoded text faster (a cold worker's first query, issue 14)."""
    import fastparquet

    copy = to_parquet(read_csv(CSV.encode(), META), META)
    stored = fastparquet.ParquetFile(io.BytesIO(copy))
    assert stored.dtypes["g"] == "category" and stored.dtypes["note"] != "category"
    frame = read_parquet(copy)
    assert str(frame["g"].dtype) == "object"
    assert frame["g"].tolist() == ["a", "zz", "1", None, "b", "b"]  # undeclared zz kept
    assert _rows(duckdb_sql.connect_parquet(copy, META, [])) == _rows(
        duckdb_sql.connect(_csv_frame(), META, [])
    )
