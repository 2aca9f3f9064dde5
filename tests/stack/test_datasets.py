"""Dataset sources (local path, http, S3 via the stack) and the warm cache keyed by version."""

from __future__ import annotations

import http.server
import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from chalicelib import metadata as M
from chalicelib.config import from_environ
from chalicelib.datasets import DatasetLoader, DatasetUnavailable, coerce_types
from chalicelib.models import Dataset, utcnow

ROOT = Path(__file__).resolve().parents[2]
META = M.validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))


def dataset(source: str, fmt: str | None = None) -> Dataset:
    from chalicelib.datasets import source_format

    return Dataset("PENGUIN", source, META, utcnow(), source_format=source_format(source, fmt))


@pytest.fixture
def loader() -> DatasetLoader:
    return DatasetLoader(from_environ())


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static file server on 127.0.0.1 (it sends Last-Modified, so versions change)."""
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()


def test_local_csv_is_read_once_while_unchanged(loader: DatasetLoader, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    shutil.copy(ROOT / "localstack/data/penguins.csv", path)
    first = loader.load(dataset(str(path)))
    assert loader.load(dataset(f"file://{path}")) is first
    assert loader.reads == 1 and len(first.frame) == 344
    assert list(first.frame.columns) == list(META["columns"])
    # rewriting the file changes its version: the next load reads it again
    frame = pd.read_csv(path).head(100)
    time.sleep(0.01)
    frame.to_csv(path, index=False)
    os.utime(path, None)
    second = loader.load(dataset(str(path)))
    assert loader.reads == 2 and len(second.frame) == 100


def test_parquet_from_a_local_path(loader: DatasetLoader, tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pd.read_csv(ROOT / "localstack/data/penguins.csv").to_parquet(path, engine="fastparquet")
    loaded = loader.load(dataset(str(path)))
    assert len(loaded.frame) == 344
    assert str(loaded.frame["study_year"].dtype) == "int64"


def test_http_source_cached_by_its_validators(
    loader: DatasetLoader, http_root: tuple[str, Path]
) -> None:
    url, folder = http_root
    shutil.copy(ROOT / "localstack/data/penguins.csv", folder / "p.csv")
    first = loader.load(dataset(f"{url}/p.csv"))
    assert loader.load(dataset(f"{url}/p.csv")) is first and loader.reads == 1
    pd.read_csv(folder / "p.csv").head(10).to_csv(folder / "p.csv", index=False)
    os.utime(folder / "p.csv", (time.time() + 5, time.time() + 5))  # a new Last-Modified
    assert len(loader.load(dataset(f"{url}/p.csv")).frame) == 10 and loader.reads == 2


def test_unreachable_sources_raise_before_any_engine(
    loader: DatasetLoader, http_root: tuple[str, Path]
) -> None:
    url, _ = http_root
    for source in (f"{url}/missing.csv", "/no/such/file.csv", "s3://no-such-bucket/x.csv"):
        with pytest.raises(DatasetUnavailable):
            loader.load(dataset(source))
    assert loader.reads == 0


def test_a_source_missing_a_declared_column_is_unavailable(
    loader: DatasetLoader, tmp_path: Path
) -> None:
    path = tmp_path / "p.csv"
    pd.read_csv(ROOT / "localstack/data/penguins.csv").drop(columns=["sex"]).to_csv(
        path, index=False
    )
    with pytest.raises(DatasetUnavailable, match="sex"):
        loader.load(dataset(str(path)))


def test_coercion_follows_the_metadata() -> None:
    raw = pd.read_csv(
        io.StringIO(
            "species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,"
            "body_mass_g,sex,study_year,extra\nAdelie,Dream,1,2,3,4,,2008,x\n"
        )
    )
    frame = coerce_types(raw, META)
    assert "extra" not in frame.columns  # undeclared columns never reach an engine
    assert frame["sex"].tolist() == [None]
    assert str(frame["study_year"].dtype) == "int64"
    assert str(frame["bill_length_mm"].dtype) == "float64"


def test_the_s3_object_of_the_stack_is_cached_by_etag(stack: object) -> None:
    from chalicelib.config import get_settings
    from chalicelib.storage import get_store

    loader = DatasetLoader(get_settings())
    penguin = get_store().get_dataset("PENGUIN")
    assert penguin is not None and penguin.source.startswith("s3://")
    first = loader.load(penguin)
    assert loader.load(penguin) is first and loader.reads == 1
    assert first.version.startswith('"')  # an S3 ETag


def test_values_outside_the_declared_domain_never_reach_an_engine() -> None:
    """Out-of-category values go missing; ints and floats are clamped into their bounds."""
    raw = pd.read_csv(
        io.StringIO(
            "species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,"
            "study_year\nAdelie,Dream,1,2,3,4,,2008\nEmperor,Mars,1,2,3,4,male,2020\n"
            "Gentoo,Biscoe,1,2,3,4,female,1999\n"
        )
    )
    frame = coerce_types(raw, META)
    assert frame["species"].tolist() == ["Adelie", None, "Gentoo"]
    assert frame["island"].tolist() == ["Dream", None, "Biscoe"]
    assert frame["study_year"].tolist() == [2008, 2009, 2007]  # clamped to 2007..2009
    assert frame["body_mass_g"].tolist() == [2000.0, 2000.0, 2000.0]  # floats too (lower 2000)
    assert frame["bill_length_mm"].tolist() == [30.0, 30.0, 30.0]
    coded = {**META, "columns": {"code": {"type": "int", "categories": [3, 5, 7]}}}
    codes = coerce_types(pd.DataFrame({"code": [3, 9, 7]}), M.validate(coded))["code"]
    assert codes.tolist()[0::2] == [3, 7] and codes.isna().tolist() == [False, True, False]


def test_floats_and_datetimes_are_clamped_to_their_declared_bounds_row_by_row() -> None:
    """A grouped column is not clamped by SmartNoise: the loader clamps every bounded type.

    Missing values stay missing; infinities clamp to a bound; a 32-bit float's bounds are
    rounded inwards so that no clamped value lies outside the declared interval; aware
    datetimes become naive UTC before they are compared with the bounds.
    """
    meta = M.validate(
        {
            "max_ids": 1,
            "rows": 4,
            "row_privacy": True,
            "columns": {
                "x": {"type": "float", "lower": 30.1, "upper": 65.1, "precision": 32},
                "y": {"type": "float", "lower": 30.0, "upper": 65.0, "nullable": True},
                "t": {"type": "datetime", "lower": "2020-01-01", "upper": "2020-12-31"},
            },
        }
    )
    raw = pd.DataFrame(
        {
            "x": [1e6, -5, 40, "inf"],
            "y": [None, 1e6, 40, -1e9],
            "t": ["2019-05-01", "2021-06-01", "2020-06-01T12:00:00", "2020-03-01T00:00:00"],
        }
    )
    frame = coerce_types(raw, meta)
    assert frame["y"].isna().tolist() == [True, False, False, False]
    assert frame["y"].tolist()[1:] == [65.0, 40.0, 30.0]
    x = frame["x"].astype(float)
    assert str(frame["x"].dtype) == "float32"
    assert x.min() >= 30.1 and x.max() <= 65.1 and x[2] == 40.0
    assert x.max() > 65.09999 and x.min() < 30.10001  # clamped to the bound, not beyond it
    assert frame["t"].tolist() == [
        pd.Timestamp("2020-01-01"),
        pd.Timestamp("2020-12-31"),
        pd.Timestamp("2020-06-01T12:00:00"),
        pd.Timestamp("2020-03-01"),
    ]
    aware = coerce_types(raw.assign(t=["2021-01-01T00:30:00+01:00"] * 4), meta)["t"]
    assert aware.tolist() == [pd.Timestamp("2020-12-31")] * 4  # 23:30 UTC, then clamped
    mixed = ["2020-05-01T10:00:00+02:00", "2020-05-01T10:00:00", "no date", None]
    assert coerce_types(raw.assign(t=mixed), meta)["t"].tolist()[:2] == [
        pd.Timestamp("2020-05-01T08:00:00"),
        pd.Timestamp("2020-05-01T10:00:00"),  # a naive value is not read in its neighbour's zone
    ]


def test_private_ids_are_never_clamped_and_rows_without_one_are_dropped() -> None:
    """Ids outside the declared range stay distinct persons; a row nobody owns is left out.

    Clamped, ids 5000 and 6000 would both become 10 (one pseudo-person with both rows), so
    one real person could change up to 2 x max_ids of the rows SmartNoise samples.
    """
    meta = M.validate(
        {
            "max_ids": 1,
            "rows": 5,
            "row_privacy": False,
            "columns": {
                "who": {"type": "int", "lower": 0, "upper": 10, "private_id": True},
                "name": {"type": "string", "categories": ["a"], "private_id": False},
                "x": {"type": "int", "lower": 0, "upper": 1},
            },
        }
    )
    raw = pd.DataFrame({"who": [1, 5000, None, 6000, -3], "name": "a", "x": [0, 1, 1, 5, 0]})
    frame = coerce_types(raw, meta)
    assert frame["who"].tolist() == [1, 5000, 6000, -3]
    assert str(frame["who"].dtype) == "int64"
    assert frame["x"].tolist() == [0, 1, 1, 0]  # the other columns are still clamped
    named = M.validate(
        {
            **meta,
            "columns": {
                "who": {"type": "string", "categories": ["p1"], "private_id": True},
                "x": {"type": "int", "lower": 0, "upper": 1},
            },
        }
    )
    ids = coerce_types(pd.DataFrame({"who": ["p1", "p2", None], "x": 0}), named)["who"]
    assert ids.tolist() == ["p1", "p2"]  # not turned missing for lying outside categories
