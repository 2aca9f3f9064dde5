"""DuckDB as the executor of SmartNoise SQL's rewritten queries (the default).

SmartNoise still parses, checks (:mod:`chalicelib.engines.sql_policy`), rewrites and adds the
noise; only the exact per-key subquery it builds runs here, on a columnar copy of the loaded
dataset version (an in-memory DuckDB table built once per version from the loaded, clamped
frame and kept with it: a query scans only the columns it names).

Which queries run here: :func:`runs_on_duckdb` decides from the rewritten subquery and the
metadata alone (never from the rows), so whether a query runs here or on the SQLite copy
cannot depend on the private data. It accepts the subset where DuckDB and SQLite give the
same exact aggregates and where nothing can raise on any value: plain columns, literals,
comparisons between operands of one type family, AND/OR/NOT, IS [NOT] NULL, IN, BETWEEN,
SmartNoise's clamping CASE, COUNT and SUM (SUM of integers is a 128-bit sum in DuckDB: no
overflow), and SmartNoise's reservoir sampling (``ROW_NUMBER() OVER (PARTITION BY id ORDER BY
RANDOM())``). Anything else (arithmetic, functions, casts, datetimes) runs on the SQLite copy
with its total functions (:func:`chalicelib.engines.smartnoise_engine.make_total`), built only
when such a query first comes. The subquery must also bind on an empty table with the same
schema (:func:`binds`), checked when the query is priced.

Hardening (docs/threat-model.md, "DuckDB"): no file or network access from SQL
(``enable_external_access=false``), no extension installed or loaded, no Python objects
visible as tables (``python_enable_replacements=false``), then ``lock_configuration=true``
so no statement can undo that; every statement must be exactly one SELECT.
"""

from __future__ import annotations

import threading
from typing import Any

import duckdb
import pandas as pd
from snsql._ast.ast import (
    Aggregate,
    AliasedSubquery,
    From,
    Order,
    Query,
    Relation,
    Select,
    Table,
    Where,
)
from snsql._ast.expression import NamedExpression, NestedExpression
from snsql._ast.expressions.logical import (
    BetweenCondition,
    BooleanCompare,
    CaseExpression,
    ColumnBoolean,
    InCondition,
    IsCondition,
    LogicalNot,
    NestedBoolean,
    PredicatedExpression,
    WhenExpression,
)
from snsql._ast.expressions.numeric import BareFunction
from snsql._ast.expressions.sql import (
    AggFunction,
    AllColumns,
    GroupingExpression,
    OverClause,
    RankingFunction,
    SortItem,
)
from snsql._ast.tokens import Column, Literal, Seq, Sql, Symbol, Token

# Connection settings no statement can change (lock_configuration is set after the load).
HARDENING: dict[str, Any] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "python_enable_replacements": False,
}

# Not hardening: DuckDB's allocator returns freed memory to the OS from a background thread
# (measured on PEOPLE_1M: RSS 133 -> 92 MiB after the load, warm GROUP BY unchanged).
RUNTIME: dict[str, Any] = {"allocator_background_threads": True}
# ... and no progress bar on the worker's stdout (DuckDB draws one for a load over 2 s; a
# session setting, so set on the connection, before the load).
QUIET = "SET enable_progress_bar = false"

