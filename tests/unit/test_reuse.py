"""Identical-query reuse: the caller's own done release of the same request on the same
dataset version comes back free, marked ``reused``; never another user's, never across
versions, never a different request."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_service import COUNT, META, ROOT, remaining
from test_service import service as service
from test_service import store as store

from chalicelib import metadata
from chalicelib.errors import InternalError
from chalicelib.models import Dataset, PrivacyCost, QueryState, utcnow
from chalicelib.service import Service
from chalicelib.storage.memory import MemoryStore


def ask(service: Service, query_id: str, user: str = "alice", **extra: Any) -> dict[str, Any]:
    body = {**COUNT, "query_id": query_id, "reuse": True, **extra}
    return service.query(user, "PENGUIN", body)


def test_the_same_request_again_returns_the_same_release_free_and_marked_reused(
    service: Service, store: MemoryStore
) -> None:
    first = ask(service, "reuse-0001")
    after_first = remaining(store)
    again = ask(service, "reuse-0002", level=0.99)  # the level is not part of the request
    assert not first["reused"] and again["reused"]
    assert again["result"] == first["result"] and again["query_id"] == "reuse-0001"
    assert again["accuracy"]["level"] == 0.99
    assert remaining(store) == after_first  # no debit
    assert store.get_query("reuse-0002") is None  # nothing archived for the reuse


def test_without_reuse_or_with_other_parameters_the_query_runs_and_is_debited(
    service: Service, store: MemoryStore
) -> None:
    ask(service, "reuse-0011")
    before = remaining(store)
    fresh = service.query("alice", "PENGUIN", {**COUNT, "query_id": "reuse-0012"})
    assert not fresh["reused"] and remaining(store) == before - PrivacyCost(epsilon=1, delta=0)
    other = ask(service, "reuse-0013", epsilon=2)
    assert not other["reused"] and other["query_id"] == "reuse-0013"


def test_a_release_is_never_reused_for_another_user(service: Service, store: MemoryStore) -> None:
    store.create_grant("bob", "PENGUIN", PrivacyCost(epsilon=5, delta=0))
    ask(service, "reuse-0021")
    bobs = ask(service, "reuse-0022", user="bob")
    assert not bobs["reused"] and bobs["query_id"] == "reuse-0022"
    grant = store.get_grant("bob", "PENGUIN")
    assert grant is not None and grant.spent == PrivacyCost(epsilon=1, delta=0)


def test_a_release_is_never_reused_once_the_dataset_version_changed(
    service: Service, store: MemoryStore, tmp_path: Path
) -> None:
    source = tmp_path / "penguins.csv"
    shutil.copy(ROOT / "localstack/data/penguins.csv", source)
    store.put_dataset(
        Dataset("PENGUIN", str(source), metadata.validate(META), utcnow()), create_only=False
    )
    ask(service, "reuse-0031")
    assert ask(service, "reuse-0032")["reused"]
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new version
    before = remaining(store)
    changed = ask(service, "reuse-0033")
    assert not changed["reused"] and remaining(store) == before - PrivacyCost(epsilon=1, delta=0)


def test_a_source_that_changes_between_the_lookup_and_the_load_refunds(
    service: Service, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "_reuse_key", lambda *args: "a key of another version")
    before = remaining(store)
    with pytest.raises(InternalError):
        ask(service, "reuse-0041")
    assert remaining(store) == before
    stored = store.get_query("reuse-0041")
    assert stored is not None and stored.state is QueryState.REFUNDED


def test_reuse_must_be_a_boolean(service: Service, store: MemoryStore) -> None:
    from chalicelib.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="reuse must be true or false"):
        ask(service, "reuse-0051", reuse="yes")


def test_a_retry_of_the_same_query_id_is_a_replay_not_a_reuse(
    service: Service, store: MemoryStore
) -> None:
    first = ask(service, "reuse-0061")
    again = ask(service, "reuse-0061")
    assert again["replayed"] and not again["reused"] and again["result"] == first["result"]
