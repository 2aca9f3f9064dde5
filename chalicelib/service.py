"""What the API does, framework-free: the routes call one method each.

The query path (``Service.query``), in order:

1. the dataset exists (404) and the caller holds a grant on it (403);
2. the engine validates the request (400) and prices it from the metadata only (400/422);
3. ``store.reserve``: the debit and the creation of the archive record, one atomic write
   (409 when the budget does not cover the cost or the query id is taken);
4. the dataset is loaded (cached); if that fails, no engine has seen any row: refund;
5. the engine runs once; if it fails, the record is marked failed and the spend stands;
6. the record is completed with the released result (the archive), then the result is
   returned. A result is never returned unless step 6 succeeded.

A retry with the same ``query_id`` and payload returns the archived answer at step 3 and
costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from chalicelib import validation
from chalicelib.config import Settings
from chalicelib.datasets import DatasetLoader, DatasetUnavailable
from chalicelib.engines import Engine, EngineRequest, get_engine
from chalicelib.errors import (
    DatasetNotFound,
    EngineFailed,
    EngineRefused,
    InternalError,
    InvalidRequest,
    NeblinaError,
    NoGrant,
    QueryFailed,
    QueryIdConflict,
    QueryInProgress,
    QueryNotFound,
)
from chalicelib.models import Dataset, Grant, PrivacyCost, QueryRecord, QueryState, utcnow
from chalicelib.storage import QueryIdTaken, Store

log = logging.getLogger(__name__)

COMMON_FIELDS = {"engine", "query_id", "dummy", "dummy_rows", "dummy_seed"}


def payload_digest(dataset: str, engine: str, canonical: dict[str, Any]) -> str:
    """SHA-256 identifying a query's payload (what a retry must repeat exactly)."""
    document = {"dataset": dataset, "engine": engine, "request": canonical}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def effective_state(record: QueryRecord, now: datetime) -> QueryState:
    """The record's state, with the lease rule applied.

    A record still ``running`` after its lease has expired belongs to a request that died
    (process killed, timeout) after the debit. Nobody can tell whether a mechanism saw the
    data, so the conservative reading applies: it counts as ``failed`` and the spend stands.
    """
    if record.state is QueryState.RUNNING and now >= record.lease_expires_at:
        return QueryState.FAILED
    return record.state


def record_json(record: QueryRecord, now: datetime) -> dict[str, Any]:
    """A record as the API returns it (lease rule applied)."""
    document = record.to_json()
    state = effective_state(record, now)
    document["state"] = state.value
    if state is QueryState.FAILED and record.state is QueryState.RUNNING:
        document["error"] = {
            "error": "interrupted",
            "message": "the request stopped before completing; the cost stands",
        }
    return document