_SQL_TYPES = {"int": "BIGINT", "float": "DOUBLE", "boolean": "BOOLEAN", "datetime": "TIMESTAMP"}
# The alias SmartNoise gives the reservoir's row number (max_ids > 1, row_privacy false).
_ROW_NUMBER = "row_num"
_COMPARISONS = frozenset({"=", "==", "!=", "<>", "<", "<=", ">", ">="})
_AGGREGATES = frozenset({"COUNT", "SUM"})
_STRUCTURE = (Query, Select, From, Where, Aggregate, Relation, AliasedSubquery, Seq, Token)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_type(spec: dict[str, Any]) -> str:
    """The DuckDB type of a declared column (as the loader's dtypes hold it).

    Text with declared categories is an ENUM of them in sorted order (the loader has made
    every other value missing), so grouping reads small integers and ``<`` on the ENUM
    orders as on the text (measured: GROUP BY region, sex over 1M rows 3x faster).
    """
    if spec["type"] == "string" and spec.get("categories"):
        values = sorted(str(value) for value in spec["categories"])
        return "ENUM(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"
    if spec["type"] == "int" and spec.get("precision") == 32:
        return "INTEGER"
    if spec["type"] == "float" and spec.get("precision") == 32:
        return "FLOAT"
    return _SQL_TYPES.get(spec["type"], "VARCHAR")


def connect(
    frame: pd.DataFrame, metadata: dict[str, Any], table_names: list[str]
) -> duckdb.DuckDBPyConnection:
    """A hardened in-memory DuckDB holding ``frame`` as table ``df`` (+ a view per alias).

    The table's schema comes from the metadata (so an empty frame gives the same schema as
    the private one: :func:`binds` checks against it).
    """
    connection = duckdb.connect(":memory:", config={**HARDENING, **RUNTIME})
    connection.execute(QUIET)
    columns = metadata["columns"]
    ddl = ", ".join(f"{_quote(name)} {sql_type(spec)}" for name, spec in columns.items())
    connection.execute(f"CREATE TABLE df ({ddl})")
    if len(frame):
        source = frame[list(columns)]
        connection.register("_neblina_source", source)
        connection.execute("INSERT INTO df SELECT * FROM _neblina_source")
        connection.unregister("_neblina_source")
    for alias in table_names:
        if alias != "df":  # a dataset name matching IDENTIFIER (letters, digits, _)
            connection.execute(f"CREATE VIEW {_quote(alias)} AS SELECT * FROM df")  # noqa: S608
    connection.execute("SET lock_configuration = true")
    return connection


