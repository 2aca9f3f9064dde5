"""Dataset metadata: validation of the Lomas-compatible format and conversion for the engines.

The format (documented in ``docs/metadata.md``)::

    max_ids: 1            # rows one individual may contribute
    rows: 344             # public (approximate) row count
    row_privacy: true     # each row is one individual (no private_id column)
    censor_dims: false    # SmartNoise: drop rare groups with a DP threshold
    columns:
      species: {type: string, categories: [Adelie, Chinstrap, Gentoo]}
      bill_length_mm: {type: float, lower: 30.0, upper: 65.0, nullable: true}
      year: {type: int, lower: 2007, upper: 2009}

Only this module decides what is valid; errors list every problem with its path.
Importing it is cheap (no pandas).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime
from typing import Any

from chalicelib.errors import InvalidRequest

COLUMN_TYPES = ("string", "int", "float", "boolean", "datetime")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# Keywords of SmartNoise SQL's grammar (any case): a column so named cannot be queried there
# (`GROUP BY month` is a grammar error), so metadata declaring one is refused. The list is
# SmartNoise's lexer's, checked against it by tests/unit/test_metadata.py.
_RESERVED_TEXT = """
    ABS ACOS ALL AND ANTI AS ASC ASIN ATAN ATANH AVG BETWEEN BOOLEAN BY CASE CAST CEIL
    CEILING CHAR CHAR_LENGTH CHOOSE COALESCE CONCAT COS COT COUNT CROSS CURRENT_DATE
    CURRENT_TIME CURRENT_TIMESTAMP DATE DAY DAYNAME DEGREES DENSE_RANK DESC DISTINCT DIV
    ELSE END EXP EXTRACT FALSE FLOAT FLOOR FOR FROM FULL GROUP HAVING HOUR IF IIF IN
    INNER INTEGER INTERSECT IS JOIN LEFT LIMIT LN LOG LOG10 LOG2 LOWER MAX MICROSECOND
    MIN MINUTE MONTH NCHAR NEWID NOT NULL NUMERIC NVARCHAR ON OR ORDER OUTER OVER
    PARTITION PERCENTILE_CONT PERCENTILE_DISC PI POSITION POWER RAND RANDOM RANK RIGHT
    ROUND ROWNUM ROW_NUMBER SECOND SELECT SEMI SIGN SIN SORT SQL SQRT SQUARE STD STDDEV
    STDEV SUBSTRING SUM TAN THEN TIME TIMESTAMP TOP TRIM TRUE TRUNC TRUNCATE TZOFFSET
    UNION UPPER USING VAR VARCHAR VARIANCE WEEKDAY WHEN WHERE YEAR _
