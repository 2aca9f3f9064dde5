"""SmartNoise SQL on Spark: the same engine, its rewritten SQL run by Spark (docs/spark.md).

A dataset whose metadata says ``executor: spark`` is too large for one function: its
Parquet is read by Spark (local mode in the worker process locally and in tests; on AWS the
same code runs as an EMR Serverless job). Everything that decides what is released is the
SQL engine's own (:mod:`chalicelib.engines.smartnoise_engine`): the price (the same
``price`` operation, metadata only), the supported SQL, SmartNoise's rewriting, the GROUP
BY public-domain completion (:class:`DomainKeysReader`) and the mechanisms. Only two things
differ, and both are here:

- the rows: :func:`coerce_columns` is :func:`chalicelib.datasets.coerce_types` in Spark
  SQL (declared columns, their types, every value kept inside its declared domain, rows
  without a ``private_id`` dropped), so both paths aggregate the same values;
- the executor: :class:`SparkRowsReader` runs SmartNoise's exact per-key subquery on Spark
  and hands back its (small) result as rows, header first, like the SQLite reader does.

Spark runs with ANSI mode off, so no value in the data makes a query fail (an overflow or a
bad cast gives NULL, as on the SQLite copy): success never depends on the data. The session
binds to the loopback only (``SPARK_LOCAL_IP``, driver host and bind address).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from snsql.sql.reader.base import SqlReader
from snsql.sql.reader.engine import Engine as SnEngine

from chalicelib.engines.smartnoise_engine import (
    DomainKeysReader,
    SmartnoiseSqlEngine,
    SqlRequest,
    _keyed_frame,
    _output_keys,
    _table_names,
    metadata_for,
)
from chalicelib.models import Dataset, metadata_digest
from chalicelib.wire_tables import frame_to_table

EXECUTOR_KEY = "executor"  # the metadata key that sends a dataset to Spark
SPARK = "spark"

_SESSION: list[Any] = []
_SESSION_LOCK = threading.Lock()


def _on_emr() -> bool:
    """In an EMR Serverless job run (chalicelib/spark_job.py): Spark reads ``s3://`` itself."""
    return os.environ.get("NEBLINA_SPARK") == "emr"


def is_spark_dataset(dataset: Dataset) -> bool:
    """Whether the dataset's queries run on Spark (its metadata says ``executor: spark``)."""
    return dataset.metadata.get(EXECUTOR_KEY) == SPARK


def spark_session() -> Any:
    """The process's Spark session (local mode unless ``NEBLINA_SPARK_MASTER`` says other),
    built on first use (about 5 s) and then kept. Binds to 127.0.0.1 only.

    In an EMR Serverless job run (``NEBLINA_SPARK=emr``, chalicelib/spark_job.py) the
    master and the addresses are EMR's, as spark-submit set them: only the SQL settings
    are Neblina's."""
    with _SESSION_LOCK:
        if not _SESSION:
            from pyspark.sql import SparkSession

            builder = SparkSession.builder.appName("neblina-spark-job")
            if os.environ.get("NEBLINA_SPARK") != "emr":
                os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
                builder = (
                    builder.master(os.environ.get("NEBLINA_SPARK_MASTER", "local[2]"))
                    .config("spark.driver.host", "127.0.0.1")
                    .config("spark.driver.bindAddress", "127.0.0.1")
                    .config("spark.ui.enabled", "false")
                    .config("spark.sql.shuffle.partitions", "4")
                )
            builder = builder.config(
                "spark.sql.ansi.enabled",
                "false",  # totality: NULL, never an error
            ).config("spark.sql.session.timeZone", "UTC")
            _SESSION.append(builder.getOrCreate())
        return _SESSION[0]


def _f() -> Any:
    from pyspark.sql import functions

    return functions


def _clamp(column: Any, lower: Any, upper: Any) -> Any:
    """``column`` clamped into [lower, upper]; NULL stays NULL."""
    f = _f()
    return f.when(column.isNull(), column).otherwise(f.least(f.greatest(column, lower), upper))


