"""The SmartNoise SQL engine: exact costs from metadata only, errors classified, real noise."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
import snsql
import yaml
from snsql import Privacy
from snsql.sql._mechanisms.gaussian import Gaussian
from snsql.sql._mechanisms.laplace import Laplace

from chalicelib import metadata as M
from chalicelib.datasets import LoadedDataset, coerce_types
from chalicelib.engines import COMMON_FIELDS
from chalicelib.engines import smartnoise_engine as sn
from chalicelib.errors import EngineRefused, InvalidQuery, InvalidRequest
from chalicelib.models import Dataset, utcnow

ROOT = Path(__file__).resolve().parents[2]
META = M.validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))
DATASET = Dataset("PENGUIN", "unused", META, utcnow())
FRAME = coerce_types(pd.read_csv(ROOT / "localstack/data/penguins.csv"), META)
ENGINE = sn.ENGINE


def request(
    query: str, epsilon: float = 1.0, delta: float = 1e-5, **extra: object
) -> sn.SqlRequest:
    return ENGINE.parse(
        {"engine": "smartnoise_sql", "query": query, "epsilon": epsilon, "delta": delta, **extra}
    )


def loaded() -> LoadedDataset:
    return LoadedDataset("PENGUIN", "v1", META, FRAME)


QUERIES = [
    "SELECT COUNT(*) AS n FROM df",
    "SELECT species, COUNT(*) AS n, AVG(bill_length_mm) AS b FROM PENGUIN GROUP BY species",
    "SELECT island, SUM(body_mass_g) AS m FROM df GROUP BY island",
    "SELECT AVG(study_year) AS y FROM df WHERE sex = 'female'",
]


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("mechanisms", [{}, {"count": "gaussian", "sum_int": "gaussian"}])
def test_cost_is_basic_composition_of_what_smartnoise_runs_on_the_real_frame(
    query: str, mechanisms: dict
) -> None:
    """ε = k × 0.7 and δ = the sum of the mechanisms' δ, for the k mechanisms SmartNoise runs.

    Never below SmartNoise's own odometer in ε; in δ it lacks only the odometer's slack for
    advanced composition, which basic composition does not need (docs/ledger.md).
    """
    req = request(query, "0.7", "0.000001", mechanisms=mechanisms)
    ours = ENGINE.cost(DATASET, req)
    reference = snsql.from_df(FRAME, privacy=req.privacy(), metadata=M.to_smartnoise(META, ["df"]))
    sql = query.replace("FROM PENGUIN", "FROM df")
    used = [cost for cost in reference._get_mechanism_costs(sql) if cost]
    assert ours.epsilon == len(used) * Decimal("0.7")
    assert ours.delta == sum(Decimal("0.000001") for _, delta in used if delta)
    epsilon, delta = reference.get_privacy_cost(sql)
    assert ours.epsilon >= Decimal(float(epsilon))
    assert ours.delta >= Decimal(float(delta)) - Decimal("0.0000005")  # the slack δ/2 only


def test_cost_never_executes_sql() -> None:
    reader = sn.MetadataOnlyReader(sn.metadata_for("PENGUIN", META))
    with pytest.raises(RuntimeError):
        reader.execute("SELECT 1")
    # pricing goes through that reader, so it would have raised had it run anything
    assert ENGINE.cost(DATASET, request(QUERIES[1])).epsilon == Decimal(3)


def test_df_and_the_dataset_name_are_the_same_table() -> None:
    by_df = ENGINE.cost(DATASET, request("SELECT COUNT(*) AS n FROM df"))
    by_name = ENGINE.cost(DATASET, request("SELECT COUNT(*) AS n FROM PENGUIN"))
    assert by_df == by_name
    result = ENGINE.execute(loaded(), request("SELECT COUNT(*) AS n FROM PENGUIN"))
    assert result["columns"] == ["n"]


@pytest.mark.parametrize(
    ("query", "error", "mechanisms"),
    [
        ("SELECT FROM df", InvalidQuery, {}),
        ("SELECT COUNT(wingspan) FROM df", InvalidQuery, {}),
        ("SELECT COUNT(*) FROM other_table", InvalidQuery, {}),
        ("SELECT COUNT(*) FROM (SELECT * FROM df) AS t", InvalidQuery, {}),
        ("SELECT * FROM df", InvalidQuery, {}),
        ("SELECT COUNT(*) FROM df; DROP TABLE df", InvalidQuery, {}),
        ("SELECT MAX(body_mass_g) AS m FROM df", InvalidQuery, {}),
        ("SELECT MEDIAN(body_mass_g) AS m FROM df", InvalidQuery, {}),
        (
            "SELECT COUNT(*) AS n FROM df WHERE SUBSTRING(island FROM 1 FOR 2) = 'Bi'",
            InvalidQuery,
            {},
        ),
        ("SELECT PI() AS k, COUNT(*) AS n FROM df GROUP BY PI()", InvalidQuery, {}),
        ("SELECT VAR(body_mass_g) FROM df", EngineRefused, {}),
        ("SELECT SUM(body_mass_g) FROM df", EngineRefused, {"sum_float": "gaussian"}),
    ],
)
def test_queries_rejected_from_metadata_alone(query: str, error: type, mechanisms: dict) -> None:
    with pytest.raises(error) as raised:
        ENGINE.cost(DATASET, request(query, mechanisms=mechanisms))
    assert type(raised.value) is error


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"query": ""}, "query must be a non-empty SQL string"),
        ({"query": 5}, "query must be a non-empty SQL string"),
        ({"query": "x" * 10_001}, "longer than"),
        ({"mechanisms": {"median": "laplace"}}, "unknown stat 'median'"),
        ({"mechanisms": {"count": "exponential"}}, "unknown mechanism 'exponential'"),
        ({"mechanisms": ["count"]}, "mechanisms must be an object"),
        ({"postprocess": "yes"}, "postprocess must be true or false"),
        ({"epsilon": 0}, "epsilon must be a finite number > 0"),
        ({"epsilon": -1}, "epsilon must be a finite number > 0"),
        ({"epsilon": float("nan")}, "epsilon must be a finite number > 0"),
        ({"epsilon": "inf"}, "epsilon must be a finite number > 0"),
        ({"delta": 1}, "delta must be a number in [0, 1)"),
        ({"delta": -0.1}, "delta must be a number in [0, 1)"),
        ({"surprise": 1}, "unknown fields: surprise"),
    ],
)
def test_bad_fields_are_400(body: dict, message: str) -> None:
    full = {
        "engine": "smartnoise_sql",
        "query": "SELECT COUNT(*) FROM df",
        "epsilon": 1,
        "delta": 0,
        **body,
    }
    with pytest.raises(InvalidRequest) as raised:
        ENGINE.parse(full)
    assert message in raised.value.message


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (sn.MemoLaplace, {"epsilon": 0.37, "lower": 0.0, "upper": 1.0, "max_contrib": 1}),
        (sn.MemoLaplace, {"epsilon": 2.0, "lower": 30.0, "upper": 65.0, "max_contrib": 3}),
        (
            sn.MemoGaussian,
            {"epsilon": 0.5, "delta": 1e-6, "lower": 0, "upper": 100, "max_contrib": 1},
        ),
    ],
)
def test_memoised_noise_scale_equals_smartnoise_search(cls: type, kwargs: dict) -> None:
    original = {sn.MemoLaplace: Laplace, sn.MemoGaussian: Gaussian}[cls]
    first, second = cls(**kwargs), cls(**kwargs)
    assert first.scale == second.scale == original(**kwargs).scale


def test_raw_output_without_postprocessing() -> None:
    result = ENGINE.execute(
        loaded(),
        request("SELECT species, COUNT(*) AS n FROM df GROUP BY species", postprocess=False),
    )
    assert result["columns"][0] == "res_0"
    assert len(result["records"]) == 3


def test_count_noise_is_real_and_within_the_bound_of_its_scale() -> None:
    """COUNT(*) at epsilon=1 on 344 rows, released 100 times.

    SmartNoise's count mechanism adds Laplace-shaped noise of scale b (found by its search;
    b = 1 for sensitivity 1 and epsilon = 1). P(|noise| > t) = exp(-t / b), so over 100
    releases P(any |noise| > b ln(1e11)) <= 100 * 1e-11 = 1e-9: the bound below fails
    wrongly with probability below 1e-9. A release with no noise at all would show
    |noise| = 0 in all 100 draws, which real noise does with probability < 0.5^100.
    """
    req = request("SELECT COUNT(*) AS n FROM df", epsilon=1.0, delta=0.0)
    scale = sn.MemoLaplace(epsilon=1.0, lower=0, upper=1, max_contrib=1).scale
    bound = scale * math.log(1e11)
    errors = [ENGINE.execute(loaded(), req)["records"][0]["n"] - 344 for _ in range(100)]
    assert max(abs(e) for e in errors) <= bound
    assert any(e != 0 for e in errors)


def test_reader_is_built_once_per_loaded_dataset() -> None:
    data = loaded()
    ENGINE.execute(data, request("SELECT COUNT(*) AS n FROM df"))
    reader = data._derived[sn.NAME]
    ENGINE.execute(data, request("SELECT AVG(bill_depth_mm) AS d FROM df"))
    assert data._derived[sn.NAME] is reader


def test_privacy_object_carries_the_requested_parameters() -> None:
    privacy = request(
        "SELECT COUNT(*) FROM df", 0.25, 1e-7, mechanisms={"count": "gaussian"}
    ).privacy()
    assert isinstance(privacy, Privacy)
    assert (privacy.epsilon, privacy.delta) == (0.25, 1e-7)
    assert privacy.mechanisms.map[sn.STATS["count"]].name == "gaussian"


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE df",
        "DELETE FROM df",
        "INSERT INTO df (study_year) VALUES (1999)",
        "UPDATE df SET body_mass_g = 0",
        "CREATE TABLE leak (x)",
        "ATTACH DATABASE ':memory:' AS other",
        "PRAGMA writable_schema = 1",
    ],
)
def test_the_private_copy_refuses_everything_but_reads(statement: str) -> None:
    """The second wall behind SmartNoise's parser: SQL that got past it could only read."""
    from sqlalchemy import text
    from sqlalchemy.exc import DatabaseError

    data = loaded()
    ENGINE.execute(data, request("SELECT COUNT(*) AS n FROM df"))
    engine = data._derived[sn.NAME].sqlite().db_engine  # the SQLite copy
    with pytest.raises(DatabaseError, match="not authorized"), engine.begin() as conn:
        conn.execute(text(statement))
    with engine.connect() as conn:  # still whole, still readable under both names
        assert conn.execute(text('SELECT COUNT(*) FROM "PENGUIN"')).scalar() == len(FRAME)


