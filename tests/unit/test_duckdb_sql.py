"""SmartNoise SQL on DuckDB: held to the SQLite path, hardened, routed from metadata only.

The differential test draws small datasets (NULLs in every nullable column, persons with
several rows) and queries over the supported grammar (WHERE on every type, GROUP BY on
public keys, empty groups), and compares the exact per-key aggregates SmartNoise would add
noise to, DuckDB against SQLite, and the charged cost of both engines; the same rows
registered as a Parquet copy (DuckDB reading the Parquet itself) give the same aggregates.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import duckdb
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib import metadata as M
from chalicelib.datasets import LoadedDataset, coerce_types, to_parquet
from chalicelib.engines import duckdb_sql
from chalicelib.engines import smartnoise_engine as sn
from chalicelib.models import Dataset, utcnow

DUCK = sn.SmartnoiseSqlEngine(executor="duckdb")
LITE = sn.SmartnoiseSqlEngine(executor="sqlite")
GROUPS = ["c", "a", "b"]  # not sorted: DuckDB holds them as a sorted ENUM


def meta(max_ids: int, censor_dims: bool) -> dict[str, Any]:
    return M.validate(
        {
            "max_ids": max_ids,
            "row_privacy": False,
            "censor_dims": censor_dims,
            "rows": 100,
            "columns": {
                "pid": {"type": "int", "private_id": True, "lower": 0, "upper": 1000},
                "g": {"type": "string", "categories": GROUPS, "nullable": True},
                "k": {"type": "int", "lower": 0, "upper": 3, "nullable": True},
                "flag": {"type": "boolean", "nullable": True},
                "x": {"type": "float", "lower": -10.0, "upper": 10.0, "nullable": True},
                "n": {"type": "int", "lower": -100, "upper": 100, "nullable": False},
                "t": {
                    "type": "datetime",
                    "lower": "2020-01-01",
                    "upper": "2020-12-31",
                    "nullable": True,
                },
            },
        }
    )


def maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), values)


ROW = st.fixed_dictionaries(
    {
        "g": maybe(st.sampled_from([*GROUPS, "zz"])),  # zz: outside the categories
        "k": maybe(st.integers(-1, 4)),  # clamped into 0..3
        "flag": maybe(st.booleans()),
        "x": maybe(st.floats(-12, 12, allow_nan=False).map(lambda v: round(v, 2))),
        "n": st.integers(-120, 120),
        "t": maybe(st.datetimes(datetime(2019, 6, 1), datetime(2021, 6, 1)).map(str)),
    }
)


@st.composite
def frames(draw: st.DrawFn, max_ids: int) -> pd.DataFrame:
    """Rows of up to 12 persons, each with at most ``max_ids`` rows (so none is sampled)."""
    rows = []
    for person in range(draw(st.integers(0, 12))):
        for _ in range(draw(st.integers(1, max_ids))):
            rows.append({"pid": person, **draw(ROW)})
    return pd.DataFrame(rows, columns=["pid", "g", "k", "flag", "x", "n", "t"])


def _literal(column: str) -> st.SearchStrategy[str]:
    return {
        "g": st.sampled_from(["'a'", "'b'", "'zz'"]),
        "k": st.integers(-1, 4).map(str),
        "flag": st.sampled_from(["TRUE", "FALSE"]),
        "x": st.sampled_from(["0", "-2.5", "3.25", "10"]),
        "n": st.integers(-120, 120).map(str),
        "t": st.sampled_from(["'2020-03-01'", "'2020-06-15 12:00:00'"]),
    }[column]


@st.composite
def atoms(draw: st.DrawFn) -> str:
    column = draw(st.sampled_from(["g", "k", "flag", "x", "n", "t"]))
    kind = draw(st.sampled_from(["compare", "null", "in", "between"]))
    if kind == "null":
        return f"{column} IS {draw(st.sampled_from(['', 'NOT ']))}NULL"
    if kind == "in" and column != "flag":
        items = draw(st.lists(_literal(column), min_size=1, max_size=3))
        return f"{column} IN ({', '.join(items)})"
    if kind == "between" and column not in ("flag", "g"):
        low, high = sorted([draw(_literal(column)), draw(_literal(column))])
        return f"{column} BETWEEN {low} AND {high}"
    op = draw(st.sampled_from(["=", "<>", "<", "<=", ">", ">="] if column != "flag" else ["="]))
    return f"{column} {op} {draw(_literal(column))}"


def conditions(depth: int = 2) -> st.SearchStrategy[str]:
    if depth == 0:
        return atoms()
    inner = conditions(depth - 1)
    return st.one_of(
        atoms(),
        st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        inner.map(lambda c: f"NOT ({c})"),
    )


@st.composite
def queries(draw: st.DrawFn) -> str:
    keys = draw(st.lists(st.sampled_from(["g", "k", "flag"]), unique=True, max_size=2))
    aggregates = draw(
        st.lists(
            st.sampled_from(
                ["COUNT(*)", "COUNT(x)", "COUNT(g)", "SUM(n)", "SUM(x)", "AVG(x)", "AVG(k)"]
            ),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    select = ", ".join([*keys, *(f"{a} AS a{i}" for i, a in enumerate(aggregates))])
    where = draw(maybe(conditions()))
    sql = f"SELECT {select} FROM df"  # noqa: S608
    if where:
        sql += f" WHERE {where}"
    if keys:
        sql += f" GROUP BY {', '.join(keys)}"
    return sql


def request(engine: sn.SmartnoiseSqlEngine, query: str) -> sn.SqlRequest:
    return engine.parse({"query": query, "epsilon": "1", "delta": "0.00001"})


def exact(engine: sn.SmartnoiseSqlEngine, loaded: LoadedDataset, query: str) -> list[Any]:
    """The exact per-key aggregates SmartNoise adds noise to, keys completed and declared."""
    req = request(engine, query)
    metadata = sn.metadata_for(loaded.name, loaded.metadata)
    owner = sn.DomainKeysReader(
        engine._reader(loaded),
        metadata,
        privacy=req.privacy(),
        columns=loaded.metadata["columns"],
        complete=not loaded.metadata["censor_dims"],
    )
    subquery, _ = owner._rewrite(req.query)
    rows = owner._get_reader(subquery)._execute_ast(subquery)
    return [_normal(row) for row in rows[1:]]


def _normal(row: Any) -> tuple[Any, ...]:
    out: list[Any] = []
    for value in row:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out.append(None)
        elif isinstance(value, bool | str):
            out.append(value)
        else:
            out.append(float(value))
    return tuple(out)


def same(left: list[Any], right: list[Any]) -> bool:
    def key(row: tuple[Any, ...]) -> str:
        return repr(row)

    if len(left) != len(right):
        return False
    for a, b in zip(sorted(left, key=key), sorted(right, key=key), strict=True):
        for u, v in zip(a, b, strict=True):
            if isinstance(u, float) and isinstance(v, float):
                if not math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-9):
                    return False
            elif u != v:
                return False
    return True


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_duckdb_gives_the_exact_aggregates_and_cost_of_the_sqlite_path(data: Any) -> None:
    max_ids = data.draw(st.sampled_from([1, 3]))
    censor_dims = data.draw(st.booleans())
    metadata = meta(max_ids, censor_dims)
    raw = data.draw(frames(max_ids))
    frame = coerce_types(raw, metadata)
    query = data.draw(queries())
    dataset = Dataset("people", "unused", metadata, utcnow())
    try:
        cost = LITE.cost(dataset, request(LITE, query))
    except Exception as exc:  # refused by the SQLite path: refused alike by DuckDB's
        with pytest.raises(type(exc)):
            DUCK.cost(dataset, request(DUCK, query))
        return
    assert DUCK.cost(dataset, request(DUCK, query)) == cost
    loaded = LoadedDataset("people", "v1", metadata, frame)
    ours, reference = exact(DUCK, loaded, query), exact(LITE, loaded, query)
    assert same(ours, reference), (query, ours, reference)
    # the same rows registered as a Parquet copy, which DuckDB reads itself (the frame a copy
    # gives the SQLite path: tests/unit/test_parquet_copy.py)
    copy = LoadedDataset("people", "v2", metadata, parquet=to_parquet(raw, metadata))
    from_copy = exact(DUCK, copy, query)
    assert same(from_copy, reference), (query, from_copy, reference)


def _route(query: str, max_ids: int = 1, censor_dims: bool = False) -> str:
    metadata = meta(max_ids, censor_dims)
    md = sn.metadata_for("people", metadata)
    reader = sn.DomainKeysReader(
        sn.MetadataOnlyReader(md),
        md,
        privacy=request(DUCK, query).privacy(),
        columns=metadata["columns"],
        complete=not censor_dims,
    )
    subquery, _ = reader._rewrite(query)
    return sn.route("people", metadata, subquery)


@pytest.mark.parametrize(
    ("query", "where"),
    [
        ("SELECT COUNT(*) AS n FROM df", "duckdb"),
        ("SELECT g, k, COUNT(*) AS n, AVG(x) AS m FROM df GROUP BY g, k", "duckdb"),
        ("SELECT SUM(n) FROM df WHERE g IN ('a', 'b') AND NOT x BETWEEN -1 AND 1", "duckdb"),
        ("SELECT COUNT(*) FROM df WHERE flag = TRUE OR k IS NULL", "duckdb"),
        ("SELECT COUNT(*) FROM df WHERE n + 1 > 3", "sqlite"),  # arithmetic
        ("SELECT COUNT(*) FROM df WHERE ABS(n) > 3", "sqlite"),  # a function
        ("SELECT COUNT(*) FROM df WHERE t > '2020-03-01'", "sqlite"),  # datetimes
        ("SELECT COUNT(*) FROM df WHERE k = 'a'", "sqlite"),  # int against text
        ("SELECT VAR(x) FROM df", "sqlite"),  # SmartNoise's SUM(x * x)
    ],
)
def test_where_a_query_runs_is_decided_from_its_text_and_the_metadata(
    query: str, where: str
) -> None:
    assert _route(query) == where
    assert _route(query, max_ids=3) == where  # also with the reservoir sampling


def test_max_ids_reservoir_keeps_at_most_max_ids_rows_per_person_on_duckdb() -> None:
    """Person p has p + 1 rows; with max_ids 3 the count is sum(min(p + 1, 3)), every time."""
    metadata = meta(3, True)
    rows = [{"pid": p, "n": 1} for p in range(6) for _ in range(p + 1)]
    frame = coerce_types(
        pd.DataFrame(rows).reindex(columns=["pid", "g", "k", "flag", "x", "n", "t"]), metadata
    )
    loaded = LoadedDataset("people", "v1", metadata, frame)
    assert _route("SELECT COUNT(*) AS c FROM df", max_ids=3) == "duckdb"
    for _ in range(3):
        [row] = exact(DUCK, loaded, "SELECT COUNT(*) AS c FROM df")
        assert row == (6, 15)  # persons (the key count), rows kept: sum(min(p + 1, 3))


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE df",
        "DELETE FROM df",
        "INSERT INTO df (n) VALUES (1)",
        "UPDATE df SET n = 0",
        "CREATE TABLE leak AS SELECT * FROM df",
        "ATTACH ':memory:' AS other",
        "COPY df TO '/tmp/neblina-leak.csv'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SELECT 1; DROP TABLE df",
        "PRAGMA version",
    ],
)
def test_the_duckdb_copy_runs_one_select_and_nothing_else(statement: str) -> None:
    loaded = LoadedDataset("people", "v1", meta(1, False), coerce_types(_one_row(), meta(1, False)))
    reader = DUCK._reader(loaded)
    with pytest.raises(duckdb_sql.ReadOnlyViolation):
        duckdb_sql.run(reader.duckdb, statement)
    assert duckdb_sql.run(reader.duckdb, 'SELECT COUNT(*) FROM "people"')[1] == (1,)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('/tmp/any.parquet')",
        "SELECT * FROM 'https://example.invalid/x.csv'",
        "SELECT * FROM frame",  # a Python variable in scope: no replacement scans
        "SELECT current_setting('enable_external_access') AND "
        "(SELECT COUNT(*) FROM read_text('/etc/hostname')) > 0",
    ],
)
def test_sql_on_the_duckdb_copy_reaches_no_file_network_or_python_object(query: str) -> None:
    frame = _one_row()  # what a replacement scan would find
    loaded = LoadedDataset("people", "v1", meta(1, False), coerce_types(frame, meta(1, False)))
    connection = DUCK._reader(loaded).duckdb
    with pytest.raises(duckdb.Error):
        duckdb_sql.run(connection, query)
    setting = "SELECT current_setting('enable_external_access')"
    assert duckdb_sql.run(connection, setting)[1] == (False,)


def _one_row() -> pd.DataFrame:
    return pd.DataFrame(
        [{"pid": 1, "g": "a", "k": 1, "flag": True, "x": 1.0, "n": 1, "t": "2020-02-02"}]
    )


def test_rows_duckdb_cannot_load_are_answered_by_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether a query succeeds cannot hinge on DuckDB taking the rows: SQLite answers."""

    def refuse(*_: Any) -> Any:
        raise duckdb.ConversionException("a value DuckDB would not take")

    monkeypatch.setattr(duckdb_sql, "connect", refuse)
    metadata = meta(1, False)
    loaded = LoadedDataset("people", "v1", metadata, coerce_types(_one_row(), metadata))
    assert exact(DUCK, loaded, "SELECT g, COUNT(*) AS n FROM df GROUP BY g") == exact(
        LITE, loaded, "SELECT g, COUNT(*) AS n FROM df GROUP BY g"
    )
