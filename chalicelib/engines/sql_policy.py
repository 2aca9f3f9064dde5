"""The SQL Neblina accepts: an allowlist over SmartNoise's parse tree, checked before any read.

The rule it serves (docs/threat-model.md, "error oracle"): a query is either refused here,
from its text and the metadata alone, or it runs to a release on every dataset that
satisfies the metadata. So every construct that reaches a database must be total there (no
value makes it raise), and everything else is refused with a message naming the construct
and what to use instead. The table in docs/sql.md lists the same constructs; a test checks
the two against each other.

The allowlist is written against SmartNoise's AST, not against SQLite: an engine that runs
SmartNoise's rewritten query elsewhere (DuckDB, Spark) reuses it and only has to make the
constructs allowed here total on its own database (for SQLite:
:func:`chalicelib.engines.smartnoise_engine.make_total`).
"""

from __future__ import annotations

import re
from typing import Any

from snsql._ast.ast import (
    Aggregate,
    From,
    Having,
    Limit,
    Query,
    Relation,
    Select,
    Table,
    Top,
    Where,
)
from snsql._ast.expression import NamedExpression, NestedExpression
from snsql._ast.expressions.date import (
    CurrentDateFunction,
    CurrentTimeFunction,
    CurrentTimestampFunction,
    DayNameFunction,
    ExtractFunction,
)
from snsql._ast.expressions.logical import (
    BetweenCondition,
    BooleanCompare,
    CaseExpression,
    ChooseFunction,
    ColumnBoolean,
    IIFFunction,
    InCondition,
    IsCondition,
    LogicalNot,
    NestedBoolean,
    PredicatedExpression,
    WhenExpression,
)
from snsql._ast.expressions.numeric import (
    ArithmeticExpression,
    BareFunction,
    MathFunction,
    PowerFunction,
    RoundFunction,
    TruncFunction,
)
from snsql._ast.expressions.sql import (
    AggFunction,
    AllColumns,
    GroupingExpression,
)
from snsql._ast.expressions.string import (
    CharLengthFunction,
    CoalesceFunction,
    ConcatFunction,
    LowerFunction,
    PositionFunction,
    SubstringFunction,
    TrimFunction,
    UpperFunction,
)
from snsql._ast.expressions.types import CastFunction
from snsql._ast.tokens import Column, Literal, Seq, Sql, Symbol

from chalicelib.errors import InvalidQuery

# |numeric literal| at most this (2^53: every such integer is exact as a float too).
MAX_LITERAL = 2**53
MAX_STRING_LITERAL = 1000

AGGREGATES = frozenset({"COUNT", "SUM", "AVG", "VAR", "VARIANCE", "STD", "STDDEV", "STDEV"})
MATH_FUNCTIONS = frozenset(
    {
        "ABS",
        "CEIL",
        "CEILING",
        "FLOOR",
        "SIGN",
        "SQRT",
        "SQUARE",
        "EXP",
        "LN",
        "LOG",
        "LOG10",
        "LOG2",
        "SIN",
        "COS",
        "TAN",
        "ASIN",
        "ACOS",
        "ATAN",
        "ATANH",
        "DEGREES",
    }
)
CAST_TYPES = ("integer", "float", "boolean", "varchar", "nvarchar", "char", "nchar")
COMPARISONS = frozenset({"=", "==", "!=", "<>", "<", "<=", ">", ">="})
ARITHMETIC = frozenset({"+", "-", "*", "/", "%"})

# Node types allowed as they are (their parts are checked by the walk).
_PLAIN = (
    Query,
    Select,
    From,
    Where,
    Aggregate,
    Having,
    Limit,
    Top,
    Seq,
    Symbol,
    Column,
    NamedExpression,
    NestedExpression,
    GroupingExpression,
    CaseExpression,
    WhenExpression,
    IIFFunction,
    ColumnBoolean,
    NestedBoolean,
    LogicalNot,
    PredicatedExpression,
    InCondition,
    BetweenCondition,
    IsCondition,
    RoundFunction,
    TruncFunction,
    PowerFunction,
    UpperFunction,
    LowerFunction,
    TrimFunction,
    CharLengthFunction,
    ConcatFunction,
    CoalesceFunction,
    CurrentDateFunction,
    CurrentTimeFunction,
    CurrentTimestampFunction,
)