def test_without_censor_dims_every_public_key_is_answered_whatever_the_data() -> None:
    """The keys released are the metadata's domain, not the keys found in the rows.

    SmartNoise alone answers only the 5 species x island pairs present among the penguins;
    Neblina answers all 9, with noise on the empty ones, and the same 9 under any WHERE,
    so no predicate reveals which keys occur (docs/threat-model.md).
    """
    domain = {
        (s, i)
        for s in ("Adelie", "Chinstrap", "Gentoo")
        for i in META["columns"]["island"]["categories"]
    }
    assert len(set(FRAME.groupby(["species", "island"]).size().index)) == 5 < len(domain) == 9
    for where in ("", "WHERE body_mass_g > 6000", "WHERE bill_length_mm < 0"):
        query = f"SELECT species, island, COUNT(*) AS n FROM df {where} GROUP BY species, island"  # noqa: S608
        released = ENGINE.execute(loaded(), request(query))["records"]
        assert [(r["species"], r["island"]) for r in released] == sorted(domain)
    keys_only = "SELECT sex, island FROM df WHERE body_mass_g > 6000 GROUP BY sex, island"
    assert ENGINE.cost(DATASET, request(keys_only)).epsilon == 0  # free: it must say nothing
    released = ENGINE.execute(loaded(), request(keys_only))["records"]
    assert len(released) == 3 * 3  # female, male, missing (sex is nullable) x 3 islands
    raw = ENGINE.execute(
        loaded(), request(keys_only.replace("sex, island", "island"), postprocess=False)
    )
    assert len(raw["records"]) == 3  # the raw sub-aggregates too


