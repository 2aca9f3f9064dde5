"""The job steps of the Store contract: claim, set_progress, and what settling does to them.

Every test runs on every backend (see ``conftest.py``). ``claim`` is the one gate before a
job worker may read data: of any number of deliveries of one job exactly one gets the
record (docs/ledger.md, "Jobs: phase, claim, progress").
"""

from __future__ import annotations

import dataclasses
import math
import threading
from datetime import timedelta
from typing import Any

import pytest
from test_store_contract import cost, granted, now, record, skip_without_atomicity

from chalicelib.models import INTERRUPTED, QueryPhase, QueryRecord, QueryState

ERROR = {"error": "e", "message": "m"}


def job(backend: Any, phase: str | None = QueryPhase.QUEUED, **changes: Any) -> QueryRecord:
    """A reserved record in ``phase`` (None: written as before phases existed)."""
    user, dataset = granted(backend, "10")
    reserved = dataclasses.replace(record(user, dataset, cost("0.5")), phase=phase, **changes)
    backend.reserve(reserved)
    return reserved


def strip_phase_fields(backend: Any, query_id: str) -> None:
    """Make a stored record look like one written before ``phase``/``progress`` existed."""
    if hasattr(backend, "_queries"):  # MongoDB writes the keys (null); old documents lack them
        backend._queries.update_one({"_id": query_id}, {"$unset": {"phase": "", "progress": ""}})
    # DynamoDB never writes a null attribute and the memory store holds dataclasses: a
    # record reserved with phase None is exactly an old record there.


def test_a_job_is_reserved_queued_and_reads_back_with_its_phase(backend: Any) -> None:
    queued = job(backend)
    stored = backend.get_query(queued.query_id)
    assert stored == queued
    assert stored.phase == "queued" and stored.progress is None
    shown = stored.to_json()
    assert shown["phase"] == "queued" and shown["progress"] is None


def test_claim_moves_a_queued_job_to_loading_once(backend: Any) -> None:
    queued = job(backend)
    claimed = backend.claim(queued.query_id, now())
    assert claimed == dataclasses.replace(queued, phase="loading", progress=None)
    assert backend.get_query(queued.query_id) == claimed
    assert backend.claim(queued.query_id, now()) is None  # a second delivery gets nothing
    assert backend.get_query(queued.query_id) == claimed


@pytest.mark.parametrize("run", range(3))
def test_eight_threads_claiming_one_job_get_exactly_one_record(
    backend: Any, request: pytest.FixtureRequest, run: int
) -> None:
    """Eight deliveries of the same job at once (started together by a barrier): one wins."""
    skip_without_atomicity(request)
    queued = job(backend)
    barrier = threading.Barrier(8)
    won: list[QueryRecord | None] = []
    lock = threading.Lock()

    def deliver() -> None:
        barrier.wait()
        result = backend.claim(queued.query_id, now())
        with lock:
            won.append(result)

    pool = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    winners = [r for r in won if r is not None]
    assert len(won) == 8 and len(winners) == 1
    assert winners[0].phase == "loading"
    assert backend.get_query(queued.query_id).phase == "loading"


def test_claim_is_refused_once_the_lease_has_expired(backend: Any) -> None:
    queued = job(backend)
    lease = queued.lease_expires_at
    assert backend.claim(queued.query_id, lease) is None  # expired from that instant on
    assert backend.claim(queued.query_id, lease + timedelta(hours=1)) is None
    assert backend.get_query(queued.query_id) == queued  # nothing written
    assert backend.claim(queued.query_id, lease - timedelta(seconds=1)) is not None


def test_claim_is_refused_for_sync_old_and_missing_records(backend: Any) -> None:
    sync = job(backend, phase=QueryPhase.RUNNING)
    assert backend.claim(sync.query_id, now()) is None
    assert backend.get_query(sync.query_id) == sync
    old = job(backend, phase=None)
    strip_phase_fields(backend, old.query_id)
    assert backend.claim(old.query_id, now()) is None
    assert backend.get_query(old.query_id) == old
    assert backend.claim("no-such-query", now()) is None
    assert backend.get_query("no-such-query") is None  # a refused claim creates nothing


@pytest.mark.parametrize("settle", ["done", "failed", "refunded", "expired"])
def test_claim_is_refused_once_the_record_is_settled(backend: Any, settle: str) -> None:
    queued = job(backend)
    settle_record(backend, queued, settle)
    settled = backend.get_query(queued.query_id)
    assert backend.claim(queued.query_id, now()) is None
    assert backend.get_query(queued.query_id) == settled


def settle_record(backend: Any, queued: QueryRecord, settle: str) -> None:
    if settle == "done":
        backend.finish(queued.query_id, QueryState.DONE, now(), result={"v": 1})
    elif settle == "failed":
        backend.finish(queued.query_id, QueryState.FAILED, now(), error=ERROR)
    elif settle == "refunded":
        backend.refund(queued, now(), ERROR)
    else:
        later = queued.lease_expires_at + timedelta(seconds=1)
        assert backend.expire_query(queued.query_id, later, dict(INTERRUPTED))