# Constructs SmartNoise parses but Neblina refuses: what to write instead.
_REFUSED_NODES: dict[type, tuple[str, str]] = {
    SubstringFunction: (
        "SUBSTRING(... FROM ... FOR ...)",
        "compare the whole value (= or IN (...) with the declared categories), or ask the"
        " data owner for a derived column",
    ),
    PositionFunction: (
        "POSITION(... IN ...)",
        "compare the whole value (= or IN (...)), or ask the data owner for a derived column",
    ),
    ExtractFunction: (
        "EXTRACT(... FROM ...)",
        "compare the datetime column with ISO strings, e.g. BETWEEN '2008-01-01' AND '2008-12-31'",
    ),
    DayNameFunction: ("DAYNAME(...)", "ask the data owner for a derived column"),
    ChooseFunction: ("CHOOSE(...)", "use CASE WHEN ... THEN ... ELSE ... END"),
}
_REFUSED_AGGREGATES = {
    "MIN": "MIN/MAX have unbounded sensitivity in SmartNoise; use the declared bounds (public"
    " metadata), a histogram (GROUP BY over a bounded column) or AVG",
    "MAX": "MIN/MAX have unbounded sensitivity in SmartNoise; use the declared bounds (public"
    " metadata), a histogram (GROUP BY over a bounded column) or AVG",
    "PERCENTILE_DISC": "percentiles are not supported by the SQL engine; use a histogram"
    " (GROUP BY over a bounded column) and read the percentile off its noisy counts",
    "PERCENTILE_CONT": "percentiles are not supported by the SQL engine; use a histogram"
    " (GROUP BY over a bounded column) and read the percentile off its noisy counts",
}
# Function names SmartNoise's grammar does not know: a grammar error would say "Bad token".
_UNKNOWN_FUNCTIONS = {
    "MEDIAN": "use a histogram (GROUP BY over a bounded column) and read the median off its"
    " noisy counts, or AVG",
    "MODE": "use a histogram (GROUP BY) and take its largest noisy count",
    "SUBSTR": "compare the whole value (= or IN (...)), or ask the data owner for a derived column",
    "LENGTH": "use CHAR_LENGTH(...)",
    "LIKE": "compare the whole value (= or IN (...) with the declared categories)",
    "GROUP_CONCAT": "GROUP BY the column instead",
    "STRING_AGG": "GROUP BY the column instead",
    "COUNT_BIG": "use COUNT",
    "NULLIF": "use CASE WHEN ... THEN NULL ELSE ... END",
    "IFNULL": "use COALESCE(...)",
    "NVL": "use COALESCE(...)",
    "INSTR": "compare the whole value (= or IN (...))",
    "REPLACE": "compare the whole value (= or IN (...))",
    "DATE_TRUNC": "compare the datetime column with ISO strings (BETWEEN ... AND ...)",
    "STRFTIME": "compare the datetime column with ISO strings (BETWEEN ... AND ...)",
}
_UNKNOWN_CALL = re.compile(
    r"\b(" + "|".join(name for name in _UNKNOWN_FUNCTIONS if name != "LIKE") + r")\s*\(|\bLIKE\b",
    re.IGNORECASE,
)


def refuse(construct: str, instead: str) -> InvalidQuery:
    """The 400 for an unsupported construct: what it is, and what to use instead."""
    return InvalidQuery(f"{construct} is not supported (docs/sql.md): {instead}")


def explain_parse_error(query: str) -> InvalidQuery | None:
    """A clear 400 for a grammar error caused by a function the grammar does not know."""
    found = _UNKNOWN_CALL.search(_without_strings(query))
    if found is None:
        return None
    name = (found.group(1) or "LIKE").upper()
    shown = "LIKE" if name == "LIKE" else f"{name}(...)"
    return refuse(shown, _UNKNOWN_FUNCTIONS[name])


def _without_strings(query: str) -> str:
    return re.sub(r"'(?:[^'\\]|\\.)*'", "''", query)


def check(query: Query, table_names: list[str]) -> None:
    """Refuse (400) any construct outside the supported grammar of docs/sql.md."""
    if not isinstance(query, Query):
        raise refuse("this statement", "send one SELECT ... FROM df query")
    _check_relations(query, table_names)
    quantifier = query.select.quantifier
    if quantifier is not None and not isinstance(quantifier, Top):
        raise refuse(f"SELECT {quantifier}", "GROUP BY the columns instead of DISTINCT")
    if query.order is not None:
        raise refuse(
            "ORDER BY",
            "sort the returned table (GROUP BY results come back in key order); SmartNoise's"
            " sort fails on keys that mix NULL and values",
        )
    if query.having is not None and _contains_aggregate(query.having):
        raise refuse(
            "an aggregate in HAVING",
            "name the aggregate in SELECT and use its alias: SELECT COUNT(*) AS n ..."
            " HAVING n > 10 (SmartNoise cannot evaluate COUNT(*) there)",
        )
    _walk(query.select, in_aggregate=False)
    for part in (query.where, query.agg, query.having):
        if part is not None:
            _walk(part, in_aggregate=False)


def _check_relations(query: Query, table_names: list[str]) -> None:
    relations = list(query.source.relations) if query.source is not None else []
    if len(relations) != 1:
        raise refuse("a query over several tables", "query one table: FROM df")
    relation = relations[0]
    if not isinstance(relation, Relation) or relation.joins:
        raise refuse("JOIN", "query one table: FROM df")
    if not isinstance(relation.primary, Table):
        raise refuse("a subquery", "write one SELECT over the table itself (FROM df)")
    name = str(relation.primary.name).strip('"`[]')
    if name not in table_names:
        raise InvalidQuery(f"unknown table {name}: query FROM {' or '.join(table_names)}")