def test_the_public_domain_of_a_group_by_is_bounded_before_anything_is_read() -> None:
    synthetic = M.validate(yaml.safe_load((ROOT / "localstack/data/synthetic.yaml").read_text()))
    dataset = Dataset("SYNTHETIC", "unused", synthetic, utcnow())
    fine = "SELECT age, hours, sex, COUNT(*) AS n FROM df GROUP BY age, hours, sex"  # 11,826
    assert ENGINE.cost(dataset, request(fine)).epsilon == 1
    too_many = "SELECT age, hours, region, COUNT(*) AS n FROM df GROUP BY age, hours, region"
    with pytest.raises(InvalidQuery, match="118,260 possible keys"):
        ENGINE.cost(dataset, request(too_many))


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        ("SELECT species, island, COUNT(*) AS n FROM df GROUP BY species, island", None),
        ("SELECT study_year, COUNT(*) AS n FROM df GROUP BY study_year", None),  # bounded int
        ("SELECT body_mass_g, COUNT(*) AS n FROM df GROUP BY body_mass_g", "body_mass_g"),
        ("SELECT COUNT(*) AS n FROM PENGUIN GROUP BY body_mass_g * 2", "plain columns"),
        ("SELECT note, COUNT(*) AS n FROM df GROUP BY note", "note"),  # free text
    ],
)
def test_without_censor_dims_only_public_keys_may_be_grouped(query: str, refused: str) -> None:
    """Grouping by a float, free text or an id would publish every value found in the data."""
    raw = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
    columns = {
        **raw["columns"],
        "note": {"type": "string"},
        "who": {"type": "int", "lower": 0, "upper": 10_000, "private_id": True},
    }
    grouped_by_id = "SELECT who, COUNT(*) AS n FROM df GROUP BY who"
    for censor in (False, True):
        meta = M.validate({**raw, "row_privacy": False, "columns": columns, "censor_dims": censor})
        dataset = Dataset("PENGUIN", "unused", meta, utcnow())
        if refused is None or censor:  # censored keys are SmartNoise's to protect
            assert ENGINE.cost(dataset, request(query)).epsilon > 0
        else:
            with pytest.raises(InvalidQuery, match=refused):
                ENGINE.cost(dataset, request(query))
        with pytest.raises((InvalidQuery, EngineRefused), match="who"):  # never the private id
            ENGINE.cost(dataset, request(grouped_by_id))


