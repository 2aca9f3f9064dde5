"""SmartNoise SQL engine.

- Tables: a query names the table ``df`` (as Lomas users write) or the dataset's own name;
  both resolve to the same rows (a SQLite view).
- Cost: SmartNoise's ``get_privacy_cost`` over a reader that holds **no rows** and refuses to
  execute anything, so pricing a query cannot read the private data.
- Readers: the frame is copied into an in-memory SQLite database once per loaded dataset
  version and reused by every later request (SmartNoise's own ``from_df`` copies it on
  each call). One lock per database serialises use of its single connection.
- Plans: SmartNoise's parse, check and rewrite of a request is a function of its text, its
  privacy parameters and the metadata; it is memoised per (dataset, metadata digest,
  canonical request) (:class:`SqlPlan`, :data:`PLANS`). A repeated query only runs the
  rewritten SQL and draws fresh noise: no noisy value or random state is kept.
- Results: no re-runs. A mechanism runs once per request; whatever it releases is the answer.
- Totality: a query outside the supported SQL (:mod:`chalicelib.engines.sql_policy`,
  docs/sql.md) is refused when it is priced, before any read; every function the allowed SQL
  can reach in SQLite is total on the private copy (:func:`make_total`): no value in the
  data makes a query fail, so success never depends on the data (docs/threat-model.md).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import re
import sqlite3
import threading
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

import opendp.prelude as dp
import pandas as pd
from opendp.mod import _EXPONENTIAL_SEARCH_BANDS, binary_search, enable_features
from opendp.typing import set_default_int_type
from snsql import Privacy
from snsql._ast.ast import AggFunction, TableColumn
from snsql._ast.expression import NestedExpression
from snsql._ast.tokens import Column
from snsql.metadata import Int as SnInt
from snsql.metadata import Metadata
from snsql.sql._mechanisms.base import Mechanism
from snsql.sql._mechanisms.gaussian import Gaussian
from snsql.sql._mechanisms.laplace import Laplace
from snsql.sql.odometer import OdometerHeterogeneous
from snsql.sql.parse import QueryParser
from snsql.sql.privacy import Mechanisms, Stat
from snsql.sql.private_reader import PrivateReader
from snsql.sql.reader.base import SqlReader
from snsql.sql.reader.engine import Engine as SnEngine
from snsql.sql.reader.pandas import PandasReader

from chalicelib import accuracy as acc
from chalicelib import validation
from chalicelib.datasets import LoadedDataset, coerce_types
from chalicelib.engines import COMMON_FIELDS, sql_policy
from chalicelib.errors import EngineRefused, InvalidQuery, InvalidRequest
from chalicelib.lru import LruCache
from chalicelib.metadata import IDENTIFIER, to_smartnoise
from chalicelib.models import (
    EXACT,
    ZERO,
    Dataset,
    PrivacyCost,
    exact_decimal,
    float_down,
    format_decimal,
    metadata_digest,
)
from chalicelib.wire_tables import frame_to_table

try:  # requirements-columnar.txt: locally and in the container image, not in the API zip
    from chalicelib.engines import duckdb_sql
except ImportError:  # pragma: no cover - the zip package: every query on SQLite
    duckdb_sql = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

NAME = "smartnoise_sql"
# besides the engines' COMMON_FIELDS
FIELDS = {"query", "epsilon", "delta", "mechanisms", "postprocess"}
STATS = {stat.name: stat for stat in Stat}
DEFAULT_MAX_QUERY_CHARS = 10_000  # NEBLINA_MAX_QUERY_CHARS unset (chalicelib.config)
MECHANISMS = {m.name: m for m in Mechanism}
EXECUTORS = ("duckdb", "sqlite")
# DuckDB where it is installed; the SQLite copy otherwise (a deployment fact, not data).
DEFAULT_EXECUTOR = "sqlite" if duckdb_sql is None else "duckdb"

# Messages of these kinds come from the parser/validator and describe the query, not data.
_QUERY_PROBLEMS = re.compile(
    r"Bad token|mismatched input|extraneous input|no viable alternative|Column cannot be found|"
    r"No metadata available|not included in GROUP BY|subqueries|Unsupported|not supported|"
    r"cannot be|don.t support",
    re.IGNORECASE,
)


# Noise scales already found, keyed by everything the search depends on.
#
# SmartNoise finds each mechanism's noise scale by a binary search over OpenDP
# measurements (~25 ms per aggregate, every time a query is priced or run). The result is
# a pure function of the key below, so it is computed once per process. A string is a
# refusal (SmartNoise's message), remembered like a scale.
SCALES: LruCache[tuple[Any, ...], float | str] = LruCache(4096)
# An uncensored GROUP BY answers every key of its public domain: at most this many rows.
MAX_PUBLIC_KEYS = 20_000


# The measurement SmartNoise's ``release`` builds for every noised value (OpenDP's scalar
# Laplace or Gaussian on floats), built once per scale and thread and reused: the same
# measurement, so the same noise distribution (an uncensored GROUP BY over 20 x 2 keys with 3
# aggregates built 120 of them per query, half the outer query's Python time).
_MEASUREMENTS = threading.local()


def _scalar_measurement(kind: str, scale: float) -> Any:
    cache: dict[tuple[str, float], Any] | None = getattr(_MEASUREMENTS, "cache", None)
    if cache is None or len(cache) >= 256:
        cache = _MEASUREMENTS.cache = {}
    key = (kind, scale)
    measurement = cache.get(key)
    if measurement is None:
        domain, metric = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
        make = dp.m.make_laplace if kind == "laplace" else dp.m.make_gaussian
        measurement = cache[key] = make(domain, metric, scale)
    return measurement


def _found_scale(mechanism: Any) -> float:
    """The scale SmartNoise's search just set on ``mechanism``."""
    return float(mechanism.scale)


