"""The suite's layout: every test lives in a tier folder, and the tiers are named alike."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
# The tiers as tests/conftest.py marks them (read, not imported: `import conftest` would
# find whichever of the suite's conftest.py files was loaded last).
_DECLARED = re.search(r"^TIERS = \((.+)\)$", (TESTS / "conftest.py").read_text(), re.MULTILINE)
assert _DECLARED is not None
TIERS = tuple(re.findall(r'"(\w+)"', _DECLARED.group(1)))


def test_every_test_file_lives_in_a_tier_folder() -> None:
    misplaced = sorted(
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("test_*.py")
        if path.relative_to(TESTS).parts[0] not in TIERS
    )
    assert misplaced == [], "move each into tests/unit, contract, stack or deploy"


def test_the_makefile_has_a_target_for_each_tier() -> None:
    makefile = (ROOT / "Makefile").read_text()
    declared = re.search(r"^TIERS := (.+)$", makefile, re.MULTILINE)
    assert declared is not None
    assert tuple(declared.group(1).split()) == TIERS
    assert TIERS == ("unit", "contract", "stack", "deploy")
    assert all((TESTS / tier).is_dir() for tier in TIERS)


def tiers_run_by(target: str) -> list[str]:
    """The tier folders the pytest commands of a Makefile target run (a tier per run)."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None, f"no target {target} in the Makefile"
    tiers: list[str] = []
    for line in recipe.group(1).splitlines():
        if "pytest" not in line:
            continue
        words = line.split("pytest", 1)[1].split()
        ignored = {
            w.removeprefix("--ignore=").rstrip("/") for w in words if w.startswith("--ignore=")
        }
        for path in (w.rstrip("/") for w in words if w.startswith("tests")):
            named = TIERS if path == "tests" else (path.removeprefix("tests/"),)
            tiers += [tier for tier in named if f"tests/{tier}" not in ignored]
    return tiers


def test_ci_runs_every_tier_of_make_test_exactly_once_after_the_fast_gate() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    targets = re.findall(r"^make ([\w-]+)$", ci, re.MULTILINE)
    assert targets[0] == "check", "ruff and mypy (make check) come first"
    assert re.search(r"^check: lint typecheck$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert sorted(tiers_run_by("test")) == sorted(TIERS), "make test runs every tier"
    ran = [tier for target in targets for tier in tiers_run_by(target)]
    assert sorted(ran) == sorted(TIERS), f"CI runs the tiers {ran}: each exactly once"


def test_make_test_runs_whole_modules_on_two_processes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    parallel = re.search(r"^PARALLEL := (.+)$", makefile, re.MULTILINE)
    assert parallel is not None
    assert parallel.group(1) == "-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder"
    assert re.search(r"^PYTEST_WORKERS \?= 2$", makefile, re.MULTILINE)
    for target in ("test", "test-after-check", "$(addprefix test-,$(TIERS))"):
        recipe = re.search(rf"^{re.escape(target)}:[^\n]*\n\t([^\n]*)", makefile, re.MULTILINE)
        assert recipe is not None and "pytest -q $(PARALLEL) tests" in recipe.group(1), target


def test_on_an_xdist_worker_the_long_modules_are_collected_first(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xdist hands out the modules in the order its workers collect them (with
    --no-loadscope-reorder): the Terraform apply first, then deploy, stack, contract, unit."""
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makeini(
        "[pytest]\nmarkers =\n    slow_infra: slow\n    unit\n    contract\n    stack\n    deploy\n"
    )
    modules = {
        "unit/test_a.py": "def test_a1(): pass\ndef test_a2(): pass\n",
        "contract/test_b.py": "def test_b(): pass\n",
        "deploy/test_c.py": "def test_c(): pass\n",
        "stack/test_d.py": "def test_d1(): pass\ndef test_d2(): pass\n",
        "deploy/test_e.py": "import pytest\npytestmark = pytest.mark.slow_infra\ndef test_e(): pass\n",
        "unit/test_f.py": "def test_f(): pass\n",
    }
    for path, text in modules.items():
        (pytester.path / path).parent.mkdir(exist_ok=True)
        (pytester.path / path).write_text(text)

    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # `make test` runs on a worker

    def collected() -> list[str]:
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q")
        return [line.split("::")[1] for line in result.outlines if "::" in line]

    assert collected() == [
        "test_b",
        "test_c",
        "test_e",
        "test_d1",
        "test_d2",
        "test_a1",
        "test_a2",
        "test_f",
    ]
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    assert collected() == [
        "test_e",
        "test_c",
        "test_d1",
        "test_d2",
        "test_b",
        "test_a1",
        "test_a2",
        "test_f",
    ]
