"""DynamoDB backend (PynamoDB).

Tables (names prefixed with ``NEBLINA_TABLE_PREFIX``; the Terraform module creates the same):

==========  ==========================  ======================================================
table       key                         notes
==========  ==========================  ======================================================
users       user_id (S)
tokens      token_hash (S)              GSI ``by_user`` (user_id); TTL attribute ``purge_at``
datasets    name (S)                    per-query cap, hardened flag and latency bucket
grants      user_id (S) + dataset (S)   ε/δ as DynamoDB Numbers (exact decimals); ``capped``
caps        dataset (S)                 dataset-wide budget (only for datasets given a cap)
queries     query_id (S)                GSI ``by_owner`` (owner_key = user#dataset, created_at)
ratelimits  window_key (S)              TTL attribute ``purge_at``; ``hits`` per user and window
==========  ==========================  ======================================================

A debit on an uncapped dataset is a two-item transaction (query record + grant). On a
capped dataset it has a third item, the ``caps`` item, with its own condition. Which one a
grant needs is recorded on the grant (``capped``) and checked by the grant's condition, so
a cap set concurrently can never be bypassed: the transaction fails and is retried with the
other shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from pynamodb.connection import Connection
from pynamodb.constants import DATETIME_FORMAT
from pynamodb.exceptions import (
    DeleteError,
    DoesNotExist,
    PutError,
    TransactWriteError,
    UpdateError,
)
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from chalicelib.config import Settings
from chalicelib.errors import (
    AlreadyExists,
    ConcurrentChange,
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
from chalicelib.storage.base import (
    SHAPE_RETRIES,
    StoreBase,
    budget_exhausted,
    decode_cursor,
    encode_cursor,
    new_attempt,
)
from chalicelib.storage.dynamo_models import (
    CONNECT_TIMEOUT_SECONDS,
    MAX_RETRY_ATTEMPTS,
    READ_TIMEOUT_SECONDS,
    CapModel,
    DatasetModel,
    GrantModel,
    Models,
    QueryModel,
    TokenModel,
    UserModel,
    build_models,
)

CONDITION_FAILED = "ConditionalCheckFailed"


def _owner_key(user_id: str, dataset: str) -> str:
    return f"{user_id}#{dataset}"


def _grant(item: GrantModel) -> Grant:
    return Grant(
        user_id=item.user_id,
        dataset=item.dataset,
        initial=PrivacyCost(epsilon=item.initial_epsilon, delta=item.initial_delta),
        spent=PrivacyCost(epsilon=item.spent_epsilon, delta=item.spent_delta),
        remaining=PrivacyCost(epsilon=item.remaining_epsilon, delta=item.remaining_delta),
        capped=bool(item.capped),
    )


def _cap(item: CapModel) -> DatasetCap:
    limit = None
    if item.limited:
        limit = PrivacyCost(epsilon=item.limit_epsilon, delta=item.limit_delta)
    return DatasetCap(
        dataset=item.dataset,
        limit=limit,
        spent=PrivacyCost(epsilon=item.spent_epsilon, delta=item.spent_delta),
        complete=bool(item.complete),
    )


def _user(item: UserModel) -> User:
    return User(
        user_id=item.user_id,
        created_at=item.created_at,
        disabled=bool(item.disabled),
        description=item.description or "",
    )


def _token(item: TokenModel) -> Token:
    return Token(
        token_hash=item.token_hash,
        token_id=item.token_id,
        user_id=item.user_id,
        created_at=item.created_at,
        expires_at=item.expires_at,
        revoked=bool(item.revoked),
        last_used_at=item.last_used_at,
    )


def _dataset(item: DatasetModel) -> Dataset:
    per_query_cap = None
    if item.per_query_epsilon is not None:
        per_query_cap = PrivacyCost(epsilon=item.per_query_epsilon, delta=item.per_query_delta)
    return Dataset(
        name=item.name,
        source=item.source,
        source_format=item.source_format or "csv",
        metadata=item.metadata,
        description=item.description or "",
        created_at=item.created_at,
        per_query_cap=per_query_cap,
        hardened=bool(item.hardened),
        latency_bucket_ms=int(item.latency_bucket_ms) if item.latency_bucket_ms else None,
        columnar=item.columnar or None,
    )


def _record(item: QueryModel) -> QueryRecord:
    return QueryRecord(
        query_id=item.query_id,
        user_id=item.user_id,
        dataset=item.dataset,
        engine=item.engine,
        payload_hash=item.payload_hash,
        request=item.request,
        cost=PrivacyCost(epsilon=item.cost_epsilon, delta=item.cost_delta),
        state=QueryState(item.state),
        created_at=item.created_at,
        lease_expires_at=item.lease_expires_at,
        finished_at=item.finished_at,
        result=item.result,
        error=item.error,
        extra=item.extra or {},
        phase=item.phase,
        progress=None if item.progress is None else float(item.progress),
    )


def _purge_at(expires_at: datetime) -> int:
    """When DynamoDB's TTL may delete an expired token: 30 days after it expired."""
    return int(expires_at.timestamp()) + 30 * 24 * 3600


