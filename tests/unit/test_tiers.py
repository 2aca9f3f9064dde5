"""The suite's layout: every test lives in a tier folder, and the tiers are named alike."""

from __future__ import annotations

import re
from pathlib import Path

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