class MemoLaplace(Laplace):  # type: ignore[misc]
    """SmartNoise's Laplace mechanism with its noise-scale search memoised."""

    scale: Any

    def _compute_noise_scale(self) -> None:
        if self.scale is not None:
            return
        key = (
            "laplace",
            float(self.epsilon),
            float(self.lower),
            float(self.upper),
            float(self.max_contrib),
        )
        cached = SCALES.get(key)
        if cached is None:
            super()._compute_noise_scale()
            SCALES.put(key, _found_scale(self))
        else:
            self.scale = cached

    def release(self, vals: Any) -> list[Any]:
        """SmartNoise's release (a float Laplace per value), its measurement reused."""
        enable_features("floating-point", "contrib")
        measurement = _scalar_measurement("laplace", float(self.scale))
        return [measurement(float(v)) for v in vals]


# The bands in which OpenDP's ``binary_search_param`` looks for a float parameter when it is
# given no bounds: 0, 0.5, then 2^(k^2) for k < 8 (OpenDP 0.14.2, pinned).
_GAUSSIAN_BANDS: tuple[float, ...] = tuple(_EXPONENTIAL_SEARCH_BANDS[float])


def _unable(mechanism: Any, cause: object) -> ValueError:
    """SmartNoise's own refusal (``_classify`` makes it a 4xx EngineRefused)."""
    return ValueError(
        f"Unable to find appropriate noise scale for with {mechanism.mechanism} with "
        f"epsilon={mechanism.epsilon} and bounds ({mechanism.lower}, {mechanism.upper}).  "
        f"Try preprocessing to reduce senstivity, or try different privacy parameters.\n{cause}"
    )


def gaussian_scale(mechanism: Any) -> float:
    """SmartNoise 1.0.10's Gaussian noise scale, found without its two-minute failure.

    SmartNoise (``Gaussian._compute_noise_scale``) calls OpenDP's ``binary_search_param``
    with no bounds on the predicate "make_fix_delta(make_zCDP_to_approxDP(clamp >> sum >>
    gaussian(scale))) is (max_contrib, (ε, δ))-close". OpenDP first walks the bands 0, 0.5,
    1, 2, 16, 512, ... upwards until the predicate turns true, then bisects that band.
    Whenever sensitivity/0.5 is large (a SUM over [2000, 7000] at scale 0.5 has ρ ≈ 1e8),
    the predicate at 0.5 does not answer: the zCDP → approxDP conversion raises ``Overflow``
    (≈ 0.25 s per call). OpenDP then takes the exception as a second decision boundary,
    bisects (0, 0.5) down to the lower edge of the failing region (≈ 3.7e-151, where ρ is
    infinite and the predicate is plainly false), and searches from there towards the
    negative side, where ``make_gaussian`` rejects the scale: a ValueError after ~500 calls
    that mostly overflow, ≈ 2 minutes of CPU on every price (measured in BENCHMARKS.md).
    Since the predicate at 0 answers (false) and every negative scale raises, that path
    fails whatever else holds; here it fails after one call instead.

    When every band answers like scale 0 (a column with bounds [0, 0] has sensitivity 0, so
    the predicate is true everywhere), OpenDP next asks -0.5, which raises; its exception
    search then bisects (-0.5, 0) down to exactly 0.0 (every negative scale raises: ~1,000
    steps into the subnormals, 231 s measured) and walks the same bands from 0.0, which
    answer as before: "unable to infer bounds", a refusal; here, at once.

    Otherwise this is OpenDP's own search step for step: the same bands in the same order,
    then ``binary_search`` over the same band, so the same scale, bit for bit
    (``tests/unit/test_scale_search.py`` compares both over a grid). Any other exception during
    the band walk (never seen: the overflow region lies below the answer) falls back to
    SmartNoise's own search, unchanged.
    """
    set_default_int_type(f"i{mechanism.bit_depth}")
    lower, upper, max_contrib = mechanism.lower, mechanism.upper, mechanism.max_contrib
    epsilon, delta = mechanism.epsilon, mechanism.delta
    bounds = (float(math.floor(lower)), float(math.ceil(upper)))
    rough_scale = (
        float(upper - lower) * max_contrib * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon
    )
    if rough_scale > 10_000_000:
        raise ValueError(
            f"Noise scale is too large using epsilon={epsilon} and bounds ({lower}, {upper}) "
            f"with {mechanism.mechanism}.  Try preprocessing to reduce senstivity, or try "
            "different privacy parameters."
        )
    enable_features("floating-point", "contrib")
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    summed = dp.t.then_sum()  # type: ignore[no-untyped-call]
    bounded_sum = space >> dp.t.then_clamp(bounds=bounds) >> summed

    def close(scale: float) -> bool:
        measurement = bounded_sum >> dp.m.then_gaussian(scale)
        adp = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(measurement), delta=delta)
        return bool(adp.check(max_contrib, (epsilon, delta)))

    def smartnoise_search() -> float:
        Gaussian._compute_noise_scale(mechanism)
        return float(mechanism.scale)

    try:
        at_zero = close(_GAUSSIAN_BANDS[0])
    except Exception:
        return smartnoise_search()
    for previous, band in itertools.pairwise(_GAUSSIAN_BANDS):
        try:
            answer = close(band)
        except Exception as exc:
            if band == _GAUSSIAN_BANDS[1]:
                raise _unable(mechanism, exc) from exc
            return smartnoise_search()
        if answer != at_zero:
            try:
                return float(binary_search(close, bounds=(previous, band)))
            except Exception as exc:  # SmartNoise fails the same way here
                raise _unable(mechanism, exc) from exc
    raise _unable(mechanism, "unable to infer bounds")


class MemoGaussian(Gaussian):  # type: ignore[misc]
    """SmartNoise's Gaussian mechanism, its noise-scale search memoised and made total.

    The scale comes from :func:`gaussian_scale` (SmartNoise's search without its
    two-minute path to a refusal); refusals are remembered as well as scales.
    """

    scale: Any

    def _compute_noise_scale(self) -> None:
        if self.scale is not None:
            return
        key = (
            "gaussian",
            self.bit_depth,
            float(self.epsilon),
            float(self.delta),
            float(self.lower),
            float(self.upper),
            float(self.max_contrib),
        )
        cached = SCALES.get(key)
        if cached is None:
            try:
                scale = gaussian_scale(self)
            except ValueError as exc:
                SCALES.put(key, str(exc))
                raise
            SCALES.put(key, scale)
            self.scale = scale
        elif isinstance(cached, str):
            raise ValueError(cached)
        else:
            set_default_int_type(f"i{self.bit_depth}")  # as the original search does
            self.scale = cached

    def release(self, vals: Any) -> list[Any]:
        """SmartNoise's release (a float Gaussian per value), its measurement reused."""
        enable_features("contrib")
        set_default_int_type(f"i{self.bit_depth}")  # as SmartNoise's release does
        measurement = _scalar_measurement(f"gaussian-i{self.bit_depth}", float(self.scale))
        return [measurement(float(v)) for v in vals]


