"""Property tests of the ledger (hypothesis): random interleavings against a model, per backend.

Each example is a random sequence of ledger operations by two users on one dataset, a few
query ids shared between them, and four payloads with different costs (one with
SmartNoise's 31-digit δ slack), which soon exhaust the grant:

- ``reserve`` (a new id, or a retry of a known id with the same or another payload, by the
  same or the other user),
- ``finish`` (done or failed), ``refund``, ``expire`` (the lease rule, past the lease).

The store must do exactly what a small in-memory model says, and after every operation:
``spent + remaining == initial`` for both users, neither ``remaining`` is ever negative,
``spent`` equals the sum of the costs of the records that are not refunded, a record is
refunded at most once, and a retry of a known id is never charged (unless that id was
refunded, when the same payload may run again and pays once). The number of examples is
fixed and the generation derandomized, so a run is reproducible and bounded.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store_contract import new_dataset, new_user, now, record

from chalicelib.errors import BudgetExhausted, InternalError
from chalicelib.models import INTERRUPTED, PrivacyCost, QueryState
from chalicelib.storage import QueryIdTaken

EXAMPLES = 60
INITIAL = PrivacyCost(epsilon="1.3", delta="0.00015")
PAYLOADS = {
    "A": PrivacyCost(epsilon="0.5", delta="0.0000000000000009992007221626409"),
    "B": PrivacyCost(epsilon="1.25", delta="0.0001"),
    "C": PrivacyCost(epsilon="0.1", delta="0"),
    "D": PrivacyCost(epsilon="0.9", delta="0.00005"),
}
SLOTS = 4  # query ids per example, shared by both users
ERROR = {"error": "x", "message": "y"}

users = st.sampled_from([0, 1])
slots = st.integers(0, SLOTS - 1)
operations = st.one_of(
    st.tuples(st.just("reserve"), users, slots, st.sampled_from(sorted(PAYLOADS))),
    st.tuples(st.just("finish"), slots, st.sampled_from(["done", "failed"])),
    st.tuples(st.just("refund"), slots),
    st.tuples(st.just("expire"), slots),
)


@dataclass
class Model:
    """What the ledger must hold: each user's spend and each query id's record."""

    spent: list[PrivacyCost] = field(default_factory=lambda: [PrivacyCost.zero()] * 2)
    records: dict[int, dict[str, Any]] = field(default_factory=dict)  # slot -> user, payload, state


def run_example(backend: Any, dataset: str, ops: list[tuple[Any, ...]], seen: Counter[str]) -> None:
    people = [new_user(backend) for _ in range(2)]
    for user in people:
        backend.create_grant(user, dataset, INITIAL)
    ids = [uuid.uuid4().hex for _ in range(SLOTS)]
    model = Model()
    start = now()
    live: dict[int, Any] = {}  # slot -> the QueryRecord the store holds for it

    for op in ops:
        kind = op[0]
        if kind == "reserve":
            _, who, slot, payload = op
            amount = PAYLOADS[payload]
            attempt = record(people[who], dataset, amount, ids[slot], payload, start)
            known = model.records.get(slot)
            rerun = (
                known is not None
                and known["state"] == "refunded"
                and known["user"] == who
                and known["payload"] == payload
            )
            if known is not None and not rerun:
                with pytest.raises(QueryIdTaken):  # a retry is never charged
                    backend.reserve(attempt)
                seen["retry refused, not charged"] += 1
            elif not amount <= INITIAL - model.spent[who]:
                with pytest.raises(BudgetExhausted):
                    backend.reserve(attempt)
                seen["budget exhausted"] += 1
            else:
                backend.reserve(attempt)
                seen["rerun of a refunded id" if rerun else "debit"] += 1
                model.spent[who] = model.spent[who] + amount
                model.records[slot] = {"user": who, "payload": payload, "state": "running"}
                live[slot] = attempt
        elif kind == "finish":
            _, slot, state = op
            known = model.records.get(slot)
            if known is not None and known["state"] == "running":
                backend.finish(ids[slot], QueryState(state), start, result=None, error=None)
                known["state"] = state
                seen[f"finish {state}"] += 1
            else:
                with pytest.raises(InternalError):
                    backend.finish(ids[slot], QueryState(state), start)
                seen["finish refused"] += 1
        elif kind == "refund":
            _, slot = op
            known = model.records.get(slot)
            if known is not None and known["state"] == "running":
                backend.refund(live[slot], start, ERROR)
                model.spent[known["user"]] = model.spent[known["user"]] - PAYLOADS[known["payload"]]
                known["state"] = "refunded"
                seen["refund"] += 1
            elif slot in live:
                with pytest.raises(InternalError):  # never refunded twice, never after done
                    backend.refund(live[slot], start, ERROR)
                seen[
                    "second refund refused" if known["state"] == "refunded" else "refund refused"
                ] += 1
        else:  # expire: the lease rule, read after the 15-minute lease has passed
            _, slot = op
            known = model.records.get(slot)
            expected = known is not None and known["state"] == "running"
            later = start + timedelta(minutes=20)
            assert backend.expire_query(ids[slot], later, INTERRUPTED) is expected
            if expected:
                known["state"] = "failed"
            seen["lease expired" if expected else "expire: nothing to do"] += 1
        for who, user in enumerate(people):
            grant = backend.get_grant(user, dataset)
            assert grant.spent + grant.remaining == grant.initial == INITIAL
            assert grant.remaining.epsilon >= 0 and grant.remaining.delta >= 0
            assert grant.spent == model.spent[who], (op, grant.spent, model.spent[who])

    for slot, known in model.records.items():
        stored = backend.get_query(ids[slot])
        assert stored is not None and stored.state.value == known["state"], (slot, known)
        assert stored.user_id == people[known["user"]]
        assert stored.cost == PAYLOADS[known["payload"]]
    for who, user in enumerate(people):
        records = list(backend.iter_queries(user_id=user, dataset=dataset))
        charged = [r.cost for r in records if r.state is not QueryState.REFUNDED]
        assert sum(charged, PrivacyCost.zero()) == model.spent[who]


def test_random_interleavings_keep_the_ledger_exact(
    backend: Any, request: pytest.FixtureRequest
) -> None:
    dataset = new_dataset(backend)
    runs: list[int] = []
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(ops=st.lists(operations, min_size=4, max_size=16))
    def check(ops: list[tuple[Any, ...]]) -> None:
        runs.append(len(ops))
        run_example(backend, dataset, ops, seen)

    started = time.perf_counter()
    check()
    elapsed = time.perf_counter() - started
    name = request.node.callspec.id
    print(
        f"\nledger properties on {name}: {len(runs)} examples, {sum(runs)} operations, "
        f"{elapsed:.1f} s\n  outcomes: {dict(sorted(seen.items()))}"
    )
    assert len(runs) >= EXAMPLES


# --- amounts at every magnitude: the ledger's grid (docs/ledger.md, "Amounts") ---------------
AMOUNT_EXAMPLES = 25
AMOUNT_INITIAL = PrivacyCost(epsilon="5000", delta="0.5")


def engine_amounts(largest: int) -> st.SearchStrategy[Decimal]:
    """Exact engine charges from 1e-300 to 10**largest with up to 25 significant digits."""
    return st.builds(
        lambda mantissa, exponent: Decimal(mantissa).scaleb(exponent - 24),
        st.integers(10**24, 10**25 - 1),
        st.integers(-300, largest - 1),
    )


def test_charges_at_every_magnitude_are_debited_and_archived_exactly(
    backend: Any, request: pytest.FixtureRequest
) -> None:
    dataset = new_dataset(backend)
    debits: list[int] = []

    @settings(max_examples=AMOUNT_EXAMPLES, deadline=None, derandomize=True, database=None)
    @given(
        costs=st.lists(
            st.tuples(engine_amounts(3), st.one_of(st.just(Decimal(0)), engine_amounts(-3))),
            min_size=1,
            max_size=4,
        )
    )
    def check(costs: list[tuple[Decimal, Decimal]]) -> None:
        user = new_user(backend)
        backend.create_grant(user, dataset, AMOUNT_INITIAL)
        archived = []
        for epsilon, delta in costs:
            engine_charge = PrivacyCost(epsilon=epsilon, delta=delta)
            debit = engine_charge.charged()
            assert debit.epsilon >= epsilon and debit.delta >= delta  # never a smaller debit
            attempt = record(user, dataset, debit)
            try:
                backend.reserve(attempt)
            except BudgetExhausted:
                continue
            archived.append(attempt.query_id)
        stored = [backend.get_query(query_id) for query_id in archived]
        total = sum((r.cost for r in stored if r is not None), PrivacyCost.zero())
        grant = backend.get_grant(user, dataset)
        assert grant.spent == total  # the debit is the archived cost, digit for digit
        assert grant.remaining == AMOUNT_INITIAL - total  # exactly, no rounding anywhere
        debits.append(len(archived))

    started = time.perf_counter()
    check()
    print(
        f"\namounts on {request.node.callspec.id}: {len(debits)} examples, {sum(debits)} debits, "
        f"{time.perf_counter() - started:.1f} s"
    )
    assert sum(debits) >= AMOUNT_EXAMPLES


def test_an_amount_the_store_cannot_hold_exactly_is_refused_never_rounded(
    backend: Any, request: pytest.FixtureRequest
) -> None:
    """Off the grid on purpose: 1 - 1.0000000000000001e-39 needs 40 digits.

    DynamoDB refuses a Number it cannot hold exactly (the emulator now does too: it kept 28
    digits and rounded); MongoDB's Decimal128 (34 digits) cannot hold it either.
    """
    if request.node.callspec.id != "dynamodb":
        pytest.skip("the DynamoDB emulator's arithmetic")
    dataset = new_dataset(backend)
    user = new_user(backend)
    backend.create_grant(user, dataset, PrivacyCost(epsilon=1, delta=0))
    tiny = PrivacyCost(epsilon=Decimal("1.0000000000000001e-39"), delta=0)
    with pytest.raises(Exception):  # whatever the store raises: it refuses
        backend.reserve(record(user, dataset, tiny))
    grant = backend.get_grant(user, dataset)
    assert grant.spent == PrivacyCost.zero() and grant.remaining.epsilon == 1