def test_boolean_and_int_keys_are_completed_too() -> None:
    """Only adults and only 2008 in the rows: both booleans and all three years come out."""
    frame = FRAME[FRAME["study_year"] == 2008].assign(adult=True)
    raw = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
    meta = M.validate({**raw, "columns": {**raw["columns"], "adult": {"type": "boolean"}}})
    data = LoadedDataset("PENGUIN", "v-bool", meta, frame)
    query = "SELECT adult, study_year, COUNT(*) AS n FROM df GROUP BY adult, study_year"
    table = ENGINE.execute(data, request(query))
    assert [(r["adult"], r["study_year"]) for r in table["records"]] == [
        (adult, year) for adult in (False, True) for year in (2007, 2008, 2009)
    ]
    assert table["dtypes"]["adult"] == "bool"


def test_a_sum_over_the_grouped_column_is_clamped_like_any_other() -> None:
    """censor_dims true: SmartNoise does not clamp a column it groups by, the loader does.

    1,000 penguins at 40 mm and 50 at 1e6 mm (declared upper bound: 65). Unclamped, the
    second group's SUM would come out near 5e7 (and its key would say 1e6) against Laplace
    noise of scale b (about 65 at epsilon 1); clamped, its key is 65 and its sum 50 x 65.
    P(|noise| > b ln(1e7)) = 1e-7 per release, so a wrong failure of the bound on either
    group has probability below 1e-6; the 1e6 group is kept by the threshold unless its
    noisy count of 50 falls under about 13, which has probability below 1e-15.
    """
    raw = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
    meta = M.validate({**raw, "censor_dims": True})
    rows = pd.read_csv(ROOT / "localstack/data/penguins.csv").head(1)
    frame = pd.concat([rows] * 1050, ignore_index=True)
    frame["bill_length_mm"] = [40.0] * 1000 + [1e6] * 50
    data = LoadedDataset("PENGUIN", "v-sum", meta, coerce_types(frame, meta))
    query = "SELECT bill_length_mm, SUM(bill_length_mm) AS s FROM df GROUP BY bill_length_mm"
    scale = sn.MemoLaplace(epsilon=1.0, lower=30.0, upper=65.0, max_contrib=1).scale
    assert 60 < scale < 70
    released = ENGINE.execute(data, request(query))["records"]
    sums = {r["bill_length_mm"]: r["s"] for r in released}
    assert set(sums) == {40.0, 65.0}
    assert abs(sums[65.0] - 50 * 65) <= scale * math.log(1e7)
    assert abs(sums[40.0] - 1000 * 40) <= scale * math.log(1e7)


