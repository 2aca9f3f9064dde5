"""The DynamoDB tables as typed PynamoDB models, bound per deployment by :func:`build_models`.

The classes here declare each table's attributes once, with their types; the table names,
region and endpoint come from the settings, so :func:`build_models` subclasses each model
with its own ``Meta`` (PynamoDB copies the indexes per subclass, so several prefixes can
live in one process, as the contract suite needs). ``chalicelib.storage.dynamo`` documents
the tables and holds the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pynamodb.attributes import (
    Attribute,
    BooleanAttribute,
    JSONAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.constants import NUMBER
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

from chalicelib.config import Settings
from chalicelib.models import format_decimal

# The DynamoDB client's limits (PynamoDB retries throttles and 5xx with backoff).
MAX_RETRY_ATTEMPTS = 3
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 20


class DecimalAttribute(Attribute[Decimal]):
    """A DynamoDB Number kept as an exact ``Decimal`` (PynamoDB's NumberAttribute uses float)."""

    attr_type = NUMBER

    def serialize(self, value: Decimal) -> str:
        return format_decimal(value)

    def deserialize(self, value: str) -> Decimal:
        return Decimal(value)


class UserModel(Model):
    """A user (table ``users``)."""

    user_id = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute()
    disabled = BooleanAttribute(default=False)
    description = UnicodeAttribute(default="")


class TokensByUser(GlobalSecondaryIndex["TokenModel"]):  # type: ignore[no-untyped-call]
    """Index ``by_user`` of the tokens table."""

    class Meta:
        index_name = "by_user"
        projection = AllProjection()

    user_id = UnicodeAttribute(hash_key=True)


class TokenModel(Model):
    """An API token, by the hash of its secret (table ``tokens``)."""

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
    """A dataset and its policy (table ``datasets``)."""

    name = UnicodeAttribute(hash_key=True)
    source = UnicodeAttribute()
    source_format = UnicodeAttribute(default="csv")
    metadata = JSONAttribute()
    description = UnicodeAttribute(default="")
    created_at = UTCDateTimeAttribute()
    per_query_epsilon = DecimalAttribute(null=True)  # largest cost of one query
    per_query_delta = DecimalAttribute(null=True)
    hardened = BooleanAttribute(null=True)  # fixed latency buckets, generic failures
    latency_bucket_ms = NumberAttribute(null=True)
    columnar = JSONAttribute(null=True)  # the Parquet copy (Dataset.columnar)


class GrantModel(Model):
    """A user's budget on a dataset (table ``grants``)."""

    user_id = UnicodeAttribute(hash_key=True)
    dataset = UnicodeAttribute(range_key=True)
    initial_epsilon = DecimalAttribute()
    initial_delta = DecimalAttribute()
    spent_epsilon = DecimalAttribute()
    spent_delta = DecimalAttribute()
    remaining_epsilon = DecimalAttribute()
    remaining_delta = DecimalAttribute()
    capped = BooleanAttribute(null=True)  # debits also go to the dataset's caps item


class CapModel(Model):
    """A dataset-wide budget (table ``caps``)."""

    dataset = UnicodeAttribute(hash_key=True)
    limited = BooleanAttribute(default=True)
    limit_epsilon = DecimalAttribute(null=True)
    limit_delta = DecimalAttribute(null=True)
    spent_epsilon = DecimalAttribute()
    spent_delta = DecimalAttribute()
    remaining_epsilon = DecimalAttribute()  # limit - spent; meaningful when limited
    remaining_delta = DecimalAttribute()
    complete = BooleanAttribute(default=False)


class QueriesByOwner(GlobalSecondaryIndex["QueryModel"]):  # type: ignore[no-untyped-call]
    """Index ``by_owner`` of the queries table: a user's history on a dataset."""

    class Meta:
        index_name = "by_owner"
        projection = AllProjection()

    owner_key = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class QueryModel(Model):
    """A query record of the ledger (table ``queries``)."""

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
    capped = BooleanAttribute(null=True)  # the debit also went to the dataset's cap
    ledger_attempt = UnicodeAttribute(null=True)  # the reserve call that wrote the record
    phase = UnicodeAttribute(null=True)  # where a running record's work is (None: settled)
    progress = NumberAttribute(null=True)  # a fraction in 0..1, when the engine knows one
    claim_attempt = UnicodeAttribute(null=True)  # the claim call that took the job
    by_owner = QueriesByOwner()


class RateLimitModel(Model):
    """A request counter of one user and window (table ``ratelimits``)."""

    window_key = UnicodeAttribute(hash_key=True)  # user#window start (epoch seconds)
    hits = NumberAttribute()
    purge_at = NumberAttribute()  # TTL: a day after the window ends


@dataclass(frozen=True)
class Models:
    """The model classes bound to one deployment's table names and endpoint."""

    user: type[UserModel]
    token: type[TokenModel]
    dataset: type[DatasetModel]
    grant: type[GrantModel]
    cap: type[CapModel]
    query: type[QueryModel]
    ratelimit: type[RateLimitModel]

    def all(self) -> tuple[type[Model], ...]:
        """Every model, in table order."""
        return (
            self.user,
            self.token,
            self.dataset,
            self.grant,
            self.cap,
            self.query,
            self.ratelimit,
        )


def _meta(settings: Settings, kind: str) -> type:
    """PynamoDB's ``Meta`` of one table: its name, region, endpoint and client limits."""
    return type(
        "Meta",
        (),
        {
            "table_name": settings.table_name(kind),
            "region": settings.region,
            "host": settings.endpoint_url,
            "billing_mode": "PAY_PER_REQUEST",
            "max_retry_attempts": MAX_RETRY_ATTEMPTS,
            "connect_timeout_seconds": CONNECT_TIMEOUT_SECONDS,
            "read_timeout_seconds": READ_TIMEOUT_SECONDS,
        },
    )


def _bind[M: Model](model: type[M], settings: Settings, kind: str) -> type[M]:
    """A subclass of ``model`` on this deployment's table (indexes are copied per class)."""
    return type(model.__name__, (model,), {"Meta": _meta(settings, kind)})


def build_models(settings: Settings) -> Models:
    """The PynamoDB model classes bound to this deployment's table names and endpoint."""
    return Models(
        user=_bind(UserModel, settings, "users"),
        token=_bind(TokenModel, settings, "tokens"),
        dataset=_bind(DatasetModel, settings, "datasets"),
        grant=_bind(GrantModel, settings, "grants"),
        cap=_bind(CapModel, settings, "caps"),
        query=_bind(QueryModel, settings, "queries"),
        ratelimit=_bind(RateLimitModel, settings, "ratelimits"),
    )
