"""DynamoDB backend (PynamoDB).

Tables (names prefixed with ``NEBLINA_TABLE_PREFIX``; the Terraform module creates the same):

=========  ==========================  ======================================================
table      key                         notes
=========  ==========================  ======================================================
users      user_id (S)
tokens     token_hash (S)              GSI ``by_user`` (user_id); TTL attribute ``purge_at``
datasets   name (S)
grants     user_id (S) + dataset (S)   ε/δ as DynamoDB Numbers (exact decimals)
queries    query_id (S)                GSI ``by_owner`` (owner_key = user#dataset, created_at)
=========  ==========================  ======================================================
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from types import SimpleNamespace
from typing import Any

from pynamodb.attributes import (
    Attribute,
    BooleanAttribute,
    JSONAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.constants import NUMBER
from pynamodb.exceptions import (
    DoesNotExist,
    PutError,
    TransactWriteError,
    UpdateError,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from chalicelib.config import Settings
from chalicelib.errors import BudgetExhausted, InternalError, InvalidRequest, NoGrant
from chalicelib.models import (
    Dataset,
    Grant,
    PrivacyCost,
    QueryRecord,
    QueryState,
    Token,
    User,
    format_decimal,
)
from chalicelib.storage import AlreadyExists, QueryIdTaken

CONDITION_FAILED = "ConditionalCheckFailed"


class DecimalAttribute(Attribute[Decimal]):
    """A DynamoDB Number kept as an exact ``Decimal`` (PynamoDB's NumberAttribute uses float)."""

    attr_type = NUMBER

    def serialize(self, value: Decimal) -> str:
        return format_decimal(value)

    def deserialize(self, value: str) -> Decimal:
        return Decimal(value)


def _owner_key(user_id: str, dataset: str) -> str:
    return f"{user_id}#{dataset}"


def build_models(settings: Settings) -> SimpleNamespace:
    """The PynamoDB model classes bound to this deployment's table names and endpoint."""

    class _Meta:
        region = settings.region
        host = settings.endpoint_url
        billing_mode = "PAY_PER_REQUEST"
        max_retry_attempts = 3
        connect_timeout_seconds = 5
        read_timeout_seconds = 20

    def meta(kind: str) -> type:
        return type("Meta", (_Meta,), {"table_name": settings.table_name(kind)})

    class UserModel(Model):
        Meta = meta("users")  # type: ignore[assignment]
        user_id = UnicodeAttribute(hash_key=True)
        created_at = UTCDateTimeAttribute()
        disabled = BooleanAttribute(default=False)
        description = UnicodeAttribute(default="")

    class TokensByUser(GlobalSecondaryIndex["TokenModel"]):  # type: ignore[no-untyped-call]
        class Meta:
            index_name = "by_user"
            projection = AllProjection()

        user_id = UnicodeAttribute(hash_key=True)

    class TokenModel(Model):
        Meta = meta("tokens")  # type: ignore[assignment]
        token_hash = UnicodeAttribute(hash_key=True)
        token_id = UnicodeAttribute()
        user_id = UnicodeAttribute()
        created_at = UTCDateTimeAttribute()
        expires_at = UTCDateTimeAttribute(null=True)
        revoked = BooleanAttribute(default=False)
        last_used_at = UTCDateTimeAttribute(null=True)
        purge_at = NumberAttribute(null=True)
        by_user = TokensByUser()

    class DatasetModel(Model):
        Meta = meta("datasets")  # type: ignore[assignment]
        name = UnicodeAttribute(hash_key=True)
        source = UnicodeAttribute()
        source_format = UnicodeAttribute(default="csv")
        metadata = JSONAttribute()
        description = UnicodeAttribute(default="")
        created_at = UTCDateTimeAttribute()

    class GrantModel(Model):
        Meta = meta("grants")  # type: ignore[assignment]
        user_id = UnicodeAttribute(hash_key=True)
        dataset = UnicodeAttribute(range_key=True)
        initial_epsilon = DecimalAttribute()
        initial_delta = DecimalAttribute()
        spent_epsilon = DecimalAttribute()
        spent_delta = DecimalAttribute()
        remaining_epsilon = DecimalAttribute()
        remaining_delta = DecimalAttribute()

    class QueriesByOwner(GlobalSecondaryIndex["QueryModel"]):  # type: ignore[no-untyped-call]
        class Meta:
            index_name = "by_owner"
            projection = AllProjection()

        owner_key = UnicodeAttribute(hash_key=True)
        created_at = UTCDateTimeAttribute(range_key=True)

    class QueryModel(Model):
        Meta = meta("queries")  # type: ignore[assignment]
        query_id = UnicodeAttribute(hash_key=True)
        owner_key = UnicodeAttribute()
        user_id = UnicodeAttribute()
        dataset = UnicodeAttribute()
        engine = UnicodeAttribute()
        payload_hash = UnicodeAttribute()
        request = JSONAttribute()
        cost_epsilon = DecimalAttribute()
        cost_delta = DecimalAttribute()
        state = UnicodeAttribute()
        created_at = UTCDateTimeAttribute()
        lease_expires_at = UTCDateTimeAttribute()
        finished_at = UTCDateTimeAttribute(null=True)
        result = JSONAttribute(null=True)
        error = JSONAttribute(null=True)
        extra = JSONAttribute(null=True)
        by_owner = QueriesByOwner()

    return SimpleNamespace(
        User=UserModel,
        Token=TokenModel,
        Dataset=DatasetModel,
        Grant=GrantModel,
        Query=QueryModel,
    )


def _grant(item: Any) -> Grant:
    return Grant(
        user_id=item.user_id,
        dataset=item.dataset,
        initial=PrivacyCost(epsilon=item.initial_epsilon, delta=item.initial_delta),
        spent=PrivacyCost(epsilon=item.spent_epsilon, delta=item.spent_delta),
        remaining=PrivacyCost(epsilon=item.remaining_epsilon, delta=item.remaining_delta),
    )


def _record(item: Any) -> QueryRecord:
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
    )