def test_set_progress_shows_where_a_claimed_job_is(backend: Any) -> None:
    queued = job(backend)
    backend.claim(queued.query_id, now())
    backend.set_progress(queued.query_id, "running", 0.25)
    stored = backend.get_query(queued.query_id)
    assert (stored.state, stored.phase, stored.progress) == (QueryState.RUNNING, "running", 0.25)
    assert stored.to_json()["progress"] == 0.25
    backend.set_progress(queued.query_id, QueryPhase.RUNNING, 1)
    assert backend.get_query(queued.query_id).progress == 1.0
    backend.set_progress(queued.query_id, "archiving", None)
    stored = backend.get_query(queued.query_id)
    assert (stored.phase, stored.progress) == ("archiving", None)
    assert dataclasses.replace(stored, phase=None, progress=None) == dataclasses.replace(
        queued, phase=None
    )  # nothing else changed


@pytest.mark.parametrize("settle", ["done", "failed", "refunded", "expired"])
def test_set_progress_is_a_no_op_on_a_settled_record(backend: Any, settle: str) -> None:
    queued = job(backend)
    backend.claim(queued.query_id, now())
    settle_record(backend, queued, settle)
    settled = backend.get_query(queued.query_id)
    backend.set_progress(queued.query_id, "running", 0.5)  # never raises
    assert backend.get_query(queued.query_id) == settled


def test_set_progress_is_a_no_op_on_a_queued_or_missing_record(backend: Any) -> None:
    """Only a claim leaves ``queued``: progress cannot take a job out of the claim's reach."""
    queued = job(backend)
    backend.set_progress(queued.query_id, "loading", 0.5)
    assert backend.get_query(queued.query_id) == queued
    assert backend.claim(queued.query_id, now()) is not None
    backend.set_progress("no-such-query", "running", 0.5)
    assert backend.get_query("no-such-query") is None


def test_set_progress_works_on_sync_and_old_running_records(backend: Any) -> None:
    sync = job(backend, phase=QueryPhase.RUNNING)
    backend.set_progress(sync.query_id, "archiving", 0.9)
    assert backend.get_query(sync.query_id).phase == "archiving"
    old = job(backend, phase=None)
    strip_phase_fields(backend, old.query_id)
    backend.set_progress(old.query_id, "running", 0.5)
    stored = backend.get_query(old.query_id)
    assert (stored.phase, stored.progress) == ("running", 0.5)


@pytest.mark.parametrize(
    ("phase", "progress"),
    [
        ("queued", None),
        ("done", None),
        ("", None),
        ("running", -0.01),
        ("running", 1.01),
        ("running", math.nan),
        ("running", math.inf),
        ("running", True),
    ],
)
def test_set_progress_refuses_a_phase_or_fraction_it_may_not_write(
    backend: Any, phase: str, progress: Any
) -> None:
    queued = job(backend)
    claimed = backend.claim(queued.query_id, now())
    with pytest.raises(ValueError):
        backend.set_progress(queued.query_id, phase, progress)
    assert backend.get_query(queued.query_id) == claimed


@pytest.mark.parametrize("settle", ["done", "failed", "refunded", "expired"])
def test_settling_a_record_clears_its_phase_and_progress(backend: Any, settle: str) -> None:
    """``phase``/``progress`` describe running work only: every settlement clears both."""
    queued = job(backend)
    backend.claim(queued.query_id, now())
    backend.set_progress(queued.query_id, "running", 0.5)
    settle_record(backend, queued, settle)
    stored = backend.get_query(queued.query_id)
    assert stored.state is not QueryState.RUNNING
    assert (stored.phase, stored.progress) == (None, None)
    shown = stored.to_json()
    assert shown["phase"] is None and shown["progress"] is None


def test_an_expired_queued_job_reads_as_interrupted_and_is_never_claimed(backend: Any) -> None:
    queued = job(backend)
    later = queued.lease_expires_at + timedelta(seconds=1)
    seen = backend.get_query(queued.query_id).as_seen(later)
    assert (seen.state, seen.error, seen.phase) == (QueryState.FAILED, INTERRUPTED, None)
    assert backend.claim(queued.query_id, later) is None
    assert backend.expire_query(queued.query_id, later, dict(INTERRUPTED))
    grant = backend.get_grant(queued.user_id, queued.dataset)
    assert grant.spent == cost("0.5")  # the spend stands


def test_a_record_written_before_phases_existed_reads_and_settles(backend: Any) -> None:
    old = job(backend, phase=None)
    strip_phase_fields(backend, old.query_id)
    stored = backend.get_query(old.query_id)
    assert stored == old and (stored.phase, stored.progress) == (None, None)
    assert stored.to_json()["phase"] is None and stored.to_json()["progress"] is None
    backend.finish(old.query_id, QueryState.DONE, now(), result={"v": 1})
    done = backend.get_query(old.query_id)
    assert done.state is QueryState.DONE and done.phase is None


def test_a_dynamodb_claim_whose_answer_was_lost_is_recognised_by_its_retry(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PynamoDB retries a 5xx: when the first try landed, the retry finds the job claimed by
    this very call (its attempt id) and still gets the record; another call does not."""
    from chalicelib.storage import dynamo
    from chalicelib.storage.dynamo import DynamoStore

    if not isinstance(backend, DynamoStore):
        pytest.skip("the attempt id is DynamoDB's answer to PynamoDB's retries")
    queued = job(backend)
    monkeypatch.setattr(dynamo, "new_attempt", lambda: "attempt-1")
    claimed = backend.claim(queued.query_id, now())
    assert claimed is not None
    assert backend.claim(queued.query_id, now()) == claimed  # the same call, retried
    monkeypatch.setattr(dynamo, "new_attempt", lambda: "attempt-2")
    assert backend.claim(queued.query_id, now()) is None  # another delivery