def coerce_columns(frame: Any, metadata: dict[str, Any]) -> Any:
    """:func:`chalicelib.datasets.coerce_types` on a Spark DataFrame (same values)."""
    f = _f()
    from pyspark.sql import types as t

    from chalicelib.datasets import DatasetUnavailable

    columns = metadata["columns"]
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise DatasetUnavailable(f"source lacks declared columns: {', '.join(missing)}")
    out = []
    identifier = None
    for name, spec in columns.items():
        column = f.col(f"`{name}`")
        kind = spec["type"]
        if kind == "int":
            float_column = column.cast(t.DoubleType())  # pandas: to_numeric, then to int
            whole = f.when(f.isnan(float_column), None).otherwise(float_column)
            column = whole.cast(t.IntegerType() if spec.get("precision") == 32 else t.LongType())
        elif kind == "float":
            column = column.cast(t.FloatType() if spec.get("precision") == 32 else t.DoubleType())
            column = f.when(f.isnan(column), None).otherwise(column)
        elif kind == "boolean":
            column = column.cast(t.BooleanType())
        elif kind == "datetime":
            column = column.cast(t.TimestampType())
        else:
            column = column.cast(t.StringType())
        if spec.get("private_id"):
            identifier = name
        elif "categories" in spec:
            inside = column.isin(list(spec["categories"])) | column.isNull()
            column = f.when(inside, column)
        elif "lower" in spec and "upper" in spec and kind in ("int", "float"):
            column = _clamp(column, f.lit(spec["lower"]), f.lit(spec["upper"]))
        elif "lower" in spec and "upper" in spec and kind == "datetime":
            bounds = [f.lit(spec[b]).cast(t.TimestampType()) for b in ("lower", "upper")]
            column = _clamp(column, *bounds)
        out.append(column.alias(name))
    coerced = frame.select(*out)
    if identifier is not None:
        coerced = coerced.where(f.col(f"`{identifier}`").isNotNull())
    return coerced


@dataclass
class SparkLoaded:
    """A Spark-backed dataset ready for the engine: a session of its own with the coerced
    rows as temp views ``df`` and the dataset's name (never read until a query runs)."""

    name: str
    metadata: dict[str, Any]
    session: Any
    frame: Any
    version: str = ""  # the source's version as the loader writes it (reuse keys)
    digest: str = field(init=False)
    is_dummy: bool = False

    def __post_init__(self) -> None:
        self.digest = metadata_digest(self.metadata)


class SparkLoader:
    """Opens a Spark-backed dataset's Parquet (the footer only: no row is read here).

    A source in S3 is read by Spark itself on EMR (``NEBLINA_SPARK=emr``, or
    ``NEBLINA_SPARK_DIRECT_S3=1``); in the
    local stack and the tests the worker first copies the object to a temporary file (the
    local Spark has no S3 connector), an S3 read as the in-function loader's.

    One temporary file per source and ETag. Spark reads it lazily (when a query runs), so a
    file is deleted only once nothing uses it: when the source's ETag changes, the old copy
    goes as soon as the last :class:`SparkLoaded` over it is gone; :meth:`close` (also run
    at the process's exit) deletes every copy left.
    """

    def __init__(self, s3: Any | None = None) -> None:
        self._s3 = s3
        self._files: dict[str, tuple[str, str]] = {}  # source -> (ETag, its copy)
        self._users: dict[str, int] = {}  # copy -> live SparkLoaded over it
        self._stale: set[str] = set()  # copies of an older ETag, deleted when unused
        self._lock = threading.Lock()
        atexit.register(_close_loader, weakref.ref(self))

    def _path(self, dataset: Dataset) -> tuple[str, str]:
        """Where Spark reads the source, and the source's version (as the loader's)."""
        parsed = urlparse(dataset.source)
        if parsed.scheme == "s3":
            if self._s3 is None:
                raise RuntimeError("no S3 client to read the source")
            from chalicelib.datasets import split_s3_uri

            bucket, key = split_s3_uri(dataset.source)
            head = self._s3().head_object(Bucket=bucket, Key=key)
            version = f"{head.get('ETag', '')}:{head.get('VersionId', '')}"
            if os.environ.get("NEBLINA_SPARK_DIRECT_S3") == "1" or _on_emr():
                return dataset.source, version
            etag = str(head.get("ETag", ""))
            with self._lock:
                known = self._files.get(dataset.source)
                if known is None or known[0] != etag or not os.path.exists(known[1]):
                    handle, path = tempfile.mkstemp(prefix="neblina-spark-", suffix=".parquet")
                    os.close(handle)
                    try:
                        self._s3().download_file(bucket, key, path)
                    except BaseException:
                        _remove(path)
                        raise
                    if known is not None and known[1] != path:
                        self._retire(known[1])
                    self._files[dataset.source] = known = (etag, path)
                self._users[known[1]] = self._users.get(known[1], 0) + 1
                return known[1], version
        path = parsed.path if parsed.scheme == "file" else dataset.source
        stat = os.stat(path)
        return path, f"{stat.st_mtime_ns}:{stat.st_size}"

    def _retire(self, path: str) -> None:
        """A copy of an older ETag: deleted now if unused, else when its last user goes."""
        if self._users.get(path, 0) == 0:
            self._users.pop(path, None)
            _remove(path)
        else:
            self._stale.add(path)

    def _release(self, path: str) -> None:
        """One user of a copy is gone (a :class:`SparkLoaded` was collected)."""
        with self._lock:
            if path not in self._users:
                return
            self._users[path] -= 1
            if self._users[path] <= 0 and path in self._stale:
                self._stale.discard(path)
                del self._users[path]
                _remove(path)

    def temporary_files(self) -> set[str]:
        """The copies this loader holds on disk (current and not yet deleted)."""
        with self._lock:
            return {path for _, path in self._files.values()} | set(self._stale)

    def close(self) -> None:
        """Delete every copy (the process is ending: nothing reads them any more)."""
        with self._lock:
            for path in {path for _, path in self._files.values()} | self._stale:
                _remove(path)
            self._files.clear()
            self._users.clear()
            self._stale.clear()

    def load(self, dataset: Dataset) -> SparkLoaded:
        """The dataset as temp views of a new session (refund-safe: no row read yet)."""
        from chalicelib.datasets import DatasetUnavailable, source_format

        if source_format(dataset.source, dataset.source_format) != "parquet":
            raise DatasetUnavailable("a Spark-backed dataset must be Parquet")
        path = ""
        try:
            path, version = self._path(dataset)
            session = spark_session().newSession()
            frame = coerce_columns(session.read.parquet(path), dataset.metadata)
        except DatasetUnavailable:
            if path:
                self._release(path)
            raise
        except Exception as exc:
            if path:
                self._release(path)
            raise DatasetUnavailable("dataset source unavailable") from exc
        for view in _table_names(dataset.name):
            frame.createOrReplaceTempView(view)
        loaded = SparkLoaded(dataset.name, dataset.metadata, session, frame, version)
        weakref.finalize(loaded, self._release, path)
        return loaded


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _close_loader(reference: weakref.ref[SparkLoader]) -> None:
    loader = reference()
    if loader is not None:
        loader.close()