"""
RESERVED_WORDS = frozenset(_RESERVED_TEXT.split())

_TOP_KEYS = {"max_ids", "rows", "row_privacy", "censor_dims", "columns", "description", "executor"}
# Where a dataset's SQL queries run: in the SQL worker (the default), or as a Spark job over
# its Parquet (docs/spark.md). Public: it changes where the rows are aggregated, not the price.
EXECUTORS = ("function", "spark")
_COMMON_KEYS = {"type", "nullable", "private_id", "description"}
_TYPE_KEYS: dict[str, set[str]] = {
    "string": {"categories", "cardinality"},
    "int": {"lower", "upper", "precision", "categories", "cardinality"},
    "float": {"lower", "upper", "precision"},
    "boolean": set(),
    "datetime": {"lower", "upper"},
}


class MetadataError(InvalidRequest):
    """The metadata is invalid; ``problems`` lists each issue as ``path: what``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid metadata: " + "; ".join(problems))
        self.problems = problems


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def parse_datetime_bound(value: object) -> datetime | None:
    """A datetime bound as naive UTC, the form the loader gives the column (``None``: invalid).

    A bound with a UTC offset is converted to UTC; one without is taken as UTC already, as
    the loader reads naive values. Bounds of both kinds then compare consistently (Python
    refuses to compare a naive datetime with an aware one).
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is in year 0 in UTC
            return None
    return parsed


def _check_bounds(path: str, spec: dict[str, Any], kind: str, problems: list[str]) -> None:
    lower, upper = spec.get("lower"), spec.get("upper")
    if lower is None or upper is None:
        problems.append(f"{path}: a {kind} column needs both lower and upper")
        return
    if kind == "int":
        if not (_is_int(lower) and _is_int(upper)):
            problems.append(f"{path}: int bounds must be integers (got {lower!r}, {upper!r})")
            return
    elif kind == "float":
        if not (_is_number(lower) and _is_number(upper)):
            problems.append(
                f"{path}: float bounds must be finite numbers (got {lower!r}, {upper!r})"
            )
            return
    else:
        lo, up = parse_datetime_bound(lower), parse_datetime_bound(upper)
        if lo is None or up is None:
            problems.append(
                f"{path}: datetime bounds must be ISO 8601 dates or datetimes within years"
                f" 1-9999 in UTC (got {lower!r}, {upper!r})"
            )
            return
        lower, upper = lo, up
    if lower > upper:
        problems.append(f"{path}: lower ({spec['lower']}) is greater than upper ({spec['upper']})")


def _check_categories(path: str, spec: dict[str, Any], kind: str, problems: list[str]) -> None:
    categories = spec.get("categories")
    if not isinstance(categories, list) or not categories:
        problems.append(f"{path}: categories must be a non-empty list")
        return
    wanted = _is_int if kind == "int" else (lambda v: isinstance(v, str))
    bad = [c for c in categories if not wanted(c)]
    if bad:
        problems.append(f"{path}: {kind} categories must all be {kind}s (got {bad[0]!r})")
    if len(set(map(str, categories))) != len(categories):
        problems.append(f"{path}: categories contain duplicates")
    cardinality = spec.get("cardinality")
    if cardinality is not None and cardinality != len(categories):
        problems.append(
            f"{path}: cardinality {cardinality!r} does not match the {len(categories)} categories"
        )


def _check_column(name: str, spec: object, problems: list[str]) -> None:
    path = f"columns.{name}"
    if not IDENTIFIER.match(name):
        problems.append(f"{path}: column names must be identifiers ([A-Za-z_][A-Za-z0-9_]*)")
    elif name.upper() in RESERVED_WORDS:
        problems.append(
            f"{path}: {name!r} is a keyword of the SQL grammar, so the column could not be"
            f" queried; rename it (e.g. {name.lower()}_value or study_{name.lower()}); the"
            " reserved words are listed in docs/metadata.md"
        )
    if not isinstance(spec, dict):
        problems.append(f"{path}: must be a mapping")
        return
    kind = spec.get("type")
    if kind not in COLUMN_TYPES:
        problems.append(
            f"{path}: unknown type {kind!r} (expected one of {', '.join(COLUMN_TYPES)})"
        )
        return
    unknown = set(spec) - _COMMON_KEYS - _TYPE_KEYS[kind]
    if unknown:
        problems.append(f"{path}: unknown keys for a {kind} column: {', '.join(sorted(unknown))}")
    for flag in ("nullable", "private_id"):
        if flag in spec and not isinstance(spec[flag], bool):
            problems.append(f"{path}: {flag} must be true or false")
    if "precision" in spec and spec["precision"] not in (32, 64):
        problems.append(f"{path}: precision must be 32 or 64")
    if kind == "int":
        if "categories" in spec:
            _check_categories(path, spec, kind, problems)
            if "lower" in spec or "upper" in spec:
                problems.append(f"{path}: give either bounds or categories, not both")
        else:
            _check_bounds(path, spec, kind, problems)
    elif kind in ("float", "datetime"):
        _check_bounds(path, spec, kind, problems)
    elif kind == "string" and ("categories" in spec or "cardinality" in spec):
        _check_categories(path, spec, kind, problems)


def validate(raw: object) -> dict[str, Any]:
    """Validate metadata and return a normalised copy (defaults filled in).

    Raises :class:`MetadataError` listing every problem found.
    """
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise MetadataError(["metadata must be a mapping"])
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        problems.append(f"unknown top-level keys: {', '.join(sorted(unknown))}")
    for key in ("max_ids", "rows"):
        value = raw.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"{key}: must be a positive integer (got {value!r})")
    for key in ("row_privacy", "censor_dims"):
        if key in raw and not isinstance(raw[key], bool):
            problems.append(f"{key}: must be true or false")
    if "executor" in raw and raw["executor"] not in EXECUTORS:
        problems.append(
            f"executor: must be one of {', '.join(EXECUTORS)} (got {raw['executor']!r})"
        )
    columns = raw.get("columns")
    if not isinstance(columns, dict) or not columns:
        problems.append("columns: must be a non-empty mapping of column name to spec")
        raise MetadataError(problems)
    for name, spec in columns.items():
        _check_column(str(name), spec, problems)
    private_ids = [n for n, s in columns.items() if isinstance(s, dict) and s.get("private_id")]
    if raw.get("row_privacy") and private_ids:
        problems.append("row_privacy: cannot be true when a column is a private_id")
    if not raw.get("row_privacy") and not private_ids:
        problems.append("row_privacy: must be true when no column is a private_id")
    if len(private_ids) > 1:
        problems.append("columns: at most one private_id column")
    if problems:
        raise MetadataError(problems)
    normalised: dict[str, Any] = {
        "max_ids": raw["max_ids"],
        "rows": raw["rows"],
        "row_privacy": bool(raw.get("row_privacy", False)),
        "censor_dims": bool(raw.get("censor_dims", False)),
        "columns": {},
    }
    if raw.get("description"):
        normalised["description"] = str(raw["description"])
    if raw.get("executor") == "spark":  # absent otherwise: existing digests do not change
        normalised["executor"] = "spark"
    for name, spec in columns.items():
        column = dict(spec)
        column.setdefault("nullable", False)
        column.setdefault("private_id", False)
        if column["type"] in ("int", "float"):
            column.setdefault("precision", 64)
        if "categories" in column:
            column["cardinality"] = len(column["categories"])
        if column["type"] == "datetime":
            column["lower"] = str(column["lower"])
            column["upper"] = str(column["upper"])
        normalised["columns"][name] = column
    return normalised


def column_bounds(spec: dict[str, Any]) -> tuple[Any, Any] | None:
    """(lower, upper) of a numeric column, from its bounds or its integer categories."""
    if "lower" in spec and "upper" in spec:
        return spec["lower"], spec["upper"]
    if spec["type"] == "int" and "categories" in spec:
        return min(spec["categories"]), max(spec["categories"])
    return None


def to_smartnoise(metadata: dict[str, Any], table_names: list[str]) -> dict[str, Any]:
    """SmartNoise SQL's metadata dict, one identical table per name in ``table_names``."""
    table: dict[str, Any] = {
        "rows": metadata["rows"],
        "max_ids": metadata["max_ids"],
        "row_privacy": metadata["row_privacy"],
        "censor_dims": metadata["censor_dims"],
    }
    for name, spec in metadata["columns"].items():
        column: dict[str, Any] = {"type": spec["type"], "nullable": spec["nullable"]}
        if spec["private_id"]:
            column["private_id"] = True
        bounds = column_bounds(spec)
        if bounds is not None and spec["type"] in ("int", "float"):
            column["lower"], column["upper"] = bounds
        table[name] = column
    return {"": {"": {name: dict(table) for name in table_names}}}
