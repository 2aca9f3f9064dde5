"""Imported spending and history (``import lomas``) on every backend, through the Store API.

An import writes only with the ledger's own primitives (``create_grant``, ``reserve``,
``finish``): on every backend each grant's spend is then the sum of its records' costs, the
records read back as finished history, and their ids can never be taken again.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chalicelib.models import PrivacyCost, QueryRecord, QueryState, utcnow
from chalicelib.storage import QueryIdTaken
from neblina_admin import lomas
from neblina_admin import operations as admin

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lomas" / "mongoexport"


@pytest.fixture(scope="module")
def imported(backend: Any) -> lomas.LomasImport:
    deployment = lomas.convert(lomas.read(FIXTURE), FIXTURE, source=str(FIXTURE))
    assert deployment.problems == []
    lomas.apply(backend, deployment)
    return deployment


def test_each_grants_spend_is_lomas_spend_and_the_sum_of_its_records(
    backend: Any, imported: lomas.LomasImport
) -> None:
    for (uid, name), spent in imported.desired.spent.items():
        grant = backend.get_grant(uid, name)
        assert grant.spent == spent
        assert grant.remaining == grant.initial - spent
        records = list(backend.iter_queries(user_id=uid, dataset=name))
        assert sum((r.cost for r in records), PrivacyCost.zero()) == spent
        assert all(r.state is QueryState.DONE and r.result is None for r in records)
    birthdays = backend.get_grant("BirthdayGirl", "BIRTHDAYS")
    assert birthdays.spent == PrivacyCost(epsilon=Decimal("3.2"), delta=Decimal("0.00001"))


def test_imported_history_reads_back_newest_first_with_its_original_times(
    backend: Any, imported: lomas.LomasImport
) -> None:
    page, _ = backend.list_queries("Dr._Antartica", "PENGUIN", 10, None)
    assert [r.engine for r in page] == [
        "lomas:smartnoise_synth",
        "lomas:smartnoise_synth",
        "lomas:diffprivlib",
        "lomas:opendp",
        "lomas:smartnoise_sql",
    ]
    # MongoDB dates keep milliseconds; the request keeps Lomas's float as it was
    assert page[-1].created_at.timestamp() == pytest.approx(1738570000.123456, abs=1e-3)
    assert page[-1].request["lomas"]["timestamp"] == 1738570000.123456
    assert page[-1].request["lomas"]["client_input"]["epsilon"] == 0.5


def test_an_imported_query_id_is_never_taken_again(
    backend: Any, imported: lomas.LomasImport
) -> None:
    taken = next(iter(backend.iter_queries(user_id="Tintin", dataset="PENGUIN")))
    before = backend.get_grant("Tintin", "PENGUIN")
    now = utcnow()
    retry = QueryRecord(
        query_id=taken.query_id,
        user_id="Tintin",
        dataset="PENGUIN",
        engine="smartnoise_sql",
        payload_hash="0" * 64,
        request={},
        cost=PrivacyCost(epsilon=1, delta=0),
        state=QueryState.RUNNING,
        created_at=now,
        lease_expires_at=now,
    )
    with pytest.raises(QueryIdTaken) as refused:
        backend.reserve(retry)
    assert refused.value.existing.payload_hash == admin.IMPORTED
    assert backend.get_grant("Tintin", "PENGUIN") == before