def test_ids_outside_their_declared_range_stay_distinct_persons() -> None:
    """100 persons with one row each, ids 5000..5099, declared 0..10, max_ids 1.

    Clamped to 10, they would be one pseudo-person of whom SmartNoise keeps one row: a
    COUNT(*) near 1. Kept apart, the count is 100 plus Laplace noise of scale 1 at
    epsilon 1: |noise| > ln(1e7) has probability 1e-7, and 100 - ln(1e7) > 80.
    """
    raw = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
    columns = {
        **raw["columns"],
        "who": {"type": "int", "lower": 0, "upper": 10, "private_id": True},
    }
    meta = M.validate({**raw, "row_privacy": False, "columns": columns})
    frame = pd.read_csv(ROOT / "localstack/data/penguins.csv").head(100)
    frame["who"] = range(5000, 5100)
    data = LoadedDataset("PENGUIN", "v-ids", meta, coerce_types(frame, meta))
    count = ENGINE.execute(data, request("SELECT COUNT(*) AS n FROM df", delta=0.0))
    assert count["records"][0]["n"] > 80


KEY_COLUMNS = {  # one column per kind of public key, with the dtype its keys must come out in
    "heavy": ({"type": "boolean"}, "bool"),
    "maybe": ({"type": "boolean", "nullable": True}, "boolean"),
    "study_year": ({"type": "int", "lower": 2007, "upper": 2009}, "int64"),
    "age": ({"type": "int", "lower": 1, "upper": 3, "nullable": True}, "Int64"),
    "code": ({"type": "int", "categories": [3, 5, 7]}, "int64"),
    "grade": ({"type": "int", "categories": [3, 5, 7], "nullable": True}, "Int64"),
    "species": ({"type": "string", "categories": ["Adelie", "Chinstrap", "Gentoo"]}, "object"),
    "sex": ({"type": "string", "categories": ["female", "male"], "nullable": True}, "object"),
}


@pytest.mark.parametrize("censor_dims", [False, True])
@pytest.mark.parametrize("postprocess", [False, True])
@pytest.mark.parametrize("column", list(KEY_COLUMNS))
def test_completed_keys_are_the_same_json_on_neighbouring_datasets(
    column: str, postprocess: bool, censor_dims: bool
) -> None:
    """With and without the one penguin whose bill is 59.6 mm, the keys come out identical.

    Each key column cycles through its declared domain (null included), about 86 rows per
    key. With ``censor_dims`` false the query keeps only that penguin: without it every key
    is completed, with it one key is found in the rows. With ``censor_dims`` true it keeps
    every row: each key is found far above SmartNoise's threshold (about 12.5 at ε = 1,
    δ = 1e-5 against 86 rows and noise of scale 1: a key is censored with probability
    below 1e-30). Found and completed keys must be the same values of the declared domain,
    with the declared type and dtype, post-processed or not: a found boolean key came back
    from SQLite as 1, a completed one as false (the representation told which key exists);
    a nullable int key came back as 3.0. Only the noisy numbers differ.
    """
    raw = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
    specs = {name: spec for name, (spec, _) in KEY_COLUMNS.items()}
    meta = M.validate({**raw, "censor_dims": censor_dims, "columns": {**raw["columns"], **specs}})
    rows = pd.read_csv(ROOT / "localstack/data/penguins.csv")
    for name in KEY_COLUMNS:
        domain = sn.key_domain(meta["columns"][name])
        rows[name] = pd.Series([domain[i % len(domain)] for i in range(len(rows))], dtype=object)
    one = rows["bill_length_mm"] == 59.6
    assert one.sum() == 1
    where = "" if censor_dims else " WHERE bill_length_mm = 59.6"
    query = f"SELECT {column}, COUNT(*) AS n FROM df{where} GROUP BY {column}"  # noqa: S608
    # the raw rows are SmartNoise's sub-aggregates: its key count comes first when it censors
    key = column if postprocess else ("res_1" if censor_dims else "res_0")
    keys = []
    for frame in (rows, rows[~one]):
        data = LoadedDataset("PENGUIN", "v-keys", meta, coerce_types(frame, meta))
        table = ENGINE.execute(data, request(query, delta=1e-5, postprocess=postprocess))
        released = sorted((record[key] for record in table["records"]), key=json.dumps)
        keys.append(json.dumps([table["columns"], table["dtypes"][key], released]))
    assert keys[0] == keys[1]
    domain = sorted(sn.key_domain(meta["columns"][column]), key=json.dumps)
    _, dtype, released = json.loads(keys[0])
    assert [(type(k), k) for k in released] == [(type(k), k) for k in domain]  # as declared
    assert dtype == KEY_COLUMNS[column][1]


