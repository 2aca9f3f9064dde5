"""``neblina-admin ledger reconcile``: the operator's way to settle what a crash left.

The MongoDB store keeps a reservation's steps as ``pending`` entries; a crash between them
holds budget until ``reconcile`` settles it (docs/ledger.md). The CLI runs it on demand.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mongo_backends import mongo_database
from test_store_contract import cost, granted, record
from typer.testing import CliRunner

from chalicelib.models import PrivacyCost


class Crash(BaseException):
    """The process died here."""


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def test_ledger_reconcile_gives_back_a_debit_a_crash_left_without_a_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chalicelib.storage.mongo import MongoStore
    from neblina_admin import cli

    store: Any = MongoStore(
        mongo_database("mongomock"), f"r{uuid.uuid4().hex[:8]}-", grace=timedelta(minutes=15)
    )
    store.clock = Clock()
    store.create_schema()
    user, dataset = granted(store, "1")

    def die(*args: Any, **kwargs: Any) -> None:
        raise Crash()

    with monkeypatch.context() as patch:
        patch.setattr(store, "_insert_record", die)
        with pytest.raises(Crash):
            store.reserve(record(user, dataset, cost("0.4")))
    assert store.get_grant(user, dataset).spent == cost("0.4")  # held by the crash

    monkeypatch.setattr(cli, "_store", lambda: store)
    runner = CliRunner()
    early = runner.invoke(cli.app, ["ledger", "reconcile"])
    assert early.exit_code == 0 and "settled 0 pending ledger entries" in early.stdout
    assert store.get_grant(user, dataset).spent == cost("0.4")  # could be a live request

    store.clock.now += timedelta(minutes=16)  # older than the lease
    settled = runner.invoke(cli.app, ["ledger", "reconcile"])
    assert settled.exit_code == 0 and "settled 1 pending ledger entry" in settled.stdout
    assert store.get_grant(user, dataset).spent == PrivacyCost.zero()
    again = runner.invoke(cli.app, ["ledger", "reconcile"])
    assert "settled 0" in again.stdout and store.get_grant(user, dataset).remaining == cost(1)


def test_ledger_reconcile_settles_nothing_on_a_transactional_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chalicelib.storage.memory import MemoryStore
    from neblina_admin import cli

    monkeypatch.setattr(cli, "_store", MemoryStore)  # one transaction per write, like DynamoDB
    result = CliRunner().invoke(cli.app, ["ledger", "reconcile"])
    assert result.exit_code == 0 and "settled 0 pending ledger entries" in result.stdout
