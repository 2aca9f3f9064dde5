"""Async jobs end to end: the real client's Job against the real API server, worker and emulator.

What the unit tests (tests/unit/client/test_client_jobs.py) script, here on the local stack:
``wait=False`` answers with a handle at once, the debit happens once at submission and is
exact, a fresh client reattaches by id, and Ctrl-C while waiting leaves the job to finish.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pandas as pd
import pytest
from opendp_pipelines import laplace_count

from neblina_client import Client, Cost, Job

COUNT = "SELECT COUNT(*) AS n FROM df"
GROUP = "SELECT species, COUNT(*) AS n FROM df GROUP BY species"

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated function:DeprecationWarning")


@pytest.fixture
def researcher(make_researcher):  # type: ignore[no-untyped-def]
    return make_researcher({"PENGUIN": ("10", "0.001"), "SYNTHETIC": ("10", "0.001")})


def connect(stack: Any, token: str, **options: Any) -> Client:
    options.setdefault("dataset", "PENGUIN")
    return Client(url=stack.api_url, token=token, **options)


def test_a_detached_query_is_debited_once_at_submission_and_waits_to_its_result(
    stack: Any, researcher: Any
) -> None:
    with connect(stack, researcher.token) as client:
        price = client.sql.cost(GROUP, 0.5, 1e-5)
        before = client.budget().remaining
        job = client.sql.query(GROUP, 0.5, 1e-5, wait=False)
        assert isinstance(job, Job) and job.dataset == "PENGUIN"
        # the debit happened at submission, before anyone waits
        assert client.budget().remaining == before - price
        status = job.status()
        assert status.cost == price and status.query_id == job.query_id
        answer = job.wait(progress=False)
        assert isinstance(answer.result, pd.DataFrame)
        assert sorted(answer.result["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
        assert answer.cost == price and answer.query_id == job.query_id
        assert job.status().state == "done" and job.status().finished
        assert client.budget().remaining == before - price  # exactly one debit
        assert [q.state for q in client.history() if q.query_id == job.query_id] == ["done"]


def test_a_fresh_client_reattaches_by_id_and_collects_for_free(stack: Any, researcher: Any) -> None:
    with connect(stack, researcher.token) as first:
        job = first.sql.query(COUNT, 0.5, 1e-5, wait=False)
        query_id = job.query_id
        before_wait = first.budget().remaining
    # "after a restart": nothing but the id and the dataset
    with connect(stack, researcher.token, dataset="SYNTHETIC") as fresh:
        answer = fresh.job(query_id, dataset="PENGUIN").wait(progress=False)
        again = fresh.job(query_id, dataset="PENGUIN").wait(progress=False)
        assert answer.query_id == again.query_id == query_id
        assert answer.result.equals(again.result)  # the archived release, not a new one
        assert answer.cost == Cost(epsilon=Decimal("0.5"), delta=Decimal("0.00001"))
    with connect(stack, researcher.token) as check:
        assert check.budget().remaining == before_wait  # collecting costs nothing


class InterruptOnFirstPoll(httpx.HTTPTransport):
    """Ctrl-C arriving during the first poll of a query, whatever the job's speed."""

    def __init__(self) -> None:
        super().__init__()
        self.fired = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and "/queries/" in request.url.path and not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return super().handle_request(request)


def test_an_interrupt_while_waiting_leaves_the_job_to_finish(
    stack: Any, researcher: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    transport = InterruptOnFirstPoll()
    with connect(stack, researcher.token, transport=transport) as client:
        before = client.budget().remaining
        price = client.sql.cost(COUNT, 0.5, 1e-5)
        job = client.sql.query(COUNT, 0.5, 1e-5, wait=False)
        with pytest.raises(KeyboardInterrupt):
            job.wait()
    assert transport.fired
    hint = f'client.job("{job.query_id}", dataset="PENGUIN").wait()'
    assert hint in capsys.readouterr().err
    with connect(stack, researcher.token) as fresh:
        answer = fresh.job(job.query_id, dataset="PENGUIN").wait(timeout=60, progress=False)
        assert isinstance(answer.result, pd.DataFrame) and len(answer.result) == 1
        assert fresh.budget().remaining == before - price  # one debit, nothing refunded


def test_an_opendp_pipeline_runs_detached_with_its_exact_cost(stack: Any, researcher: Any) -> None:
    with connect(stack, researcher.token) as client:
        before = client.budget().remaining
        job = client.opendp.query(laplace_count(), wait=False)
        answer = job.wait(timeout=60, progress=False)
        assert isinstance(answer.result, int)
        assert answer.cost == Cost(epsilon=Decimal("0.5"), delta=Decimal(0))
        assert client.budget().remaining == before - answer.cost


def test_resending_a_detached_submission_follows_the_same_job_and_pays_once(
    stack: Any, researcher: Any
) -> None:
    # Its first answer lost, say: the resend (same id, same query) gets the same job back,
    # whether it is still running (409 query_in_progress) or already done (200, replayed).
    with connect(stack, researcher.token) as client:
        before = client.budget().remaining
        job = client.sql.query(COUNT, 0.5, 1e-5, wait=False)
        again = client.sql.query(COUNT, 0.5, 1e-5, query_id=job.query_id, wait=False)
        assert again.query_id == job.query_id
        first, second = job.wait(progress=False), again.wait(progress=False)
        assert first.result.equals(second.result)
        assert client.budget().remaining == before - first.cost