# Over aggregates, SmartNoise evaluates the outer expression itself (post-processing, in
# Python): it manages arithmetic and numeric functions, but rewrites CASE, IIF, COALESCE,
# CAST and string functions around an aggregate into SQL that cannot run or a result it
# cannot evaluate ("We don't know how to evaluate *"), after the read.
_NOT_OVER_AGGREGATES = (
    CaseExpression,
    IIFFunction,
    CoalesceFunction,
    CastFunction,
    ConcatFunction,
    UpperFunction,
    LowerFunction,
    TrimFunction,
    CharLengthFunction,
)


def _contains_aggregate(node: Any) -> bool:
    if isinstance(node, AggFunction):
        return True
    if node is None or isinstance(node, str):
        return False
    return any(_contains_aggregate(child) for child in _children(node))


def _walk(node: Any, *, in_aggregate: bool) -> None:
    if node is None or isinstance(node, str):  # tokens, operators, names: checked by parents
        return
    if isinstance(node, _NOT_OVER_AGGREGATES) and _contains_aggregate(node):
        name = type(node).__name__.replace("Function", "").replace("Expression", "").upper()
        raise refuse(
            f"{name} around an aggregate ({node})",
            "select the aggregate itself and compute on the returned numbers; arithmetic"
            " (+ - * / %) and numeric functions (SQRT, LOG, ROUND, ...) over aggregates work",
        )
    if isinstance(node, Literal):
        _check_literal(node)
        return
    if isinstance(node, AggFunction):
        name = str(node.name).upper()
        if name in _REFUSED_AGGREGATES:
            raise refuse(f"{name}(...)", _REFUSED_AGGREGATES[name])
        if name not in AGGREGATES:  # pragma: no cover - the grammar knows no others
            raise refuse(f"{name}(...)", "use COUNT, SUM, AVG, VAR or STDDEV")
        if in_aggregate:
            raise refuse("an aggregate inside an aggregate", "aggregate plain columns")
        if isinstance(node.expression, AllColumns):
            if name != "COUNT":
                raise refuse(f"{name}(*)", "only COUNT(*) takes *")
            return
        if not isinstance(node.expression, Column):
            raise refuse(
                f"an aggregate over an expression ({node})",
                "aggregate the plain column, then compute: SUM(col) * 2, not SUM(col * 2)",
            )
        return
    if isinstance(node, AllColumns):
        raise refuse("SELECT *", "name the aggregates you want, e.g. SELECT COUNT(*) AS n")
    refused = _REFUSED_NODES.get(type(node))
    if refused is not None:
        raise refuse(*refused)
    if isinstance(node, MathFunction):
        name = str(node.name).upper()
        if name not in MATH_FUNCTIONS:  # pragma: no cover - the grammar knows no others
            raise refuse(f"{name}(...)", "see docs/sql.md for the functions available")
    elif isinstance(node, BareFunction):
        name = str(node.name).upper()
        if name != "PI":
            raise refuse(f"{name}()", "random values are not supported; PI() is")
    elif isinstance(node, CastFunction):
        if not str(node.dbtype).lower().startswith(CAST_TYPES):
            raise refuse(
                f"CAST(... AS {str(node.dbtype).upper()})",
                "cast to INTEGER, FLOAT, BOOLEAN or VARCHAR; compare datetimes with ISO strings",
            )
    elif isinstance(node, BooleanCompare):
        op = str(node.op).upper()
        if op not in COMPARISONS and op not in ("AND", "OR"):
            raise refuse(f"the operator {op}", "use =, <>, <, <=, >, >=, IS [NOT] NULL")
    elif isinstance(node, ArithmeticExpression):
        if str(node.op) not in ARITHMETIC:  # pragma: no cover - the grammar knows no others
            raise refuse(f"the operator {node.op}", "use +, -, *, / or %")
    elif not isinstance(node, _PLAIN):
        what = type(node).__name__
        raise refuse(f"{what} ({node})", "see docs/sql.md for the supported SQL")
    for child in _children(node):
        _walk(child, in_aggregate=in_aggregate)


def _children(node: Any) -> list[Any]:
    if isinstance(node, Symbol):
        return [node.expression]
    if isinstance(node, Sql):
        return [c for c in node.children() if c is not None]
    return []  # pragma: no cover - every node is Sql


def _check_literal(literal: Literal) -> None:
    value = literal.value
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        if not abs(value) <= MAX_LITERAL:  # also refuses NaN and infinities
            raise refuse(
                f"the number {literal.text}",
                f"numbers in a query must lie within ±{MAX_LITERAL:,} (2^53)",
            )
    elif isinstance(value, str) and len(value) > MAX_STRING_LITERAL:
        raise refuse("a string literal longer than 1000 characters", "compare with shorter values")
