"""What every store shares: orchestration, failure diagnosis, messages, the cursor codec.

As Powertools' ``BasePersistenceLayer`` keeps everything but a few primitives, a backend
subclasses :class:`StoreBase` and writes only the single conditional writes this module
cannot express (the abstract ``_…`` methods) plus its reads. Whatever is decided *after* a
write failed (which condition failed, what to tell the administrator, whether to try again)
is decided here, once, the same way on every backend.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from datetime import datetime

from chalicelib.errors import (
    BelowSpent,
    BudgetExhausted,
    ConcurrentChange,
    InvalidRequest,
    ItemNotFound,
)
from chalicelib.models import (
    Dataset,
    DatasetCap,
    Grant,
    PrivacyCost,
    QueryRecord,
    QueryState,
    check_progress,
    format_decimal,
)

# Retry bounds. Each loop retries an optimistic write whose condition failed because
# something changed in between; the bound turns a pathological race into an error.
SHAPE_RETRIES = 3
"""Writes that assume whether a dataset is capped, retried when a cap appears or goes."""
CAP_CHANGE_RETRIES = 20
"""A cap's new limit is written against the spend read just before; debits move it."""
GRANT_SEED_RETRIES = 50
"""Bringing one grant under a cap while its owner keeps querying (MongoDB's S1-S4)."""
CAP_SEED_PASSES = 5
"""Passes over a dataset's grants until none is left outside its cap (MongoDB)."""
DEBIT_TRIES = 2
"""A refused debit is tried once more after stale reservations were released (MongoDB)."""


def new_attempt() -> str:
    """A fresh id for one write attempt, stored with what it writes (see :meth:`reserve`)."""
    return uuid.uuid4().hex


def below_spent_message(current: Grant, change: PrivacyCost) -> str:
    """Why ``change`` cannot be applied to ``current`` (the same words on every backend)."""
    wanted = current.initial + change
    return (
        f"refused: the grant of {current.user_id} on {current.dataset} would become "
        f"epsilon {format_decimal(wanted.epsilon)}, delta {format_decimal(wanted.delta)}, "
        f"below what was already spent (epsilon {format_decimal(current.spent.epsilon)}, "
        f"delta {format_decimal(current.spent.delta)}); spent budget cannot be taken back"
    )


def cap_below_message(dataset: str, limit: PrivacyCost, spent: PrivacyCost) -> str:
    """Why a cap of ``limit`` is refused."""
    return (
        f"refused: a cap of epsilon {format_decimal(limit.epsilon)}, delta "
        f"{format_decimal(limit.delta)} on {dataset} is below what its grants already spent "
        f"(epsilon {format_decimal(spent.epsilon)}, delta {format_decimal(spent.delta)})"
    )


def budget_exhausted(remaining: PrivacyCost, *, dataset_cap: bool = False) -> BudgetExhausted:
    """The refusal of a debit by the grant, or (``dataset_cap``) by the dataset's cap."""
    amounts = (
        f"remaining epsilon {format_decimal(remaining.epsilon)}, "
        f"remaining delta {format_decimal(remaining.delta)}"
    )
    if dataset_cap:
        return BudgetExhausted(
            f"not enough budget left on the dataset (its cap across all users): {amounts}"
        )
    return BudgetExhausted(f"not enough budget for this query: {amounts}")


def encode_cursor(owner: str, created_at: datetime, query_id: str) -> str:
    """The opaque cursor of a history page: the owner and the last record's position."""
    document = {"o": owner, "t": created_at.isoformat(), "q": query_id}
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode()


def decode_cursor(cursor: str, owner: str) -> tuple[datetime, str]:
    """The position in a cursor, refused (``InvalidRequest``) unless it is ``owner``'s own."""
    try:
        document = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        if not isinstance(document, dict) or set(document) != {"o", "t", "q"}:
            raise ValueError("shape")
        if document["o"] != owner or not isinstance(document["q"], str):
            raise ValueError("owner")
        created_at = datetime.fromisoformat(document["t"])
        if created_at.tzinfo is None:
            raise ValueError("naive time")
        return created_at, document["q"]
    except (ValueError, TypeError, UnicodeError, binascii.Error) as exc:
        raise InvalidRequest("invalid cursor") from exc


