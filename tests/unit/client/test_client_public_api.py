"""The public surface of neblina_client: exactly what __all__ names, from private modules."""

from __future__ import annotations

import ast
import importlib.metadata
import tomllib
from pathlib import Path

import neblina_client

PACKAGE_DIR = Path(neblina_client.__file__).parent
LEAF_MODULES = ["_exceptions", "_retry", "_tables", "_types", "_version"]
# Public submodules: Lomas's client surface (a notebook changes one import line), and only it.
PUBLIC_SUBMODULES = {"lomas"}
INCLUDED_PRIVATE_MEMBERS = {"__version__"}


def test_all_names_every_public_name_of_the_package_and_nothing_else() -> None:
    # As httpx's test_exports: derived from the package's namespace, so a public name
    # imported into __init__ but left out of __all__ (or listed but not imported) fails.
    public = [
        name
        for name in vars(neblina_client)
        if (not name.startswith("_") or name in INCLUDED_PRIVATE_MEMBERS)
        and name not in PUBLIC_SUBMODULES  # an attribute once imported, not an export
    ]
    assert sorted(neblina_client.__all__) == sorted(public)


def test_all_names_the_client_the_engines_the_errors_and_the_values() -> None:
    exported = set(neblina_client.__all__)
    assert {"Client", "SQL", "OpenDP", "Backoff", "NeblinaError", "QueryResult"} <= exported
    assert {"decode_table", "encode_table", "__version__"} <= exported


def test_every_public_name_exists_and_lives_in_a_private_module() -> None:
    for name in neblina_client.__all__:
        value = getattr(neblina_client, name)
        if name != "__version__":
            assert value.__module__.startswith("neblina_client._"), name


def test_no_public_submodules() -> None:
    modules = [p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"]
    assert modules
    assert all(m.startswith("_") for m in modules if m not in PUBLIC_SUBMODULES), modules


def test_the_lomas_submodule_exports_from_a_private_module_and_nothing_else() -> None:
    from neblina_client import lomas

    public = [name for name in vars(lomas) if not name.startswith("_")]
    assert sorted(lomas.__all__) == sorted(public)
    assert all(getattr(lomas, n).__module__ == "neblina_client._lomas" for n in lomas.__all__)


def test_version_matches_the_distribution() -> None:
    assert neblina_client.__version__ == importlib.metadata.version("neblina-client") == "0.1.0"


def test_distribution_metadata() -> None:
    project = tomllib.loads((PACKAGE_DIR.parent / "pyproject.toml").read_text())["project"]
    assert project["name"] == "neblina-client"
    assert project["requires-python"] == ">=3.10"
    assert project["dependencies"] == ["httpx>=0.27", "pandas>=2", "tqdm>=4.66"]


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


def test_sql_and_opendp_submit_through_the_clients_one_path() -> None:
    # SQL and OpenDP build their engine's request fields; sending, retrying, the query_id
    # and the dummy fields live once in Client._price/_submit, never in an engine class.
    tree = ast.parse((PACKAGE_DIR / "_client.py").read_text())
    engines = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in {"SQL", "OpenDP"}]
    assert len(engines) == 2
    for engine in engines:
        used = {n.attr for n in ast.walk(engine) if isinstance(n, ast.Attribute)}
        assert not used & {"_request", "_dataset_path", "_http"}, engine.name
        assert {"_price", "_submit"} <= used, engine.name


def test_tqdm_is_imported_only_when_a_progress_bar_is_drawn() -> None:
    # ~80 ms cold (40 ms after pandas): paid by a wait that shows a bar, not by every import.
    for path in PACKAGE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = [
            node
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            and any(
                name.startswith("tqdm")
                for name in [getattr(node, "module", None) or ""]
                + [alias.name for alias in node.names]
            )
        ]
        assert not top_level, path.name