def _literal(value: Any) -> str:
    """A declared category or bound as a DuckDB literal (public: from the metadata)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"CAST('{value!r}' AS DOUBLE)"
    return "'" + str(value).replace("'", "''") + "'"


def _within_domain(name: str, spec: dict[str, Any]) -> str:
    """SQL for one column of a Parquet copy kept inside its declared domain.

    The same rule as :func:`chalicelib.datasets._within_public_domain` (the pandas path),
    row by row: a value outside ``categories`` becomes NULL; an int, float or datetime
    outside ``lower``..``upper`` is clamped (float bounds rounded inwards to the column's
    precision); NaN is NULL, as pandas' NaN is when a frame is copied into DuckDB; NULL
    stays NULL. ``tests/unit/test_parquet_copy.py`` holds the two paths to the same rows.
    """
    column = _quote(name)
    kind = spec["type"]
    nan = f"WHEN isnan({column}) THEN NULL " if kind == "float" else ""
    if spec.get("private_id"):
        return column  # never clamped: ids outside a range stay distinct persons
    if "categories" in spec:
        values = ", ".join(_literal(value) for value in spec["categories"]) or "NULL"
        return f"CASE {nan}WHEN {column} IN ({values}) THEN {column} END"
    if "lower" in spec and "upper" in spec and kind in ("int", "float", "datetime"):
        if kind == "float":
            import numpy as np

            from chalicelib.datasets import _float_bounds

            dtype = np.float32 if spec.get("precision") == 32 else np.float64
            low, high = _float_bounds(spec, dtype)
            sql = "FLOAT" if dtype is np.float32 else "DOUBLE"
            lower = f"CAST('{float(low)!r}' AS {sql})"
            upper = f"CAST('{float(high)!r}' AS {sql})"
        elif kind == "datetime":
            from chalicelib.datasets import _timestamp

            lower = f"TIMESTAMP_NS '{_timestamp(spec['lower']).isoformat()}'"
            upper = f"TIMESTAMP_NS '{_timestamp(spec['upper']).isoformat()}'"
        else:
            lower, upper = _literal(spec["lower"]), _literal(spec["upper"])
        return (
            f"CASE {nan}WHEN {column} < {lower} THEN {lower} "
            f"WHEN {column} > {upper} THEN {upper} ELSE {column} END"
        )
    return f"CASE {nan}WHEN TRUE THEN {column} END" if nan else column


def connect_parquet(
    data: bytes, metadata: dict[str, Any], table_names: list[str]
) -> duckdb.DuckDBPyConnection:
    """A hardened in-memory DuckDB holding a Parquet copy's rows as table ``df``.

    DuckDB reads the Parquet itself, column by column (no pandas frame in between), keeping
    each value inside the declared domain (:func:`_within_domain`) and leaving out rows
    without a ``private_id``: the rows :func:`connect` would hold for the same source. The
    file is read before external access is switched off; then the same settings as
    :func:`connect` are locked, so no query can read a file (this one included).
    """
    import os
    import tempfile

    config = {**HARDENING, **RUNTIME}
    config.pop("enable_external_access")
    connection = duckdb.connect(":memory:", config=config)
    connection.execute(QUIET)
    columns = metadata["columns"]
    ddl = ", ".join(f"{_quote(name)} {sql_type(spec)}" for name, spec in columns.items())
    connection.execute(f"CREATE TABLE df ({ddl})")
    select = ", ".join(_within_domain(name, spec) for name, spec in columns.items())
    ids = [name for name, spec in columns.items() if spec.get("private_id")]
    where = " WHERE " + " AND ".join(f"{_quote(n)} IS NOT NULL" for n in ids) if ids else ""
    handle, path = tempfile.mkstemp(suffix=".parquet", prefix="neblina-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        source = "read_parquet('" + path.replace("'", "''") + "')"
        connection.execute(f"INSERT INTO df SELECT {select} FROM {source}{where}")  # noqa: S608
    finally:
        os.unlink(path)
    connection.execute("SET enable_external_access = false")
    for alias in table_names:
        if alias != "df":
            connection.execute(f"CREATE VIEW {_quote(alias)} AS SELECT * FROM df")  # noqa: S608
    connection.execute("SET lock_configuration = true")
    return connection


class ReadOnlyViolation(Exception):
    """A statement that is not exactly one SELECT reached the private copy."""


def run(connection: duckdb.DuckDBPyConnection, query: str) -> list[Any]:
    """Header + rows of one SELECT, on its own cursor (thread-safe)."""
    statements = duckdb.extract_statements(query)
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise ReadOnlyViolation("only one SELECT may run on the private copy")
    cursor = connection.cursor()
    try:
        cursor.execute(query)
        header = [tuple(d[0] for d in cursor.description or [])]
        return header + [tuple(row) for row in cursor.fetchall()]
    finally:
        cursor.close()


# --- which subqueries run here --------------------------------------------------------


def _family(node: Any, columns: dict[str, Any]) -> str | None:
    """The type family of an operand: num, str, bool, null; None when not known here."""
    if isinstance(node, NestedExpression):
        return _family(node.expression, columns)
    if isinstance(node, Literal):
        value = node.value
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "bool"
        if isinstance(value, int | float):
            return "num"
        return "str" if isinstance(value, str) else None
    if isinstance(node, Column):
        name = _name(node)
        if name == _ROW_NUMBER and name not in columns:
            return "num"
        spec = columns.get(name)
        if spec is None:
            return None
        return {"int": "num", "float": "num", "string": "str", "boolean": "bool"}.get(spec["type"])
    if isinstance(node, CaseExpression):
        families = {_family(w.then, columns) for w in node.when_exprs or []}
        families.add(_family(node.else_expr, columns) if node.else_expr is not None else "null")
        families.discard("null")
        return families.pop() if len(families) == 1 and None not in families else None
    return None


def _name(node: Any) -> str:
    return str(getattr(node, "colname", None) or node).split(".")[-1].strip('"`[]')


def _same_family(*families: str | None) -> bool:
    known = {f for f in families if f != "null"}
    return None not in known and len(known) <= 1


def _safe(node: Any, columns: dict[str, Any], table_names: list[str]) -> bool:
    if node is None or isinstance(node, str):
        return True
    if isinstance(node, Literal):
        return _family(node, columns) is not None
    if isinstance(node, Column):
        return _family(node, columns) is not None or _name(node) in columns
    if isinstance(node, Table):
        return _name(node.name) in table_names
    if isinstance(node, AggFunction):
        if str(node.name).upper() not in _AGGREGATES:
            return False
        inner = node.expression
        return isinstance(inner, AllColumns) or (
            isinstance(inner, Column) and _family(inner, columns) in ("num", "str", "bool")
        )
    if isinstance(node, AllColumns):
        return True  # SELECT * of SmartNoise's own subqueries
    if isinstance(node, RankingFunction):
        return str(node.name).upper() == "ROW_NUMBER" and _safe_over(node.over, columns)
    if isinstance(node, BooleanCompare):
        op = str(node.op).upper()
        if op in ("AND", "OR"):
            return _safe(node.left, columns, table_names) and _safe(
                node.right, columns, table_names
            )
        return (
            op in _COMPARISONS
            and _same_family(_family(node.left, columns), _family(node.right, columns))
            and _safe(node.left, columns, table_names)
            and _safe(node.right, columns, table_names)
        )
    if isinstance(node, PredicatedExpression):
        return _safe_predicate(node, columns, table_names)
    if isinstance(node, ColumnBoolean):
        return _family(node.expression, columns) == "bool"
    if isinstance(node, CaseExpression):
        return (
            node.expression is None
            and _family(node, columns) is not None
            and all(_safe(w, columns, table_names) for w in node.when_exprs or [])
            and _safe(node.else_expr, columns, table_names)
        )
    if isinstance(node, WhenExpression):
        return _safe(node.expression, columns, table_names) and _safe(
            node.then, columns, table_names
        )
    if isinstance(node, NestedBoolean | LogicalNot | NestedExpression | NamedExpression):
        return _safe(node.expression, columns, table_names)
    if isinstance(node, GroupingExpression):
        family = _family(node.expression, columns)
        return family in ("num", "str", "bool") and _safe(node.expression, columns, table_names)
    if isinstance(node, _STRUCTURE):
        return all(_safe(child, columns, table_names) for child in _children(node))
    return False


def _safe_predicate(node: Any, columns: dict[str, Any], table_names: list[str]) -> bool:
    subject, predicate = node.expression, node.predicate
    family = _family(subject, columns)
    if not _safe(subject, columns, table_names):
        return False
    if isinstance(predicate, IsCondition):
        return predicate.value is None or (
            isinstance(predicate.value, Literal) and (predicate.value.value is None)
        )
    if isinstance(predicate, BetweenCondition):
        return _same_family(
            family, _family(predicate.lower, columns), _family(predicate.upper, columns)
        )
    if isinstance(predicate, InCondition):
        items = list(predicate.expressions or [])
        return bool(items) and _same_family(family, *(_family(i, columns) for i in items))
    return False


def _safe_over(over: Any, columns: dict[str, Any]) -> bool:
    """``OVER (PARTITION BY <column> ORDER BY RANDOM())``: SmartNoise's reservoir."""
    if not isinstance(over, OverClause):
        return False
    partition = over.partition
    if not isinstance(partition, Column) or _name(partition) not in columns:
        return False
    order = over.order
    if not isinstance(order, Order):
        return False
    items = list(order.sortItems or [])
    return all(
        isinstance(item, SortItem)
        and isinstance(item.expression, BareFunction)
        and str(item.expression.name).upper() == "RANDOM"
        for item in items
    )