class StoreBase(ABC):
    """The shared half of every :class:`chalicelib.storage.Store`.

    Subclasses provide the reads the interface names, the ledger's writes (which differ in
    kind: one transaction on DynamoDB, a saga of single-document writes on MongoDB) and the
    primitives below; this class orchestrates grants, caps and the ledger's retries.
    """

    # reads every backend provides (part of the Store interface) ---------------------
    @abstractmethod
    def get_dataset(self, name: str) -> Dataset | None:
        """One dataset, or None."""

    @abstractmethod
    def get_grant(self, user_id: str, dataset: str) -> Grant | None:
        """The user's grant on the dataset, or None."""

    @abstractmethod
    def list_grants(
        self, user_id: str | None = None, *, dataset: str | None = None
    ) -> Sequence[Grant]:
        """Grants of a user, of a dataset, or all of them."""

    @abstractmethod
    def get_cap(self, dataset: str) -> DatasetCap | None:
        """The dataset-wide budget, or None."""

    @abstractmethod
    def iter_queries(
        self, *, user_id: str | None = None, dataset: str | None = None
    ) -> Iterator[QueryRecord]:
        """Every record of a user and/or a dataset, oldest first."""

    # primitives ------------------------------------------------------------------------
    @abstractmethod
    def _apply_grant_change(
        self,
        user_id: str,
        dataset: str,
        change: PrivacyCost,
        expected_initial: PrivacyCost | None,
    ) -> Grant | None:
        """One conditional write of :meth:`change_grant`; None when its condition failed."""

    @abstractmethod
    def _insert_cap(self, dataset: str, limit: PrivacyCost | None) -> bool:
        """Create the cap item (nothing spent, not complete); False if it already exists."""

    @abstractmethod
    def _write_cap_limit(self, current: DatasetCap, limit: PrivacyCost | None) -> bool:
        """Set the cap's limit (remaining = limit - spent), conditional on the spend still
        being ``current.spent``; False when the condition failed."""

    @abstractmethod
    def _bring_grants_under_cap(self, dataset: str) -> None:
        """Flag every grant of the dataset as capped, adding its spend to the cap exactly,
        then mark the cap complete (resumable: running it again finishes a crashed run)."""

    @abstractmethod
    def _reserve(self, record: QueryRecord, attempt: str) -> None:
        """The debit and the record of :meth:`reserve`, carrying ``attempt``.

        Raises :class:`QueryIdTaken` only when the record found under the id carries
        another attempt: a write of this attempt that landed before a retry (a lost
        response, an SDK retry) is this call's own and counts as success.
        """

    @abstractmethod
    def _write_progress(self, query_id: str, phase: str, progress: float | None) -> None:
        """The one write of :meth:`set_progress` (arguments already checked): conditional on
        the record running and not ``queued``; a failed condition is not an error."""

    # shared operations -----------------------------------------------------------------
    def change_grant(
        self,
        user_id: str,
        dataset: str,
        change: PrivacyCost,
        *,
        expected_initial: PrivacyCost | None = None,
    ) -> Grant:
        """See :meth:`chalicelib.storage.Grants.change_grant`; the diagnosis of a refusal
        reads the grant again, after the one conditional write failed."""
        changed = self._apply_grant_change(user_id, dataset, change, expected_initial)
        if changed is not None:
            return changed
        current = self.get_grant(user_id, dataset)
        if current is None:
            raise ItemNotFound(f"{user_id} holds no grant on {dataset}")
        if expected_initial is not None and current.initial != expected_initial:
            raise ConcurrentChange("the grant changed meanwhile; try again")
        raise BelowSpent(below_spent_message(current, change))

    def set_cap(self, dataset: str, limit: PrivacyCost | None) -> DatasetCap:
        """See :meth:`chalicelib.storage.Grants.set_cap`.

        Steps: (1) a new cap is refused below the grants' summed spend, then created empty;
        (2) an existing cap's limit is changed against the spend it holds, retried while
        debits move that spend; (3) every grant is brought under the cap, one at a time.
        """
        if self.get_dataset(dataset) is None:
            raise ItemNotFound(f"unknown dataset {dataset}")
        current = self.get_cap(dataset)
        if current is None:
            if limit is not None:
                grants = self.list_grants(dataset=dataset)
                total = sum((g.spent for g in grants), PrivacyCost.zero())
                if not total <= limit:
                    raise BelowSpent(cap_below_message(dataset, limit, total))
            if not self._insert_cap(dataset, limit):
                return self.set_cap(dataset, limit)  # created concurrently: change it instead
        else:
            for _ in range(CAP_CHANGE_RETRIES):
                if limit is not None and not current.spent <= limit:
                    raise BelowSpent(cap_below_message(dataset, limit, current.spent))
                if self._write_cap_limit(current, limit):
                    break
                fresh = self.get_cap(dataset)
                if fresh is None:
                    raise ItemNotFound(f"dataset {dataset} has no cap")
                current = fresh
            else:
                raise ConcurrentChange("the dataset-wide spend keeps changing; try again")
        self._bring_grants_under_cap(dataset)
        cap = self.get_cap(dataset)
        assert cap is not None
        return cap

    def reserve(self, record: QueryRecord) -> None:
        """See :meth:`chalicelib.storage.Ledger.reserve`: one attempt id per call, so the
        store (not its caller) tells its own retried write from another request's."""
        self._reserve(record, new_attempt())

    def set_progress(self, query_id: str, phase: str, progress: float | None) -> None:
        """See :meth:`chalicelib.storage.Ledger.set_progress`: the arguments are checked here,
        once for every backend, before anything is written."""
        check_progress(phase, progress)
        self._write_progress(query_id, str(phase), None if progress is None else float(progress))

    def reconcile(self) -> int:
        """See :meth:`chalicelib.storage.Ledger.reconcile`: nothing to settle by default."""
        return 0

    def find_release(self, user_id: str, dataset: str, reuse_key: str) -> QueryRecord | None:
        """See :meth:`chalicelib.storage.Ledger.find_release`: one read of the user's
        history on the dataset (``iter_queries``: DynamoDB's ``by_owner`` index, MongoDB's
        owner index), newest match first. The key is a digest kept in ``extra``."""
        found = None
        for record in self.iter_queries(user_id=user_id, dataset=dataset):
            if (
                record.user_id == user_id
                and record.dataset == dataset
                and record.state is QueryState.DONE
                and record.extra.get("reuse_key") == reuse_key
            ):
                found = record
        return found
