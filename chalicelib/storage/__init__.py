"""The storage interface: users, tokens, datasets, grants, dataset caps and the query ledger.

Backends implement :class:`Store`; the service and the admin tools depend only on this
protocol, and ``tests/contract/`` runs one suite against every backend. The ledger
primitives (``reserve``, ``finish``, ``refund``) are one transaction on DynamoDB and an
ordered, crash-safe sequence of single-document conditional updates on MongoDB (see
``docs/ledger.md``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from chalicelib.errors import (
    AlreadyExists,
    BelowSpent,
    ConcurrentChange,
    ItemNotFound,
    QueryIdTaken,
)
from chalicelib.models import (
    Dataset,
    DatasetCap,
    Grant,
    PrivacyCost,
    QueryRecord,
    QueryState,
    Token,
    User,
)

__all__ = [
    "AlreadyExists",
    "BelowSpent",
    "ConcurrentChange",
    "Directory",
    "Grants",
    "ItemNotFound",
    "Ledger",
    "QueryIdTaken",
    "RateLimiter",
    "Store",
    "get_store",
    "reset_store",
]


class Directory(Protocol):
    """Who and what: users, their tokens, the datasets."""

    # users -----------------------------------------------------------------------------
    def get_user(self, user_id: str) -> User | None:
        """One user, or None."""

    def put_user(self, user: User, *, create_only: bool = True) -> None:
        """Store a user; with ``create_only`` raise :class:`AlreadyExists` if present."""

    def list_users(self) -> list[User]:
        """Every user, by id."""

    def delete_user(self, user_id: str) -> None:
        """Delete a user record (:class:`ItemNotFound` if absent). Grants, tokens and the
        archive are separate items: the admin layer decides what happens to them."""

    # tokens ----------------------------------------------------------------------------
    def get_token(self, token_hash: str) -> Token | None:
        """The token whose secret hashes to ``token_hash``, or None."""

    def put_token(self, token: Token) -> None:
        """Store a new token (create-only)."""

    def list_tokens(self, user_id: str | None = None) -> list[Token]:
        """A user's tokens (all tokens when ``user_id`` is None), oldest first."""

    def revoke_token(self, token_hash: str) -> None:
        """Mark a token revoked (:class:`ItemNotFound` if absent). Idempotent."""

    def expire_token(self, token_hash: str, expires_at: datetime) -> None:
        """Make a token expire at ``expires_at`` unless it already expires earlier.

        One conditional write that only ever shortens a token's life (rotation with a grace
        period); :class:`ItemNotFound` if the token does not exist.
        """

    def touch_token(self, token_hash: str, used_at: datetime, resolution: timedelta) -> bool:
        """Record a token's last use, unless a use within ``resolution`` is already recorded.

        One conditional write (``last_used_at`` absent or older than ``used_at -
        resolution``); returns whether it wrote. Concurrent requests of the same token
        write at most once per ``resolution``.
        """

    # datasets --------------------------------------------------------------------------
    def get_dataset(self, name: str) -> Dataset | None:
        """One dataset, or None."""

    def put_dataset(self, dataset: Dataset, *, create_only: bool = True) -> None:
        """Store a dataset; with ``create_only`` raise :class:`AlreadyExists` if present."""

    def list_datasets(self) -> list[Dataset]:
        """Every dataset, by name."""

    def delete_dataset(self, name: str) -> None:
        """Delete a dataset and its cap (:class:`ItemNotFound` if absent); grants are the
        admin layer's business, the archive is never deleted."""


class Grants(Protocol):
    """Budgets: each user's grant on a dataset, and the dataset-wide caps."""

    def get_grant(self, user_id: str, dataset: str) -> Grant | None:
        """The user's grant on the dataset, or None."""

    def list_grants(
        self, user_id: str | None = None, *, dataset: str | None = None
    ) -> Sequence[Grant]:
        """Grants of a user, of a dataset, or all of them (both None), by (user, dataset)."""

    def create_grant(self, user_id: str, dataset: str, initial: PrivacyCost) -> Grant:
        """A new grant with nothing spent (create-only; :class:`AlreadyExists`).

        When the dataset has a cap the grant is created under it (``capped``), checked in
        the same write, so no grant can escape a cap set concurrently.
        """

    def change_grant(
        self,
        user_id: str,
        dataset: str,
        change: PrivacyCost,
        *,
        expected_initial: PrivacyCost | None = None,
    ) -> Grant:
        """Add ``change`` (either sign) to the grant's initial and remaining, atomically.

        Conditional on ``remaining + change >= 0`` for ε and δ, i.e. the new initial is never
        below what was spent (:class:`BelowSpent`), and, when ``expected_initial`` is given,
        on the initial being that value (:class:`ConcurrentChange`). ``spent`` never changes.
        """

    def delete_grant(self, user_id: str, dataset: str) -> None:
        """Remove a grant (:class:`ItemNotFound` if absent). Its spend stays counted in the
        dataset's cap and in the archive."""

    def get_cap(self, dataset: str) -> DatasetCap | None:
        """The dataset-wide budget, or None when the dataset was never capped."""

    def set_cap(self, dataset: str, limit: PrivacyCost | None) -> DatasetCap:
        """Create or change a dataset's cap (``limit`` None: count the spend, no limit).

        A new cap starts from the current spend of every existing grant, brought under the
        cap one grant at a time, each in one atomic step; running it again resumes an
        interrupted run. A limit below the dataset-wide spend raises :class:`BelowSpent`.
        """


