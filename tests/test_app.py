"""The API module: its OpenAPI document, and an authorizer free of heavy imports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from openapi_spec_validator import validate

ROOT = Path(__file__).resolve().parent.parent


def test_openapi_document_is_valid_and_covers_every_route() -> None:
    import app

    doc = app.openapi().body
    validate(doc)
    documented = {
        (path, method.upper())
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }
    routed = {(path, method) for path, methods in app.app.routes.items() for method in methods}
    assert routed == documented
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert "200" in operation["responses"], (path, method)
            if path.startswith("/v1/datasets"):
                assert operation["security"] == [{"bearerToken": []}]
                assert {"401", "403", "404", "500"} <= set(operation["responses"])
            if method == "post":
                assert operation["requestBody"]["required"] is True


def test_error_codes_in_the_code_are_documented() -> None:
    from chalicelib import errors

    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.NeblinaError)
    } - {"conflict"}  # the abstract base of the 409s
    api_doc = (ROOT / "docs/api.md").read_text()
    missing = sorted(code for code in codes if f"`{code}`" not in api_doc)
    assert missing == []


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


def test_no_pickle_eval_or_unsafe_yaml_in_server_or_client() -> None:
    pattern = re.compile(r"\b(pickle|cloudpickle|dill|marshal)\b|\beval\(|\bexec\(|yaml\.load\(")
    offenders = []
    for base in ("chalicelib", "client/neblina_client"):
        for path in (ROOT / base).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line) and "safe_load" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
