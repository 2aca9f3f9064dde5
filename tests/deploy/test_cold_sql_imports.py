"""A cold SQL worker imports SQLAlchemy only when the SQLite path needs it (issue 14).

Runs Python in a child process (the unit tier starts no process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys
import pandas as pd, yaml
from chalicelib import metadata as M
from chalicelib.datasets import LoadedDataset, coerce_types
from chalicelib.engines import duckdb_sql, smartnoise_engine as sn
from chalicelib.models import Dataset, utcnow

seen = {"after_import": "sqlalchemy" in sys.modules}
meta = M.validate(yaml.safe_load(open("localstack/data/penguin.yaml").read()))
frame = coerce_types(pd.read_csv("localstack/data/penguins.csv"), meta)
dataset = Dataset("PENGUIN", "unused", meta, utcnow())
loaded = LoadedDataset("PENGUIN", "v1", meta, frame)
body = {"query": "SELECT sex, COUNT(*) AS n FROM df GROUP BY sex", "epsilon": "1", "delta": "1e-5"}
duck = sn.SmartnoiseSqlEngine(executor="duckdb")
request = duck.parse(body)
duck.cost(dataset, request)
seen["duckdb_rows"] = len(duck.execute(loaded, request)["records"])
seen["after_duckdb"] = "sqlalchemy" in sys.modules
lite = sn.SmartnoiseSqlEngine(executor="sqlite")
request = lite.parse(body)
lite.cost(dataset, request)
seen["sqlite_rows"] = len(lite.execute(loaded, request)["records"])
import sqlalchemy
seen["real"] = sqlalchemy.__file__ is not None and hasattr(sqlalchemy, "MetaData")
print(json.dumps(seen))
"""


def test_a_duckdb_query_runs_without_sqlalchemy_and_the_sqlite_path_still_gets_the_real_one() -> (
    None
):
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "after_import": False,
        "duckdb_rows": 3,
        "after_duckdb": False,
        "sqlite_rows": 3,
        "real": True,
    }
