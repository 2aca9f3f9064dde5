"""MongoDB backend (pymongo), selected with ``NEBLINA_STORE=mongodb`` and ``MONGODB_URI``.

Collections (names prefixed with ``NEBLINA_TABLE_PREFIX``, like the DynamoDB tables):

==========  ===============================  ===============================================
name        unique key                       notes
==========  ===============================  ===============================================
users       _id = user_id
tokens      _id = token_hash                 index user_id
datasets    _id = name                       per-query cap, hardened flag, latency bucket
grants      unique index (user_id, dataset)  amounts as Decimal128; ``pending`` entries
caps        _id = dataset                    dataset-wide budget; ``pending`` entries
queries     _id = query_id                   index (user_id, dataset, created_at)
ratelimits  _id = user#window start          ``hits``; TTL index on ``expires_at``
==========  ===============================  ===============================================

Amounts are ``Decimal128`` (34 significant digits, exact decimal arithmetic in ``$inc``);
a value that does not fit is refused, never rounded. No multi-document transaction is used,
so any MongoDB deployment works (a standalone server too); how the ledger stays exact
without them is the timeline above :meth:`MongoStore.reserve`, and ``docs/ledger.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

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
    utcnow,
)
from chalicelib.storage.base import (
    CAP_SEED_PASSES,
    DEBIT_TRIES,
    GRANT_SEED_RETRIES,
    StoreBase,
    budget_exhausted,
    decode_cursor,
    encode_cursor,
    new_attempt,
)

log = logging.getLogger(__name__)
Doc = dict[str, Any]

DEBIT, CREDIT, SEED = "debit", "credit", "seed"
_NO_PROGRESS = {"phase": "", "progress": ""}  # $unset: a settled record has neither
_SPEND_SIGN = {DEBIT: 1, SEED: 1, CREDIT: -1}


def _d128(value: Decimal) -> Decimal128:
    return Decimal128(value)  # raises decimal.Inexact rather than round


def _dec(value: Any) -> Decimal:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    return Decimal(value)


def _eq(value: Decimal) -> Doc:
    """Numeric equality as a range (the same on every server and on mongomock)."""
    return {"$gte": _d128(value), "$lte": _d128(value)}


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _aware(value: datetime) -> datetime:
    result = _utc(value)
    assert result is not None
    return result


def _cost(doc: Doc, prefix: str) -> PrivacyCost:
    return PrivacyCost(epsilon=_dec(doc[f"{prefix}_epsilon"]), delta=_dec(doc[f"{prefix}_delta"]))


def _spend(cost: PrivacyCost, sign: int) -> Doc:
    """``$inc`` moving ``cost`` from remaining to spent (sign 1) or back (sign -1)."""
    return {
        "spent_epsilon": _d128(sign * cost.epsilon),
        "spent_delta": _d128(sign * cost.delta),
        "remaining_epsilon": _d128(-sign * cost.epsilon),
        "remaining_delta": _d128(-sign * cost.delta),
    }


def _covers(cost: PrivacyCost) -> Doc:
    return {
        "remaining_epsilon": {"$gte": _d128(cost.epsilon)},
        "remaining_delta": {"$gte": _d128(cost.delta)},
    }


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _unjson(value: Any) -> Any:
    return None if value is None else json.loads(value)


def _user(doc: Doc) -> User:
    return User(
        user_id=doc["_id"],
        created_at=_aware(doc["created_at"]),
        disabled=bool(doc.get("disabled", False)),
        description=doc.get("description", ""),
    )


def _token(doc: Doc) -> Token:
    return Token(
        token_hash=doc["_id"],
        token_id=doc["token_id"],
        user_id=doc["user_id"],
        created_at=_aware(doc["created_at"]),
        expires_at=_utc(doc.get("expires_at")),
        revoked=bool(doc.get("revoked", False)),
        last_used_at=_utc(doc.get("last_used_at")),
    )


def _dataset(doc: Doc) -> Dataset:
    per_query_cap = None
    if doc.get("per_query_epsilon") is not None:
        per_query_cap = _cost(doc, "per_query")
    return Dataset(
        name=doc["_id"],
        source=doc["source"],
        source_format=doc.get("source_format", "csv"),
        metadata=doc["metadata"],
        description=doc.get("description", ""),
        created_at=_aware(doc["created_at"]),
        per_query_cap=per_query_cap,
        hardened=bool(doc.get("hardened", False)),
        latency_bucket_ms=doc.get("latency_bucket_ms"),
        columnar=doc.get("columnar"),
    )


def _grant(doc: Doc) -> Grant:
    return Grant(
        user_id=doc["user_id"],
        dataset=doc["dataset"],
        initial=_cost(doc, "initial"),
        spent=_cost(doc, "spent"),
        remaining=_cost(doc, "remaining"),
        capped=bool(doc.get("capped", False)),
    )


def _cap(doc: Doc) -> DatasetCap:
    return DatasetCap(
        dataset=doc["_id"],
        limit=_cost(doc, "limit") if doc.get("limited") else None,
        spent=_cost(doc, "spent"),
        complete=bool(doc.get("complete", False)),
    )


def _record(doc: Doc) -> QueryRecord:
    return QueryRecord(
        query_id=doc["_id"],
        user_id=doc["user_id"],
        dataset=doc["dataset"],
        engine=doc["engine"],
        payload_hash=doc["payload_hash"],
        request=_unjson(doc["request"]),
        cost=_cost(doc, "cost"),
        state=QueryState(doc["state"]),
        created_at=_aware(doc["created_at"]),
        lease_expires_at=_aware(doc["lease_expires_at"]),
        finished_at=_utc(doc.get("finished_at")),
        result=_unjson(doc.get("result")),
        error=_unjson(doc.get("error")),
        extra=_unjson(doc.get("extra")) or {},
        phase=doc.get("phase"),
        progress=None if doc.get("progress") is None else float(doc["progress"]),
    )


class MongoStore(StoreBase):
    """:class:`chalicelib.storage.Store` on MongoDB, without multi-document transactions.

    ``grace`` is how old a ``pending`` entry must be before :meth:`reconcile` may settle
    it: the query lease (the longest a request can live), so a live reservation is never
    settled under its feet.
    """

    def __init__(
        self,
        database: Database[Doc],
        prefix: str = "neblina-",
        *,
        grace: timedelta = timedelta(seconds=900),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = database
        self._prefix = prefix
        self.grace = grace
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> MongoStore:
        """A store on ``MONGODB_URI`` (majority writes, so an acknowledged debit survives)."""
        if not settings.mongodb_uri:
            raise ValueError("NEBLINA_STORE=mongodb needs MONGODB_URI")
        client: MongoClient[Doc] = MongoClient(
            settings.mongodb_uri, tz_aware=True, w="majority", serverSelectionTimeoutMS=5000
        )
        database = client.get_default_database(default=settings.mongodb_database)
        return cls(
            database,
            settings.table_prefix,
            grace=timedelta(seconds=settings.query_lease_seconds),
        )

    def _c(self, kind: str) -> Collection[Doc]:
        return self._db[f"{self._prefix}{kind}"]

    @property
    def _users(self) -> Collection[Doc]:
        return self._c("users")

    @property
    def _tokens(self) -> Collection[Doc]:
        return self._c("tokens")

    @property
    def _datasets(self) -> Collection[Doc]:
        return self._c("datasets")

    @property
    def _grants(self) -> Collection[Doc]:
        return self._c("grants")

    @property
    def _caps(self) -> Collection[Doc]:
        return self._c("caps")

    @property
    def _queries(self) -> Collection[Doc]:
        return self._c("queries")

    @property
    def _ratelimits(self) -> Collection[Doc]:
        return self._c("ratelimits")

    def create_schema(self) -> None:
        self._tokens.create_index([("user_id", ASCENDING)], name="by_user")
        self._grants.create_index(
            [("user_id", ASCENDING), ("dataset", ASCENDING)], unique=True, name="grant_key"
        )
        self._grants.create_index([("dataset", ASCENDING)], name="by_dataset")
        self._queries.create_index(
            [
                ("user_id", ASCENDING),
                ("dataset", ASCENDING),
                ("created_at", DESCENDING),
                ("_id", DESCENDING),
            ],
            name="by_owner",
        )
        self._queries.create_index(
            [("dataset", ASCENDING), ("created_at", ASCENDING)], name="by_dataset"
        )
        self._ratelimits.create_index("expires_at", expireAfterSeconds=0, name="expiry")

    # users -------------------------------------------------------------------------
    def get_user(self, user_id: str) -> User | None:
        doc = self._users.find_one({"_id": user_id})
        return None if doc is None else _user(doc)

    def put_user(self, user: User, *, create_only: bool = True) -> None:
        doc = {
            "_id": user.user_id,
            "created_at": user.created_at,
            "disabled": user.disabled,
            "description": user.description,
        }
        if create_only:
            try:
                self._users.insert_one(doc)
            except DuplicateKeyError as exc:
                raise AlreadyExists(f"user {user.user_id} already exists") from exc
        else:
            self._users.replace_one({"_id": user.user_id}, doc, upsert=True)

    def list_users(self) -> list[User]:
        return [_user(d) for d in self._users.find().sort("_id", ASCENDING)]

    def delete_user(self, user_id: str) -> None:
        if self._users.delete_one({"_id": user_id}).deleted_count == 0:
            raise ItemNotFound(f"no user {user_id}")

    # tokens ------------------------------------------------------------------------
    def get_token(self, token_hash: str) -> Token | None:
        doc = self._tokens.find_one({"_id": token_hash})
        return None if doc is None else _token(doc)

    def put_token(self, token: Token) -> None:
        try:
            self._tokens.insert_one(
                {
                    "_id": token.token_hash,
                    "token_id": token.token_id,
                    "user_id": token.user_id,
                    "created_at": token.created_at,
                    "expires_at": token.expires_at,
                    "revoked": token.revoked,
                    "last_used_at": token.last_used_at,
                }
            )
        except DuplicateKeyError as exc:
            raise AlreadyExists("token already exists") from exc

    def list_tokens(self, user_id: str | None = None) -> list[Token]:
        selector = {} if user_id is None else {"user_id": user_id}
        tokens = [_token(d) for d in self._tokens.find(selector)]
        return sorted(tokens, key=lambda t: (t.created_at, t.token_id))

    def revoke_token(self, token_hash: str) -> None:
        if (
            self._tokens.update_one({"_id": token_hash}, {"$set": {"revoked": True}}).matched_count
            == 0
        ):
            raise ItemNotFound("no such token")

    def expire_token(self, token_hash: str, expires_at: datetime) -> None:
        # only ever shortens: a later expiry stays as it is
        selector = {
            "_id": token_hash,
            "$or": [{"expires_at": None}, {"expires_at": {"$gt": expires_at}}],
        }
        if self._tokens.update_one(selector, {"$set": {"expires_at": expires_at}}).matched_count:
            return
        if self._tokens.find_one({"_id": token_hash}, {"_id": 1}) is None:
            raise ItemNotFound("no such token")

    def touch_token(self, token_hash: str, used_at: datetime, resolution: timedelta) -> bool:
        selector = {
            "_id": token_hash,
            "$or": [{"last_used_at": None}, {"last_used_at": {"$lte": used_at - resolution}}],
        }
        result = self._tokens.update_one(selector, {"$set": {"last_used_at": used_at}})
        return result.matched_count == 1

    # datasets ----------------------------------------------------------------------
    def get_dataset(self, name: str) -> Dataset | None:
        doc = self._datasets.find_one({"_id": name})
        return None if doc is None else _dataset(doc)

    def put_dataset(self, dataset: Dataset, *, create_only: bool = True) -> None:
        cap = dataset.per_query_cap
        doc = {
            "_id": dataset.name,
            "source": dataset.source,
            "source_format": dataset.source_format,
            "metadata": dataset.metadata,
            "description": dataset.description,
            "created_at": dataset.created_at,
            "per_query_epsilon": _d128(cap.epsilon) if cap is not None else None,
            "per_query_delta": _d128(cap.delta) if cap is not None else None,
            "hardened": dataset.hardened,
            "latency_bucket_ms": dataset.latency_bucket_ms,
            "columnar": dataset.columnar,
        }
        if create_only:
            try:
                self._datasets.insert_one(doc)
            except DuplicateKeyError as exc:
                raise AlreadyExists(f"dataset {dataset.name} already exists") from exc
        else:
            self._datasets.replace_one({"_id": dataset.name}, doc, upsert=True)

    def list_datasets(self) -> list[Dataset]:
        return [_dataset(d) for d in self._datasets.find().sort("_id", ASCENDING)]

    def delete_dataset(self, name: str) -> None:
        if self._datasets.delete_one({"_id": name}).deleted_count == 0:
            raise ItemNotFound(f"no dataset {name}")
        self._caps.delete_one({"_id": name})

    # grants ------------------------------------------------------------------------
    @staticmethod
    def _key(user_id: str, dataset: str) -> Doc:
        return {"user_id": user_id, "dataset": dataset}

    def get_grant(self, user_id: str, dataset: str) -> Grant | None:
        doc = self._grants.find_one(self._key(user_id, dataset))
        return None if doc is None else _grant(doc)

    def list_grants(
        self, user_id: str | None = None, *, dataset: str | None = None
    ) -> Sequence[Grant]:
        selector: Doc = {}
        if user_id is not None:
            selector["user_id"] = user_id
        if dataset is not None:
            selector["dataset"] = dataset
        docs = self._grants.find(selector).sort([("user_id", ASCENDING), ("dataset", ASCENDING)])
        return [_grant(d) for d in docs]

    def create_grant(self, user_id: str, dataset: str, initial: PrivacyCost) -> Grant:
        # Without transactions the existence checks are reads: a user or dataset removed in
        # the same instant can leave an orphan grant, which no query can use (the
        # service checks the dataset first) and `grants revoke` removes.
        if self.get_user(user_id) is None:
            raise ItemNotFound(f"unknown user {user_id}")
        if self.get_dataset(dataset) is None:
            raise ItemNotFound(f"unknown dataset {dataset}")
        capped = self.get_cap(dataset) is not None
        zero = _d128(Decimal(0))
        doc = {
            **self._key(user_id, dataset),
            "initial_epsilon": _d128(initial.epsilon),
            "initial_delta": _d128(initial.delta),
            "spent_epsilon": zero,
            "spent_delta": zero,
            "remaining_epsilon": _d128(initial.epsilon),
            "remaining_delta": _d128(initial.delta),
            "capped": capped,
            "pending": [],
        }
        try:
            self._grants.insert_one(doc)
        except DuplicateKeyError as exc:
            raise AlreadyExists(f"{user_id} already holds a grant on {dataset}") from exc
        if not capped and self.get_cap(dataset) is not None:
            # A cap was created between our read and our insert, and its run over the
            # grants may have missed this one: bring it under the cap ourselves (both
            # sides write, then read, so at least one of them sees the other).
            self._bring_grant_under_cap(user_id, dataset)
        grant = self.get_grant(user_id, dataset)
        assert grant is not None
        return grant

    def _apply_grant_change(
        self,
        user_id: str,
        dataset: str,
        change: PrivacyCost,
        expected_initial: PrivacyCost | None,
    ) -> Grant | None:
        selector: Doc = {
            **self._key(user_id, dataset),
            # remaining + change >= 0: the new initial is not below what was spent
            "remaining_epsilon": {"$gte": _d128(-change.epsilon)},
            "remaining_delta": {"$gte": _d128(-change.delta)},
        }
        if expected_initial is not None:
            selector["initial_epsilon"] = _eq(expected_initial.epsilon)
            selector["initial_delta"] = _eq(expected_initial.delta)
        inc = {
            "initial_epsilon": _d128(change.epsilon),
            "initial_delta": _d128(change.delta),
            "remaining_epsilon": _d128(change.epsilon),
            "remaining_delta": _d128(change.delta),
        }
        doc = self._grants.find_one_and_update(
            selector, {"$inc": inc}, return_document=ReturnDocument.AFTER
        )
        return None if doc is None else _grant(doc)

    def delete_grant(self, user_id: str, dataset: str) -> None:
        if self._grants.delete_one(self._key(user_id, dataset)).deleted_count == 0:
            raise ItemNotFound(f"no grant {user_id}/{dataset}")

    # dataset caps --------------------------------------------------------------------
    def get_cap(self, dataset: str) -> DatasetCap | None:
        doc = self._caps.find_one({"_id": dataset})
        return None if doc is None else _cap(doc)

    def _insert_cap(self, dataset: str, limit: PrivacyCost | None) -> bool:
        start = limit or PrivacyCost.zero()
        try:
            self._caps.insert_one(
                {
                    "_id": dataset,
                    "limited": limit is not None,
                    "limit_epsilon": _d128(start.epsilon),
                    "limit_delta": _d128(start.delta),
                    "spent_epsilon": _d128(Decimal(0)),
                    "spent_delta": _d128(Decimal(0)),
                    "remaining_epsilon": _d128(start.epsilon),
                    "remaining_delta": _d128(start.delta),
                    "complete": False,
                    "pending": [],
                }
            )
        except DuplicateKeyError:
            return False
        return True

    def _write_cap_limit(self, current: DatasetCap, limit: PrivacyCost | None) -> bool:
        update: Doc = {"limited": limit is not None}
        if limit is not None:
            remaining = limit - current.spent
            update.update(
                limit_epsilon=_d128(limit.epsilon),
                limit_delta=_d128(limit.delta),
                remaining_epsilon=_d128(remaining.epsilon),
                remaining_delta=_d128(remaining.delta),
            )
        selector = {
            "_id": current.dataset,
            "spent_epsilon": _eq(current.spent.epsilon),
            "spent_delta": _eq(current.spent.delta),
        }
        return self._caps.update_one(selector, {"$set": update}).matched_count == 1

    def _bring_grants_under_cap(self, dataset: str) -> None:
        for _ in range(CAP_SEED_PASSES):
            uncapped = [g for g in self.list_grants(dataset=dataset) if not g.capped]
            if not uncapped:
                self._caps.update_one({"_id": dataset}, {"$set": {"complete": True}})
                return
            for grant in uncapped:
                self._bring_grant_under_cap(grant.user_id, dataset)

    def _bring_grant_under_cap(self, user_id: str, dataset: str) -> None:
        """Add the grant's spend to the cap, then flag the grant, in that order.

        S1 read the grant's spend; S2 add it to the cap with a ``seed`` entry; S3 flag the
        grant, conditional on its spend being unchanged (else undo S2 and start again);
        S4 drop the entry. A crash after S2 over-counts (conservative) until
        :meth:`reconcile` sees that the grant carries no ``cap_seed_attempt`` for the entry
        and takes the amount back.
        """
        for _ in range(GRANT_SEED_RETRIES):
            doc = self._grants.find_one(self._key(user_id, dataset))
            if doc is None or doc.get("capped"):
                return
            spent = _cost(doc, "spent")
            entry = self._entry(SEED, spent, user_id=user_id)
            matched = self._caps.update_one(
                {"_id": dataset}, {"$inc": _spend(spent, 1), "$push": {"pending": entry}}
            ).matched_count
            if not matched:
                raise ItemNotFound(f"dataset {dataset} has no cap")
            flagged = self._flag_grant(user_id, dataset, spent, entry["attempt"])
            if flagged:
                self._settle(self._caps, {"_id": dataset}, entry)
                return
            self._undo(self._caps, {"_id": dataset}, entry)
        raise ConcurrentChange(f"the grant of {user_id} keeps changing; try again")

    def _flag_grant(self, user_id: str, dataset: str, spent: PrivacyCost, attempt: str) -> bool:
        """S3: the grant joins the cap, if its spend is still the one added to the cap."""
        selector = {
            **self._key(user_id, dataset),
            "capped": {"$ne": True},
            "spent_epsilon": _eq(spent.epsilon),
            "spent_delta": _eq(spent.delta),
        }
        update = {"$set": {"capped": True, "cap_seed_attempt": attempt}}
        return self._grants.update_one(selector, update).matched_count == 1

    # ledger --------------------------------------------------------------------------
    def _entry(
        self, kind: str, cost: PrivacyCost, attempt: str | None = None, **fields: str
    ) -> Doc:
        return {
            "kind": kind,
            "attempt": attempt or new_attempt(),
            "epsilon": _d128(cost.epsilon),
            "delta": _d128(cost.delta),
            "at": self.clock(),
            **fields,
        }

    @staticmethod
    def _entry_cost(entry: Doc) -> PrivacyCost:
        return PrivacyCost(epsilon=_dec(entry["epsilon"]), delta=_dec(entry["delta"]))

    def _settle(self, collection: Collection[Doc], selector: Doc, entry: Doc) -> bool:
        """Drop a pending entry: its amount stands. False if it was no longer there."""
        result = collection.update_one(
            {**selector, "pending.attempt": entry["attempt"]},
            {"$pull": {"pending": {"attempt": entry["attempt"]}}},
        )
        return result.matched_count == 1

    def _undo(self, collection: Collection[Doc], selector: Doc, entry: Doc) -> bool:
        """Take a pending entry's amount back and drop it, in one update (at most once)."""
        sign = -_SPEND_SIGN[entry["kind"]]
        result = collection.update_one(
            {**selector, "pending.attempt": entry["attempt"]},
            {
                "$inc": _spend(self._entry_cost(entry), sign),
                "$pull": {"pending": {"attempt": entry["attempt"]}},
            },
        )
        return result.matched_count == 1

    def _reserve(self, record: QueryRecord, attempt: str) -> None:
        """Debit the grant (and the cap) and create the record, without a transaction.

        Timeline (each step is one single-document, atomic write)::

          R0  the id exists and is not a refunded retry of this payload -> QueryIdTaken
              (a fast path only: the unique _id at R3 is what guarantees it)
          R1  grant: $inc spend and $push a `debit` entry {attempt},
              if remaining >= cost for both ε and δ        no match -> NoGrant/BudgetExhausted
          R2  capped grant: the same on the dataset's cap  no match -> undo R1, BudgetExhausted
          R3  insert the record, carrying the attempt      duplicate -> undo R2, R1, QueryIdTaken
              (unless the record found carries this attempt: a retried insert of ours)
          R4  $pull the entries: the debit now stands with its record

        No engine runs before reserve returns, i.e. before R4. A crash after R1 and before
        R3 leaves an entry whose attempt no record carries: nothing ran, so ``reconcile``
        gives the amount back. A crash after R3 leaves an entry whose record exists: the
        debit stands and ``reconcile`` only drops the entry. ``reconcile`` settles entries
        older than the query lease only (a request cannot live longer), and each of its
        steps is one update filtered on the entry being there, so nothing is applied twice.
        Overspending is impossible at every point: R1 and R2 are each a conditional $inc.
        """
        existing = self._queries.find_one({"_id": record.query_id})
        if existing is not None and existing.get("ledger_attempt") == attempt:
            self._settle_debit(record, attempt, bool(existing.get("capped")))  # ours: R4
            return
        if existing is not None and not self._replaceable(existing, record):
            raise QueryIdTaken(_record(existing))
        entry = self._entry(DEBIT, record.cost, attempt, query_id=record.query_id)
        grant_key = self._key(record.user_id, record.dataset)
        capped = self._debit_grant(record, entry)
        if capped:
            self._debit_cap(record, entry, grant_key)
        try:
            self._insert_record(record, entry["attempt"], capped, existing)
        except QueryIdTaken:
            if capped:
                self._undo(self._caps, {"_id": record.dataset}, entry)
            self._undo(self._grants, grant_key, entry)
            raise
        if not self._settle_debit(record, attempt, capped):
            # Only if this request outlived the lease and a reconcile took the debit back:
            # do not run anything on a debit that no longer exists.
            log.error("query %s: reservation settled by reconcile meanwhile", record.query_id)
            raise InternalError()

    def _settle_debit(self, record: QueryRecord, attempt: str, capped: bool) -> bool:
        """R4: drop the debit's entries; False if one was already gone (reconciled)."""
        entry = {"attempt": attempt}
        settled = self._settle(self._grants, self._key(record.user_id, record.dataset), entry)
        if capped:
            settled = self._settle(self._caps, {"_id": record.dataset}, entry) and settled
        return settled

    @staticmethod
    def _replaceable(existing: Doc, record: QueryRecord) -> bool:
        return (
            existing.get("state") == QueryState.REFUNDED.value
            and existing.get("payload_hash") == record.payload_hash
            and existing.get("user_id") == record.user_id
        )

    def _debit_grant(self, record: QueryRecord, entry: Doc) -> bool:
        """R1; returns whether the grant is under its dataset's cap."""
        key = self._key(record.user_id, record.dataset)
        for tried in range(DEBIT_TRIES):
            doc = self._grants.find_one_and_update(
                {**key, **_covers(record.cost)},
                {"$inc": _spend(record.cost, 1), "$push": {"pending": entry}},
                projection={"capped": 1},
                return_document=ReturnDocument.AFTER,
            )
            if doc is not None:
                return bool(doc.get("capped"))
            current = self._grants.find_one(key)
            if current is None:
                raise NoGrant(f"no grant on dataset {record.dataset}")
            if tried == 0 and self._reconcile_doc(self._grants, key, current):
                continue  # stale reservations were holding budget: try once more
            raise budget_exhausted(_cost(current, "remaining"))
        raise AssertionError("unreachable")

    def _debit_cap(self, record: QueryRecord, entry: Doc, grant_key: Doc) -> None:
        """R2 (undoes R1 when the cap refuses)."""
        selector = {"_id": record.dataset}
        for tried in range(DEBIT_TRIES):
            matched = self._caps.update_one(
                {**selector, "$or": [{"limited": False}, _covers(record.cost)]},
                {"$inc": _spend(record.cost, 1), "$push": {"pending": entry}},
            ).matched_count
            if matched:
                return
            current = self._caps.find_one(selector)
            if (
                current is not None
                and tried == 0
                and self._reconcile_doc(self._caps, selector, current)
            ):
                continue
            self._undo(self._grants, grant_key, entry)
            if current is None:
                raise InternalError()  # a capped grant always has its cap
            raise budget_exhausted(_cost(current, "remaining"), dataset_cap=True)

    def _insert_record(
        self, record: QueryRecord, attempt: str, capped: bool, existing: Doc | None
    ) -> None:
        """R3: the unique _id makes the record, and so the debit, happen once per id."""
        doc = self._record_doc(record, attempt, capped)
        if existing is not None:
            # A refunded attempt of the same payload may run again; its attempts stay
            # known as settled, so their entries are never mistaken for orphans.
            doc["settled_attempts"] = [
                *existing.get("settled_attempts", []),
                existing.get("ledger_attempt"),
                existing.get("refund_attempt"),
            ]
            replaced = self._queries.replace_one(
                {
                    "_id": record.query_id,
                    "state": QueryState.REFUNDED.value,
                    "payload_hash": record.payload_hash,
                    "user_id": record.user_id,
                    "ledger_attempt": existing.get("ledger_attempt"),
                },
                doc,
            )
            if replaced.matched_count == 1:
                return
        else:
            try:
                self._queries.insert_one(doc)
                return
            except DuplicateKeyError:
                pass
        current = self._queries.find_one({"_id": record.query_id})
        if current is None:  # pragma: no cover - deleted in between: records never are
            raise InternalError()
        if current.get("ledger_attempt") == attempt:
            return  # a retried insert of this attempt: the record is ours
        raise QueryIdTaken(_record(current))

    def _record_doc(self, record: QueryRecord, attempt: str, capped: bool) -> Doc:
        return {
            "_id": record.query_id,
            "user_id": record.user_id,
            "dataset": record.dataset,
            "engine": record.engine,
            "payload_hash": record.payload_hash,
            "request": _json(record.request),
            "cost_epsilon": _d128(record.cost.epsilon),
            "cost_delta": _d128(record.cost.delta),
            "state": record.state.value,
            "created_at": record.created_at,
            "lease_expires_at": record.lease_expires_at,
            "finished_at": record.finished_at,
            "result": _json(record.result),
            "error": _json(record.error),
            "extra": _json(record.extra or None),
            "capped": capped,
            "ledger_attempt": attempt,
            "phase": None if record.phase is None else str(record.phase),
            "progress": record.progress,
        }

    def finish(
        self,
        query_id: str,
        state: QueryState,
        finished_at: datetime,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        update: Doc = {"state": state.value, "finished_at": finished_at}
        if result is not None:
            update["result"] = _json(result)
        if error is not None:
            update["error"] = _json(error)
        matched = self._queries.update_one(
            {"_id": query_id, "state": QueryState.RUNNING.value},
            {"$set": update, "$unset": _NO_PROGRESS},
        ).matched_count
        if not matched:
            raise InternalError()

    def refund(self, record: QueryRecord, finished_at: datetime, error: dict[str, str]) -> None:
        """Give the cost back and mark the record refunded, without a transaction.

        F1 credit the grant with a ``credit`` entry; F2 the same on the cap when the debit
        went there; F3 the record goes from running to refunded, carrying the entry's
        attempt — the one decision point, so two refunds cannot both win (the loser undoes
        its credits); F4 drop the entries. A crash before F3 leaves credits whose attempt no
        record carries: ``reconcile`` takes them back (the record then ends as an
        interrupted query whose cost stands). After F3 they stand.
        """
        stored = self._queries.find_one({"_id": record.query_id})
        if stored is None or stored.get("state") != QueryState.RUNNING.value:
            raise InternalError()
        cost = _cost(stored, "cost")
        entry = self._entry(CREDIT, cost, query_id=record.query_id)
        grant_key = self._key(stored["user_id"], stored["dataset"])
        cap_key = {"_id": stored["dataset"]}
        push = {"$inc": _spend(cost, -1), "$push": {"pending": entry}}
        if not self._grants.update_one(grant_key, push).matched_count:
            raise InternalError()
        capped = bool(stored.get("capped")) and self._caps.update_one(cap_key, push).matched_count
        won = self._mark_refunded(stored, finished_at, error, entry["attempt"])
        if not won:
            if capped:
                self._undo(self._caps, cap_key, entry)
            self._undo(self._grants, grant_key, entry)
            raise InternalError()
        self._settle(self._grants, grant_key, entry)
        if capped:
            self._settle(self._caps, cap_key, entry)

    def _mark_refunded(
        self, stored: Doc, finished_at: datetime, error: dict[str, str], attempt: str
    ) -> bool:
        """F3, the refund's decision point: running -> refunded, once."""
        return (
            self._queries.update_one(
                {
                    "_id": stored["_id"],
                    "state": QueryState.RUNNING.value,
                    "ledger_attempt": stored.get("ledger_attempt"),
                },
                {
                    "$set": {
                        "state": QueryState.REFUNDED.value,
                        "finished_at": finished_at,
                        "error": _json(error),
                        "refund_attempt": attempt,
                    },
                    "$unset": _NO_PROGRESS,
                },
            ).matched_count
        ) == 1

    def expire_query(self, query_id: str, now: datetime, error: dict[str, str]) -> bool:
        result = self._queries.update_one(
            {
                "_id": query_id,
                "state": QueryState.RUNNING.value,
                "lease_expires_at": {"$lte": now},
            },
            {
                "$set": {
                    "state": QueryState.FAILED.value,
                    "finished_at": now,
                    "error": _json(error),
                },
                "$unset": _NO_PROGRESS,
            },
        )
        return result.matched_count == 1

    def claim(self, query_id: str, now: datetime) -> QueryRecord | None:
        doc = self._queries.find_one_and_update(
            {
                "_id": query_id,
                "state": QueryState.RUNNING.value,
                "phase": QueryPhase.QUEUED.value,
                "lease_expires_at": {"$gt": now},
            },
            {"$set": {"phase": QueryPhase.LOADING.value, "progress": None}},
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else _record(doc)

    def _write_progress(self, query_id: str, phase: str, progress: float | None) -> None:
        self._queries.update_one(
            {
                "_id": query_id,
                "state": QueryState.RUNNING.value,
                "phase": {"$ne": QueryPhase.QUEUED.value},
            },
            {"$set": {"phase": phase, "progress": progress}},
        )

    # recovery ------------------------------------------------------------------------
    def reconcile(self) -> int:
        """Settle every pending entry older than the grace period; returns how many."""
        cutoff = self.clock() - self.grace
        count = 0
        stale = {"pending": {"$elemMatch": {"at": {"$lte": cutoff}}}}
        for collection in (self._grants, self._caps):
            for doc in collection.find(stale):
                count += self._reconcile_doc(collection, {"_id": doc["_id"]}, doc)
        return count

    def _reconcile_doc(self, collection: Collection[Doc], selector: Doc, doc: Doc) -> int:
        cutoff = self.clock() - self.grace
        count = 0
        for entry in doc.get("pending", []):
            if _aware(entry["at"]) > cutoff:
                continue  # may belong to a live request
            if self._entry_stands(entry, doc):
                count += self._settle(collection, selector, entry)
            else:
                count += self._undo(collection, selector, entry)
        return count

    def _entry_stands(self, entry: Doc, doc: Doc) -> bool:
        """Whether the write an entry belongs to reached its decision point."""
        attempt = entry["attempt"]
        if entry["kind"] == SEED:
            grant = self._grants.find_one(self._key(entry["user_id"], doc["_id"]))
            return grant is not None and grant.get("cap_seed_attempt") == attempt
        record = self._queries.find_one({"_id": entry["query_id"]})
        if record is None:
            return False
        field = "ledger_attempt" if entry["kind"] == DEBIT else "refund_attempt"
        return record.get(field) == attempt or attempt in record.get("settled_attempts", [])

    # archive -------------------------------------------------------------------------
    def get_query(self, query_id: str) -> QueryRecord | None:
        doc = self._queries.find_one({"_id": query_id})
        return None if doc is None else _record(doc)

    def list_queries(
        self, user_id: str, dataset: str, limit: int, cursor: str | None
    ) -> tuple[list[QueryRecord], str | None]:
        owner = f"{user_id}#{dataset}"
        selector: Doc = {"user_id": user_id, "dataset": dataset}
        if cursor:
            created_at, query_id = decode_cursor(cursor, owner)
            selector["$or"] = [
                {"created_at": {"$lt": created_at}},
                {"created_at": created_at, "_id": {"$lt": query_id}},
            ]
        docs = list(
            self._queries.find(selector)
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit + 1)
        )
        records = [_record(d) for d in docs[:limit]]
        next_cursor = None
        if len(docs) > limit:
            last = docs[limit - 1]
            next_cursor = encode_cursor(owner, _aware(last["created_at"]), last["_id"])
        return records, next_cursor

    def iter_queries(
        self, *, user_id: str | None = None, dataset: str | None = None
    ) -> Iterator[QueryRecord]:
        selector: Doc = {}
        if user_id is not None:
            selector["user_id"] = user_id
        if dataset is not None:
            selector["dataset"] = dataset
        for doc in self._queries.find(selector).sort(
            [("created_at", ASCENDING), ("_id", ASCENDING)]
        ):
            yield _record(doc)

    # rate limits ---------------------------------------------------------------------
    def take_request(
        self,
        user_id: str,
        window_start: datetime,
        window_seconds: int,
        limit: int,
        count: int = 1,
    ) -> bool:
        if count > limit:
            return False
        key = {"_id": f"{user_id}#{int(window_start.timestamp())}"}
        below = {**key, "hits": {"$lte": limit - count}}
        try:
            # the window's first request creates the counter (upsert); later ones increment
            # it while it stays within the limit: one atomic single-document update each
            self._ratelimits.update_one(
                below,
                {
                    "$inc": {"hits": count},
                    "$setOnInsert": {
                        "expires_at": window_start + timedelta(seconds=window_seconds, days=1)
                    },
                },
                upsert=True,
            )
            return True
        except DuplicateKeyError:
            # the counter exists and is at the limit (or was created by a concurrent
            # first request): try once more without upserting
            return self._ratelimits.update_one(below, {"$inc": {"hits": count}}).matched_count == 1