def _children(node: Any) -> list[Any]:
    if isinstance(node, Symbol):
        return [node.expression]
    if isinstance(node, Sql):
        return [c for c in node.children() if c is not None]
    return []


def runs_on_duckdb(subquery: Any, columns: dict[str, Any], table_names: list[str]) -> bool:
    """Whether SmartNoise's rewritten ``subquery`` is in the subset DuckDB runs (module doc)."""
    try:
        return _safe(subquery, columns, table_names) and dialect(subquery) is not None
    except Exception:  # an AST shape not foreseen: the SQLite path
        return False


_RANDOM = "_neblina_random"


def _walk(node: Any) -> list[Any]:
    found = [node]
    for child in _children(node):
        if child is not None and not isinstance(child, str):
            found.extend(_walk(child))
    return found


def dialect(subquery: Any) -> str | None:
    """SmartNoise's SQL for ``subquery`` as DuckDB runs it (None: it cannot).

    DuckDB refuses a volatile window order (``ORDER BY RANDOM()`` in the reservoir's
    ``ROW_NUMBER() OVER (PARTITION BY id ...)``): the random key is drawn one column earlier,
    once per row and per query, as SmartNoise's SQLite query draws it.
    """
    sql = str(subquery)
    for query in (n for n in _walk(subquery) if isinstance(n, Query)):
        rankings = [
            named.expression
            for named in query.select.namedExpressions
            if isinstance(named.expression, RankingFunction)
        ]
        if not rankings:
            continue
        relations = list(query.source.relations)
        primary = getattr(relations[0], "primary", None) if len(relations) == 1 else None
        if len(rankings) != 1 or not isinstance(primary, AliasedSubquery):
            return None
        ranking, rows = str(rankings[0]), str(primary)
        ordered = ranking.replace("ORDER BY RANDOM ( )", f"ORDER BY {_RANDOM}")
        # SmartNoise's own subquery text and alias, no user text besides what it serialised
        inner, alias = str(primary.query), str(primary.alias)
        drawn = (
            f"( SELECT *, RANDOM ( ) AS {_RANDOM} FROM ( {inner} ) AS _neblina_rows ) AS {alias}"  # noqa: S608
        )
        if ordered == ranking or sql.count(ranking) != 1 or sql.count(rows) != 1:
            return None
        sql = sql.replace(ranking, ordered).replace(rows, drawn)
    return sql


