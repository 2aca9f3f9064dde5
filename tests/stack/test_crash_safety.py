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
