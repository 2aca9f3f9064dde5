"""The layout says which code runs where: ``chalicelib/`` is what the Lambda functions run.

The admin tooling lives in ``neblina_admin/`` (never packaged for Lambda); a module of
``chalicelib`` that imported it, or the CLI libraries, would ship admin code to the API.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADMIN_ONLY = {"neblina_admin", "typer", "click", "rich"}


def imported_tops(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def test_no_chalicelib_module_imports_the_admin_or_its_cli_libraries() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_tops(path) & ADMIN_ONLY)
        for path in sorted((ROOT / "chalicelib").rglob("*.py"))
        if imported_tops(path) & ADMIN_ONLY
    }
    assert offenders == {}, "admin code belongs in neblina_admin/"


def test_the_admin_console_script_points_into_the_admin_package() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["neblina-admin"] == "neblina_admin.cli:main"
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "neblina_admin" in packages["packages"]
