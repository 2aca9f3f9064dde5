"""Shared fixtures: the real emulator and the real API server, started on free ports.

The suite has four tiers, one folder each, and every test is marked with its folder's tier
(``pytest -m unit``, ``make test-unit``, ...); ``make test`` runs them all:

- ``tests/unit``: no process, no port, no emulator (guarded: ``tests/unit/conftest.py``);
- ``tests/contract``: the storage contract over every backend (DynamoDB on the emulator);
- ``tests/stack``: the local stack (emulator + API server) over HTTP;
- ``tests/deploy``: what ships: the Lambda zips and their cold-start imports, Terraform,
  checkov, the generated client.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]  # tests/unit/test_unit_guard.py runs a small suite in-process

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "localstack", ROOT / "tests" / "support"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "contract", "stack", "deploy")

# Most tests change a token, grant, dataset or source and expect the very next request to
# see it: the suite runs with the authorizer's result cache and the cached lookups off (the
# servers it starts inherit this). Their bounds are tested where they are turned on:
# tests/unit/test_lookup_cache.py and tests/stack/test_warm_path.py.
os.environ.setdefault("NEBLINA_AUTHORIZER_TTL_SECONDS", "0")
os.environ.setdefault("NEBLINA_LOOKUP_CACHE_SECONDS", "0")


# `make test` runs the suite on two processes (pytest-xdist: ``-n 2 --dist loadfile
# --no-loadscope-reorder``). Each module is one unit of work, run whole on one worker (its
# module-scoped fixtures start once; each worker starts its own session stack when one of its
# tests first needs it), so tests of two modules may run at the same time: each uses its own
# users, datasets, tables, ports and temporary folders. The modules start in the order below
# (then the folders' order), the long ones first, so that the short ones fill in at the end
# rather than one worker running a long module alone.
START_ORDER = ("slow_infra", "deploy", "stack", "contract", "unit")


def _start_rank(item: pytest.Item) -> int:
    marks = {mark.name for mark in item.iter_markers()}
    return next((k for k, name in enumerate(START_ORDER) if name in marks), len(START_ORDER))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with the tier of its folder; on an xdist worker, order the modules."""
    for item in items:
        parts = item.path.resolve().relative_to(TESTS).parts
        if len(parts) > 1 and parts[0] in TIERS:
            item.add_marker(parts[0])
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    modules = [item.nodeid.split("::")[0] for item in items]
    rank: dict[str, int] = {}
    for item, module in zip(items, modules, strict=True):
        rank[module] = min(rank.get(module, len(START_ORDER)), _start_rank(item))
    # A stable sort: every worker collects the same order (xdist checks the collections match).
    order = sorted(range(len(items)), key=lambda k: rank[modules[k]])
    items[:] = [items[k] for k in order]


@dataclass
class Researcher:
    """A user with a token and grants, created for one test."""

    user_id: str
    token: str


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Emulator + seeding + API server as child processes (one per test session)."""
    from stack import LocalStack
    from stackenv import emulator_env

    local = LocalStack(
        synthetic_rows=100_000,
        quiet=True,
        log_dir=tmp_path_factory.mktemp("stack-logs"),
        # Concurrency tests send hundreds of queries a second as one user: the limit is
        # counted on every request (the path is exercised) but set out of their way;
        # tests/stack/test_abuse_limits.py checks the limit on a server of its own.
        extra_env={"NEBLINA_RATE_LIMIT": "1000000"},
    )
    local.start()
    saved = dict(os.environ)
    os.environ.update(emulator_env(local.emulator_url, local.table_prefix))
    from chalicelib.config import get_settings
    from chalicelib.storage import reset_store

    get_settings.cache_clear()
    reset_store()
    try:
        yield local
    finally:
        local.stop()
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
        reset_store()


@pytest.fixture
def store(stack: object) -> object:
    """The DynamoDB store of the running stack (same tables as the API server)."""
    from chalicelib.storage import get_store

    return get_store()


@pytest.fixture
def make_researcher(store: object):  # type: ignore[no-untyped-def]
    """Create a fresh user with grants {dataset: (epsilon, delta)} and a token."""
    from neblina_admin import operations as admin

    def make(grants: dict[str, tuple[str, str]] | None = None) -> Researcher:
        user_id = f"user-{uuid.uuid4().hex[:10]}"
        admin.add_user(store, user_id)  # type: ignore[arg-type]
        for dataset, (epsilon, delta) in (grants or {"PENGUIN": ("10", "0.001")}).items():
            admin.grant(store, user_id, dataset, epsilon=epsilon, delta=delta)
        issued = admin.add_token(store, user_id)  # type: ignore[arg-type]
        return Researcher(user_id=user_id, token=issued.secret)

    return make