@dataclass(frozen=True)
class SqlRequest:
    """A validated SmartNoise SQL request."""

    query: str
    epsilon: Any
    delta: Any
    mechanisms: tuple[tuple[str, str], ...]
    postprocess: bool

    def canonical(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "epsilon": format_decimal(self.epsilon),
            "delta": format_decimal(self.delta),
            "mechanisms": dict(self.mechanisms),
            "postprocess": self.postprocess,
        }

    def privacy(self) -> Privacy:
        mechanisms = Mechanisms()
        mechanisms.classes = {
            Mechanism.laplace: MemoLaplace,
            Mechanism.geometric: MemoLaplace,
            Mechanism.discrete_laplace: MemoLaplace,
            Mechanism.gaussian: MemoGaussian,
        }
        for stat, mechanism in self.mechanisms:
            mechanisms.map[STATS[stat]] = MECHANISMS[mechanism]
        # The largest floats not above the decimals requested: no mechanism is calibrated
        # with more ε or δ than the charge counts (explicit_cost).
        return Privacy(
            epsilon=float_down(self.epsilon), delta=float_down(self.delta), mechanisms=mechanisms
        )


def _table_names(dataset_name: str) -> list[str]:
    names = ["df"]
    if dataset_name != "df" and IDENTIFIER.match(dataset_name):
        names.append(dataset_name)
    return names


@lru_cache(maxsize=64)
def _smartnoise_dict(name: str, metadata_json: str) -> dict[str, Any]:
    return to_smartnoise(json.loads(metadata_json), _table_names(name))


def metadata_for(name: str, metadata: dict[str, Any]) -> Metadata:
    """A fresh SmartNoise Metadata object for a dataset.

    SmartNoise's readers and rewriters set attributes on the Metadata they are given, so
    concurrent requests must never share one: the converted dict is cached, the object
    is built per use (about 0.1 ms).
    """
    converted = _smartnoise_dict(name, json.dumps(metadata, sort_keys=True, default=str))
    return Metadata.from_(copy.deepcopy(converted))


class MetadataOnlyReader(SqlReader):  # type: ignore[misc]
    """A reader with no rows that refuses to run any SQL: pricing can never read data."""

    ENGINE = SnEngine.PANDAS

    def __init__(self, metadata: Metadata) -> None:
        super().__init__(self.ENGINE)
        self.metadata = metadata

    def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the metadata-only reader cannot execute queries")


# --- Total SQLite -----------------------------------------------------------------------
# SQLite raises on a few values: abs() of the smallest 64-bit integer ("integer overflow"),
# SUM() of integers past 2^63, a Python function's exception. Each one, reached from a WHERE
# clause, would turn "released" versus "failed" into one exact bit about a row (the error
# oracle, docs/threat-model.md). The private copy therefore gets its own versions of every
# function the allowed SQL (sql_policy) can reach there: they never raise, answer NULL where
# no number exists (sqrt(-1), log(0), exp(1000), a string), and keep integers within int64.

_INT64 = 2**63


def _sqlite_value(value: Any) -> Any:
    """A result SQLite can hold: finite floats, int64 integers (else a float), else NULL."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _number(value: Any) -> int | float | None:
    """A numeric argument as SQLite would read it, or None (NULL, text, blob, non-finite)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _total_numeric(function: Any) -> Any:
    """``function`` over numbers, returning NULL instead of raising or leaving int64/finite."""

    def total(*args: Any) -> Any:
        numbers = [_number(a) for a in args]
        if any(n is None for n in numbers):
            return None
        try:
            return _sqlite_value(function(*numbers))
        except (ArithmeticError, ValueError, TypeError):
            return None

    return total


def _truncate(value: float, digits: float = 0) -> float:
    shift = 10.0 ** int(digits)
    return math.trunc(value * shift) / shift


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def _char_length(value: Any) -> Any:
    return None if value is None else len(str(value))


def _concat(*values: Any) -> str:
    return "".join(str(v) for v in values if v is not None)


_TOTAL_FUNCTIONS: dict[str, tuple[int, Any]] = {
    "abs": (1, _total_numeric(abs)),
    "ceil": (1, _total_numeric(math.ceil)),
    "ceiling": (1, _total_numeric(math.ceil)),
    "floor": (1, _total_numeric(math.floor)),
    "sign": (1, _total_numeric(_sign)),
    "sqrt": (1, _total_numeric(math.sqrt)),
    "square": (1, _total_numeric(lambda x: x * x)),
    "exp": (1, _total_numeric(math.exp)),
    "ln": (1, _total_numeric(math.log)),
    "log": (1, _total_numeric(math.log)),  # natural, as SmartNoise's own evaluation (np.log)
    "log10": (1, _total_numeric(math.log10)),
    "log2": (1, _total_numeric(math.log2)),
    "sin": (1, _total_numeric(math.sin)),
    "cos": (1, _total_numeric(math.cos)),
    "tan": (1, _total_numeric(math.tan)),
    "asin": (1, _total_numeric(math.asin)),
    "acos": (1, _total_numeric(math.acos)),
    "atan": (1, _total_numeric(math.atan)),
    "atanh": (1, _total_numeric(math.atanh)),
    "degrees": (1, _total_numeric(math.degrees)),
    "power": (2, _total_numeric(lambda x, y: math.pow(float(x), float(y)))),
    "truncate": (-1, _total_numeric(_truncate)),
    "char_length": (1, _char_length),
    "concat": (-1, _concat),
}


