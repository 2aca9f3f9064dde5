"""The API module: its OpenAPI document, and an authorizer free of heavy imports."""

from __future__ import annotations

import re
from pathlib import Path

from openapi_spec_validator import validate

ROOT = Path(__file__).resolve().parents[2]


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
    from chalicelib.api_models import error_codes

    api_doc = (ROOT / "docs/api.md").read_text()
    codes = [code for found in error_codes().values() for code in found]
    missing = sorted(code for code in codes if f"`{code}`" not in api_doc)
    assert missing == []


def test_the_openapi_document_lists_every_error_code_under_its_status() -> None:
    import app
    from chalicelib import errors

    doc = app.openapi().body
    listed: dict[str, str] = {}
    for item in doc["paths"].values():
        for method, operation in item.items():
            if method != "parameters":
                for status, response in operation["responses"].items():
                    listed[status] = listed.get(status, "") + response["description"]
    classes = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.NeblinaError)
    ]
    missing = sorted(
        f"{cls.status_code} {cls.code}"
        for cls in classes
        if cls is not errors.Conflict
        and not issubclass(cls, errors.StorageError)
        and f"`{cls.code}`" not in listed.get(str(cls.status_code), "")
    )
    assert missing == [], (
        "add each status to the errors of the operations that answer it "
        "(chalicelib/api_models.py: OPERATIONS, WHEN), then regenerate the document"
    )


def test_the_committed_openapi_document_is_a_fresh_generation_from_the_models() -> None:
    from app import VERSION
    from chalicelib.api_models import render

    fresh = (ROOT / "chalicelib/openapi.json").read_text() == render(VERSION)
    assert fresh, "stale: run `.venv/bin/python -m chalicelib.api_models` and commit the file"


def _schemas_in(node: object) -> list[dict[str, object]]:
    """Every schema object below ``node`` (anything with a type, a $ref or a combinator)."""
    found: list[dict[str, object]] = []
    if isinstance(node, dict):
        if {"type", "$ref", "oneOf", "anyOf", "allOf"} & set(node):
            found.append(node)
        for value in node.values():
            found += _schemas_in(value)
    elif isinstance(node, list):
        for value in node:
            found += _schemas_in(value)
    return found


def test_every_array_has_items_and_every_body_is_a_named_component() -> None:
    import app

    doc = app.openapi().body
    arrays = [s for s in _schemas_in(doc) if s.get("type") == "array"]
    assert arrays and all("items" in s for s in arrays)
    bodies = []
    for item in doc["paths"].values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            bodies += [
                r["content"]["application/json"]["schema"]
                for r in operation["responses"].values()
                if "application/json" in r["content"]  # the console's assets are text
            ]
            if "requestBody" in operation:
                bodies.append(operation["requestBody"]["content"]["application/json"]["schema"])
    inline = [b for b in bodies if "$ref" not in b and b != {"type": "object"}]
    assert inline == []
    names = set(doc["components"]["schemas"])
    assert {
        "Cost",
        "Budget",
        "DatasetSummary",
        "Table",
        "QueryRecord",
        "Error",
        "Metadata",
    } <= names
    assert {"SqlQueryRequest", "OpenDPQueryRequest", "SqlCostRequest", "OpenDPCostRequest"} <= names


def test_no_pickle_eval_or_unsafe_yaml_in_server_or_client() -> None:
    pattern = re.compile(r"\b(pickle|cloudpickle|dill|marshal)\b|\beval\(|\bexec\(|yaml\.load\(")
    offenders = []
    for base in ("chalicelib", "client/neblina_client"):
        for path in (ROOT / base).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line) and "safe_load" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_documented_ranges_of_epsilon_and_delta_are_the_validations() -> None:
    import app
    from chalicelib import validation
    from chalicelib.errors import InvalidRequest

    schemas = app.openapi().body["components"]["schemas"]

    def number(schema: str, field: str) -> dict[str, float]:
        branches = schemas[schema]["properties"][field]["anyOf"]
        return next(b for b in branches if b["type"] == "number")

    epsilon, delta = number("SqlCostRequest", "epsilon"), number("SqlCostRequest", "delta")
    fixed_delta = number("OpenDPCostRequest", "fixed_delta")
    for low, high, check in [
        (epsilon["minimum"], epsilon["maximum"], validation.epsilon),
        (delta["minimum"], delta["exclusiveMaximum"], validation.delta),
    ]:
        check(low)
        check(high * (1 - 1e-9))
        for outside in (high * (1 + 1e-9), -1e-9):
            try:
                check(outside)
            except InvalidRequest:
                continue
            raise AssertionError(f"{check.__name__}({outside}) was accepted")
    assert epsilon["minimum"] > 0 and delta["minimum"] == 0
    assert fixed_delta["exclusiveMinimum"] == 0 and fixed_delta["exclusiveMaximum"] == 1