class _Empty:
    """Empty hardened copies of a schema, one per (dataset name, metadata)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[tuple[str, str], duckdb.DuckDBPyConnection] = {}

    def get(
        self, key: tuple[str, str], metadata: dict[str, Any], table_names: list[str]
    ) -> duckdb.DuckDBPyConnection:
        with self._lock:
            connection = self._connections.get(key)
            if connection is None:
                if len(self._connections) >= 16:  # dropped, not closed: a caller may hold it
                    self._connections.pop(next(iter(self._connections)))
                empty = pd.DataFrame({name: [] for name in metadata["columns"]})
                connection = connect(empty, metadata, table_names)
                self._connections[key] = connection
            return connection


EMPTY = _Empty()
_BINDS: dict[tuple[str, str, str], bool] = {}
_BINDS_LOCK = threading.Lock()


def binds(
    key: tuple[str, str], metadata: dict[str, Any], table_names: list[str], query: str
) -> bool:
    """Whether ``query`` runs on an empty copy of the schema (public: no rows involved)."""
    with _BINDS_LOCK:
        known = _BINDS.get((*key, query))
    if known is not None:
        return known
    try:
        run(EMPTY.get(key, metadata, table_names), query)
        ok = True
    except Exception:
        ok = False
    with _BINDS_LOCK:
        if len(_BINDS) >= 4096:
            _BINDS.clear()
        _BINDS[(*key, query)] = ok
    return ok