class _TotalSum:
    """SQLite's SUM without its "integer overflow": exact in Python, a float beyond int64."""

    def __init__(self) -> None:
        self.total: int | float = 0
        self.seen = False

    def step(self, value: Any) -> None:
        number = _number(value) if not isinstance(value, float) else value
        if number is not None:
            self.total += number
            self.seen = True

    def finalize(self) -> Any:
        return _sqlite_value(self.total) if self.seen else None


# Below this |bound| on every int column, SQLite's own SUM cannot overflow (also for the sums
# of squares behind VAR/STDDEV) before 2^31 rows, more than a worker can load: the fast
# built-in stays. Above it, the exact Python SUM replaces it (about 0.4 s per million rows).
_FAST_SUM_BOUND = 2**16


def make_total(connection: sqlite3.Connection, metadata: Metadata) -> None:
    """Make every function the supported SQL reaches on ``connection`` unable to raise."""
    for name, (arity, function) in _TOTAL_FUNCTIONS.items():
        connection.create_function(name, arity, function, deterministic=True)
    widest = max(
        (
            max(abs(column.lower), abs(column.upper))
            for table in metadata.m_tables.values()
            for column in table.m_columns.values()
            if isinstance(column, SnInt) and column.lower is not None and column.upper is not None
        ),
        default=0,
    )
    if widest >= _FAST_SUM_BOUND:
        connection.create_aggregate("sum", 1, _TotalSum)


# What SQL on the private copy may do once it is built: read it, call functions, open a
# transaction. SmartNoise only ever emits SELECTs it rewrote from its own parse tree; this is
# the second wall should a statement ever get past that (no writes, ATTACH, PRAGMA, DDL).
_SQLITE_ALLOWED = frozenset(
    (
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_RECURSIVE,
        sqlite3.SQLITE_TRANSACTION,
    )
)


