"""Crash safety: the fault-injection matrix (step x fault) over HTTP, with the ledger checked.

A real API server (``tests/support/fault_server.py``: the local server, wrapped at start-up) runs
against the session stack's emulator and tables. For each step of the query path and each
fault (an unexpected exception; a SIGKILL of the server process) one query of a fresh
researcher hits the fault; the test then reads the ledger directly and through the
session's own API server, and checks every cell:

- either no debit and no record, or no debit and a ``refunded`` record, or a debit with a
  record whose state says what happened (``done``, ``failed``, or ``running`` until its
  lease expires, then ``failed`` "interrupted");
- no result is released without a debit and a ``done`` record;
- ``spent + remaining == initial`` and ``spent`` equals the sum of the non-refunded records;
- the same user can run a new query at once (there is no lock to be left behind);
- a retry with the same ``query_id`` is answered from the record and never charged twice.

The servers started here use a 3 s query lease (``NEBLINA_QUERY_LEASE_SECONDS``) so the
lease rule can be watched; the test polls for the lease to pass instead of sleeping. The
rendered matrix is printed and must appear verbatim in ``docs/crash-safety.md``.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_process import api_server, start_api_server
from fault_server import ACTIONS, STEPS, fault_id

from chalicelib.models import PrivacyCost, QueryState, utcnow

ROOT = Path(__file__).resolve().parents[2]
FAULT_SERVER = ROOT / "tests" / "support" / "fault_server.py"
LEASE_SECONDS = 3
# The faults are injected into the API server's own process (tests/support/fault_server.py),
# so its engines run there too (NEBLINA_WORKERS=inprocess): these cells are the front's.
SERVER_ENV = {
    "NEBLINA_QUERY_LEASE_SECONDS": str(LEASE_SECONDS),
    "NEBLINA_RATE_LIMIT": "0",
    "NEBLINA_WORKERS": "inprocess",
}
QUERY = {
    "engine": "smartnoise_sql",
    "query": "SELECT COUNT(*) AS n FROM df",
    "epsilon": 0.5,
    "delta": 0,
}

# What each cell must show (HTTP answer, debit, record right after, record once the lease
# has passed, a retry with the same query_id).
EXPECTED = {
    ("before-reserve", "raise"): ("500 internal_error", "none", "none", "none", "200 (runs now)"),
    ("before-reserve", "kill"): ("connection lost", "none", "none", "none", "200 (runs now)"),
    ("after-reserve", "raise"): (
        "500 internal_error",
        "none",
        "refunded",
        "refunded",
        "200 (runs now)",
    ),
    ("after-reserve", "kill"): (
        "connection lost",
        "cost",
        "running",
        "failed (interrupted)",
        "409 query_failed",
    ),
    ("after-load", "raise"): (
        "500 internal_error",
        "none",
        "refunded",
        "refunded",
        "200 (runs now)",
    ),
    ("after-load", "kill"): (
        "connection lost",
        "cost",
        "running",
        "failed (interrupted)",
        "409 query_failed",
    ),
    ("after-execute", "raise"): (
        "422 engine_error",
        "cost",
        "failed",
        "failed",
        "409 query_failed",
    ),
    ("after-execute", "kill"): (
        "connection lost",
        "cost",
        "running",
        "failed (interrupted)",
        "409 query_failed",
    ),
    ("before-archive", "raise"): (
        "500 internal_error",
        "cost",
        "failed",
        "failed",
        "409 query_failed",
    ),
    ("before-archive", "kill"): (
        "connection lost",
        "cost",
        "running",
        "failed (interrupted)",
        "409 query_failed",
    ),
    ("after-archive", "raise"): (
        "500 internal_error",
        "cost",
        "done",
        "done",
        "200 replayed, free",
    ),
    ("after-archive", "kill"): ("connection lost", "cost", "done", "done", "200 replayed, free"),
}


@dataclass
class Cell:
    """What one (step, fault) did."""

    step: str
    action: str
    user: str
    token: str
    query_id: str
    answer: str = ""
    released: bool = False
    debit: str = ""
    record: str = ""
    settled: str = ""
    retry: str = ""
    new_query: str = ""
    notes: list[str] = field(default_factory=list)

    def row(self) -> tuple[str, str, str, str, str]:
        return (self.answer, self.debit, self.record, self.settled, self.retry)


def post(url: str, token: str, query_id: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/datasets/PENGUIN/queries",
        json={**QUERY, "query_id": query_id},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )


def answer(response: httpx.Response) -> str:
    body = response.json()
    if response.status_code == 200:
        return "200 replayed, free" if body["replayed"] else "200 (runs now)"
    return f"{response.status_code} {body['error']}"


def record_state(store: Any, query_id: str) -> str:
    record = store.get_query(query_id)
    return "none" if record is None else record.state.value


def debit_of(store: Any, cell: Cell, cost: PrivacyCost) -> str:
    grant = store.get_grant(cell.user, "PENGUIN")
    assert grant.spent + grant.remaining == grant.initial
    if grant.spent == PrivacyCost.zero():
        return "none"
    assert grant.spent == cost, f"{cell.step}/{cell.action}: charged {grant.spent}"
    return "cost"


def check_balanced(store: Any, cell: Cell) -> None:
    grant = store.get_grant(cell.user, "PENGUIN")
    records = list(store.iter_queries(user_id=cell.user, dataset="PENGUIN"))
    charged = sum(
        (r.cost for r in records if r.state is not QueryState.REFUNDED), PrivacyCost.zero()
    )
    assert grant.spent + grant.remaining == grant.initial
    assert charged == grant.spent, f"{cell.step}/{cell.action}: archive {charged} != {grant.spent}"
    assert grant.remaining.epsilon >= 0 and grant.remaining.delta >= 0


def render(cells: list[Cell]) -> str:
    lines = [
        "| step | fault | HTTP answer | debit | record after the crash | record after the lease | retry, same query_id | new query, same user |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c.step} | {c.action} | {c.answer} | {c.debit} | {c.record} | {c.settled} "
            f"| {c.retry} | {c.new_query} |"
        )
    return "\n".join(lines)


@pytest.mark.stack
def test_fault_injection_matrix(
    stack: Any, store: Any, make_researcher: Any, tmp_path: Path
) -> None:
    cost_response = httpx.post(
        f"{stack.api_url}/v1/datasets/PENGUIN/cost",
        json=QUERY,
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=60,
    )
    cost = PrivacyCost(**cost_response.json()["cost"])
    assert cost.epsilon == Decimal("0.5")
    cells: list[Cell] = []
    for step in STEPS:
        for action in ACTIONS:
            who = make_researcher({"PENGUIN": ("10", "0.001")})
            cells.append(
                Cell(
                    step,
                    action,
                    who.user_id,
                    who.token,
                    fault_id(step, action, uuid.uuid4().hex[:12]),
                )
            )

    # exceptions: one fault server answers every raise cell
    with api_server(stack, SERVER_ENV, tmp_path, FAULT_SERVER) as api:
        for cell in (c for c in cells if c.action == "raise"):
            response = post(api.url, cell.token, cell.query_id)
            cell.answer = f"{response.status_code} {response.json()['error']}"
            cell.released = response.status_code == 200
            assert "injected" not in response.text and "Traceback" not in response.text
            after_crash(stack, store, cell, cost)
        assert "fault injected" in api.log_text()  # the faults really fired
    # kills: each one takes its server down
    for cell in (c for c in cells if c.action == "kill"):
        api = start_api_server(stack, SERVER_ENV, tmp_path, FAULT_SERVER)
        try:
            with pytest.raises(httpx.TransportError):
                post(api.url, cell.token, cell.query_id)
            cell.answer = "connection lost"
            assert api.process.wait(timeout=30) == -9  # SIGKILL: nothing ran after it
        finally:
            api.stop()
        after_crash(stack, store, cell, cost)

    # the lease rule: once the leases have passed, no record is left running
    deadline = time.monotonic() + 30
    while any(
        (r := store.get_query(c.query_id)) is not None
        and not r.lease_expired(utcnow())
        and r.state is QueryState.RUNNING
        for c in cells
    ):
        assert time.monotonic() < deadline, "leases never expired"
        time.sleep(0.1)
    for cell in cells:
        settle(stack, store, cell, cost)

    table = render(cells)
    print("\n" + table)
    for cell in cells:
        assert cell.row() == EXPECTED[(cell.step, cell.action)], (
            cell.step,
            cell.action,
            cell.row(),
        )
        assert cell.new_query == "200"
        assert not cell.released or (cell.debit == "cost" and cell.record == "done")
    doc = (ROOT / "docs" / "crash-safety.md").read_text()
    assert table in doc, "docs/crash-safety.md does not show the matrix as observed"


def after_crash(stack: Any, store: Any, cell: Cell, cost: PrivacyCost) -> None:
    """Right after the fault: the ledger, and a new query of the same user at once."""
    cell.debit = debit_of(store, cell, cost)
    cell.record = record_state(store, cell.query_id)
    check_balanced(store, cell)
    if cell.record == "none":
        assert cell.debit == "none"
    if cell.record == "refunded":
        assert cell.debit == "none"
    if cell.record in ("running", "failed", "done"):
        assert cell.debit == "cost"
    before = store.get_grant(cell.user, "PENGUIN").spent
    fresh = post(stack.api_url, cell.token, f"new-{uuid.uuid4().hex}")  # no lockout
    cell.new_query = str(fresh.status_code)
    assert fresh.status_code == 200, fresh.text
    assert store.get_grant(cell.user, "PENGUIN").spent == before + cost
    if cell.record == "running":  # before its lease: the same id is still in progress
        lease = store.get_query(cell.query_id).lease_expires_at
        sent = utcnow()
        response = post(stack.api_url, cell.token, cell.query_id)
        code = (response.status_code, response.json()["error"])
        if utcnow() < lease:
            assert code == (409, "query_in_progress")
        elif sent >= lease:
            assert code == (409, "query_failed")
        else:  # the lease ended while the request was on its way: either answer is right
            assert code in ((409, "query_in_progress"), (409, "query_failed"))


def settle(stack: Any, store: Any, cell: Cell, cost: PrivacyCost) -> None:
    """After the lease: the record as the API reads it (and writes back), then a retry."""
    headers = {"Authorization": f"Bearer {cell.token}"}
    response = httpx.get(
        f"{stack.api_url}/v1/datasets/PENGUIN/queries/{cell.query_id}", headers=headers, timeout=60
    )
    if response.status_code == 404:
        cell.settled = "none"
    else:
        body = response.json()
        cell.settled = body["state"]
        if body["state"] == "failed" and (body["error"] or {}).get("error") == "interrupted":
            cell.settled = "failed (interrupted)"
            assert store.get_query(cell.query_id).state is QueryState.FAILED  # written back
    spent = store.get_grant(cell.user, "PENGUIN").spent
    retry = post(stack.api_url, cell.token, cell.query_id)
    cell.retry = answer(retry)
    charged = store.get_grant(cell.user, "PENGUIN").spent - spent
    assert charged == (cost if cell.retry == "200 (runs now)" else PrivacyCost.zero())
    check_balanced(store, cell)


# --- the worker cells (issue 13): async jobs, their worker process, the hand-over ----------
FAULT_WORKER = ROOT / "tests" / "support" / "fault_worker.py"
JOB_LEASE_SECONDS = 12  # this matrix front's job lease: a fresh worker's job ends well within
JOB_QUERY = {**QUERY, "wait": False}
WORKER_COLUMNS = (
    "| who | step | fault | HTTP answer | debit | record after the crash "
    "| record after the lease | mechanism runs | another delivery "
    "| retry, same query_id | new query, same user |"
)
# (who, step, fault) -> (answer, debit, record after the crash, after the lease, mechanism
# runs, another delivery, retry with the same query_id)
WORKER_EXPECTED = {
    ("front", "before-submit", "kill"): (
        "connection lost",
        "cost",
        "running (queued)",
        "failed (interrupted)",
        "0",
        "-",
        "409 query_failed",
    ),
    ("worker", "before-load", "kill"): (
        "202 queued",
        "cost",
        "running (loading)",
        "failed (interrupted)",
        "0",
        "not claimed",
        "409 query_failed",
    ),
    ("worker", "after-load", "kill"): (
        "202 queued",
        "cost",
        "running (loading)",
        "failed (interrupted)",
        "0",
        "not claimed",
        "409 query_failed",
    ),
    ("worker", "during-mechanism", "kill"): (
        "202 queued",
        "cost",
        "running (running)",
        "failed (interrupted)",
        "1",
        "not claimed",
        "409 query_failed",
    ),
    ("worker", "after-archive", "kill"): (
        "202 queued",
        "cost",
        "done",
        "done",
        "1",
        "not claimed",
        "200 replayed, free",
    ),
    ("worker (sync)", "during-mechanism", "kill"): (
        "500 internal_error",
        "cost",
        "failed",
        "failed (interrupted)",
        "1",
        "-",
        "409 query_failed",
    ),
    ("worker (sync)", "after-archive", "kill"): (
        "500 internal_error",
        "cost",
        "done",
        "done",
        "1",
        "-",
        "200 replayed, free",
    ),
    ("worker", "unreachable", "hand-over refused"): (
        "503 worker_unavailable",
        "none",
        "refunded",
        "refunded",
        "0",
        "-",
        "202 (runs now)",
    ),
    ("queue", "deliver-twice", "duplicate"): (
        "202 queued",
        "cost",
        "done",
        "done",
        "1",
        "not claimed",
        "200 replayed, free",
    ),
    ("front", "after-submit", "kill"): (
        "connection lost",
        "cost",
        "done",
        "done",
        "1",
        "-",
        "200 replayed, free",
    ),
}


@dataclass
class JobCell:
    """What one worker-matrix cell did."""

    who: str
    step: str
    fault: str
    user: str
    token: str
    query_id: str
    answer: str = ""
    debit: str = ""
    record: str = ""
    settled: str = ""
    mechanisms: str = ""
    delivery: str = "-"
    retry: str = ""
    new_query: str = ""
    wait: bool = False  # a synchronous query (the front waits on the worker)

    def row(self) -> tuple[str, ...]:
        return (
            self.answer,
            self.debit,
            self.record,
            self.settled,
            self.mechanisms,
            self.delivery,
            self.retry,
        )


class WorkerProcess:
    """The fault worker (a warm supervisor forking the server) on one port of its own.

    A kill takes the server down; :meth:`restart` forks a new one on the same port.
    """

    def __init__(self, stack: Any, log_dir: Path) -> None:
        self.stack, self.log_dir = stack, log_dir
        self.kills = 0
        self.process: Any = None
        self.url = ""

    def start(self) -> None:
        import socket

        from stack import spawn  # localstack/stack.py

        with socket.socket() as probe:  # one port for every server the supervisor forks
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url, self.process = spawn(
            "fault-worker",
            str(FAULT_WORKER),
            port,
            self.stack.env(),
            self.log_dir,
            "--worker",
            "sql",
        )

    def killed(self) -> None:
        """Until the server has died of SIGKILL (nothing ran after it)."""
        self.kills += 1
        wait_until(lambda: self.log().count("fault-worker: exited -9\n") == self.kills, "kill")

    def restart(self) -> None:
        """A new server on the same port, once it is ready."""
        import signal

        os.kill(self.process.pid, signal.SIGUSR1)
        wait_until(lambda: self.log().count(" ready on ") == self.kills + 1, "restart")

    def stop(self) -> None:
        from stack import _stop_process  # localstack/stack.py

        if self.process is not None and self.process.poll() is None:
            _stop_process(self.process.pid)
            self.process.wait(timeout=30)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_dir.glob("fault-worker-*"))

    def lines(self, what: str, query_id: str) -> int:
        return self.log().count(f"fault-worker: {what} {query_id}\n")

    def wait_for(self, what: str, query_id: str) -> None:
        """Until the log shows ``what`` for ``query_id`` (e.g. a delivery not claimed)."""
        wait_until(
            lambda: self.lines(what, query_id) >= 1 or self.lines("claimed", query_id) > 1,
            f"{what} {query_id}",
        )
        assert self.lines("claimed", query_id) <= 1, f"{query_id} was claimed twice"

    def event(self, query_id: str) -> dict[str, Any]:
        """The job event the worker was handed for ``query_id``."""
        import json

        for line in self.log().splitlines():
            if line.startswith("fault-worker: event "):
                event = json.loads(line.removeprefix("fault-worker: event "))
                if event["record"]["query_id"] == query_id:
                    return dict(event)
        raise AssertionError(f"no event for {query_id}")

    def deliver(self, event: dict[str, Any]) -> None:
        """Hand ``event`` over again, as Lambda's asynchronous invoke does (202, no answer)."""
        response = httpx.post(
            f"{self.url}/2015-03-31/functions/neblina-worker-sql/invocations",
            json=event,
            headers={"X-Amz-Invocation-Type": "Event"},
            timeout=30,
        )
        assert response.status_code == 202