class Ledger(Protocol):
    """The query records and the debits they carry: reserve, claim, progress, finish, refund,
    expire."""

    def reserve(self, record: QueryRecord) -> None:
        """Debit ``record.cost`` from the grant and create ``record``, atomically.

        One conditional write: the grant must exist and have ``remaining >= cost`` for both ε
        and δ, and no record with this query id may exist. Raises :class:`QueryIdTaken`
        (carrying the existing record) when the id is taken, otherwise ``NoGrant`` or
        ``BudgetExhausted``. Nothing is written when it raises.
        """

    def finish(
        self,
        query_id: str,
        state: QueryState,
        finished_at: datetime,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        """Move a running record to ``done`` or ``failed`` (conditional on it running).

        Like :meth:`refund` and :meth:`expire_query`, it clears ``phase`` and ``progress``
        in the same write: they describe running work only.
        """

    def refund(self, record: QueryRecord, finished_at: datetime, error: dict[str, str]) -> None:
        """Give the cost back and mark the record ``refunded``, atomically.

        Only for failures before any private data was read; conditional on the record
        still running, so a refund can never happen twice.
        """

    def expire_query(self, query_id: str, now: datetime, error: dict[str, str]) -> bool:
        """Persist the lease rule: a record still ``running`` after its lease becomes ``failed``.

        One write, conditional on the record running and ``lease_expires_at <= now``; returns
        whether it changed the record. The spend stands (nobody can tell whether a mechanism
        saw the data). A request that outlived its lease can then no longer complete its
        record, so it releases nothing.
        """

    def claim(self, query_id: str, now: datetime) -> QueryRecord | None:
        """Take a queued job: the one gate before a job worker may read any data.

        One conditional write: the record is ``running``, its phase is ``queued`` and its
        lease has not expired at ``now``; it moves to phase ``loading`` (progress None) and
        the updated record is returned. Otherwise (claimed already, settled, expired,
        missing) nothing is written and it returns None, so of any number of deliveries of
        one job exactly one gets the record.
        """

    def set_progress(self, query_id: str, phase: str, progress: float | None) -> None:
        """Show where a running record's work is: ``phase`` and ``progress`` (0..1 or None).

        One write conditional on the record being ``running`` and past ``queued`` (only
        :meth:`claim` leaves ``queued``); otherwise (settled, queued, missing) a no-op that
        never raises. ``phase`` must be ``loading``, ``running`` or ``archiving``, else
        ``ValueError`` (a programming error, checked before anything is written).
        """

    def get_query(self, query_id: str) -> QueryRecord | None:
        """One query record, or None."""

    def list_queries(
        self, user_id: str, dataset: str, limit: int, cursor: str | None
    ) -> tuple[list[QueryRecord], str | None]:
        """A user's records on a dataset, newest first, and the cursor of the next page."""

    def iter_queries(
        self, *, user_id: str | None = None, dataset: str | None = None
    ) -> Iterator[QueryRecord]:
        """Every record of a user and/or a dataset, oldest first (the archive export)."""

    def find_release(self, user_id: str, dataset: str, reuse_key: str) -> QueryRecord | None:
        """The user's newest ``done`` record on the dataset whose ``extra["reuse_key"]`` is
        ``reuse_key`` (identical-query reuse, docs/api.md), or None. Never another user's."""

    def reconcile(self) -> int:
        """Settle reservations that crashed requests left half-written; returns how many.

        Only backends whose ledger writes are not transactions leave any (MongoDB: pending
        entries older than the query lease); elsewhere it returns 0.
        """


class RateLimiter(Protocol):
    """Fixed-window request counters."""

    def take_request(
        self,
        user_id: str,
        window_start: datetime,
        window_seconds: int,
        limit: int,
        count: int = 1,
    ) -> bool:
        """Count ``count`` requests of ``user_id`` in the fixed window at ``window_start``.

        One atomic conditional write on a counter keyed by (user, window): the count goes up
        by ``count`` only if it stays within ``limit``; returns False (nothing counted)
        otherwise. Counters expire on their own after the window. The service takes a few
        requests at once and serves them from its process (``Service._throttle``).
        """


class Store(Directory, Grants, Ledger, RateLimiter, Protocol):
    """What the service and the admin tools need from storage: every role, one backend.

    Backends subclass :class:`chalicelib.storage.base.StoreBase`, which holds what they
    share; ``tests/contract/`` runs one suite against each of them.
    """

    def create_schema(self) -> None:
        """Create the tables/collections and indexes if they do not exist (idempotent)."""


def get_store() -> Store:
    """The configured backend (``NEBLINA_STORE``), built once per process."""
    return _cached_store()


def _build_store() -> Store:
    from chalicelib.config import get_settings

    settings = get_settings()
    if settings.store == "dynamodb":
        from chalicelib.storage.dynamo import DynamoStore

        return DynamoStore(settings)
    if settings.store == "mongodb":
        from chalicelib.storage.mongo import MongoStore

        return MongoStore.from_settings(settings)
    raise ValueError(f"unknown NEBLINA_STORE {settings.store!r} (expected dynamodb or mongodb)")


_STORE: list[Store] = []


def _cached_store() -> Store:
    if not _STORE:
        _STORE.append(_build_store())
    return _STORE[0]


def reset_store() -> None:
    """Forget the cached backend (tests switch configuration between runs)."""
    _STORE.clear()
