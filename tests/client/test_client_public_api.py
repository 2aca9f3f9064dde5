"""The public surface of neblina_client, pinned."""

from __future__ import annotations

import ast
import importlib.metadata
import tomllib
from pathlib import Path

import neblina_client

PACKAGE_DIR = Path(neblina_client.__file__).parent
LEAF_MODULES = ["_exceptions", "_retry", "_tables", "_types", "_version"]


def test_all_is_pinned() -> None:
    assert neblina_client.__all__ == [
        "SQL",
        "ArchivedQuery",
        "AuthenticationError",
        "Budget",
        "BudgetExhaustedError",
        "Client",
        "ConfigurationError",
        "Cost",
        "DatasetInfo",
        "DatasetUnavailableError",
        "EngineError",
        "InvalidRequestError",
        "NeblinaConnectionError",
        "NeblinaError",
        "NotFoundError",
        "OpenDP",
        "PayloadTooLargeError",
        "PermissionDeniedError",
        "QueryConflictError",
        "QueryInProgressError",
        "QueryResult",
        "RateLimitedError",
        "ServerError",
        "__version__",
        "decode_table",
        "encode_table",
    ]


def test_every_public_name_exists_and_lives_in_a_private_module() -> None:
    for name in neblina_client.__all__:
        value = getattr(neblina_client, name)
        if name != "__version__":
            assert value.__module__.startswith("neblina_client._"), name


def test_no_public_submodules() -> None:
    modules = [p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"]
    assert modules
    assert all(m.startswith("_") for m in modules), modules


def test_version_matches_the_distribution() -> None:
    assert neblina_client.__version__ == importlib.metadata.version("neblina-client") == "0.1.0"


def test_distribution_metadata() -> None:
    project = tomllib.loads((PACKAGE_DIR.parent / "pyproject.toml").read_text())["project"]
    assert project["name"] == "neblina-client"
    assert project["requires-python"] == ">=3.10"
    assert project["dependencies"] == ["httpx>=0.27", "pandas>=2"]


def test_package_is_marked_typed() -> None:
    assert (PACKAGE_DIR / "py.typed").is_file()


def test_leaf_modules_import_nothing_from_the_package() -> None:
    for name in LEAF_MODULES:
        tree = ast.parse((PACKAGE_DIR / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name} imports .{node.module}"
                assert not (node.module or "").startswith("neblina_client"), name
            elif isinstance(node, ast.Import):
                assert all(not a.name.startswith("neblina_client") for a in node.names), name