def hex12() -> str:
    return uuid.uuid4().hex[:12]


def post_job(url: str, token: str, query_id: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/datasets/PENGUIN/queries",
        json={**JOB_QUERY, "query_id": query_id},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )


def job_answer(response: httpx.Response) -> str:
    body = response.json()
    if response.status_code == 202:
        return f"202 {body['phase']}"
    if response.status_code == 200:
        return "200 replayed, free" if body["replayed"] else "200 (runs now)"
    return f"{response.status_code} {body['error']}"


def wait_until(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def settled_record(store: Any, query_id: str) -> Any:
    """The record once nothing runs it any more (done, failed, refunded)."""
    wait_until(
        lambda: store.get_query(query_id).state is not QueryState.RUNNING, f"{query_id} to end"
    )
    return store.get_query(query_id)


def shown(record: Any) -> str:
    if record is None:
        return "none"
    if record.state is QueryState.RUNNING:
        return f"running ({record.phase})"
    return str(record.state.value)


@pytest.mark.stack
def test_fault_injection_matrix_worker_cells(
    stack: Any, store: Any, make_researcher: Any, tmp_path: Path
) -> None:
    """Async jobs with the worker process killed at each step, the job delivered twice, the
    hand-over refused, and the front killed around the hand-over: each record ends done or
    under the lease rule, a mechanism runs at most once per debit, nothing is charged twice,
    and the same user's next job is accepted at once and completes."""
    cost = PrivacyCost(epsilon=Decimal("0.5"), delta=Decimal(0))
    worker = WorkerProcess(stack, tmp_path)
    worker.start()
    fronts: list[Any] = []

    def front_env() -> dict[str, str]:
        from stack import workers_config  # localstack/stack.py

        families = {**stack.workers, "sql": worker.url}
        return {
            "NEBLINA_JOB_LEASE_SECONDS": str(JOB_LEASE_SECONDS),
            "NEBLINA_RATE_LIMIT": "0",
            "NEBLINA_WORKERS": workers_config(families),
        }

    def start_front() -> Any:
        fronts.append(start_api_server(stack, front_env(), tmp_path, FAULT_SERVER))
        return fronts[-1]

    def new_cell(who: str, step: str, fault: str, query_id: str) -> JobCell:
        researcher = make_researcher({"PENGUIN": ("10", "0.001")})
        return JobCell(who, step, fault, researcher.user_id, researcher.token, query_id)

    def next_job(cell: JobCell) -> None:
        """The same user's next job, sent at once (to the session's own front and workers):
        accepted, then done."""
        before = store.get_grant(cell.user, "PENGUIN").spent
        response = post_job(stack.api_url, cell.token, f"next-{uuid.uuid4().hex}")
        assert response.status_code == 202, response.text
        done = settled_record(store, response.json()["query_id"])
        cell.new_query = f"202, {done.state.value}"
        assert store.get_grant(cell.user, "PENGUIN").spent == before + cost

    def observe(cell: JobCell, record: Any) -> None:
        cell.record = shown(record)
        cell.debit = (
            "none" if store.get_grant(cell.user, "PENGUIN").spent == PrivacyCost.zero() else "cost"
        )
        check_balanced(store, cell)

    from fault_server import job_fault_id
    from fault_worker import worker_fault_id

    cells: list[JobCell] = []
    try:
        front = start_front()
        # the front killed after the debit, before the hand-over (first: its lease runs out
        # while the other cells run)
        cell = new_cell("front", "before-submit", "kill", job_fault_id("before-submit", hex12()))
        cells.append(cell)
        with pytest.raises(httpx.TransportError):
            post_job(front.url, cell.token, cell.query_id)
        cell.answer = "connection lost"
        assert front.process.wait(timeout=30) == -9  # SIGKILL: nothing ran after it
        observe(cell, store.get_query(cell.query_id))
        front = start_front()
        next_job(cell)
        # the worker killed at each step of a job
        for step in ("before-load", "after-load", "during-mechanism", "after-archive"):
            cell = new_cell("worker", step, "kill", worker_fault_id(step, hex12()))
            cells.append(cell)
            cell.answer = job_answer(post_job(front.url, cell.token, cell.query_id))
            worker.killed()
            observe(cell, store.get_query(cell.query_id))
            next_job(cell)  # at once, while the killed job's record is still running
            if step == "during-mechanism":
                # the worker is down: the front's hand-over is refused (nothing listens)
                down = new_cell("worker", "unreachable", "hand-over refused", hex12())
                cells.append(down)
                down.answer = job_answer(post_job(front.url, down.token, down.query_id))
                observe(down, store.get_query(down.query_id))
                next_job(down)
            worker.restart()
            # Lambda delivers a failed asynchronous event again: the new worker gets it
            worker.deliver(worker.event(cell.query_id))
            worker.wait_for("not-claimed", cell.query_id)
            cell.delivery = "not claimed"
        # a synchronous query whose worker is killed: the front, waiting, settles the record
        for step in ("during-mechanism", "after-archive"):
            cell = new_cell("worker (sync)", step, "kill", worker_fault_id(step, hex12()))
            cell.wait = True
            cells.append(cell)
            cell.answer = answer(post(front.url, cell.token, cell.query_id))
            worker.killed()
            observe(cell, store.get_query(cell.query_id))
            next_job(cell)
            worker.restart()
        # the job handed to the worker twice
        twice = job_fault_id("deliver-twice", hex12())
        cell = new_cell("queue", "deliver-twice", "duplicate", twice)
        cells.append(cell)
        cell.answer = job_answer(post_job(front.url, cell.token, cell.query_id))
        observe(cell, settled_record(store, cell.query_id))
        worker.wait_for("not-claimed", twice)
        cell.delivery = "not claimed"
        next_job(cell)
        # the front killed after the hand-over, before its 202: the job runs on
        cell = new_cell("front", "after-submit", "kill", job_fault_id("after-submit", hex12()))
        cells.append(cell)
        with pytest.raises(httpx.TransportError):
            post_job(front.url, cell.token, cell.query_id)
        cell.answer = "connection lost"
        assert front.process.wait(timeout=30) == -9
        observe(cell, settled_record(store, cell.query_id))
        next_job(cell)
    finally:
        for api in fronts:
            api.stop()
        worker.stop()

    # the lease rule: once the leases have passed, no record is left running
    wait_until(
        lambda: (
            not any(
                (r := store.get_query(c.query_id)) is not None
                and r.state is QueryState.RUNNING
                and not r.lease_expired(utcnow())
                for c in cells
            )
        ),
        "the leases",
        timeout=JOB_LEASE_SECONDS + 30,
    )
    for cell in cells:
        cell.mechanisms = str(worker.lines("mechanism", cell.query_id))
        settle_job(stack, store, cell, cost)

    table = render_jobs(cells)
    print("\n" + table)
    for cell in cells:
        assert cell.row() == WORKER_EXPECTED[(cell.who, cell.step, cell.fault)], cell
        assert cell.new_query == "202, done"
        assert worker.lines("claimed", cell.query_id) <= 1  # one claim per debit, at most
    doc = (ROOT / "docs" / "crash-safety.md").read_text()
    assert table in doc, "docs/crash-safety.md does not show the worker matrix as observed"


def settle_job(stack: Any, store: Any, cell: JobCell, cost: PrivacyCost) -> None:
    """After the lease: the record as the API reads it (and writes back), then a retry."""
    headers = {"Authorization": f"Bearer {cell.token}"}
    response = httpx.get(
        f"{stack.api_url}/v1/datasets/PENGUIN/queries/{cell.query_id}", headers=headers, timeout=60
    )
    body = response.json()
    cell.settled = body["state"]
    if body["state"] == "failed" and (body["error"] or {}).get("error") == "interrupted":
        cell.settled = "failed (interrupted)"
        assert store.get_query(cell.query_id).state is QueryState.FAILED  # written back
    if body["state"] == "done":
        assert body["result"] is not None  # the release was archived, never lost
    spent = store.get_grant(cell.user, "PENGUIN").spent
    retry = (post if cell.wait else post_job)(stack.api_url, cell.token, cell.query_id)
    cell.retry = job_answer(retry)
    if retry.status_code == 202:
        cell.retry = "202 (runs now)"
        settled_record(store, cell.query_id)
    charged = store.get_grant(cell.user, "PENGUIN").spent - spent
    assert charged == (cost if cell.retry == "202 (runs now)" else PrivacyCost.zero())
    check_balanced(store, cell)


def render_jobs(cells: list[JobCell]) -> str:
    lines = [WORKER_COLUMNS, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(
            f"| {c.who} | {c.step} | {c.fault} | {c.answer} | {c.debit} | {c.record} "
            f"| {c.settled} | {c.mechanisms} | {c.delivery} | {c.retry} | {c.new_query} |"
        )
    return "\n".join(lines)