def _read_only(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _SQLITE_ALLOWED else sqlite3.SQLITE_DENY


class CachedSqliteReader(PandasReader):  # type: ignore[misc]
    """SmartNoise's pandas reader over one SQLite copy of the frame, built once and reused."""

    def __init__(self, frame: pd.DataFrame, metadata: Metadata, table_names: list[str]) -> None:
        # SQLAlchemy only here, for the SQLite path (chalicelib.engines._lazy_imports)
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import StaticPool

        SqlReader.__init__(self, SnEngine.PANDAS)
        self.metadata = metadata
        self.table_names = ["df"]
        engine = create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
        frame.to_sql("df", engine, index=False)
        with engine.begin() as connection:
            for alias in table_names:
                if alias != "df":
                    # alias is a dataset name matching IDENTIFIER (letters, digits, _)
                    view = f'CREATE VIEW "{alias}" AS SELECT * FROM df'  # noqa: S608
                    connection.execute(text(view))
        raw = engine.raw_connection()  # StaticPool: the one connection every query uses
        try:
            driver = raw.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            driver.set_authorizer(_read_only)
            make_total(driver, metadata)
        finally:
            raw.close()  # back to the pool, not closed
        self.db_engine = engine
        self._lock = threading.Lock()

    def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return super().execute(query, *args, **kwargs)


def _classify(exc: Exception) -> Exception:
    message = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
    if isinstance(exc, ValueError) and _QUERY_PROBLEMS.search(message):
        return InvalidQuery(message)
    return EngineRefused(message)


def check_supported(metadata: Metadata, query: str, table_names: list[str]) -> None:
    """400 unless ``query`` parses and stays within the supported SQL (docs/sql.md)."""
    try:
        parsed = QueryParser(metadata).query(query)
    except Exception as exc:
        # parsing sees the query and the metadata only: whatever fails here is the query's
        message = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
        explained = sql_policy.explain_parse_error(query)
        raise (explained or InvalidQuery(f"the query cannot be parsed: {message}")) from exc
    sql_policy.check(parsed, table_names)


@lru_cache(maxsize=16)
def _empty_reader(name: str, metadata_json: str) -> CachedSqliteReader:
    """A SQLite copy of the dataset's schema with no rows (public: built from metadata)."""
    ours = json.loads(metadata_json)
    raw = pd.DataFrame({column: pd.Series([], dtype=object) for column in ours["columns"]})
    empty = coerce_types(raw, ours)
    return CachedSqliteReader(empty, metadata_for(name, ours), _table_names(name))


def route(name: str, metadata: dict[str, Any], subquery: Any) -> str:
    """``duckdb`` or ``sqlite``: where SmartNoise's rewritten ``subquery`` runs.

    Decided from the subquery and the metadata alone (:mod:`chalicelib.engines.duckdb_sql`),
    the same way when the query is priced and when it runs.
    """
    names = _table_names(name)
    if not duckdb_sql.runs_on_duckdb(subquery, metadata["columns"], names):
        return "sqlite"
    key = (name, metadata_digest(metadata))
    sql = duckdb_sql.dialect(subquery)
    return "duckdb" if sql and duckdb_sql.binds(key, metadata, names, sql) else "sqlite"


def _dry_run(dataset: Dataset, request: SqlRequest, executor: str = "duckdb") -> None:
    """Run SmartNoise's rewritten SQL on an empty copy of the schema (400 if it cannot run).

    SQL that fails without rows (a syntax SQLite does not know, a function it lacks,
    SmartNoise emitting broken SQL for an odd shape such as ``GROUP BY PI()``) would fail on
    every dataset, but only after the debit; found here, it is refused before any read.
    Failures that need rows are made impossible by :func:`make_total` instead (and, on
    DuckDB, by running there only the subset :func:`route` admits after it bound on an
    empty copy).
    """
    metadata = metadata_for(dataset.name, dataset.metadata)
    try:
        # rewritten as on any pandas-engine reader; the empty SQLite copy (and SQLAlchemy)
        # only for a query that runs there
        reader = PrivateReader(MetadataOnlyReader(metadata), metadata, privacy=request.privacy())
        subquery, _ = reader._rewrite(request.query)
        if executor == "duckdb" and route(dataset.name, dataset.metadata, subquery) == "duckdb":
            return
        metadata_json = json.dumps(dataset.metadata, sort_keys=True, default=str)
        _empty_reader(dataset.name, metadata_json)._execute_ast(subquery)
    except Exception as exc:
        message = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise InvalidQuery(
            f"this query cannot run on the SQL engine ({message}); see docs/sql.md"
        ) from exc


class RoutingReader(SqlReader):  # type: ignore[misc]
    """Runs each rewritten subquery on DuckDB or on SQLite, as :func:`route` decides.

    The DuckDB copy is built with the reader (once per loaded dataset version); the SQLite
    copy only when a query that needs it first comes.
    """

    ENGINE = SnEngine.PANDAS

    def __init__(self, loaded: LoadedDataset, metadata: Metadata) -> None:
        SqlReader.__init__(self, self.ENGINE)
        self.metadata = metadata
        self.name = loaded.name
        self.columns_metadata = loaded.metadata
        self.table_names = _table_names(loaded.name)
        self._loaded = loaded
        self.duckdb: Any = None
        try:
            if loaded.parquet is not None:  # DuckDB reads the Parquet copy: no pandas frame
                self.duckdb = duckdb_sql.connect_parquet(
                    loaded.parquet, loaded.metadata, self.table_names
                )
            else:
                self.duckdb = duckdb_sql.connect(loaded.frame, loaded.metadata, self.table_names)
        except Exception as exc:  # rows DuckDB would not take: SQLite answers everything
            log.warning("dataset %s: no DuckDB copy (%s); SQL runs on SQLite", loaded.name, exc)
        self._sqlite: CachedSqliteReader | None = None
        self._lock = threading.Lock()

    def sqlite(self) -> CachedSqliteReader:
        with self._lock:
            if self._sqlite is None:  # the frame is built here if it was not yet
                self._sqlite = CachedSqliteReader(
                    self._loaded.frame, self.metadata, self.table_names
                )
            return self._sqlite

    def _execute_ast(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        if self.duckdb is not None:
            # Remembered on the subquery: a memoised plan's (SqlPlan) is routed once. The
            # route is a function of the subquery, the name and the metadata, all in the
            # plan's key.
            known = getattr(query, "neblina_route", None)
            if known is None:
                where = route(self.name, self.columns_metadata, query)
                known = (where, duckdb_sql.dialect(query) if where == "duckdb" else None)
                query.neblina_route = known
            if known[0] == "duckdb":
                return duckdb_sql.run(self.duckdb, known[1] or "")
        return self.sqlite()._execute_ast(query, *args, **kwargs)

    def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return self.sqlite().execute(query, *args, **kwargs)


def _check_public_keys(metadata: Metadata, ours: dict[str, Any], query: str) -> None:
    """Without ``censor_dims``, GROUP BY only on columns whose possible keys are public.

    SmartNoise then releases a row for every key present in the private rows, uncensored:
    grouping by a float, a free-text string, a datetime or an identifier would publish the
    exact values found in the data. Allowed: boolean columns, columns with declared
    ``categories``, and bounded ints (an enumerable public range); never the ``private_id``.
    Which of those keys occur is still disclosed (docs/threat-model.md).
    """
    try:
        parsed = QueryParser(metadata).query(query)
    except Exception as exc:  # pragma: no cover - get_privacy_cost parsed it already
        raise _classify(exc) from exc
    if parsed.agg is None:
        return
    columns = ours["columns"]
    keys = 1
    for grouping in parsed.agg.groupingExpressions:
        expression = grouping.expression
        name = _column_name(expression)
        if not isinstance(expression, Column) or name not in columns:
            raise InvalidQuery(
                f"GROUP BY {expression}: with censor_dims false, group only by plain columns"
                " whose keys are public (booleans, declared categories, bounded ints)"
            )
        spec = columns[name]
        public = spec["type"] in ("boolean", "int") or "categories" in spec
        if spec["private_id"] or not public:
            raise InvalidQuery(
                f"GROUP BY {name}: its values are not public (a {spec['type']} column without"
                " declared categories), and with censor_dims false every value present in"
                " the data would be released; declare its categories, group by a coarser"
                " column, or ask the data owner for censor_dims: true"
            )
        keys *= len(key_domain(spec))
    if keys > MAX_PUBLIC_KEYS:
        raise InvalidQuery(
            f"GROUP BY: {keys:,} possible keys (every one is answered, present in the data or"
            f" not); at most {MAX_PUBLIC_KEYS:,}: group by fewer or coarser columns"
        )


def key_domain(spec: dict[str, Any]) -> list[Any]:
    """Every key a public GROUP BY column can take, ``None`` included when it is nullable."""
    if "categories" in spec:
        values = list(spec["categories"])
    elif spec["type"] == "boolean":
        values = [False, True]
    else:
        values = list(range(int(spec["lower"]), int(spec["upper"]) + 1))
    return [*values, None] if spec["nullable"] else values


def declared_key(value: Any, spec: dict[str, Any]) -> Any:
    """A GROUP BY key as the declared domain writes it.

    SQLite gives a boolean key as ``0``/``1`` and a pandas column of ints with a missing
    value holds floats (``3.0``); the declared domain says ``False``/``True`` and ``3``.
    Strings, floats and datetimes are kept as they come.
    """
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if spec["type"] == "boolean":
        return bool(value)
    if spec["type"] == "int":
        return int(value)
    return value


def key_dtype(spec: dict[str, Any], values: list[Any]) -> str | None:
    """The dtype a released key column has: the declared type's, nullable if declared so.

    A missing key in a column not declared nullable (the loader keeps it; with
    ``censor_dims`` true SmartNoise may release it) takes the nullable dtype, so that it
    stays missing rather than becoming ``False`` or ``0``. ``None``: let pandas decide.
    """
    nullable = spec["nullable"] or any(value is None for value in values)
    if spec["type"] == "boolean":
        return "boolean" if nullable else "bool"
    if spec["type"] == "int":
        return "Int64" if nullable else "int64"
    return None


@dataclass(frozen=True)
class SqlPlan:
    """SmartNoise's parse and rewrite of one request, from its text and the metadata only.

    ``parsed`` is the query as :meth:`PrivateReader.parse_query_string` gives it,
    ``subquery`` the exact aggregates SmartNoise runs (each select symbol carrying its
    mechanism, its noise scale found), ``query`` the outer query it evaluates on the noisy
    aggregates. None of it holds a row, a noisy value or a random state: every release calls
    the mechanism's ``release``, whose OpenDP measurement draws fresh noise on each call;
    a reservoir's ``RANDOM()`` is in the SQL text, drawn by the database per run.
    Executing a plan only reads it (the outer HAVING / ORDER BY are deep-copied by
    SmartNoise before they are rewritten), so concurrent requests share it.
    """

    text: str
    parsed: Any
    subquery: Any
    query: Any


# Plans already built, keyed by the dataset's name, its metadata's digest and the request's
# canonical form (query text, epsilon, delta, mechanisms): a new metadata version is a new
# key. A plan is a pure function of its key; the LRU bounds the memory (a plan is a few
# hundred AST nodes).
PLANS: LruCache[tuple[str, str, str], SqlPlan] = LruCache(256)


def build_plan(name: str, metadata: dict[str, Any], request: SqlRequest) -> SqlPlan:
    """SmartNoise's parse and rewrite of ``request`` over a reader holding no rows.

    The same steps, in the same order, as ``PrivateReader._execute_ast`` takes before it
    reads: the options from the parsed query, then the rewrite.
    """
    snmeta = metadata_for(name, metadata)
    reader = PrivateReader(MetadataOnlyReader(snmeta), snmeta, privacy=request.privacy())
    parsed = reader.parse_query_string(request.query)
    options = reader._options
    options.row_privacy = parsed.row_privacy
    options.censor_dims = parsed.censor_dims
    options.reservoir_sample = parsed.sample_max_ids
    options.clamp_counts = parsed.clamp_counts
    options.use_dpsu = parsed.use_dpsu
    options.clamp_columns = parsed.clamp_columns
    reader._refresh_options()
    subquery, query = reader._rewrite_ast(parsed)
    return SqlPlan(text=request.query, parsed=parsed, subquery=subquery, query=query)


def sql_plan(name: str, metadata: dict[str, Any], request: SqlRequest) -> SqlPlan:
    """The memoised :func:`build_plan` (:data:`PLANS`)."""
    canonical = json.dumps(request.canonical(), sort_keys=True, default=str)
    key = (name, metadata_digest(metadata), canonical)
    return PLANS.get_or_build(key, lambda: build_plan(name, metadata, request))


class DomainKeysReader(PrivateReader):  # type: ignore[misc]
    """SmartNoise's private reader, releasing GROUP BY keys as the declared domain has them.

    Every plain-column key in the exact per-key aggregates is rewritten by
    :func:`declared_key` before SmartNoise adds noise, with ``censor_dims`` true or false;
    :attr:`raw_keys` then says which columns of the raw (not post-processed) rows are keys.

    With ``complete`` (``censor_dims`` false) SmartNoise would answer a row per key *found
    in the data*, so which keys exist would be released exactly. Here the exact per-key
    aggregates get a row for every other key of the public domain (the product of
    :func:`key_domain`, checked against :data:`MAX_PUBLIC_KEYS` when the query is priced)
    with no value, which SmartNoise treats as 0 before it adds noise to each, and rows
    whose key is outside the domain are dropped. The set of keys released is then fixed
    by the metadata alone.
    """

    def __init__(
        self,
        *args: Any,
        columns: dict[str, Any],
        complete: bool,
        plan: SqlPlan | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.columns = columns  # the validated metadata's, which key_domain reads
        self.complete = complete
        self.raw_keys: dict[int, dict[str, Any]] = {}  # raw column position -> its spec
        self.plan = plan  # the memoised parse and rewrite of this request (SqlPlan)

    def parse_query_string(self, query_string: str) -> Any:
        if self.plan is not None and query_string == self.plan.text:
            return self.plan.parsed
        return super().parse_query_string(query_string)

    def _rewrite_ast(self, query: Any) -> Any:
        if self.plan is not None and query is self.plan.parsed:
            self._options.max_contrib = query.max_ids  # as SmartNoise's own rewrite sets it
            return self.plan.subquery, self.plan.query
        return super()._rewrite_ast(query)

    def _get_reader(self, query_ast: Any) -> Any:
        inner = super()._get_reader(query_ast)
        if query_ast.agg is None:
            return inner
        return _DomainKeysInnerReader(inner, self)


class _DomainKeysInnerReader:
    """Runs the exact per-key subquery, then writes its keys as declared (and completes).

    Every key written out is the domain's own value, found in the rows or not: a key in
    the representation of the rows would tell which keys were found.
    """

    def __init__(self, inner: Any, owner: DomainKeysReader) -> None:
        self.inner, self.owner = inner, owner

    def _execute_ast(self, subquery: Any, *args: Any, **kwargs: Any) -> list[Any]:
        rows = list(self.inner._execute_ast(subquery, *args, **kwargs))
        header, found = rows[0], [list(row) for row in rows[1:]]
        columns = self.owner.columns
        groups = [
            (i, symbol.expression)
            for i, symbol in enumerate(subquery._select_symbols)
            if not isinstance(symbol.expression, AggFunction)
        ]
        keys = [
            (i, columns[_column_name(expression)])
            for i, expression in groups
            if isinstance(expression, TableColumn | Column) and _column_name(expression) in columns
        ]
        if self.owner.complete and len(keys) != len(groups):  # pragma: no cover - priced away
            raise EngineRefused("GROUP BY: only plain columns with public keys")
        self.owner.raw_keys = dict(keys)
        for row in found:
            for i, spec in keys:
                row[i] = declared_key(row[i], spec)
        if not self.owner.complete:
            return [header, *found]
        domains = [key_domain(spec) for _, spec in keys]
        by_key = {tuple(row[i] for i, _ in keys): row for row in found}
        completed = [header]
        for key in itertools.product(*domains):
            found_row = by_key.get(key)
            row = [None] * len(header) if found_row is None else list(found_row)
            for (i, _), value in zip(keys, key, strict=True):
                row[i] = value  # the declared value, never the rows' representation of it
            completed.append(row)
        return completed


def _output_keys(metadata: Metadata, columns: dict[str, Any], query: str) -> dict[int, Any]:
    """Which columns of the post-processed answer are plain GROUP BY keys, with their spec."""
    return _parsed_output_keys(QueryParser(metadata).query(query), columns)


def _parsed_output_keys(parsed: Any, columns: dict[str, Any]) -> dict[int, Any]:
    """:func:`_output_keys` of an already parsed query."""
    if parsed.agg is None:
        return {}
    keys = {}
    for i, named in enumerate(parsed.select.namedExpressions):
        expression = named.expression
        if isinstance(expression, Column) and _column_name(expression) in columns:
            keys[i] = columns[_column_name(expression)]
    return keys


def _keyed_frame(header: list[str], rows: list[list[Any]], keys: dict[int, Any]) -> pd.DataFrame:
    """The answer's frame, each key column in its declared values and dtype."""
    frame = pd.DataFrame(rows, columns=header)
    for i, spec in keys.items():
        if i >= len(header):
            continue
        values = [declared_key(row[i], spec) for row in rows]
        dtype = key_dtype(spec, values)
        frame.isetitem(i, pd.Series(values, dtype=dtype or object, index=frame.index))
    return frame


def _column_name(expression: Any) -> str:
    return str(getattr(expression, "colname", None) or expression).split(".")[-1].strip('"`[]')


def explicit_cost(reader: PrivateReader, request: SqlRequest, *, censor_dims: bool) -> PrivacyCost:
    """What a query costs: basic composition over its mechanisms, in exact decimals.

    Each mechanism is calibrated with the largest float not above the requested ε (and δ),
    so ε = (number of mechanisms) × the requested ε, exactly, and δ = the sum of the
    mechanisms' δ (SmartNoise gives a δ to each Gaussian mechanism and to the key count of
    a GROUP BY) plus, under ``censor_dims`` with a Gaussian key count, the δ/2 of its
    threshold. SmartNoise's odometer (``get_privacy_cost``) instead takes the better of basic
    and advanced composition and adds a slack of δ/2 (1e-15 when δ = 0) to every query; its
    threshold δ/2 is then not counted once advanced composition wins (measured in
    ``tests/stack/test_amounts.py``). ε is never charged below the odometer's ε. See
    docs/ledger.md ("What a SmartNoise query costs").
    """
    reader._refresh_options()
    subquery, _ = reader._rewrite(request.query)
    mechanisms = reader._get_mechanisms(subquery)
    used = [m for m in mechanisms if m]
    epsilon_float, delta_float = float_down(request.epsilon), float_down(request.delta)

    def exact(value: float, as_float: float, requested: Decimal) -> Decimal:
        return requested if value == as_float else exact_decimal(float(value))

    epsilon = sum((exact(m.epsilon, epsilon_float, request.epsilon) for m in used), ZERO)
    delta = sum((exact(m.delta, delta_float, request.delta) for m in used), ZERO)
    keycount = reader._get_keycount_position(subquery)
    if censor_dims and keycount is not None and isinstance(mechanisms[keycount], Gaussian):
        delta = EXACT.add(delta, EXACT.divide(request.delta, 2))
    odometer = OdometerHeterogeneous(request.privacy())
    for mechanism in used:
        odometer.spend(Privacy(epsilon=mechanism.epsilon, delta=mechanism.delta))
    epsilon = max(epsilon, exact_decimal(float(odometer.spent[0])))
    return PrivacyCost(epsilon=epsilon, delta=delta)


def _unwrap(expression: Any) -> Any:
    while isinstance(expression, NestedExpression):
        expression = expression.expression
    return expression


def _columns_in(expression: Any) -> list[str]:
    """The names of the columns an expression reads, in order, each once."""
    names: list[str] = []
    stack = [expression]
    while stack:
        node = stack.pop(0)
        if isinstance(node, Column) and node.name not in names:
            names.append(node.name)
        children = node.children() if hasattr(node, "children") else []
        stack.extend(child for child in children if child is not None)
    return names


def _mechanism_entry(name: str, aggregate: str, mechanism: Any, alpha: float, integer: bool) -> Any:
    """A noisy aggregate's entry: its distribution, scale and half-width at 1 - alpha."""
    half = float(mechanism.accuracy(alpha))
    if integer:  # SmartNoise truncates an int output toward zero: within ceil(t) (docs/api.md)
        half = float(math.ceil(half))
    distribution = "Gaussian" if isinstance(mechanism, Gaussian) else "Laplace"
    return acc.column(
        name, aggregate, distribution=distribution, scale=float(mechanism.scale), accuracy=half
    )


def sql_accuracy(dataset: Dataset, request: SqlRequest, level: float) -> dict[str, Any]:
    """Each output column's accuracy, from the query and the metadata only.

    SmartNoise rewrites the query into noisy aggregates (COUNT, SUM) and an outer query
    computed from them. An output column that is one noisy aggregate (possibly plus a
    constant) gets that mechanism's half-width (``mechanism.accuracy(alpha)``: OpenDP's
    ``laplacian_scale_to_accuracy`` / ``gaussian_scale_to_accuracy``), rounded up to an
    integer for an int column (SmartNoise truncates it). Any other expression of noisy
    aggregates (AVG = SUM / COUNT, VAR, STDDEV, a product) gets no half-width but its
    ``components``; a group key, a column without noise. With ``postprocess`` false each
    raw column is one noisy aggregate or a key.
    """
    alpha = acc.alpha(level)
    metadata = metadata_for(dataset.name, dataset.metadata)
    reader = PrivateReader(MetadataOnlyReader(metadata), metadata, privacy=request.privacy())
    reader._refresh_options()
    subquery, query = reader._rewrite(request.query)
    mechanisms = reader._get_mechanisms(subquery)
    columns: list[dict[str, Any]] = []
    if not request.postprocess:
        for i, (symbol, mechanism) in enumerate(
            zip(subquery._select_symbols, mechanisms, strict=True)
        ):
            name, aggregate = f"res_{i}", str(symbol.expression)
            if mechanism:
                integer = symbol.expression.type() == "int"
                columns.append(_mechanism_entry(name, aggregate, mechanism, alpha, integer))
            else:
                columns.append(acc.column(name, aggregate, reason="a group key: not noised"))
        return acc.answer(level, columns)
    by_name = {}
    for symbol, mechanism in zip(subquery._select_symbols, mechanisms, strict=True):
        if mechanism and symbol.name not in by_name:
            by_name[symbol.name] = (str(symbol.expression), mechanism)
    written = QueryParser(metadata).query(request.query).select.namedExpressions
    for named, symbol, asked in zip(
        query.select.namedExpressions, query._select_symbols, written, strict=False
    ):
        expression = _unwrap(named.expression)
        name, aggregate = str(symbol.name), str(asked.expression)
        sources = [n for n in _columns_in(named.expression) if n in by_name]
        integer = symbol.expression.type() == "int"
        if isinstance(expression, Column) and expression.name in by_name:
            mechanism = by_name[expression.name][1]
            columns.append(_mechanism_entry(name, aggregate, mechanism, alpha, integer))
        elif sources:
            parts = [
                _mechanism_entry(n, by_name[n][0], by_name[n][1], alpha, False) for n in sources
            ]
            columns.append(
                acc.column(
                    name,
                    aggregate,
                    reason="computed from several noisy aggregates (e.g. AVG = SUM / COUNT):"
                    " no analytic half-width; see components",
                    components=parts,
                )
            )
        else:
            columns.append(
                acc.column(name, aggregate, reason="a group key or a constant: no noise")
            )
    return acc.answer(level, columns)


class SmartnoiseSqlEngine:
    """The SmartNoise SQL engine (see the module docstring)."""

    name = NAME

    def __init__(
        self, max_query_chars: int = DEFAULT_MAX_QUERY_CHARS, executor: str = DEFAULT_EXECUTOR
    ) -> None:
        if executor not in EXECUTORS or (executor == "duckdb" and duckdb_sql is None):
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)} (installed)")
        self.max_query_chars = max_query_chars  # NEBLINA_MAX_QUERY_CHARS, from the registry
        # duckdb (default): DuckDB where route() admits the query, SQLite otherwise;
        # sqlite: every query on the SQLite copy (the differential test's reference)
        self.executor = executor

    def parse(self, body: dict[str, Any]) -> SqlRequest:
        validation.refuse_unknown(body, FIELDS | COMMON_FIELDS)
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise InvalidRequest("query must be a non-empty SQL string")
        if len(query) > self.max_query_chars:
            raise InvalidRequest(f"query is longer than {self.max_query_chars} characters")
        raw_mechanisms = body.get("mechanisms") or {}
        if not isinstance(raw_mechanisms, dict):
            raise InvalidRequest("mechanisms must be an object {stat: mechanism}")
        for stat, mechanism in raw_mechanisms.items():
            if stat not in STATS:
                raise InvalidRequest(
                    f"mechanisms: unknown stat {stat!r} (expected one of {', '.join(STATS)})"
                )
            if not isinstance(mechanism, str) or mechanism not in MECHANISMS:
                raise InvalidRequest(
                    f"mechanisms: unknown mechanism {mechanism!r} for {stat} "
                    f"(expected one of {', '.join(MECHANISMS)})"
                )
        return SqlRequest(
            query=query.strip(),
            epsilon=validation.epsilon(body.get("epsilon")),
            delta=validation.delta(body.get("delta")),
            mechanisms=tuple(sorted(raw_mechanisms.items())),
            postprocess=validation.boolean(body.get("postprocess"), "postprocess", True),
        )

    def cost(self, dataset: Dataset, request: SqlRequest) -> PrivacyCost:
        metadata = metadata_for(dataset.name, dataset.metadata)
        check_supported(metadata, request.query, _table_names(dataset.name))
        try:
            reader = PrivateReader(
                MetadataOnlyReader(metadata), metadata, privacy=request.privacy()
            )
            cost = explicit_cost(reader, request, censor_dims=dataset.metadata["censor_dims"])
        except Exception as exc:
            raise _classify(exc) from exc
        _dry_run(dataset, request, self.executor)
        if not dataset.metadata["censor_dims"]:
            _check_public_keys(metadata, dataset.metadata, request.query)
        return cost

    def accuracy(self, dataset: Dataset, request: SqlRequest, level: float) -> dict[str, Any]:
        """Each output column's accuracy at ``level`` (:func:`sql_accuracy`)."""
        return sql_accuracy(dataset, request, level)

    def _reader(self, loaded: LoadedDataset) -> SqlReader:
        if self.executor == "duckdb":
            return loaded.derived(
                NAME, lambda ld: RoutingReader(ld, metadata_for(ld.name, ld.metadata))
            )
        return loaded.derived(
            f"{NAME}:sqlite",
            lambda ld: CachedSqliteReader(
                ld.frame, metadata_for(ld.name, ld.metadata), _table_names(ld.name)
            ),
        )

    def execute(self, loaded: LoadedDataset, request: SqlRequest) -> dict[str, Any]:
        source = self._reader(loaded)
        metadata = metadata_for(loaded.name, loaded.metadata)
        columns = loaded.metadata["columns"]
        plan = sql_plan(loaded.name, loaded.metadata, request)
        reader = DomainKeysReader(
            source,
            metadata,
            privacy=request.privacy(),
            columns=columns,
            complete=not loaded.metadata["censor_dims"],
            plan=plan,
        )
        if request.postprocess:
            header, *rows = reader.execute(request.query)
            keys = _parsed_output_keys(plan.parsed, columns)
        else:
            # Raw noisy sub-aggregates; materialise the lazy iterator exactly once.
            rows = [list(row) for row in reader.execute(request.query, postprocess=False)]
            width = len(rows[0]) if rows else 0
            header = [f"res_{i}" for i in range(width)]
            keys = reader.raw_keys
        return frame_to_table(_keyed_frame(list(header), [list(r) for r in rows], keys))


# With the default limits (scripts and tests); the API builds its own through
# chalicelib.engines.Engines, with the deployment's limits.
ENGINE = SmartnoiseSqlEngine()
