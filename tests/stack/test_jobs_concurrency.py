"""Async jobs under concurrency, over HTTP on the local stack (front + worker processes).

20 async queries from 4 researchers, sent at once: every one is accepted (202, queued),
every one completes, each debit is exact, and a retry of any id replays it for free.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest

from chalicelib.models import PrivacyCost, QueryPhase, QueryState

USERS, PER_USER = 4, 5
EPSILONS = [Decimal("0.1") * (k + 1) for k in range(PER_USER)]  # 0.1 .. 0.5: 1.5 per user


def body(epsilon: Decimal, query_id: str) -> dict[str, Any]:
    return {
        "engine": "smartnoise_sql",
        "query": "SELECT COUNT(*) AS n FROM df",
        "epsilon": str(epsilon),
        "delta": 0,
        "wait": False,
        "query_id": query_id,
    }


@pytest.mark.stack
def test_twenty_concurrent_async_queries_of_four_users_all_complete_with_exact_budgets(
    stack: Any, store: Any, make_researcher: Any
) -> None:
    researchers = [make_researcher({"PENGUIN": ("10", "0.001")}) for _ in range(USERS)]
    jobs = [
        (who, epsilon, f"conc-{uuid.uuid4().hex}") for who in researchers for epsilon in EPSILONS
    ]
    start = threading.Barrier(len(jobs))
    url = f"{stack.api_url}/v1/datasets/PENGUIN/queries"

    def submit(job: tuple[Any, Decimal, str]) -> httpx.Response:
        who, epsilon, query_id = job
        start.wait()
        return httpx.post(
            url,
            json=body(epsilon, query_id),
            headers={"Authorization": f"Bearer {who.token}"},
            timeout=60,
        )

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(submit, jobs))
    for (_, epsilon, query_id), answer in zip(jobs, answers, strict=True):
        assert answer.status_code == 202, answer.text
        accepted = answer.json()
        assert (accepted["query_id"], accepted["state"]) == (query_id, "running")
        assert accepted["cost"] == {"epsilon": str(epsilon), "delta": "0"}
        assert answer.headers["Location"] == f"/v1/datasets/PENGUIN/queries/{query_id}"

    # every job completes; what the ledger shows on the way is a known phase of a running job
    seen_phases: set[str | None] = set()
    pending = {query_id for _, _, query_id in jobs}
    deadline = time.monotonic() + 120
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} jobs never completed"
        for query_id in list(pending):
            record = store.get_query(query_id)
            if record.state is QueryState.RUNNING:
                seen_phases.add(record.phase)
            else:
                pending.discard(query_id)
        time.sleep(0.1)
    assert seen_phases <= {phase.value for phase in QueryPhase}
    for who in researchers:  # as the API shows them: done, with a result, no phase left
        history = httpx.get(
            url, params={"limit": 20}, headers={"Authorization": f"Bearer {who.token}"}, timeout=60
        ).json()["queries"]
        assert len(history) == PER_USER
        for record in history:
            assert record["state"] == "done", record
            assert record["phase"] is None and record["progress"] is None
            assert record["result"] is not None

    # exact budgets: each user spent the sum of their five costs, no more, no less
    for who in researchers:
        grant = store.get_grant(who.user_id, "PENGUIN")
        assert grant.spent == PrivacyCost(epsilon=sum(EPSILONS), delta=Decimal(0))
        assert grant.spent.epsilon == Decimal("1.5")
        assert grant.spent + grant.remaining == grant.initial
        records = list(store.iter_queries(user_id=who.user_id, dataset="PENGUIN"))
        assert len(records) == PER_USER
        assert all(r.state is QueryState.DONE for r in records)
        assert sum((r.cost for r in records), PrivacyCost.zero()) == grant.spent

    # a retry of any id replays the archived release and charges nothing
    who, epsilon, query_id = jobs[-1]
    before = store.get_grant(who.user_id, "PENGUIN").spent
    replay = httpx.post(
        url,
        json=body(epsilon, query_id),
        headers={"Authorization": f"Bearer {who.token}"},
        timeout=60,
    )
    assert replay.status_code == 200 and replay.json()["replayed"] is True
    assert store.get_grant(who.user_id, "PENGUIN").spent == before