def _update(model: type[Model], key: str, actions: list[Action], condition: Condition) -> None:
    """One conditional UpdateItem that asks for nothing back (``Model.update`` asks for the
    whole new item, which DynamoDB then sends: a finished record with its result)."""
    model._get_connection().update_item(key, actions=actions, condition=condition)


def _is_condition_failure(error: Exception) -> bool:
    cause = getattr(error, "cause_response_code", None)
    return cause == "ConditionalCheckFailedException"


class _CapShapeChanged(Exception):
    """The grant's ``capped`` flag was not what the transaction assumed: retry the other way.

    Private on purpose: a control-flow signal between a transaction and its retry loop in
    this module, never raised to a caller.
    """


RawItem = dict[str, Any]


@dataclass(frozen=True)
class _Refusal:
    """Which conditions of a cancelled transaction failed, read from the items themselves.

    DynamoDB returns one cancellation reason per item, with the old item when it existed
    (``ReturnValuesOnConditionCheckFailure=ALL_OLD``). Each table's items carry attributes
    no other table's do, so a reason is attributed by its item, not by its position (the
    order PynamoDB sends the items in is not part of its API). A failed reason without an
    item means the item was absent: the caller reads to tell which one.
    """

    query: RawItem | None
    grant: RawItem | None
    cap: RawItem | None
    absent: bool

    @classmethod
    def of(cls, error: TransactWriteError) -> _Refusal:
        failed = [
            reason.raw_item or {}
            for reason in error.cancellation_reasons or []
            if reason is not None and reason.code == CONDITION_FAILED
        ]

        def with_attribute(name: str) -> RawItem | None:
            return next((item for item in failed if name in item), None)

        return cls(
            query=with_attribute("payload_hash"),
            grant=with_attribute("initial_epsilon"),
            cap=with_attribute("limited"),
            absent=any(not item for item in failed),
        )


def _raw_string(item: RawItem, name: str) -> str | None:
    value = item.get(name, {}).get("S")
    return value if isinstance(value, str) else None


def _raw_remaining(item: RawItem) -> PrivacyCost:
    return PrivacyCost(
        epsilon=Decimal(item["remaining_epsilon"]["N"]),
        delta=Decimal(item["remaining_delta"]["N"]),
    )