class SparkRowsReader(SqlReader):  # type: ignore[misc]
    """SmartNoise's Spark reader, answering rows (header first) as the SQLite reader does.

    The rewritten subquery is SmartNoise's exact per-key aggregate: its result has one row
    per group, collected to the driver.
    """

    ENGINE = SnEngine.SPARK

    def __init__(self, session: Any, metadata: Any) -> None:
        SqlReader.__init__(self, self.ENGINE)
        self.api = session
        self.metadata = metadata

    def execute(self, query: str, *args: Any, **kwargs: Any) -> list[Any]:
        frame = self.api.sql(query)
        return [tuple(frame.columns), *(tuple(row) for row in frame.collect())]


class SparkSqlEngine(SmartnoiseSqlEngine):
    """The SmartNoise SQL engine with Spark as its executor (same name, same price)."""

    def exact_rows(self, loaded: SparkLoaded, request: SqlRequest) -> list[Any]:
        """The exact per-key aggregates before noise (the differential test's view)."""
        reader = self._private(loaded, request)
        subquery, _ = reader._rewrite(request.query)
        inner = reader._get_reader(subquery)
        return list(inner._execute_ast(subquery))

    def _private(self, loaded: SparkLoaded, request: SqlRequest) -> DomainKeysReader:
        metadata = metadata_for(loaded.name, loaded.metadata)
        return DomainKeysReader(
            SparkRowsReader(loaded.session, metadata),
            metadata,
            privacy=request.privacy(),
            columns=loaded.metadata["columns"],
            complete=not loaded.metadata["censor_dims"],
        )

    def execute(self, loaded: Any, request: SqlRequest) -> dict[str, Any]:
        """The mechanism, once, over the Spark rows (see the module docstring)."""
        reader = self._private(loaded, request)
        columns = loaded.metadata["columns"]
        if request.postprocess:
            header, *rows = reader.execute(request.query)
            keys = _output_keys(metadata_for(loaded.name, loaded.metadata), columns, request.query)
        else:
            rows = [list(row) for row in reader.execute(request.query, postprocess=False)]
            width = len(rows[0]) if rows else 0
            header = [f"res_{i}" for i in range(width)]
            keys = reader.raw_keys
        return frame_to_table(_keyed_frame(list(header), [list(r) for r in rows], keys))
