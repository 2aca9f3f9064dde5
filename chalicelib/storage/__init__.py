"""The storage interface: users, tokens, datasets, grants and the query ledger.

Backends implement :class:`Store`; the service depends only on this protocol. The ledger
primitives (``reserve``, ``finish``, ``refund``) each map to one atomic write in every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from chalicelib.errors import NeblinaError
from chalicelib.models import Dataset, Grant, PrivacyCost, QueryRecord, QueryState, Token, User


class QueryIdTaken(NeblinaError):
    """Raised by ``reserve`` when a record with this query id already exists."""

    status_code = 409
    code = "query_id_conflict"

    def __init__(self, existing: QueryRecord) -> None:
        super().__init__("query_id already used")
        self.existing = existing


class AlreadyExists(NeblinaError):
    """A create-only write found the item already there."""

    status_code = 409
    code = "conflict"


class Store(Protocol):
    """What the service needs from storage."""

    def create_schema(self) -> None:
        """Create the tables/collections and indexes if they do not exist (idempotent)."""

    # users -----------------------------------------------------------------------------
    def get_user(self, user_id: str) -> User | None:
        """One user, or None."""

    def put_user(self, user: User, *, create_only: bool = True) -> None:
        """Store a user; with ``create_only`` raise :class:`AlreadyExists` if present."""

    # tokens ----------------------------------------------------------------------------
    def get_token(self, token_hash: str) -> Token | None:
        """The token whose secret hashes to ``token_hash``, or None."""

    def put_token(self, token: Token) -> None:
        """Store a new token (create-only)."""

    # datasets --------------------------------------------------------------------------
    def get_dataset(self, name: str) -> Dataset | None:
        """One dataset, or None."""

    def put_dataset(self, dataset: Dataset, *, create_only: bool = True) -> None:
        """Store a dataset; with ``create_only`` raise :class:`AlreadyExists` if present."""

    # grants ----------------------------------------------------------------------------
    def get_grant(self, user_id: str, dataset: str) -> Grant | None:
        """The user's grant on the dataset, or None."""

    def list_grants(self, user_id: str) -> Sequence[Grant]:
        """All of a user's grants."""

    def create_grant(self, user_id: str, dataset: str, initial: PrivacyCost) -> Grant:
        """A new grant with nothing spent (create-only)."""

    # ledger ----------------------------------------------------------------------------
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
        """Move a running record to ``done`` or ``failed`` (conditional on it running)."""

    def refund(self, record: QueryRecord, finished_at: datetime, error: dict[str, str]) -> None:
        """Give the cost back and mark the record ``refunded``, atomically.

        Only for failures before any private data was read; conditional on the record
        still running, so a refund can never happen twice.
        """

    def get_query(self, query_id: str) -> QueryRecord | None:
        """One query record, or None."""

    def list_queries(
        self, user_id: str, dataset: str, limit: int, cursor: str | None
    ) -> tuple[list[QueryRecord], str | None]:
        """A user's records on a dataset, newest first, and the cursor of the next page."""


def get_store() -> Store:
    """The configured backend (``NEBLINA_STORE``), built once per process."""
    return _cached_store()


def _build_store() -> Store:
    from chalicelib.config import get_settings

    settings = get_settings()
    if settings.store == "dynamodb":
        from chalicelib.storage.dynamo import DynamoStore

        return DynamoStore(settings)
    raise ValueError(f"unknown NEBLINA_STORE {settings.store!r} (expected 'dynamodb')")


_STORE: list[Store] = []


def _cached_store() -> Store:
    if not _STORE:
        _STORE.append(_build_store())
    return _STORE[0]


def reset_store() -> None:
    """Forget the cached backend (tests switch configuration between runs)."""
    _STORE.clear()