_CURSOR_KEYS = {"query_id", "owner_key", "created_at"}


def _decode_cursor(cursor: str, owner_key: str) -> dict[str, Any]:
    """The DynamoDB start key in a pagination cursor, refused unless it is the caller's own."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, UnicodeError) as exc:
        raise InvalidRequest("invalid cursor") from exc
    if (
        not isinstance(key, dict)
        or set(key) != _CURSOR_KEYS
        or key.get("owner_key") != {"S": owner_key}
        or not all(isinstance(v, dict) and set(v) == {"S"} for v in key.values())
    ):
        raise InvalidRequest("invalid cursor")
    return key


def _is_condition_failure(error: Exception) -> bool:
    cause = getattr(error, "cause_response_code", None)
    return cause == "ConditionalCheckFailedException"


class DynamoStore:
    """:class:`chalicelib.storage.Store` on DynamoDB."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @cached_property
    def m(self) -> SimpleNamespace:
        """The model classes (built on first use, so construction does no work)."""
        return build_models(self._settings)

    def create_schema(self) -> None:
        for model in (self.m.User, self.m.Token, self.m.Dataset, self.m.Grant, self.m.Query):
            model.create_table(billing_mode="PAY_PER_REQUEST", wait=True)

    # users ---------------------------------------------------------------------------
    def get_user(self, user_id: str) -> User | None:
        try:
            item = self.m.User.get(user_id)
        except DoesNotExist:
            return None
        return User(
            user_id=item.user_id,
            created_at=item.created_at,
            disabled=bool(item.disabled),
            description=item.description or "",
        )

    def put_user(self, user: User, *, create_only: bool = True) -> None:
        item = self.m.User(
            user.user_id,
            created_at=user.created_at,
            disabled=user.disabled,
            description=user.description,
        )
        self._save(item, self.m.User.user_id.does_not_exist() if create_only else None)

    # tokens --------------------------------------------------------------------------
    def get_token(self, token_hash: str) -> Token | None:
        try:
            item = self.m.Token.get(token_hash)
        except DoesNotExist:
            return None
        return Token(
            token_hash=item.token_hash,
            token_id=item.token_id,
            user_id=item.user_id,
            created_at=item.created_at,
            expires_at=item.expires_at,
            revoked=bool(item.revoked),
            last_used_at=item.last_used_at,
        )

    def put_token(self, token: Token) -> None:
        purge_at = None
        if token.expires_at is not None:
            purge_at = int(token.expires_at.timestamp()) + 30 * 24 * 3600
        item = self.m.Token(
            token.token_hash,
            token_id=token.token_id,
            user_id=token.user_id,
            created_at=token.created_at,
            expires_at=token.expires_at,
            revoked=token.revoked,
            last_used_at=token.last_used_at,
            purge_at=purge_at,
        )
        self._save(item, self.m.Token.token_hash.does_not_exist())

    # datasets ------------------------------------------------------------------------
    def get_dataset(self, name: str) -> Dataset | None:
        try:
            item = self.m.Dataset.get(name)
        except DoesNotExist:
            return None
        return Dataset(
            name=item.name,
            source=item.source,
            source_format=item.source_format or "csv",
            metadata=item.metadata,
            description=item.description or "",
            created_at=item.created_at,
        )

    def put_dataset(self, dataset: Dataset, *, create_only: bool = True) -> None:
        item = self.m.Dataset(
            dataset.name,
            source=dataset.source,
            source_format=dataset.source_format,
            metadata=dataset.metadata,
            description=dataset.description,
            created_at=dataset.created_at,
        )
        self._save(item, self.m.Dataset.name.does_not_exist() if create_only else None)

    # grants --------------------------------------------------------------------------
    def get_grant(self, user_id: str, dataset: str) -> Grant | None:
        try:
            return _grant(self.m.Grant.get(user_id, dataset))
        except DoesNotExist:
            return None

    def list_grants(self, user_id: str) -> Sequence[Grant]:
        return [_grant(item) for item in self.m.Grant.query(user_id)]

    def create_grant(self, user_id: str, dataset: str, initial: PrivacyCost) -> Grant:
        zero = PrivacyCost.zero()
        item = self.m.Grant(
            user_id,
            dataset,
            initial_epsilon=initial.epsilon,
            initial_delta=initial.delta,
            spent_epsilon=zero.epsilon,
            spent_delta=zero.delta,
            remaining_epsilon=initial.epsilon,
            remaining_delta=initial.delta,
        )
        self._save(item, self.m.Grant.user_id.does_not_exist())
        return _grant(item)

    # ledger --------------------------------------------------------------------------
    def reserve(self, record: QueryRecord) -> None:
        G, Q = self.m.Grant, self.m.Query
        grant = G(record.user_id, record.dataset)
        cost = record.cost
        query = self._query_item(record)
        try:
            with TransactWrite(connection=G._get_connection().connection) as tx:
                # The whole check is this condition: the grant exists and both remaining
                # amounts cover the cost. DynamoDB evaluates it and applies the update in
                # one step, so concurrent debits can never overspend.
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
            # PynamoDB sends condition checks, deletes, puts, then updates: the query put is
            # item 0 and the grant update item 1.
            reasons = exc.cancellation_reasons or []
            query_reason = reasons[0] if len(reasons) > 0 else None
            grant_reason = reasons[1] if len(reasons) > 1 else None
            if query_reason is not None and query_reason.code == CONDITION_FAILED:
                existing = self.get_query(record.query_id)
                if existing is not None:
                    raise QueryIdTaken(existing) from exc
            if grant_reason is not None and grant_reason.code == CONDITION_FAILED:
                if not grant_reason.raw_item:
                    raise NoGrant(f"no grant on dataset {record.dataset}") from exc
                raise BudgetExhausted(self._exhausted_message(grant_reason.raw_item)) from exc
            raise InternalError() from exc

    @staticmethod
    def _exhausted_message(raw_item: dict[str, Any]) -> str:
        remaining_eps = raw_item.get("remaining_epsilon", {}).get("N", "?")
        remaining_delta = raw_item.get("remaining_delta", {}).get("N", "?")
        return (
            f"not enough budget for this query: remaining epsilon {remaining_eps}, "
            f"remaining delta {remaining_delta}"
        )

    def finish(
        self,
        query_id: str,
        state: QueryState,
        finished_at: datetime,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        Q = self.m.Query
        actions = [Q.state.set(state.value), Q.finished_at.set(finished_at)]
        if result is not None:
            actions.append(Q.result.set(result))
        if error is not None:
            actions.append(Q.error.set(error))
        try:
            Q(query_id).update(
                actions=actions,
                condition=Q.state == QueryState.RUNNING.value,
            )
        except UpdateError as exc:
            raise InternalError() from exc

    def refund(self, record: QueryRecord, finished_at: datetime, error: dict[str, str]) -> None:
        G, Q = self.m.Grant, self.m.Query
        cost = record.cost
        try:
            with TransactWrite(connection=G._get_connection().connection) as tx:
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
                tx.update(
                    Q(record.query_id),
                    actions=[
                        Q.state.set(QueryState.REFUNDED.value),
                        Q.finished_at.set(finished_at),
                        Q.error.set(error),
                    ],
                    condition=Q.state == QueryState.RUNNING.value,
                )
        except TransactWriteError as exc:
            raise InternalError() from exc

    def get_query(self, query_id: str) -> QueryRecord | None:
        try:
            return _record(self.m.Query.get(query_id, consistent_read=True))
        except DoesNotExist:
            return None

    def list_queries(
        self, user_id: str, dataset: str, limit: int, cursor: str | None
    ) -> tuple[list[QueryRecord], str | None]:
        owner_key = _owner_key(user_id, dataset)
        last_key = _decode_cursor(cursor, owner_key) if cursor else None
        page = self.m.Query.by_owner.query(
            owner_key,
            scan_index_forward=False,
            limit=limit,
            last_evaluated_key=last_key,
        )
        records = [_record(item) for item in page]
        next_key = page.last_evaluated_key
        next_cursor = (
            base64.urlsafe_b64encode(json.dumps(next_key).encode()).decode() if next_key else None
        )
        return records, next_cursor

    # helpers -------------------------------------------------------------------------
    def _query_item(self, record: QueryRecord) -> Any:
        return self.m.Query(
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
        )

    @staticmethod
    def _save(item: Any, condition: Any) -> None:
        try:
            item.save(condition=condition)
        except PutError as exc:
            if _is_condition_failure(exc):
                raise AlreadyExists(f"{type(item).__name__} already exists") from exc
            raise