class DynamoStore(StoreBase):
    """:class:`chalicelib.storage.Store` on DynamoDB."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # datasets seen capped by this process: picks the transaction shape to try first
        self._capped: dict[str, bool] = {}

    @cached_property
    def models(self) -> Models:
        """The model classes (built on first use, so construction does no work)."""
        return build_models(self._settings)

    @cached_property
    def _connection(self) -> Connection:
        """The connection transactions are sent on, built with PynamoDB's public API."""
        return Connection(
            region=self._settings.region,
            host=self._settings.endpoint_url,
            max_retry_attempts=MAX_RETRY_ATTEMPTS,
            connect_timeout_seconds=CONNECT_TIMEOUT_SECONDS,
            read_timeout_seconds=READ_TIMEOUT_SECONDS,
        )

    def create_schema(self) -> None:
        for model in self.models.all():
            model.create_table(billing_mode="PAY_PER_REQUEST", wait=True)

    def _transaction(self, client_request_token: str | None = None) -> TransactWrite:
        return TransactWrite(connection=self._connection, client_request_token=client_request_token)

    # users ---------------------------------------------------------------------------
    def get_user(self, user_id: str) -> User | None:
        try:
            return _user(self.models.user.get(user_id, consistent_read=True))
        except DoesNotExist:
            return None

    def put_user(self, user: User, *, create_only: bool = True) -> None:
        item = self.models.user(
            user.user_id,
            created_at=user.created_at,
            disabled=user.disabled,
            description=user.description,
        )
        self._save(item, self.models.user.user_id.does_not_exist() if create_only else None)

    def list_users(self) -> list[User]:
        return sorted(
            (_user(i) for i in self.models.user.scan(consistent_read=True)), key=lambda u: u.user_id
        )

    def delete_user(self, user_id: str) -> None:
        U = self.models.user
        self._delete(U(user_id), U.user_id.exists(), f"user {user_id}")

    # tokens --------------------------------------------------------------------------
    def get_token(self, token_hash: str) -> Token | None:
        try:
            return _token(self.models.token.get(token_hash))
        except DoesNotExist:
            return None

    def put_token(self, token: Token) -> None:
        purge_at = _purge_at(token.expires_at) if token.expires_at is not None else None
        item = self.models.token(
            token.token_hash,
            token_id=token.token_id,
            user_id=token.user_id,
            created_at=token.created_at,
            expires_at=token.expires_at,
            revoked=token.revoked,
            last_used_at=token.last_used_at,
            purge_at=purge_at,
        )
        self._save(item, self.models.token.token_hash.does_not_exist())

    def list_tokens(self, user_id: str | None = None) -> list[Token]:
        # The by_user index is eventually consistent on AWS: a token issued a moment ago may
        # be missing from a listing (never from authentication, which reads the table).
        T = self.models.token
        items = T.by_user.query(user_id) if user_id is not None else T.scan(consistent_read=True)
        return sorted((_token(i) for i in items), key=lambda t: (t.created_at, t.token_id))

    def revoke_token(self, token_hash: str) -> None:
        T = self.models.token
        try:
            T(token_hash).update(actions=[T.revoked.set(True)], condition=T.token_hash.exists())
        except UpdateError as exc:
            if _is_condition_failure(exc):
                raise ItemNotFound("no such token") from exc
            raise

    def expire_token(self, token_hash: str, expires_at: datetime) -> None:
        T = self.models.token
        try:
            T(token_hash).update(
                actions=[T.expires_at.set(expires_at), T.purge_at.set(_purge_at(expires_at))],
                # only ever shortens: a later expiry stays as it is
                condition=T.token_hash.exists()
                & (T.expires_at.does_not_exist() | (T.expires_at > expires_at)),
            )
        except UpdateError as exc:
            if not _is_condition_failure(exc):
                raise
            if self.get_token(token_hash) is None:
                raise ItemNotFound("no such token") from exc

    def touch_token(self, token_hash: str, used_at: datetime, resolution: timedelta) -> bool:
        T = self.models.token
        try:
            T(token_hash).update(
                actions=[T.last_used_at.set(used_at)],
                condition=T.token_hash.exists()
                & (T.last_used_at.does_not_exist() | (T.last_used_at <= used_at - resolution)),
            )
        except UpdateError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    # datasets ------------------------------------------------------------------------
    def get_dataset(self, name: str) -> Dataset | None:
        try:
            return _dataset(self.models.dataset.get(name, consistent_read=True))
        except DoesNotExist:
            return None

    def put_dataset(self, dataset: Dataset, *, create_only: bool = True) -> None:
        cap = dataset.per_query_cap
        item = self.models.dataset(
            dataset.name,
            source=dataset.source,
            source_format=dataset.source_format,
            metadata=dataset.metadata,
            description=dataset.description,
            created_at=dataset.created_at,
            per_query_epsilon=cap.epsilon if cap is not None else None,
            per_query_delta=cap.delta if cap is not None else None,
            hardened=True if dataset.hardened else None,
            latency_bucket_ms=dataset.latency_bucket_ms,
            columnar=dataset.columnar,
        )
        self._save(item, self.models.dataset.name.does_not_exist() if create_only else None)

    def list_datasets(self) -> list[Dataset]:
        return sorted(
            (_dataset(i) for i in self.models.dataset.scan(consistent_read=True)),
            key=lambda d: d.name,
        )

    def delete_dataset(self, name: str) -> None:
        D = self.models.dataset
        self._delete(D(name), D.name.exists(), f"dataset {name}")
        self.models.cap(name).delete()
        self._capped.pop(name, None)

    # grants --------------------------------------------------------------------------
    def get_grant(self, user_id: str, dataset: str) -> Grant | None:
        try:
            return _grant(self.models.grant.get(user_id, dataset, consistent_read=True))
        except DoesNotExist:
            return None

    def list_grants(
        self, user_id: str | None = None, *, dataset: str | None = None
    ) -> Sequence[Grant]:
        G = self.models.grant
        if user_id is not None:
            condition = G.dataset == dataset if dataset is not None else None
            items = G.query(user_id, range_key_condition=condition, consistent_read=True)
        else:
            # Admin-only (a dataset's grants, or all of them): a consistent scan, so a grant
            # created a moment ago is never missed when a cap is being set.
            condition = G.dataset == dataset if dataset is not None else None
            items = G.scan(filter_condition=condition, consistent_read=True)
        return sorted((_grant(i) for i in items), key=lambda g: (g.user_id, g.dataset))

    def create_grant(self, user_id: str, dataset: str, initial: PrivacyCost) -> Grant:
        for _ in range(3):
            capped = self.get_cap(dataset) is not None
            try:
                return self._create_grant(user_id, dataset, initial, capped)
            except _CapShapeChanged:
                continue  # a cap appeared (or went) meanwhile: read it again
        raise ConcurrentChange(f"the cap of dataset {dataset} keeps changing; try again")

    def _create_grant(
        self, user_id: str, dataset: str, initial: PrivacyCost, capped: bool
    ) -> Grant:
        U, D, G, C = self.models.user, self.models.dataset, self.models.grant, self.models.cap
        zero = PrivacyCost.zero()
        item = G(
            user_id,
            dataset,
            initial_epsilon=initial.epsilon,
            initial_delta=initial.delta,
            spent_epsilon=zero.epsilon,
            spent_delta=zero.delta,
            remaining_epsilon=initial.epsilon,
            remaining_delta=initial.delta,
            capped=True if capped else None,
        )
        try:
            with self._transaction() as tx:
                tx.condition_check(U, user_id, condition=U.user_id.exists())
                tx.condition_check(D, dataset, condition=D.name.exists())
                cap_check = C.dataset.exists() if capped else C.dataset.does_not_exist()
                tx.condition_check(C, dataset, condition=cap_check)
                tx.save(item, condition=G.user_id.does_not_exist(), return_values="ALL_OLD")
        except TransactWriteError as exc:
            refusal = _Refusal.of(exc)
            if refusal.absent and self.get_user(user_id) is None:
                raise ItemNotFound(f"unknown user {user_id}") from exc
            if refusal.absent and self.get_dataset(dataset) is None:
                raise ItemNotFound(f"unknown dataset {dataset}") from exc
            if refusal.grant is not None:
                raise AlreadyExists(f"{user_id} already holds a grant on {dataset}") from exc
            # what is left is the cap check: a cap appeared (or went) meanwhile
            raise _CapShapeChanged() from exc
        return _grant(item)

    def _apply_grant_change(
        self,
        user_id: str,
        dataset: str,
        change: PrivacyCost,
        expected_initial: PrivacyCost | None,
    ) -> Grant | None:
        G = self.models.grant
        # remaining + change >= 0 is "the new initial is not below spent"; spent is untouched,
        # so queries running at the same time are neither blocked nor double-counted.
        condition = (
            G.user_id.exists()
            & (G.remaining_epsilon >= -change.epsilon)
            & (G.remaining_delta >= -change.delta)
        )
        if expected_initial is not None:
            condition &= (G.initial_epsilon == expected_initial.epsilon) & (
                G.initial_delta == expected_initial.delta
            )
        item = G(user_id, dataset)
        try:
            item.update(
                actions=[
                    G.initial_epsilon.add(change.epsilon),
                    G.initial_delta.add(change.delta),
                    G.remaining_epsilon.add(change.epsilon),
                    G.remaining_delta.add(change.delta),
                ],
                condition=condition,
            )
        except UpdateError as exc:
            if _is_condition_failure(exc):
                return None
            raise
        return _grant(item)

    def delete_grant(self, user_id: str, dataset: str) -> None:
        G = self.models.grant
        self._delete(G(user_id, dataset), G.user_id.exists(), f"grant {user_id}/{dataset}")

    # dataset caps --------------------------------------------------------------------
    def get_cap(self, dataset: str) -> DatasetCap | None:
        try:
            return _cap(self.models.cap.get(dataset, consistent_read=True))
        except DoesNotExist:
            return None

    def _insert_cap(self, dataset: str, limit: PrivacyCost | None) -> bool:
        C = self.models.cap
        zero = PrivacyCost.zero()
        start = limit or zero
        item = C(
            dataset,
            limited=limit is not None,
            limit_epsilon=limit.epsilon if limit else None,
            limit_delta=limit.delta if limit else None,
            spent_epsilon=zero.epsilon,
            spent_delta=zero.delta,
            remaining_epsilon=start.epsilon,
            remaining_delta=start.delta,
            complete=False,
        )
        try:
            item.save(condition=C.dataset.does_not_exist())
        except PutError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def _write_cap_limit(self, current: DatasetCap, limit: PrivacyCost | None) -> bool:
        C = self.models.cap
        actions: list[Action] = [C.limited.set(limit is not None)]
        if limit is None:
            actions += [C.limit_epsilon.remove(), C.limit_delta.remove()]
        else:
            remaining = limit - current.spent
            actions += [
                C.limit_epsilon.set(limit.epsilon),
                C.limit_delta.set(limit.delta),
                C.remaining_epsilon.set(remaining.epsilon),
                C.remaining_delta.set(remaining.delta),
            ]
        try:
            # optimistic: remaining is derived from the spent read by the caller
            C(current.dataset).update(
                actions=actions,
                condition=(C.spent_epsilon == current.spent.epsilon)
                & (C.spent_delta == current.spent.delta),
            )
        except UpdateError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def _bring_grants_under_cap(self, dataset: str) -> None:
        """Flag each uncapped grant and add its spend to the cap, one transaction per grant.

        The condition on the grant's spend makes the pair exact even while the grant's
        owner is querying: if a debit lands in between, the transaction fails and the grant
        is read again. Once flagged, every debit of the grant goes through the cap.
        """
        G, C = self.models.grant, self.models.cap
        for grant in self.list_grants(dataset=dataset):
            current: Grant | None = grant
            while current is not None and not current.capped:
                try:
                    with self._transaction() as tx:
                        tx.update(
                            G(current.user_id, dataset),
                            actions=[G.capped.set(True)],
                            condition=(G.spent_epsilon == current.spent.epsilon)
                            & (G.spent_delta == current.spent.delta)
                            & G.capped.does_not_exist(),
                        )
                        tx.update(
                            C(dataset),
                            actions=[
                                C.spent_epsilon.add(current.spent.epsilon),
                                C.spent_delta.add(current.spent.delta),
                                C.remaining_epsilon.add(-current.spent.epsilon),
                                C.remaining_delta.add(-current.spent.delta),
                            ],
                            condition=C.dataset.exists(),
                        )
                except TransactWriteError:
                    pass
                current = self.get_grant(current.user_id, dataset)
        C(dataset).update(actions=[C.complete.set(True)], condition=C.dataset.exists())

    # ledger --------------------------------------------------------------------------
    def _reserve(self, record: QueryRecord, attempt: str) -> None:
        capped = self._capped.get(record.dataset, False)
        for _ in range(SHAPE_RETRIES):
            try:
                self._debit(record, attempt, capped)
            except _CapShapeChanged:
                capped = not capped
                continue
            self._capped[record.dataset] = capped
            return
        raise InternalError()

    def _debit(self, record: QueryRecord, attempt: str, capped: bool) -> None:
        G, Q, C = self.models.grant, self.models.query, self.models.cap
        grant = G(record.user_id, record.dataset)
        cost = record.cost
        query = self._query_item(record, attempt, capped)
        shape = G.capped == True if capped else G.capped.does_not_exist()  # noqa: E712
        try:
            # The token makes an SDK retry of this very transaction succeed on AWS instead
            # of failing on its own record (the record's attempt covers the rest).
            with self._transaction(client_request_token=f"{attempt}-{int(capped)}") as tx:
                # The whole check is this condition: the grant exists, both remaining
                # amounts cover the cost, and the grant is (or is not) under a cap as this
                # transaction assumes. DynamoDB evaluates it and applies the update in one
                # step, so concurrent debits can never overspend.
                tx.update(
                    grant,
                    actions=[
                        G.remaining_epsilon.add(-cost.epsilon),
                        G.remaining_delta.add(-cost.delta),
                        G.spent_epsilon.add(cost.epsilon),
                        G.spent_delta.add(cost.delta),
                    ],
                    condition=(
                        G.user_id.exists()
                        & (G.remaining_epsilon >= cost.epsilon)
                        & (G.remaining_delta >= cost.delta)
                        & shape
                    ),
                    return_values="ALL_OLD",
                )
                if capped:
                    # The dataset-wide budget, in the same transaction: without a limit the
                    # spend is only counted.
                    tx.update(
                        C(record.dataset),
                        actions=[
                            C.remaining_epsilon.add(-cost.epsilon),
                            C.remaining_delta.add(-cost.delta),
                            C.spent_epsilon.add(cost.epsilon),
                            C.spent_delta.add(cost.delta),
                        ],
                        condition=C.dataset.exists()
                        & (
                            (C.limited == False)  # noqa: E712
                            | (
                                (C.remaining_epsilon >= cost.epsilon)
                                & (C.remaining_delta >= cost.delta)
                            )
                        ),
                        return_values="ALL_OLD",
                    )
                # A new id, or a retry of a query that was refunded (it failed before any
                # data was read), which may run again under the same id.
                tx.save(
                    query,
                    condition=(
                        Q.query_id.does_not_exist()
                        | (
                            (Q.state == QueryState.REFUNDED.value)
                            & (Q.payload_hash == record.payload_hash)
                            & (Q.user_id == record.user_id)
                        )
                    ),
                    return_values="ALL_OLD",
                )
        except TransactWriteError as exc:
            self._diagnose_debit(record, attempt, capped, _Refusal.of(exc), exc)

    def _diagnose_debit(
        self,
        record: QueryRecord,
        attempt: str,
        capped: bool,
        refusal: _Refusal,
        exc: TransactWriteError,
    ) -> None:
        """Why a debit transaction was cancelled; returns only when it was this attempt's
        own write, committed before a retry (then the debit and the record stand)."""
        if refusal.query is not None:
            if _raw_string(refusal.query, "ledger_attempt") == attempt:
                return
            existing = self.get_query(record.query_id)
            if existing is not None:
                raise QueryIdTaken(existing) from exc
        grant = None
        if refusal.absent and refusal.grant is None:
            grant = self.get_grant(record.user_id, record.dataset)
            if grant is None:
                raise NoGrant(f"no grant on dataset {record.dataset}") from exc
        if refusal.grant is not None:
            if bool(refusal.grant.get("capped", {}).get("BOOL", False)) != capped:
                raise _CapShapeChanged() from exc
            raise budget_exhausted(_raw_remaining(refusal.grant)) from exc
        if grant is not None:
            if grant.capped != capped:
                raise _CapShapeChanged() from exc
            raise InternalError() from exc  # a capped grant always has its cap
        if refusal.cap is not None:
            raise budget_exhausted(_raw_remaining(refusal.cap), dataset_cap=True) from exc
        raise InternalError() from exc

    def finish(
        self,
        query_id: str,
        state: QueryState,
        finished_at: datetime,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        Q = self.models.query
        actions: list[Action] = [
            Q.state.set(state.value),
            Q.finished_at.set(finished_at),
            Q.phase.remove(),
            Q.progress.remove(),
        ]
        if result is not None:
            actions.append(Q.result.set(result))
        if error is not None:
            actions.append(Q.error.set(error))
        try:
            _update(Q, query_id, actions, Q.state == QueryState.RUNNING.value)
        except UpdateError as exc:
            raise InternalError() from exc

    def refund(self, record: QueryRecord, finished_at: datetime, error: dict[str, str]) -> None:
        G, Q, C = self.models.grant, self.models.query, self.models.cap
        cost = record.cost
        stored = self._query_capped(record.query_id)  # fixed when the record was created
        try:
            with self._transaction() as tx:
                tx.update(
                    G(record.user_id, record.dataset),
                    actions=[
                        G.remaining_epsilon.add(cost.epsilon),
                        G.remaining_delta.add(cost.delta),
                        G.spent_epsilon.add(-cost.epsilon),
                        G.spent_delta.add(-cost.delta),
                    ],
                    condition=G.user_id.exists(),
                )
                if stored:
                    tx.update(
                        C(record.dataset),
                        actions=[
                            C.remaining_epsilon.add(cost.epsilon),
                            C.remaining_delta.add(cost.delta),
                            C.spent_epsilon.add(-cost.epsilon),
                            C.spent_delta.add(-cost.delta),
                        ],
                        condition=C.dataset.exists(),
                    )
                tx.update(
                    Q(record.query_id),
                    actions=[
                        Q.state.set(QueryState.REFUNDED.value),
                        Q.finished_at.set(finished_at),
                        Q.error.set(error),
                        Q.phase.remove(),
                        Q.progress.remove(),
                    ],
                    condition=Q.state == QueryState.RUNNING.value,
                )
        except TransactWriteError as exc:
            raise InternalError() from exc

    def expire_query(self, query_id: str, now: datetime, error: dict[str, str]) -> bool:
        Q = self.models.query
        try:
            Q(query_id).update(
                actions=[
                    Q.state.set(QueryState.FAILED.value),
                    Q.finished_at.set(now),
                    Q.error.set(error),
                    Q.phase.remove(),
                    Q.progress.remove(),
                ],
                condition=(Q.state == QueryState.RUNNING.value) & (Q.lease_expires_at <= now),
            )
        except UpdateError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def claim(self, query_id: str, now: datetime) -> QueryRecord | None:
        """One conditional update; the call's own attempt id goes with it, so when the update
        landed but its answer was lost (PynamoDB retries a 5xx), the retry that finds the
        job claimed by this very call still wins it instead of stranding the job."""
        Q = self.models.query
        attempt = new_attempt()
        item = Q(query_id)
        try:
            item.update(
                actions=[
                    Q.phase.set(QueryPhase.LOADING.value),
                    Q.progress.remove(),
                    Q.claim_attempt.set(attempt),
                ],
                condition=(Q.state == QueryState.RUNNING.value)
                & (Q.phase == QueryPhase.QUEUED.value)
                & (Q.lease_expires_at > now),
            )
        except UpdateError as exc:
            if not _is_condition_failure(exc):
                raise
            try:
                current = Q.get(query_id, consistent_read=True)
            except DoesNotExist:
                return None
            if current.claim_attempt != attempt or current.state != QueryState.RUNNING.value:
                return None
            return _record(current)
        return _record(item)

    def _write_progress(self, query_id: str, phase: str, progress: float | None) -> None:
        Q = self.models.query
        actions: list[Action] = [Q.phase.set(phase)]
        actions.append(Q.progress.remove() if progress is None else Q.progress.set(progress))
        try:
            Q(query_id).update(
                actions=actions,
                condition=(Q.state == QueryState.RUNNING.value)
                & (Q.phase.does_not_exist() | (Q.phase != QueryPhase.QUEUED.value)),
            )
        except UpdateError as exc:
            if not _is_condition_failure(exc):
                raise

    def _query_capped(self, query_id: str) -> bool:
        try:
            item = self.models.query.get(
                query_id, consistent_read=True, attributes_to_get=["capped"]
            )
        except DoesNotExist:
            return False
        return bool(item.capped)

    def get_query(self, query_id: str) -> QueryRecord | None:
        try:
            return _record(self.models.query.get(query_id, consistent_read=True))
        except DoesNotExist:
            return None

    def list_queries(
        self, user_id: str, dataset: str, limit: int, cursor: str | None
    ) -> tuple[list[QueryRecord], str | None]:
        owner_key = _owner_key(user_id, dataset)
        last_key = None
        if cursor:
            created_at, query_id = decode_cursor(cursor, owner_key)
            last_key = {
                "query_id": {"S": query_id},
                "owner_key": {"S": owner_key},
                "created_at": {"S": created_at.astimezone(UTC).strftime(DATETIME_FORMAT)},
            }
        page = self.models.query.by_owner.query(
            owner_key,
            scan_index_forward=False,
            limit=limit,
            last_evaluated_key=last_key,
        )
        records = [_record(item) for item in page]
        if not page.last_evaluated_key or not records:
            return records, None
        last = records[-1]
        return records, encode_cursor(owner_key, last.created_at, last.query_id)

    def iter_queries(
        self, *, user_id: str | None = None, dataset: str | None = None
    ) -> Iterator[QueryRecord]:
        Q = self.models.query
        if user_id is not None and dataset is not None:
            items: Any = Q.by_owner.query(_owner_key(user_id, dataset))
        else:
            condition = None
            if user_id is not None:
                condition = Q.user_id == user_id
            if dataset is not None:
                condition = Q.dataset == dataset
            items = Q.scan(filter_condition=condition)
        # An export reads the whole selection; sorting needs it in memory (admin only).
        yield from sorted((_record(i) for i in items), key=lambda r: (r.created_at, r.query_id))

    # rate limits ---------------------------------------------------------------------
    def take_request(
        self,
        user_id: str,
        window_start: datetime,
        window_seconds: int,
        limit: int,
        count: int = 1,
    ) -> bool:
        R = self.models.ratelimit
        start = int(window_start.timestamp())
        if count > limit:
            return False
        try:
            # UpdateItem creates the counter on the window's first request; the condition
            # and the increment are one step, so concurrent requests never exceed the limit.
            _update(
                R,
                f"{user_id}#{start}",
                [R.hits.add(count), R.purge_at.set(start + window_seconds + 86400)],
                R.hits.does_not_exist() | (R.hits <= limit - count),
            )
        except UpdateError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    # helpers -------------------------------------------------------------------------
    def _query_item(self, record: QueryRecord, attempt: str, capped: bool) -> QueryModel:
        return self.models.query(
            record.query_id,
            owner_key=_owner_key(record.user_id, record.dataset),
            user_id=record.user_id,
            dataset=record.dataset,
            engine=record.engine,
            payload_hash=record.payload_hash,
            request=record.request,
            cost_epsilon=record.cost.epsilon,
            cost_delta=record.cost.delta,
            state=record.state.value,
            created_at=record.created_at,
            lease_expires_at=record.lease_expires_at,
            finished_at=record.finished_at,
            result=record.result,
            error=record.error,
            extra=record.extra or None,
            capped=True if capped else None,
            ledger_attempt=attempt,
            phase=None if record.phase is None else str(record.phase),
            progress=record.progress,
        )

    @staticmethod
    def _save(item: Model, condition: Condition | None) -> None:
        try:
            item.save(condition=condition)
        except PutError as exc:
            if _is_condition_failure(exc):
                raise AlreadyExists(f"{type(item).__name__} already exists") from exc
            raise

    @staticmethod
    def _delete(item: Model, condition: Condition, what: str) -> None:
        try:
            item.delete(condition=condition)
        except DeleteError as exc:
            if _is_condition_failure(exc):
                raise ItemNotFound(f"no {what}") from exc
            raise
