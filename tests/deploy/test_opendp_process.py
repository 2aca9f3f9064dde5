"""Process-wide properties, each checked in a fresh interpreter.

- Cold start: a SQL request never imports the OpenDP engine, and an OpenDP request never
  imports SmartNoise (nor SQLAlchemy, nor ``opendp.prelude`` and its extras).
- Features: the engine alone enables ``contrib`` only; SmartNoise turns ``floating-point`` on
  process-wide when it runs a query; the OpenDP engine prices and runs the same pipelines
  to the same costs either way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_child(code: str) -> Any:
    """Run ``code`` in a fresh interpreter (repo and tests on its path); its last JSON line."""
    prelude = f"import sys\nsys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests' / 'support')!r}]\n"
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


IMPORT_PATH = """
import json
import app, chalicelib.service
from chalicelib.engines import get_engine
get_engine({engine!r})
watched = ["snsql", "sqlalchemy", "antlr4", "opendp.prelude", "polars", "sklearn",
           "chalicelib.engines.smartnoise_engine", "chalicelib.engines.opendp_engine",
           "chalicelib.engines.polars_engine"]
print(json.dumps([m for m in watched if m in sys.modules]))
"""


def test_a_sql_request_does_not_import_the_opendp_engine() -> None:
    imported = run_child(IMPORT_PATH.format(engine="smartnoise_sql"))
    assert "chalicelib.engines.smartnoise_engine" in imported  # the path was really taken
    assert "chalicelib.engines.opendp_engine" not in imported


def test_an_opendp_request_imports_no_sql_machinery() -> None:
    imported = run_child(IMPORT_PATH.format(engine="opendp"))
    assert imported == ["chalicelib.engines.opendp_engine"]


def test_an_opendp_polars_request_imports_polars_and_no_other_engine() -> None:
    imported = run_child(IMPORT_PATH.format(engine="opendp_polars"))
    assert "chalicelib.engines.polars_engine" in imported and "polars" in imported
    assert not {"snsql", "sqlalchemy", "chalicelib.engines.smartnoise_engine"} & set(imported)
    assert "chalicelib.engines.opendp_engine" not in imported


PRICE_AND_RUN = """
import json
from opendp.mod import GLOBAL_FEATURES
from chalicelib.engines import get_engine
if {after_sql!r}:
    from opendp_pipelines import loaded as sql_frame
    sql = get_engine("smartnoise_sql")
    for mechanism in ("laplace", "gaussian"):  # the Gaussian also sets the default int type
        request = sql.parse({{"engine": "smartnoise_sql", "query": "SELECT COUNT(*) AS n FROM df",
                              "epsilon": 1.0, "delta": 1e-5, "mechanisms": {{"count": mechanism}}}})
        sql.execute(sql_frame(), request)
engine = get_engine("opendp")
features = sorted(GLOBAL_FEATURES)
import opendp_pipelines as p
costs, releases = {{}}, {{}}
cases = {{
    "count": (p.laplace_count(), None),
    "sum": (p.laplace_sum(), None),
    "mean": (p.laplace_mean(), None),
    "gaussian": (p.gaussian_count(), 1e-6),
}}
for name, (measurement, fixed_delta) in cases.items():
    request = engine.parse(p.body(measurement, fixed_delta=fixed_delta))
    costs[name] = engine.cost(p.DATASET, request).to_json()
    releases[name] = type(engine.execute(p.loaded(), request)["value"]).__name__
print(json.dumps({{"features": features, "costs": costs, "releases": releases}}))
"""


@pytest.fixture(scope="module")
def fresh() -> Any:
    return run_child(PRICE_AND_RUN.format(after_sql=False))


@pytest.fixture(scope="module")
def after_sql() -> Any:
    return run_child(PRICE_AND_RUN.format(after_sql=True))


def test_alone_the_engine_enables_contrib_only(fresh: Any) -> None:
    assert fresh["features"] == ["contrib"]


def test_smartnoise_turns_floating_point_on(after_sql: Any) -> None:
    assert {"contrib", "floating-point"} <= set(after_sql["features"])
    assert "honest-but-curious" not in after_sql["features"]


def test_the_opendp_engine_is_the_same_with_floating_point_on_or_off(
    fresh: Any, after_sql: Any
) -> None:
    assert fresh["costs"] == after_sql["costs"]
    kinds = {"count": "int", "sum": "float", "mean": "float", "gaussian": "int"}
    assert fresh["releases"] == after_sql["releases"] == kinds
    assert fresh["costs"]["gaussian"]["delta"] == "0.000001"