def test_the_openapi_models_describe_the_engines_fields_stats_and_mechanisms() -> None:
    from chalicelib import api_models

    assert set(api_models.SqlQueryRequest.model_fields) == sn.FIELDS | COMMON_FIELDS
    assert set(api_models.Mechanisms.model_fields) == set(sn.STATS)
    assert {m.value for m in api_models.Mechanism} == set(sn.MECHANISMS)


# -2^63 built from literals within the allowed ±2^53: SQLite's own abs() raised on it.
SMALLEST_INT64 = "-4503599627370496 * 2048"


def test_abs_of_the_smallest_integer_cannot_tell_whether_a_row_exists() -> None:
    """The error oracle of issue 9: 422 when the Gentoo with a 59.6 mm bill exists, 200 if not.

    Now both datasets release, and the literal -2^63 itself is refused before any read.
    """
    where = (
        "WHERE ABS(CASE WHEN species = 'Gentoo' AND bill_length_mm = 59.6"
        f" THEN {SMALLEST_INT64} ELSE 0 END) >= 0"
    )
    query = f"SELECT COUNT(*) AS n FROM df {where}"  # noqa: S608
    with_row = loaded()
    assert ((FRAME.species == "Gentoo") & (FRAME.bill_length_mm == 59.6)).sum() == 1
    without_row = LoadedDataset("PENGUIN", "v-without", META, FRAME[FRAME.bill_length_mm != 59.6])
    for data in (with_row, without_row):
        assert ENGINE.cost(DATASET, request(query)).epsilon == 1
        assert len(ENGINE.execute(data, request(query))["records"]) == 1
    literal = query.replace(SMALLEST_INT64, "-9223372036854775808")
    with pytest.raises(InvalidQuery, match="within"):
        ENGINE.cost(DATASET, request(literal))


def test_an_integer_sum_past_int64_gives_a_number_instead_of_failing() -> None:
    """SQLite's SUM raises "integer overflow"; with wide int bounds the exact sum replaces it.

    (SmartNoise refuses SUM over bounds this wide today, "Noise scale is too large", so the
    private copy's SUM is the second wall, checked here on SQLite itself.)
    """
    import sqlite3

    meta = M.validate(
        {
            "max_ids": 1,
            "rows": 2,
            "row_privacy": True,
            "columns": {"v": {"type": "int", "lower": 0, "upper": 2**62}},
        }
    )
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE df (v INTEGER)")
    connection.executemany("INSERT INTO df VALUES (?)", [(2**62,), (2**62,)])
    with pytest.raises(sqlite3.OperationalError, match="integer overflow"):
        connection.execute("SELECT SUM(v) FROM df").fetchone()
    sn.make_total(connection, sn.metadata_for("WIDE", meta))
    assert connection.execute("SELECT SUM(v) FROM df").fetchone()[0] == float(2**63)
    assert connection.execute("SELECT SUM(v) FROM df WHERE v < 0").fetchone()[0] is None


@pytest.mark.parametrize("function", sorted(sn._TOTAL_FUNCTIONS))
def test_every_function_of_the_private_copy_is_total(function: str) -> None:
    """No argument makes a function of the private copy raise: it answers NULL instead."""
    import sqlite3

    connection = sqlite3.connect(":memory:")
    sn.make_total(connection, sn.metadata_for("PENGUIN", META))
    arity = sn._TOTAL_FUNCTIONS[function][0]
    values = [
        "-9223372036854775808", "9223372036854775807", "0", "-1", "0.5", "1e308", "-1e308",
        "5e-324", "NULL", "''", "'abc'", "x'00'", "1e999", "-1e999",
    ]  # fmt: skip
    count = 1 if arity == -1 else arity
    for first in values:
        for second in values if count == 2 else ["0"]:
            args = ", ".join([first, second][:count])
            value = connection.execute(f"SELECT {function}({args})").fetchone()[0]
            assert value is None or isinstance(value, int | float | str)
            assert not isinstance(value, float) or math.isfinite(value)