class _Lru[T]:
    """A small thread-safe LRU map."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[str, T] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: T) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class Service:
    """The API's operations for an authenticated user."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        loader: DatasetLoader,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.settings = settings
        self.loader = loader
        self.clock = clock
        self._costs: _Lru[PrivacyCost] = _Lru(1024)

    # lookups -------------------------------------------------------------------------
    def _dataset(self, name: str) -> Dataset:
        validation.dataset_name(name)
        dataset = self.store.get_dataset(name)
        if dataset is None:
            raise DatasetNotFound(f"dataset {name} does not exist")
        return dataset

    def _grant(self, user_id: str, dataset: Dataset) -> Grant:
        grant = self.store.get_grant(user_id, dataset.name)
        if grant is None:
            raise NoGrant(f"no grant on dataset {dataset.name}")
        return grant

    def _granted_dataset(self, user_id: str, name: str) -> tuple[Dataset, Grant]:
        dataset = self._dataset(name)
        return dataset, self._grant(user_id, dataset)

    # read-only routes ----------------------------------------------------------------
    def list_datasets(self, user_id: str) -> dict[str, Any]:
        """Datasets the user holds a grant on."""
        items = []
        for grant in self.store.list_grants(user_id):
            dataset = self.store.get_dataset(grant.dataset)
            if dataset is not None:
                items.append(
                    {
                        "name": dataset.name,
                        "description": dataset.description,
                        "rows": dataset.metadata.get("rows"),
                    }
                )
        return {"datasets": sorted(items, key=lambda d: d["name"])}

    def metadata(self, user_id: str, name: str) -> dict[str, Any]:
        """Public metadata of a dataset."""
        dataset, _ = self._granted_dataset(user_id, name)
        return {"dataset": dataset.name, "metadata": dataset.metadata}

    def dummy(self, user_id: str, name: str, rows: object, seed: object) -> dict[str, Any]:
        """Dummy rows from the metadata only."""
        n_rows = validation.integer(rows, "rows", 100, 1, self.settings.max_dummy_rows)
        n_seed = validation.integer(seed, "seed", 42, 0, 2**32 - 1)
        dataset, _ = self._granted_dataset(user_id, name)
        from chalicelib.tables import frame_to_table

        loaded = self.loader.dummy(dataset, n_rows, n_seed)
        return {
            "dataset": dataset.name,
            "rows": n_rows,
            "seed": n_seed,
            "table": frame_to_table(loaded.frame),
        }

    def budget(self, user_id: str, name: str) -> dict[str, Any]:
        """Initial, spent and remaining budget of the caller on a dataset."""
        dataset, grant = self._granted_dataset(user_id, name)
        return {
            "dataset": dataset.name,
            "initial": grant.initial.to_json(),
            "spent": grant.spent.to_json(),
            "remaining": grant.remaining.to_json(),
        }

    def history(self, user_id: str, name: str, limit: object, cursor: object) -> dict[str, Any]:
        """The caller's archive on a dataset, newest first."""
        n = validation.integer(limit, "limit", 20, 1, 100)
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidRequest("invalid cursor")
        dataset, _ = self._granted_dataset(user_id, name)
        records, next_cursor = self.store.list_queries(user_id, dataset.name, n, cursor or None)
        now = self.clock()
        return {
            "queries": [record_json(r, now) for r in records],
            "next_cursor": next_cursor,
        }

    def get_query(self, user_id: str, name: str, query_id: str) -> dict[str, Any]:
        """One of the caller's archived queries."""
        dataset, _ = self._granted_dataset(user_id, name)
        if not validation.QUERY_ID.match(query_id):
            raise QueryNotFound("no such query")
        record = self.store.get_query(query_id)
        if record is None or record.user_id != user_id or record.dataset != dataset.name:
            raise QueryNotFound("no such query")
        return record_json(record, self.clock())

    # cost and queries ----------------------------------------------------------------
    def _parse(self, body: object) -> tuple[Engine, EngineRequest, dict[str, Any]]:
        document = validation.require_object(body)
        engine = get_engine(document.get("engine"))
        return engine, engine.parse(document), document

    def _price(self, engine: Engine, dataset: Dataset, request: EngineRequest) -> PrivacyCost:
        """The engine's price, memoised: it is a pure function of metadata and request."""
        key = json.dumps(
            [engine.name, dataset.name, dataset.metadata, request.canonical()],
            sort_keys=True,
            default=str,
        )
        cost = self._costs.get(key)
        if cost is None:
            cost = engine.cost(dataset, request)
            if cost.is_negative():  # pragma: no cover - engines never price below zero
                raise EngineRefused("the engine priced the query below zero")
            self._costs.put(key, cost)
        return cost

    def cost(self, user_id: str, name: str, body: object) -> dict[str, Any]:
        """The price of a query: metadata only, no debit."""
        engine, request, _ = self._parse(body)
        dataset, _ = self._granted_dataset(user_id, name)
        cost = self._price(engine, dataset, request)
        return {"dataset": dataset.name, "engine": engine.name, "cost": cost.to_json()}

    def query(self, user_id: str, name: str, body: object) -> dict[str, Any]:
        """Run a query (see the module docstring for the order of steps)."""
        engine, request, document = self._parse(body)
        query_id = validation.query_id(document.get("query_id"))
        is_dummy = validation.boolean(document.get("dummy"), "dummy", False)
        dataset, _ = self._granted_dataset(user_id, name)
        cost = self._price(engine, dataset, request)
        if is_dummy:
            return self._dummy_query(engine, dataset, request, document, query_id, cost)
        now = self.clock()
        canonical = request.canonical()
        record = QueryRecord(
            query_id=query_id,
            user_id=user_id,
            dataset=dataset.name,
            engine=engine.name,
            payload_hash=payload_digest(dataset.name, engine.name, canonical),
            request={"engine": engine.name, **canonical},
            cost=cost,
            state=QueryState.RUNNING,
            created_at=now,
            lease_expires_at=now + timedelta(seconds=self.settings.query_lease_seconds),
            extra={"attempt": secrets.token_hex(8)},
        )
        try:
            self.store.reserve(record)
        except QueryIdTaken as taken:
            existing = taken.existing
            if existing.extra.get("attempt") != record.extra["attempt"]:
                return self._replay(existing, record)
        return self._run(engine, dataset, request, record)

    def _replay(self, existing: QueryRecord, record: QueryRecord) -> dict[str, Any]:
        """Answer a retry of a query id that already has a record."""
        if (
            existing.user_id != record.user_id
            or existing.dataset != record.dataset
            or existing.payload_hash != record.payload_hash
        ):
            raise QueryIdConflict("query_id already used with a different payload")
        state = effective_state(existing, self.clock())
        if state is QueryState.DONE:
            return self._response(existing, existing.result, replayed=True)
        if state is QueryState.RUNNING:
            raise QueryInProgress("this query_id is still running; retry later")
        if state is QueryState.REFUNDED:  # refunded meanwhile: a new attempt may run
            raise QueryInProgress("this query_id was refunded meanwhile; retry")
        raise QueryFailed(
            "this query_id failed after the data was read; its cost stands. "
            "Send the query again with a new query_id."
        )

    def _run(
        self, engine: Engine, dataset: Dataset, request: EngineRequest, record: QueryRecord
    ) -> dict[str, Any]:
        try:
            loaded = self.loader.load(dataset)
        except DatasetUnavailable as exc:
            # No engine has seen a row: the debit goes back.
            self.store.refund(
                record,
                self.clock(),
                {"error": "internal_error", "message": "dataset unavailable; cost refunded"},
            )
            log.error("query %s: dataset %s unavailable: %s", record.query_id, dataset.name, exc)
            raise InternalError("dataset unavailable; the cost was refunded") from exc
        try:
            result = engine.execute(loaded, request)
        except Exception:
            # The mechanism saw the data: the spend stands, the message says nothing.
            log.exception("query %s: engine failed on the private data", record.query_id)
            failure = EngineFailed()
            self.store.finish(
                record.query_id,
                QueryState.FAILED,
                self.clock(),
                error={"error": failure.code, "message": failure.message},
            )
            raise failure from None
        self.store.finish(record.query_id, QueryState.DONE, self.clock(), result=result)
        return self._response(record, result, replayed=False)

    def _dummy_query(
        self,
        engine: Engine,
        dataset: Dataset,
        request: EngineRequest,
        document: dict[str, Any],
        query_id: str,
        cost: PrivacyCost,
    ) -> dict[str, Any]:
        rows = validation.integer(
            document.get("dummy_rows"), "dummy_rows", 100, 1, self.settings.max_dummy_rows
        )
        seed = validation.integer(document.get("dummy_seed"), "dummy_seed", 42, 0, 2**32 - 1)
        loaded = self.loader.dummy(dataset, rows, seed)
        try:
            result = engine.execute(loaded, request)
        except NeblinaError:
            raise
        except Exception as exc:
            # Dummy rows are public: the engine's own message is safe to return.
            raise EngineRefused(str(exc).splitlines()[0][:500] or type(exc).__name__) from exc
        return {
            "query_id": query_id,
            "dataset": dataset.name,
            "engine": engine.name,
            "dummy": True,
            "replayed": False,
            "cost": cost.to_json(),
            "created_at": self.clock().isoformat(),
            "result": result,
        }

    @staticmethod
    def _response(
        record: QueryRecord, result: dict[str, Any] | None, *, replayed: bool
    ) -> dict[str, Any]:
        return {
            "query_id": record.query_id,
            "dataset": record.dataset,
            "engine": record.engine,
            "dummy": False,
            "replayed": replayed,
            "cost": record.cost.to_json(),
            "created_at": record.created_at.isoformat(),
            "result": result,
        }
