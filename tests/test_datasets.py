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

ROOT = Path(__file__).resolve().parent.parent
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
    """GROUP BY releases keys as found: out-of-category values go missing, ints are clamped."""
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
    assert frame["body_mass_g"].tolist() == [4.0, 4.0, 4.0]  # aggregated values: SmartNoise clamps
    coded = {**META, "columns": {"code": {"type": "int", "categories": [3, 5, 7]}}}
    codes = coerce_types(pd.DataFrame({"code": [3, 9, 7]}), M.validate(coded))["code"]
    assert codes.tolist()[0::2] == [3, 7] and codes.isna().tolist() == [False, True, False]
