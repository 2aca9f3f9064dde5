"""The docs name tests as evidence: every test they name must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# `tests/x.py::test_a` names a file and a test; a following `::test_b` means the same file
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?(?:::(test_\w+))?`")


def functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def references(text: str) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    current: str | None = None
    for match in REFERENCE.finditer(text):
        path, name = match.groups()
        current = path or current
        if current is not None and (path or name):
            found.append((current, name))
    return found


def missing_references(doc: Path) -> list[str]:
    missing = []
    for path, name in references(doc.read_text()):
        file = ROOT / path
        if not file.exists() or (name is not None and name not in functions_in(file)):
            missing.append(f"{path}::{name}" if name else path)
    return missing


def test_the_threat_model_names_only_tests_that_exist() -> None:
    doc = ROOT / "docs/threat-model.md"
    assert len(references(doc.read_text())) > 40  # the parser sees the references at all
    assert missing_references(doc) == []


def test_every_doc_names_only_tests_that_exist() -> None:
    docs = [ROOT / "README.md", ROOT / "infra/README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert {doc.name: missing_references(doc) for doc in docs} == {doc.name: [] for doc in docs}


def test_the_reference_parser_follows_the_file_of_a_bare_name() -> None:
    text = "`tests/a.py::test_x`, `::test_y`; `tests/b.py`; `::test_z` and `plain`"
    assert references(text) == [
        ("tests/a.py", "test_x"),
        ("tests/a.py", "test_y"),
        ("tests/b.py", None),
        ("tests/b.py", "test_z"),
    ]
