"""An in-memory :class:`chalicelib.storage.Store`: one process, one lock, no I/O.

For tests of the service and the admin tools, and for trying things out; never selected by
``NEBLINA_STORE``. It runs the same contract suite as DynamoDB and MongoDB
(``tests/contract/``), so what a test proves with it holds for the real backends. Each
method holds the lock for its whole write, which is what makes it atomic; the dictionaries
are public so a test can arrange a state directly (a disabled user, a changed source).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from chalicelib.errors import (
    AlreadyExists,
    InternalError,
    ItemNotFound,
    NoGrant,
    QueryIdTaken,
)
from chalicelib.models import (
    Dataset,
    DatasetCap,
    Grant,
    PrivacyCost,
    QueryPhase,
    QueryRecord,
    QueryState,
    Token,
    User,
)
from chalicelib.storage import Store
from chalicelib.storage.base import StoreBase, budget_exhausted, decode_cursor, encode_cursor


class MemoryStore(StoreBase):
    """:class:`chalicelib.storage.Store` in dictionaries."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.users: dict[str, User] = {}
        self.tokens: dict[str, Token] = {}
        self.datasets: dict[str, Dataset] = {}
        self.grants: dict[tuple[str, str], Grant] = {}
        self.caps: dict[str, DatasetCap] = {}
        self.queries: dict[str, QueryRecord] = {}
        self.windows: dict[str, int] = {}
        # per query id: the reserve attempt that wrote it and whether it debited a cap
        self._attempts: dict[str, str] = {}
        self._capped_queries: set[str] = set()

    def create_schema(self) -> None:
        """Nothing to create."""

    # users ---------------------------------------------------------------------------
    def get_user(self, user_id: str) -> User | None:
        return self.users.get(user_id)

    def put_user(self, user: User, *, create_only: bool = True) -> None:
        with self.lock:
            if create_only and user.user_id in self.users:
                raise AlreadyExists(f"user {user.user_id} already exists")
            self.users[user.user_id] = user

    def list_users(self) -> list[User]:
        return [self.users[k] for k in sorted(self.users)]

    def delete_user(self, user_id: str) -> None:
        with self.lock:
            if self.users.pop(user_id, None) is None:
                raise ItemNotFound(f"no user {user_id}")

    # tokens --------------------------------------------------------------------------
    def get_token(self, token_hash: str) -> Token | None:
        return self.tokens.get(token_hash)

    def put_token(self, token: Token) -> None:
        with self.lock:
            if token.token_hash in self.tokens:
                raise AlreadyExists("token already exists")
            self.tokens[token.token_hash] = token

    def list_tokens(self, user_id: str | None = None) -> list[Token]:
        tokens = [t for t in self.tokens.values() if user_id is None or t.user_id == user_id]
        return sorted(tokens, key=lambda t: (t.created_at, t.token_id))

    def _change_token(self, token_hash: str, **changes: Any) -> None:
        token = self.tokens.get(token_hash)
        if token is None:
            raise ItemNotFound("no such token")
        self.tokens[token_hash] = dataclasses.replace(token, **changes)

    def revoke_token(self, token_hash: str) -> None:
        with self.lock:
            self._change_token(token_hash, revoked=True)

    def expire_token(self, token_hash: str, expires_at: datetime) -> None:
        with self.lock:
            token = self.tokens.get(token_hash)
            current = token.expires_at if token is not None else None
            if current is not None and current <= expires_at:
                return  # only ever shortens: a later expiry stays as it is
            self._change_token(token_hash, expires_at=expires_at)

    def touch_token(self, token_hash: str, used_at: datetime, resolution: timedelta) -> bool:
        with self.lock:
            token = self.tokens.get(token_hash)
            if token is None:
                return False
            if token.last_used_at is not None and token.last_used_at > used_at - resolution:
                return False
            self._change_token(token_hash, last_used_at=used_at)
            return True

    # datasets ------------------------------------------------------------------------
    def get_dataset(self, name: str) -> Dataset | None:
        return self.datasets.get(name)

    def put_dataset(self, dataset: Dataset, *, create_only: bool = True) -> None:
        with self.lock:
            if create_only and dataset.name in self.datasets:
                raise AlreadyExists(f"dataset {dataset.name} already exists")
            self.datasets[dataset.name] = dataset

    def list_datasets(self) -> list[Dataset]:
        return [self.datasets[k] for k in sorted(self.datasets)]

    def delete_dataset(self, name: str) -> None:
        with self.lock:
            if self.datasets.pop(name, None) is None:
                raise ItemNotFound(f"no dataset {name}")
            self.caps.pop(name, None)

    # grants --------------------------------------------------------------------------
    def get_grant(self, user_id: str, dataset: str) -> Grant | None:
        return self.grants.get((user_id, dataset))

    def list_grants(
        self, user_id: str | None = None, *, dataset: str | None = None
    ) -> Sequence[Grant]:
        return [
            grant
            for (user, name), grant in sorted(self.grants.items())
            if (user_id is None or user == user_id) and (dataset is None or name == dataset)
        ]

    def create_grant(self, user_id: str, dataset: str, initial: PrivacyCost) -> Grant:
        with self.lock:
            if user_id not in self.users:
                raise ItemNotFound(f"unknown user {user_id}")
            if dataset not in self.datasets:
                raise ItemNotFound(f"unknown dataset {dataset}")
            if (user_id, dataset) in self.grants:
                raise AlreadyExists(f"{user_id} already holds a grant on {dataset}")
            capped = dataset in self.caps  # nothing spent yet: nothing to add to the cap
            grant = Grant(user_id, dataset, initial, PrivacyCost.zero(), initial, capped=capped)
            self.grants[(user_id, dataset)] = grant
            return grant

    def _apply_grant_change(
        self,
        user_id: str,
        dataset: str,
        change: PrivacyCost,
        expected_initial: PrivacyCost | None,
    ) -> Grant | None:
        with self.lock:
            grant = self.grants.get((user_id, dataset))
            if (
                grant is None
                or not PrivacyCost.zero() <= grant.remaining + change
                or (expected_initial is not None and grant.initial != expected_initial)
            ):
                return None
            changed = dataclasses.replace(
                grant, initial=grant.initial + change, remaining=grant.remaining + change
            )
            self.grants[(user_id, dataset)] = changed
            return changed

    def delete_grant(self, user_id: str, dataset: str) -> None:
        with self.lock:
            if self.grants.pop((user_id, dataset), None) is None:
                raise ItemNotFound(f"no grant {user_id}/{dataset}")

    # dataset caps --------------------------------------------------------------------
    def get_cap(self, dataset: str) -> DatasetCap | None:
        return self.caps.get(dataset)

    def _insert_cap(self, dataset: str, limit: PrivacyCost | None) -> bool:
        with self.lock:
            if dataset in self.caps:
                return False
            self.caps[dataset] = DatasetCap(dataset, limit, PrivacyCost.zero(), complete=False)
            return True

    def _write_cap_limit(self, current: DatasetCap, limit: PrivacyCost | None) -> bool:
        with self.lock:
            cap = self.caps.get(current.dataset)
            if cap is None or cap.spent != current.spent:
                return False
            self.caps[current.dataset] = dataclasses.replace(cap, limit=limit)
            return True

    def _bring_grants_under_cap(self, dataset: str) -> None:
        with self.lock:
            cap = self.caps[dataset]
            for grant in self.list_grants(dataset=dataset):
                if not grant.capped:
                    cap = dataclasses.replace(cap, spent=cap.spent + grant.spent)
                    key = (grant.user_id, dataset)
                    self.grants[key] = dataclasses.replace(grant, capped=True)
            self.caps[dataset] = dataclasses.replace(cap, complete=True)

    # ledger --------------------------------------------------------------------------
    def _reserve(self, record: QueryRecord, attempt: str) -> None:
        with self.lock:
            existing = self.queries.get(record.query_id)
            if existing is not None and not (
                existing.state is QueryState.REFUNDED
                and existing.payload_hash == record.payload_hash
                and existing.user_id == record.user_id
            ):
                if self._attempts.get(record.query_id) == attempt:
                    return  # this attempt's own record
                raise QueryIdTaken(existing)
            key = (record.user_id, record.dataset)
            grant = self.grants.get(key)
            if grant is None:
                raise NoGrant(f"no grant on dataset {record.dataset}")
            if not record.cost <= grant.remaining:
                raise budget_exhausted(grant.remaining)
            cap = self.caps.get(record.dataset) if grant.capped else None
            if grant.capped:
                if cap is None:
                    raise InternalError()  # a capped grant always has its cap
                if cap.remaining is not None and not record.cost <= cap.remaining:
                    raise budget_exhausted(cap.remaining, dataset_cap=True)
                self.caps[record.dataset] = dataclasses.replace(cap, spent=cap.spent + record.cost)
                self._capped_queries.add(record.query_id)
            else:
                self._capped_queries.discard(record.query_id)
            self.grants[key] = dataclasses.replace(
                grant, spent=grant.spent + record.cost, remaining=grant.remaining - record.cost
            )
            self.queries[record.query_id] = record
            self._attempts[record.query_id] = attempt

    def _running(self, query_id: str) -> QueryRecord:
        record = self.queries.get(query_id)
        if record is None or record.state is not QueryState.RUNNING:
            raise InternalError()
        return record

    def finish(
        self,
        query_id: str,
        state: QueryState,
        finished_at: datetime,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        with self.lock:
            record = self._running(query_id)
            self.queries[query_id] = dataclasses.replace(
                record,
                state=state,
                finished_at=finished_at,
                result=result,
                error=error,
                phase=None,
                progress=None,
            )

    def refund(self, record: QueryRecord, finished_at: datetime, error: dict[str, str]) -> None:
        with self.lock:
            current = self._running(record.query_id)
            cost = current.cost
            key = (current.user_id, current.dataset)
            grant = self.grants.get(key)
            if grant is None:
                raise InternalError()
            self.grants[key] = dataclasses.replace(
                grant, spent=grant.spent - cost, remaining=grant.remaining + cost
            )
            cap = self.caps.get(current.dataset)
            if record.query_id in self._capped_queries and cap is not None:
                self.caps[current.dataset] = dataclasses.replace(cap, spent=cap.spent - cost)
            self.queries[record.query_id] = dataclasses.replace(
                current,
                state=QueryState.REFUNDED,
                finished_at=finished_at,
                error=error,
                phase=None,
                progress=None,
            )

    def expire_query(self, query_id: str, now: datetime, error: dict[str, str]) -> bool:
        with self.lock:
            record = self.queries.get(query_id)
            if record is None or not record.lease_expired(now):
                return False
            self.queries[query_id] = dataclasses.replace(
                record,
                state=QueryState.FAILED,
                finished_at=now,
                error=error,
                phase=None,
                progress=None,
            )
            return True

    def claim(self, query_id: str, now: datetime) -> QueryRecord | None:
        with self.lock:
            record = self.queries.get(query_id)
            if (
                record is None
                or record.state is not QueryState.RUNNING
                or record.phase != QueryPhase.QUEUED
                or record.lease_expired(now)
            ):
                return None
            claimed = dataclasses.replace(record, phase=QueryPhase.LOADING.value, progress=None)
            self.queries[query_id] = claimed
            return claimed

    def _write_progress(self, query_id: str, phase: str, progress: float | None) -> None:
        with self.lock:
            record = self.queries.get(query_id)
            if (
                record is None
                or record.state is not QueryState.RUNNING
                or record.phase == QueryPhase.QUEUED
            ):
                return
            self.queries[query_id] = dataclasses.replace(record, phase=phase, progress=progress)

    def get_query(self, query_id: str) -> QueryRecord | None:
        return self.queries.get(query_id)

    def list_queries(
        self, user_id: str, dataset: str, limit: int, cursor: str | None
    ) -> tuple[list[QueryRecord], str | None]:
        owner = f"{user_id}#{dataset}"
        mine = sorted(
            (q for q in self.queries.values() if q.user_id == user_id and q.dataset == dataset),
            key=lambda q: (q.created_at, q.query_id),
            reverse=True,
        )
        if cursor:
            position = decode_cursor(cursor, owner)
            mine = [q for q in mine if (q.created_at, q.query_id) < position]
        page = mine[:limit]
        if len(mine) <= limit:
            return page, None
        return page, encode_cursor(owner, page[-1].created_at, page[-1].query_id)

    def iter_queries(
        self, *, user_id: str | None = None, dataset: str | None = None
    ) -> Iterator[QueryRecord]:
        selected = [
            q
            for q in self.queries.values()
            if (user_id is None or q.user_id == user_id)
            and (dataset is None or q.dataset == dataset)
        ]
        yield from sorted(selected, key=lambda q: (q.created_at, q.query_id))

    # rate limits ---------------------------------------------------------------------
    def take_request(
        self,
        user_id: str,
        window_start: datetime,
        window_seconds: int,
        limit: int,
        count: int = 1,
    ) -> bool:
        with self.lock:
            key = f"{user_id}#{int(window_start.timestamp())}"
            if self.windows.get(key, 0) + count > limit:
                return False
            self.windows[key] = self.windows.get(key, 0) + count
            return True


def as_store(store: MemoryStore) -> Store:
    """The store as the interface the service takes (mypy proves it implements all of it)."""
    return store
