"""What a fresh interpreter imports: the front's cold start stays free of heavy libraries.

Each test runs Python in a child process (moved here from tests/unit/test_app.py and
tests/unit/test_opendp_client.py: the unit tier starts no process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serving_the_openapi_document_loads_neither_pydantic_nor_the_models() -> None:
    script = """
import json, sys
import app
body = app.openapi().body
assert body["info"]["version"] == app.VERSION and body["paths"], body
print(json.dumps(sorted(m for m in sys.modules
                        if m.split(".")[0] == "pydantic" or m == "chalicelib.api_models")))
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_authorizer_imports_no_pandas_and_no_dp_library() -> None:
    """Import app.py and run the authorizer in a fresh interpreter; list what got imported."""
    script = """
import json, sys
import app
class Request:
    token = "Bearer nbl_" + "a" * 43
    method_arn = "arn:aws:execute-api:us-east-1:1:api/stage/GET/v1/datasets"
try:
    app.token_authorizer(Request())
except Exception:
    pass  # no tables behind this endpoint: what matters is what got imported
heavy = sorted(m for m in sys.modules if m.split(".")[0] in
               {"pandas", "numpy", "snsql", "opendp", "sqlalchemy", "pyarrow", "polars"})
print(json.dumps(heavy))
"""
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_importing_the_client_does_not_import_opendp() -> None:
    code = "import sys, neblina_client; print('opendp' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


def test_the_front_with_its_workers_configured_builds_its_service_without_heavy_imports() -> None:
    """A fresh interpreter as the API Lambda: NEBLINA_WORKERS set, the service built by the
    composition root as the first GET /budget builds it; no pandas, no DP library (the unit
    tier serves the routes with those imports forbidden)."""
    script = """
import json, os, sys
os.environ["NEBLINA_WORKERS"] = json.dumps({"sql": {"function": "neblina-worker-sql"}})
import app
service = app.get_service()
assert type(service.workers).__name__ == "LambdaWorkers" and service.local is None
heavy = sorted(m for m in sys.modules if m.split(".")[0] in
               {"pandas", "numpy", "snsql", "opendp", "sqlalchemy", "pyarrow", "polars",
                "duckdb", "sklearn", "scipy"})
print(json.dumps(heavy))
"""
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
