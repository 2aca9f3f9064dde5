"""Metadata validation: every malformed input gets a clear message naming its path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from chalicelib import metadata as M

ROOT = Path(__file__).resolve().parents[2]
PENGUIN = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
SYNTHETIC = yaml.safe_load((ROOT / "localstack/data/synthetic.yaml").read_text())


def test_demo_metadata_is_valid_and_normalised() -> None:
    for raw in (PENGUIN, SYNTHETIC):
        result = M.validate(raw)
        assert set(result["columns"]) == set(raw["columns"])
        for spec in result["columns"].values():
            assert spec["nullable"] in (True, False)
            assert spec["private_id"] is False
            if "categories" in spec:
                assert spec["cardinality"] == len(spec["categories"])


def broken(path: list[str], value: object) -> dict:
    raw = copy.deepcopy(PENGUIN)
    target = raw
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ["columns", "study_year", "lower"],
            2010,
            "columns.study_year: lower (2010) is greater than upper",
        ),
        (
            ["columns", "study_year", "type"],
            "decimal",
            "columns.study_year: unknown type 'decimal'",
        ),
        (["columns", "bill_length_mm", "upper"], "high", "float bounds must be finite numbers"),
        (["columns", "bill_length_mm", "upper"], float("inf"), "float bounds must be finite"),
        (["columns", "study_year", "lower"], 2007.5, "int bounds must be integers"),
        (["columns", "study_year", "upper"], KeyError, "needs both lower and upper"),
        (["columns", "species", "cardinality"], 4, "cardinality 4 does not match the 3 categories"),
        (["columns", "species", "categories"], ["a", "a"], "categories contain duplicates"),
        (["columns", "species", "categories"], [], "categories must be a non-empty list"),
        (["columns", "species", "colour"], "red", "unknown keys for a string column: colour"),
        (["columns", "sex", "nullable"], "yes", "columns.sex: nullable must be true or false"),
        (["columns", "study_year", "precision"], 16, "precision must be 32 or 64"),
        (["max_ids"], 0, "max_ids: must be a positive integer"),
        (["rows"], -3, "rows: must be a positive integer"),
        (["rows"], KeyError, "rows: must be a positive integer"),
        (["row_privacy"], False, "row_privacy: must be true when no column is a private_id"),
        (["surprise"], 1, "unknown top-level keys: surprise"),
        (["columns"], {}, "columns: must be a non-empty mapping"),
    ],
)
def test_invalid_metadata_is_refused_with_its_path(
    path: list[str], value: object, expected: str
) -> None:
    with pytest.raises(M.MetadataError) as error:
        M.validate(broken(path, value))
    assert expected in error.value.message
    assert error.value.status_code == 400


def test_every_problem_is_listed_at_once() -> None:
    raw = broken(["columns", "study_year", "lower"], 2010)
    raw["max_ids"] = -1
    with pytest.raises(M.MetadataError) as error:
        M.validate(raw)
    assert len(error.value.problems) == 2


def test_private_id_and_row_privacy_exclude_each_other() -> None:
    raw = copy.deepcopy(PENGUIN)
    raw["columns"]["pid"] = {"type": "int", "lower": 0, "upper": 1000, "private_id": True}
    with pytest.raises(M.MetadataError, match="cannot be true when a column is a private_id"):
        M.validate(raw)
    raw["row_privacy"] = False
    assert M.validate(raw)["columns"]["pid"]["private_id"] is True


def test_column_names_must_be_identifiers() -> None:
    raw = copy.deepcopy(PENGUIN)
    raw["columns"]["bad name;"] = {"type": "boolean"}
    with pytest.raises(M.MetadataError, match="column names must be identifiers"):
        M.validate(raw)


def test_smartnoise_conversion_declares_every_table_alias() -> None:
    converted = M.to_smartnoise(M.validate(PENGUIN), ["df", "PENGUIN"])
    tables = converted[""][""]
    assert set(tables) == {"df", "PENGUIN"}
    assert tables["df"]["bill_length_mm"] == {
        "type": "float",
        "nullable": True,
        "lower": 30.0,
        "upper": 65.0,
    }
    assert tables["df"]["species"] == {"type": "string", "nullable": False}
    assert tables["df"]["rows"] == 344 and tables["df"]["max_ids"] == 1


def test_smartnoise_never_takes_its_float_partition_selection_path() -> None:
    """SmartNoise's DPSU samples textbook float Laplace noise (the construction Mironov broke).

    Neblina's metadata has no key that turns it on, and the tables built for SmartNoise say
    ``use_dpsu`` is off (docs/threat-model.md, "Floating-point attacks").
    """
    from snsql.metadata import Metadata

    with pytest.raises(M.MetadataError, match="unknown top-level keys: use_dpsu"):
        M.validate({**copy.deepcopy(PENGUIN), "use_dpsu": True})
    converted = M.to_smartnoise(M.validate(PENGUIN), ["df", "PENGUIN"])
    tables = Metadata.from_dict(converted).tables()
    assert len(tables) == 2 and all(table.use_dpsu is False for table in tables)


def _with_datetime(lower: object, upper: object) -> dict:
    raw = copy.deepcopy(PENGUIN)
    raw["columns"]["seen"] = {"type": "datetime", "lower": lower, "upper": upper}
    return raw


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("2020-01-01", "2020-06-01T00:00:00+01:00"),
        ("2020-01-01T00:00:00Z", "2020-06-01"),
        # what YAML makes of unquoted bounds: a date and an aware datetime
        *yaml.safe_load("[[2020-01-01, 2020-06-01T00:00:00+01:00]]"),
    ],
)
def test_datetime_bounds_with_and_without_an_offset_are_compared_in_utc(
    lower: object, upper: object
) -> None:
    """One bound with a UTC offset and one without was a TypeError (a 500), now compared."""
    column = M.validate(_with_datetime(lower, upper))["columns"]["seen"]
    assert (column["lower"], column["upper"]) == (str(lower), str(upper))


def test_datetime_bounds_are_ordered_as_the_loader_reads_them() -> None:
    """A naive bound is UTC, an aware one is converted: 01:00+01:00 is before 00:30 UTC."""
    with pytest.raises(M.MetadataError) as refused:
        M.validate(_with_datetime("2020-06-01T00:30:00", "2020-06-01T01:00:00+01:00"))
    assert refused.value.problems == [
        "columns.seen: lower (2020-06-01T00:30:00) is greater than upper"
        " (2020-06-01T01:00:00+01:00)"
    ]
    # and the loader clamps to the same instants
    import pandas as pd

    from chalicelib.datasets import coerce_types

    meta = M.validate(_with_datetime("2020-01-01", "2020-06-01T00:00:00+01:00"))
    frame = pd.read_csv(ROOT / "localstack/data/penguins.csv").assign(seen="2021-01-01")
    seen = coerce_types(frame, meta)["seen"]
    assert (seen == pd.Timestamp("2020-05-31T23:00:00")).all()


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("0001-01-01T00:00:00+01:00", "2020-01-01"),  # year 0 in UTC
        ("2020-01-01T00:00:00+00:00", "9999-12-31T23:59:59-01:00"),  # year 10000 in UTC
        ("2020-01-01", "soon"),
    ],
)
def test_datetime_bounds_outside_what_utc_can_hold_are_a_problem_not_a_500(
    lower: str, upper: str
) -> None:
    with pytest.raises(M.MetadataError) as refused:
        M.validate(_with_datetime(lower, upper))
    assert refused.value.problems == [
        "columns.seen: datetime bounds must be ISO 8601 dates or datetimes within years"
        f" 1-9999 in UTC (got {lower!r}, {upper!r})"
    ]
    assert refused.value.status_code == 400


@pytest.mark.parametrize("name", ["month", "Year", "COUNT", "date", "order"])
def test_keyword_column_names_are_refused_with_a_suggestion(name: str) -> None:
    """`GROUP BY month` is a grammar error in SmartNoise SQL: refuse the name at registration."""
    raw = copy.deepcopy(PENGUIN)
    raw["columns"][name] = {"type": "int", "lower": 1, "upper": 12}
    with pytest.raises(M.MetadataError) as refused:
        M.validate(raw)
    [problem] = refused.value.problems
    assert problem.startswith(f"columns.{name}: {name!r} is a keyword of the SQL grammar")
    assert f"{name.lower()}_value" in problem and "docs/metadata.md" in problem


def test_the_reserved_words_are_exactly_the_keywords_of_smartnoise_sql() -> None:
    """Checked against SmartNoise's own lexer: a word is reserved iff it does not lex as a name."""
    import re

    from antlr4 import InputStream
    from snsql.sql.parser.SqlSmallLexer import SqlSmallLexer

    def lexes_as_a_name(word: str) -> bool:
        reference = SqlSmallLexer(InputStream("plain_name")).getAllTokens()[0].type
        return [t.type for t in SqlSmallLexer(InputStream(word)).getAllTokens()] == [reference]

    words = {n for n in SqlSmallLexer.symbolicNames if re.fullmatch(r"[A-Z][A-Z0-9_]*", n)}
    words |= {n.strip("'") for n in SqlSmallLexer.literalNames if re.fullmatch(r"'\w+'", n)}
    keywords = {w for w in words if M.IDENTIFIER.match(w) and not lexes_as_a_name(w.lower())}
    assert keywords == M.RESERVED_WORDS
    assert lexes_as_a_name("study_year") and lexes_as_a_name("month_value")
    # and the words refused really cannot be grouped by, while their suggestion can
    from chalicelib.engines.smartnoise_engine import ENGINE
    from chalicelib.errors import InvalidQuery
    from chalicelib.models import Dataset, utcnow

    raw = copy.deepcopy(PENGUIN)
    raw["columns"]["month_value"] = {"type": "int", "lower": 1, "upper": 12}
    renamed = M.validate(raw)
    keyword = {**renamed, "columns": {**renamed["columns"]}}
    keyword["columns"]["month"] = keyword["columns"].pop("month_value")  # past validation
    body = {"engine": "smartnoise_sql", "epsilon": 1, "delta": 1e-5}
    query = "SELECT {c}, COUNT(*) AS n FROM df GROUP BY {c}"
    fine = Dataset("PENGUIN", "unused", renamed, utcnow())
    assert ENGINE.cost(fine, ENGINE.parse({**body, "query": query.format(c="month_value")}))
    unqueryable = Dataset("PENGUIN", "unused", keyword, utcnow())
    with pytest.raises(InvalidQuery, match="cannot be parsed"):
        ENGINE.cost(unqueryable, ENGINE.parse({**body, "query": query.format(c="month")}))


def test_the_executor_key_sends_a_dataset_to_spark_and_plan_shows_the_change() -> None:
    from neblina_admin import declarative

    plain = M.validate(PENGUIN)
    spark = M.validate({**PENGUIN, "executor": "spark"})
    assert "executor" not in plain  # existing datasets keep their metadata (and digest)
    assert spark == {**plain, "executor": "spark"}
    assert "executor" not in M.validate({**PENGUIN, "executor": "function"})
    with pytest.raises(M.MetadataError, match="executor: must be one of function, spark"):
        M.validate({**PENGUIN, "executor": "gpu"})
    # SmartNoise's metadata (hence the price) does not see it
    assert M.to_smartnoise(spark, ["df"]) == M.to_smartnoise(plain, ["df"])
    assert declarative._metadata_diff(plain, spark) == ["metadata.executor None -> 'spark'"]
