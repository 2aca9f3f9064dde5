"""Loading private datasets (S3, http(s), local path), cached across warm requests.

A loaded frame is cached under ``(dataset name, source version, metadata digest)``, where
the version is the S3 ETag and VersionId, the HTTP ETag/Last-Modified, or the file's mtime
and size, and the digest is :func:`metadata_digest` of the metadata the frame was coerced
with. The source is asked for its version (one cheap HEAD/stat) at most once per
``NEBLINA_LOOKUP_CACHE_SECONDS`` per dataset (default 5 s; docs/threat-model.md, "Cached
lookups"), so a replaced object is reloaded within that bound, while an unchanged one is
never read twice. Engines hang their own
derived objects (SmartNoise readers, ...) on the cached entry, so those are reused and
evicted with it.

The metadata is part of the key because execution must use exactly the metadata the query
was priced with: an entry loaded under older metadata (``max_ids`` 1, ``censor_dims``
true) would otherwise run a query priced under the new one (``max_ids`` 5) with the old
sensitivity. The service checks the digest of what it loaded against what it priced.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import date
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from chalicelib.aws import s3_client
from chalicelib.config import Settings
from chalicelib.dummy import make_dummy
from chalicelib.lru import LruCache
from chalicelib.models import Dataset, metadata_digest

log = logging.getLogger(__name__)
T = TypeVar("T")
HTTP_TIMEOUT_SECONDS = 30


class DatasetUnavailable(Exception):
    """The source could not be read. Raised before any engine has seen the data."""


class LoadedDataset:
    """A dataset version ready for the engines, plus their derived objects (memoized).

    ``metadata`` is the one the frame was coerced with and the engines run with;
    ``digest`` is its :func:`metadata_digest`. Loaded from a Parquet copy, the entry holds
    the copy's bytes (``parquet``: typed, not yet kept inside the declared domain) and
    builds the pandas ``frame`` only when an engine first asks for it, so a DuckDB worker
    that reads the Parquet directly never holds the frame as well (docs/sql.md).
    """

    def __init__(
        self,
        name: str,
        version: str,
        metadata: dict[str, Any],
        frame: pd.DataFrame | None = None,
        is_dummy: bool = False,
        *,
        parquet: bytes | None = None,
    ) -> None:
        if frame is None and parquet is None:
            raise ValueError("a loaded dataset needs a frame or a Parquet copy")
        self.name = name
        self.version = version
        self.metadata = metadata
        self.is_dummy = is_dummy
        self.parquet = parquet
        self.digest = metadata_digest(metadata)
        self._frame = frame
        self._derived: dict[str, Any] = {}
        self._lock = threading.Lock()  # guards _derived
        self._frame_lock = threading.Lock()  # guards _frame (a derived object may read it)

    @property
    def frame(self) -> pd.DataFrame:
        """The rows as the engines see them (:func:`coerce_types`), built once."""
        with self._frame_lock:
            if self._frame is None:
                assert self.parquet is not None
                self._frame = coerce_types(read_parquet(self.parquet), self.metadata)
            return self._frame

    def column(self, name: str) -> pd.DataFrame:
        """One declared column as :attr:`frame` holds it, as a one-column frame.

        From a Parquet copy of a dataset without a ``private_id`` (no row is dropped, so
        the rows line up with the frame's), only that column is read and the frame is not
        built; otherwise it is the frame's column.
        """
        with self._frame_lock:
            held = self._frame
        if held is not None or self.parquet is None:
            return self.frame[[name]]
        columns = self.metadata["columns"]
        if any(spec.get("private_id") for spec in columns.values()):
            return self.frame[[name]]
        only = {**self.metadata, "columns": {name: columns[name]}}
        return coerce_types(read_parquet(self.parquet, [name]), only)

    @property
    def has_frame(self) -> bool:
        """Whether the pandas frame is held (tests and benchmarks: memory)."""
        return self._frame is not None

    def derived(self, key: str, build: Callable[[LoadedDataset], T]) -> T:
        """The engine object ``key`` built on this frame, built once."""
        with self._lock:
            if key not in self._derived:
                self._derived[key] = build(self)
            value: T = self._derived[key]
            return value


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an ``s3://bucket/key`` URI."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def source_format(source: str, declared: str | None = None) -> str:
    """``csv`` or ``parquet``, from the declared format or the file extension."""
    if declared:
        return declared
    path = urlparse(source).path.lower()
    return "parquet" if path.endswith((".parquet", ".pq")) else "csv"


def _local_path(source: str) -> str:
    parsed = urlparse(source)
    return parsed.path if parsed.scheme == "file" else source


def typed_frame(frame: pd.DataFrame, metadata: dict[str, Any]) -> pd.DataFrame:
    """The declared columns, in declared order, with dtypes that match the metadata.

    Values are only parsed (text that is not of the column's type becomes missing), never
    clamped or dropped: what a Parquet copy holds (:func:`to_parquet`).
    """
    columns = metadata["columns"]
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise DatasetUnavailable(f"source lacks declared columns: {', '.join(missing)}")
    out = {}
    for name, spec in columns.items():
        series = frame[name]
        kind = spec["type"]
        if kind == "int":
            precision = "Int32" if spec.get("precision") == 32 else "Int64"
            series = pd.to_numeric(series, errors="coerce").astype(precision)
            if not series.isna().any():
                series = series.astype(precision.lower())
        elif kind == "float":
            dtype = "float32" if spec.get("precision") == 32 else "float64"
            series = pd.to_numeric(series, errors="coerce").astype(dtype)
        elif kind == "boolean":
            series = series.astype("boolean")
        elif kind == "datetime":
            series = _datetimes(series)
        else:
            series = series.astype(object).where(series.notna(), None)
        out[name] = series
    return pd.DataFrame(out)


def coerce_types(frame: pd.DataFrame, metadata: dict[str, Any]) -> pd.DataFrame:
    """:func:`typed_frame`, then every value kept inside its column's declared domain.

    Every value is kept inside its column's declared domain (:func:`_within_public_domain`),
    except the ``private_id``'s, and rows without a ``private_id`` are dropped.
    """
    columns = metadata["columns"]
    typed = typed_frame(frame, metadata)
    out = {}
    identifier = None
    for name, spec in columns.items():
        if spec.get("private_id"):
            identifier = name
            out[name] = typed[name]  # never clamped: ids outside a range stay distinct persons
        else:
            out[name] = _within_public_domain(typed[name], spec)
    coerced = pd.DataFrame(out)
    if identifier is not None and coerced[identifier].isna().any():
        # A row nobody owns cannot be bounded per person (SmartNoise would pool all of them
        # into one pseudo-person): it is left out, a row-by-row stable transformation.
        coerced = coerced[coerced[identifier].notna()].reset_index(drop=True)
        if columns[identifier]["type"] == "int":  # no missing id left: a plain int dtype
            coerced[identifier] = coerced[identifier].astype(str(coerced[identifier].dtype).lower())
    return coerced


def to_parquet(frame: pd.DataFrame, metadata: dict[str, Any]) -> bytes:
    """The source's rows as a Parquet file, typed from the metadata (:func:`typed_frame`).

    Nothing is clamped or dropped (the engines keep values inside the declared domain when
    they load it); missing values stay missing (NULL in Parquet, NaN included).
    """
    typed = typed_frame(frame, metadata)
    for name, spec in metadata["columns"].items():
        if spec["type"] == "string" and spec.get("categories"):
            # dictionary-encoded: DuckDB reads PEOPLE_1M 30% faster, 9.2 MB instead of 11.0
            # (a cold worker's first query); the values found, declared or not, are kept
            typed[name] = typed[name].astype("category")
    buffer = io.BytesIO()
    typed.to_parquet(buffer, engine="fastparquet", index=False, row_group_offsets=ROW_GROUP_ROWS)
    return buffer.getvalue()


# Rows per Parquet row group: DuckDB reads row groups in parallel (fastparquet's default puts
# up to 50M rows in one). PEOPLE_10M into DuckDB: 3.0 s in one group, 2.35-2.57 s in ten
# (same size on disk; load average 5).
ROW_GROUP_ROWS = 1_000_000


def read_parquet(data: bytes, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file's rows (only ``columns``, if given)."""
    frame = pd.read_parquet(io.BytesIO(data), engine="fastparquet", columns=columns)
    for name in frame.columns:  # text stored dictionary-encoded: back to plain text
        if isinstance(frame[name].dtype, pd.CategoricalDtype):
            series = frame[name].astype(object)
            frame[name] = series.where(series.notna(), None)
    return frame


def read_csv(data: bytes, metadata: dict[str, Any]) -> pd.DataFrame:
    """A CSV file's rows; declared text columns are read as text (``"1"`` stays ``"1"``)."""
    text = [name for name, spec in metadata.get("columns", {}).items() if spec["type"] == "string"]
    header = pd.read_csv(io.BytesIO(data), nrows=0).columns
    return pd.read_csv(io.BytesIO(data), dtype={name: str for name in text if name in header})


# ISO 8601 text with a time and a UTC offset (no "+"/"-" in the time, so no backtracking)
_AWARE = r"\d{4}-?\d\d-?\d\d[Tt ][\d:.,]+(?:[Zz]|[+-]\d\d(?::?\d\d)?)"


def _datetimes(series: pd.Series) -> pd.Series:
    """A datetime column in one representation, naive UTC (aware values are converted).

    Text is read as ISO 8601, the form the metadata's bounds take (anything else is
    missing); naive and aware text are parsed apart, because pandas, given both in one
    call, reads a naive time in the offset of the aware value before it (one row's value
    would then depend on another's).
    """
    if pd.api.types.is_datetime64_any_dtype(series):
        if series.dt.tz is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return series.astype("datetime64[ns]")
    parsed = pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns]")
    kind = pd.api.types.infer_dtype(series, skipna=True)
    if kind in ("string", "empty"):
        text = series
    else:  # datetime objects (e.g. from Parquet) one by one, anything else is missing
        objects = series.map(lambda value: isinstance(value, date))
        if objects.any():
            parsed[objects] = series[objects].map(_timestamp).astype("datetime64[ns]")
        text = series.map(lambda value: value if isinstance(value, str) else None)
    present = text.notna()
    aware = present & text.str.fullmatch(_AWARE, na=False).astype(bool)
    for mask, utc in ((aware, True), (present & ~aware, False)):
        if mask.any():
            values = pd.to_datetime(text[mask], errors="coerce", utc=utc, format="ISO8601")
            if utc:
                values = values.dt.tz_localize(None)
            parsed[mask] = values.astype("datetime64[ns]")
    return parsed


def _timestamp(value: Any) -> pd.Timestamp:
    """A declared datetime bound as a naive UTC timestamp (the loaded column's form)."""
    stamp = pd.Timestamp(value)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


def _float_bounds(spec: dict[str, Any], dtype: Any) -> tuple[Any, Any]:
    """The declared float bounds in the column's dtype, rounded inwards (never outside)."""
    kind = np.dtype(dtype).type
    lower, upper = kind(spec["lower"]), kind(spec["upper"])
    if float(lower) < spec["lower"]:
        lower = np.nextafter(lower, kind(np.inf))
    if float(upper) > spec["upper"]:
        upper = np.nextafter(upper, kind(-np.inf))
    return lower, upper


def _within_public_domain(series: pd.Series, spec: dict[str, Any]) -> pd.Series:
    """Keep every value inside what the metadata declares, row by row.

    SmartNoise clamps values only where it aggregates them, and not at all in a column it
    groups by: a GROUP BY key is released as found, and with ``censor_dims`` true a
    ``SUM(x) ... GROUP BY x`` would add up unclamped values (50 rows at 1e6 would come out
    as about 5e7 against noise of scale 65). So before any engine sees the rows, a value
    outside the declared ``categories`` becomes missing, and an int, float or datetime
    outside ``lower``..``upper`` is clamped into it (missing values stay missing). Each row
    is mapped on its own, so one person's rows still change at most their own rows.
    The engines' GROUP BY rule relies on this (chalicelib/engines/smartnoise_engine.py).
    """
    kind = spec["type"]
    if "categories" in spec:
        inside = series.isin(spec["categories"]) | series.isna()
        if inside.all():
            return series
        if kind == "int":  # a nullable int keeps its integer dtype
            nullable = "Int32" if spec.get("precision") == 32 else "Int64"
            return series.astype(nullable).where(inside, pd.NA)
        return series.where(inside, None)
    if "lower" not in spec or "upper" not in spec:
        return series
    if kind == "int":
        return series.clip(spec["lower"], spec["upper"])
    if kind == "float":
        lower, upper = _float_bounds(spec, series.dtype)
        return series.clip(lower, upper)
    if kind == "datetime":
        return series.clip(_timestamp(spec["lower"]), _timestamp(spec["upper"]))
    return series


class DatasetLoader:
    """Reads datasets from their sources, with a small LRU cache of loaded frames."""

    def __init__(
        self,
        settings: Settings,
        s3: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._s3 = s3 or partial(s3_client, settings)
        self._clock = clock
        # (name, source) -> (deadline, version): the source's version, asked again after
        # settings.lookup_cache_seconds
        self._versions: LruCache[tuple[str, str], tuple[float, str]] = LruCache(256)
        self._cache: LruCache[tuple[str, str, str], LoadedDataset] = LruCache(
            settings.dataset_cache_entries
        )
        self._dummy_cache: LruCache[tuple[str, str, int, int], LoadedDataset] = LruCache(16)
        self._lock = threading.Lock()  # guards _key_locks
        self._key_locks: dict[tuple[str, str, str], threading.Lock] = {}
        self.reads = 0  # how many times a source was actually read (tests and benchmarks)

    # versions ---------------------------------------------------------------------
    def version(self, dataset: Dataset) -> str:
        """A string that changes whenever the source's content changes, as the source gave
        it at most ``lookup_cache_seconds`` ago."""
        key = (dataset.name, dataset.source)
        now = self._clock()
        kept = self._versions.get(key)
        if kept is not None and now < kept[0]:
            return kept[1]
        version = self._source_version(dataset)
        if self._settings.lookup_cache_seconds > 0:
            self._versions.put(key, (now + self._settings.lookup_cache_seconds, version))
        return version

    def _source_version(self, dataset: Dataset) -> str:
        """The source's version, asked now (one HEAD or stat)."""
        source = dataset.source
        scheme = urlparse(source).scheme
        try:
            if scheme == "s3":
                bucket, key = split_s3_uri(source)
                head = self._s3().head_object(Bucket=bucket, Key=key)
                return f"{head.get('ETag', '')}:{head.get('VersionId', '')}"
            if scheme in ("http", "https"):
                request = urllib.request.Request(source, method="HEAD")  # noqa: S310
                with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
                    etag = response.headers.get("ETag") or ""
                    modified = response.headers.get("Last-Modified") or ""
                    return f"{etag}:{modified}"
            stat = os.stat(_local_path(source))
            return f"{stat.st_mtime_ns}:{stat.st_size}"
        except Exception as exc:
            log.warning("dataset %s: cannot read source version: %s", dataset.name, exc)
            raise DatasetUnavailable("dataset source unavailable") from exc

    # loading ----------------------------------------------------------------------
    def _read_bytes(self, source: str) -> bytes:
        scheme = urlparse(source).scheme
        if scheme == "s3":
            bucket, key = split_s3_uri(source)
            client = self._s3()
            body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            return body
        if scheme in ("http", "https"):
            with urllib.request.urlopen(source, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
                data: bytes = response.read()
                return data
        with open(_local_path(source), "rb") as handle:
            return handle.read()

    def read_source(self, dataset: Dataset) -> pd.DataFrame:
        """The source as parsed, before ``coerce_types`` (the admin's strict check reads this)."""
        raw = self._read_bytes(dataset.source)
        self.reads += 1
        log.info("dataset %s: read %d bytes from its source", dataset.name, len(raw))
        if source_format(dataset.source, dataset.source_format) == "parquet":
            return read_parquet(raw)
        return read_csv(raw, dataset.metadata)

    def _read_frame(self, dataset: Dataset, metadata: dict[str, Any]) -> pd.DataFrame:
        started = time.perf_counter()
        frame = coerce_types(self.read_source(dataset), metadata)
        log.info(
            "dataset %s: %d rows loaded in %.2f s",
            dataset.name,
            len(frame),
            time.perf_counter() - started,
        )
        return frame

    def _read_copy(self, dataset: Dataset, version: str) -> bytes | None:
        """The Parquet copy's bytes, if it was converted from this very source version.

        None (the source is read instead, as for a dataset registered before copies
        existed) when there is no copy, the source or the metadata changed since it was
        converted, or the copy is not the object recorded (its ETag), unreadable or lacks a
        declared column.
        """
        copy_record = dataset.columnar
        if (
            not copy_record
            or copy_record.get("source_version") != version
            or copy_record.get("metadata_digest") != metadata_digest(dataset.metadata)
        ):
            return None
        try:
            import fastparquet

            bucket, key = split_s3_uri(copy_record["uri"])
            response = self._s3().get_object(Bucket=bucket, Key=key, IfMatch=copy_record["etag"])
            data: bytes = response["Body"].read()
            schema = fastparquet.ParquetFile(io.BytesIO(data)).columns
        except Exception as exc:
            log.warning(
                "dataset %s: Parquet copy not used (%s); reading the source", dataset.name, exc
            )
            return None
        missing = [name for name in dataset.metadata["columns"] if name not in schema]
        if missing:
            log.warning(
                "dataset %s: Parquet copy lacks %s; reading the source", dataset.name, missing
            )
            return None
        self.reads += 1
        log.info("dataset %s: read %d bytes from its Parquet copy", dataset.name, len(data))
        return data

    def load(self, dataset: Dataset) -> LoadedDataset:
        """The dataset's frame under its current metadata, cached while neither changes."""
        version = self.version(dataset)
        metadata = copy.deepcopy(dataset.metadata)  # the entry's own: nobody mutates it later
        digest = metadata_digest(metadata)
        key = (dataset.name, version, digest)
        entry = self._cache.get(key)
        if entry is not None:
            return entry
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one reader per (dataset, version); others wait for it
            entry = self._cache.get(key)
            if entry is not None:
                return entry
            copy_bytes = self._read_copy(dataset, version)
            if copy_bytes is not None:
                entry = LoadedDataset(dataset.name, version, metadata, parquet=copy_bytes)
            else:
                try:
                    frame = self._read_frame(dataset, metadata)
                except DatasetUnavailable:
                    raise
                except Exception as exc:
                    log.warning("dataset %s: cannot load source: %s", dataset.name, exc)
                    raise DatasetUnavailable("dataset source unavailable") from exc
                entry = LoadedDataset(dataset.name, version, metadata, frame)
            # an older version (or metadata) of the same dataset goes
            self._cache.discard(lambda k: k[0] != dataset.name)
            self._cache.put(key, entry)
            with self._lock:
                self._key_locks.pop(key, None)
            return entry

    def dummy(self, dataset: Dataset, rows: int, seed: int) -> LoadedDataset:
        """A dummy frame for the dataset (metadata only), cached per (metadata, rows, seed)."""
        metadata = copy.deepcopy(dataset.metadata)
        digest = metadata_digest(metadata)
        key = (dataset.name, digest, rows, seed)
        return self._dummy_cache.get_or_build(
            key,
            lambda: LoadedDataset(
                dataset.name, digest, metadata, make_dummy(metadata, rows, seed), is_dummy=True
            ),
        )
