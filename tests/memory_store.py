"""An in-memory :class:`chalicelib.storage.Store` for service tests (one lock, no I/O)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from chalicelib.errors import BudgetExhausted, InvalidRequest, NoGrant
from chalicelib.models import Dataset, Grant, PrivacyCost, QueryRecord, QueryState, Token, User
from chalicelib.storage import AlreadyExists, QueryIdTaken


class MemoryStore:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users: dict[str, User] = {}
        self.tokens: dict[str, Token] = {}
        self.datasets: dict[str, Dataset] = {}
        self.grants: dict[tuple[str, str], Grant] = {}
        self.queries: dict[str, QueryRecord] = {}
        self.windows: dict[str, int] = {}

    def create_schema(self) -> None:
        pass

    def get_user(self, user_id: str) -> User | None:
        return self.users.get(user_id)

    def put_user(self, user: User, *, create_only: bool = True) -> None:
        with self.lock:
            if create_only and user.user_id in self.users:
                raise AlreadyExists("user")
            self.users[user.user_id] = user

    def get_token(self, token_hash: str) -> Token | None:
        return self.tokens.get(token_hash)

    def put_token(self, token: Token) -> None:
        with self.lock:
            if token.token_hash in self.tokens:
                raise AlreadyExists("token")
            self.tokens[token.token_hash] = token

    def touch_token(self, token_hash: str, used_at: datetime, resolution: timedelta) -> bool:
        with self.lock:
            token = self.tokens[token_hash]
            if token.last_used_at is not None and token.last_used_at > used_at - resolution:
                return False
            self.tokens[token_hash] = dataclasses.replace(token, last_used_at=used_at)
            return True

    def expire_token(self, token_hash: str, expires_at: datetime) -> None:
        with self.lock:
            token = self.tokens[token_hash]
            if token.expires_at is None or token.expires_at > expires_at:
                self.tokens[token_hash] = dataclasses.replace(token, expires_at=expires_at)

    def take_request(
        self, user_id: str, window_start: datetime, window_seconds: int, limit: int
    ) -> bool:
        with self.lock:
            key = f"{user_id}#{int(window_start.timestamp())}"
            if self.windows.get(key, 0) >= limit:
                return False
            self.windows[key] = self.windows.get(key, 0) + 1
            return True

    def get_dataset(self, name: str) -> Dataset | None:
        return self.datasets.get(name)

    def put_dataset(self, dataset: Dataset, *, create_only: bool = True) -> None:
        with self.lock:
            if create_only and dataset.name in self.datasets:
                raise AlreadyExists("dataset")
            self.datasets[dataset.name] = dataset

    def get_grant(self, user_id: str, dataset: str) -> Grant | None:
        return self.grants.get((user_id, dataset))

    def list_grants(self, user_id: str) -> Sequence[Grant]:
        return [g for (u, _), g in sorted(self.grants.items()) if u == user_id]

    def create_grant(self, user_id: str, dataset: str, initial: PrivacyCost) -> Grant:
        with self.lock:
            if (user_id, dataset) in self.grants:
                raise AlreadyExists("grant")
            grant = Grant(user_id, dataset, initial, PrivacyCost.zero(), initial)
            self.grants[(user_id, dataset)] = grant
            return grant

    def reserve(self, record: QueryRecord) -> None:
        with self.lock:
            existing = self.queries.get(record.query_id)
            replaceable = (
                existing is not None
                and existing.state is QueryState.REFUNDED
                and existing.payload_hash == record.payload_hash
                and existing.user_id == record.user_id
            )
            if existing is not None and not replaceable:
                raise QueryIdTaken(existing)
            grant = self.grants.get((record.user_id, record.dataset))
            if grant is None:
                raise NoGrant("no grant")
            if not record.cost <= grant.remaining:
                raise BudgetExhausted("not enough budget")
            self.grants[(record.user_id, record.dataset)] = dataclasses.replace(
                grant, spent=grant.spent + record.cost, remaining=grant.remaining - record.cost
            )
            self.queries[record.query_id] = record

    def finish(
        self,
        query_id: str,
        state: QueryState,
        finished_at: datetime,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        with self.lock:
            record = self.queries[query_id]
            assert record.state is QueryState.RUNNING
            self.queries[query_id] = dataclasses.replace(
                record, state=state, finished_at=finished_at, result=result, error=error
            )

    def refund(self, record: QueryRecord, finished_at: datetime, error: dict[str, str]) -> None:
        with self.lock:
            current = self.queries[record.query_id]
            assert current.state is QueryState.RUNNING
            grant = self.grants[(record.user_id, record.dataset)]
            self.grants[(record.user_id, record.dataset)] = dataclasses.replace(
                grant, spent=grant.spent - record.cost, remaining=grant.remaining + record.cost
            )
            self.queries[record.query_id] = dataclasses.replace(
                current, state=QueryState.REFUNDED, finished_at=finished_at, error=error
            )

    def expire_query(self, query_id: str, now: datetime, error: dict[str, str]) -> bool:
        with self.lock:
            record = self.queries[query_id]
            if not record.lease_expired(now):
                return False
            self.queries[query_id] = dataclasses.replace(
                record, state=QueryState.FAILED, finished_at=now, error=error
            )
            return True

    def get_query(self, query_id: str) -> QueryRecord | None:
        return self.queries.get(query_id)

    def list_queries(
        self, user_id: str, dataset: str, limit: int, cursor: str | None
    ) -> tuple[list[QueryRecord], str | None]:
        mine = sorted(
            (q for q in self.queries.values() if q.user_id == user_id and q.dataset == dataset),
            key=lambda q: q.created_at,
            reverse=True,
        )
        start = 0
        if cursor is not None:
            if not cursor.isdigit():
                raise InvalidRequest("invalid cursor")
            start = int(cursor)
        page = mine[start : start + limit]
        more = start + limit < len(mine)
        return page, str(start + limit) if more else None
