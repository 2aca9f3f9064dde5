"""What the API does, framework-free: the routes call one method each.

The query path (``Service.query``), in order:

0. the caller's request is counted against the per-user rate limit (429 beyond it);
1. the dataset exists (404) and the caller holds a grant on it (403);
2. the engine validates the request (400) and prices it from the metadata only (400/422);
   the price is rounded up to the ledger's grid (400 when it cannot be held: docs/ledger.md);
   the price must fit the per-query cap of the dataset and the deployment (403);
3. ``store.reserve``: the debit and the creation of the archive record, one atomic write
   (409 when the budget does not cover the cost or the query id is taken);
4. the dataset is loaded (cached); if anything fails before the engine is handed the rows,
   no engine has seen any row: refund;
5. the engine runs once; if it fails, the record is marked failed and the spend stands;
6. the record is completed with the released result (the archive), then the result is
   returned. A result over ``NEBLINA_MAX_RESULT_BYTES`` is not released (422, the record
   fails, the spend stands); one over ``NEBLINA_INLINE_RESULT_BYTES`` is first written to
   S3 and the record keeps a pointer to it (:mod:`chalicelib.result_overflow`). A result
   is never returned unless step 6 succeeded; if step 6 fails the record is marked failed
   (the spend stands) and nothing is released.

A retry with the same ``query_id`` and payload returns the archived answer at step 3 and
costs nothing. A request that dies (process killed) after step 3 leaves a ``running``
record that the lease rule settles (:func:`effective_state`). On a hardened dataset the
answers of the query and cost routes are released at multiples of its latency bucket and
every engine or internal failure gets a fixed body (:class:`_Hardening`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from chalicelib import result_overflow, validation
from chalicelib.config import Settings
from chalicelib.datasets import DatasetLoader, DatasetUnavailable, metadata_digest
from chalicelib.engines import Engine, EngineRequest, Engines
from chalicelib.errors import (
    DatasetNotFound,
    DatasetUnavailableError,
    EngineFailed,
    EngineRefused,
    InternalError,
    InvalidRequest,
    NeblinaError,
    NoGrant,
    QueryCapExceeded,
    QueryFailed,
    QueryIdConflict,
    QueryInProgress,
    QueryNotFound,
    RateLimited,
    ResultTooLarge,
)
from chalicelib.lru import LruCache
from chalicelib.models import (
    INTERRUPTED,
    AmountOutOfRange,
    Dataset,
    Grant,
    PrivacyCost,
    QueryRecord,
    QueryState,
    format_decimal,
    utcnow,
)
from chalicelib.result_overflow import ResultOverflow
from chalicelib.storage import QueryIdTaken, Store

log = logging.getLogger(__name__)


def payload_digest(dataset: str, engine: str, canonical: dict[str, Any]) -> str:
    """SHA-256 identifying a query's payload (what a retry must repeat exactly)."""
    document = {"dataset": dataset, "engine": engine, "request": canonical}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


HARDENED_ENGINE_MESSAGE = (
    "the query could not be answered; on this dataset failure details are withheld "
    "(develop the query on dummy data to see the engine's messages)"
)
ARCHIVE_FAILED = {
    "error": "internal_error",
    "message": "the release could not be archived, so it was not released; the cost stands",
}


def effective_state(record: QueryRecord, now: datetime) -> QueryState:
    """The record's state, with the lease rule applied.

    The lease rule: a record still ``running`` once its lease has expired
    (``lease_expires_at`` = creation + ``NEBLINA_QUERY_LEASE_SECONDS``, default 900 s, the
    Lambda maximum, so no live request is that old) belongs to a request that died after
    the debit (process killed, timeout). Nobody can tell whether a mechanism saw the data,
    so the conservative reading applies: it counts as ``failed`` ("interrupted") and the
    spend stands. There is no lock to release: the user can query again at once, only the
    dead request's ``query_id`` answers ``query_in_progress`` until the lease expires.

    The reading is also persisted, lazily: the first read of such a record by the service
    (``get_query``, ``history``, a retry of its id) writes it back with
    ``Store.expire_query``, one write conditional on the record still ``running`` with an
    expired lease, so it happens once and never to a live request's record. No reaper is
    needed: nothing depends on the stored state being settled before it is read (the
    debit was final from the start), and the admin export applies the same rule.
    """
    return record.as_seen(now).state


def record_json(record: QueryRecord, now: datetime) -> dict[str, Any]:
    """A record as the API returns it (lease rule applied)."""
    return record.as_seen(now).to_json()


def _record_bytes(record: QueryRecord) -> int:
    """About how many bytes a record takes in a history page (archived results at size)."""
    result = record.result
    if result_overflow.is_pointer(result):
        assert result is not None
        size = int(result["bytes"])
    else:
        size = len(result_overflow.encode(result)) if result is not None else 0
    return size + len(json.dumps(record.request)) + 512


def hardened_error(error: NeblinaError) -> NeblinaError:
    """The fixed answer that replaces a failure on a hardened dataset (same status family)."""
    if isinstance(error, DatasetUnavailableError):
        return error  # a fixed body already, about the source, not about the query
    if error.status_code >= 500:
        return InternalError()
    if error.status_code == 422:
        return EngineRefused(HARDENED_ENGINE_MESSAGE)
    return error


class _Hardening:
    """Hardened mode for one request: fixed latency buckets and fixed failure bodies.

    ``watch`` is called once the dataset is known. From then on, if the dataset is
    hardened, the answer (success or error) is released at the next multiple of its
    latency bucket counted from the request's start on the monotonic clock, and every
    engine error (422) or internal error (5xx) gets a fixed body, unless the request ran on
    dummy data, which is public. The wait is a plain sleep on the request's own thread: no
    lock is held, so other requests are not delayed.
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self.dataset: Dataset | None = None
        self.generic = True

    def watch(self, dataset: Dataset, *, generic: bool = True) -> None:
        if dataset.hardened:
            self.dataset = dataset
            self.generic = generic

    def release_at(self, now: float) -> float:
        """When the answer may leave: the end of the bucket the request is in."""
        assert self.dataset is not None
        bucket = self.dataset.bucket_seconds
        buckets = max(1, math.ceil((now - self.started) / bucket))
        return self.started + buckets * bucket


class Service:
    """The API's operations for an authenticated user."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        loader: DatasetLoader,
        clock: Callable[[], datetime] = utcnow,
        timer: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        results: ResultOverflow | None = None,
        engines: Engines | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.loader = loader
        self.results = results or ResultOverflow(settings)
        self.engines = engines or Engines(settings)
        self.clock = clock
        self.timer = timer
        self.sleep = sleep
        self._costs: LruCache[str, PrivacyCost] = LruCache(1024)

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
        from chalicelib.wire_tables import frame_to_table

        loaded = self.loader.dummy(dataset, n_rows, n_seed)
        return {
            "dataset": dataset.name,
            "rows": n_rows,
            "seed": n_seed,
            "table": frame_to_table(loaded.frame),
        }

    def budget(self, user_id: str, name: str) -> dict[str, Any]:
        """The caller's grant on a dataset, and what they can really spend.

        ``initial``/``spent``/``remaining`` describe the grant. A grant under a dataset cap
        (with a limit) can spend no more than the cap has left either: ``cap`` gives its
        limit and remaining, ``available`` the smaller of the two amounts for ε and for δ,
        and ``limited_by`` which one binds (``grant`` on a tie). What the cap has left is
        public to the dataset's researchers: it sums everyone's spend, not any data.
        """
        dataset, grant = self._granted_dataset(user_id, name)
        cap = self.store.get_cap(dataset.name) if grant.capped else None
        remaining = grant.remaining
        limit = cap.remaining if cap is not None else None
        answer: dict[str, Any] = {
            "dataset": dataset.name,
            "initial": grant.initial.to_json(),
            "spent": grant.spent.to_json(),
            "remaining": remaining.to_json(),
            "cap": None,
            "available": remaining.to_json(),
            "limited_by": {"epsilon": "grant", "delta": "grant"},
        }
        if cap is not None and cap.limit is not None and limit is not None:
            answer["cap"] = {"limit": cap.limit.to_json(), "remaining": limit.to_json()}
            answer["available"] = PrivacyCost(
                epsilon=min(remaining.epsilon, limit.epsilon),
                delta=min(remaining.delta, limit.delta),
            ).to_json()
            answer["limited_by"] = {
                "epsilon": "cap" if limit.epsilon < remaining.epsilon else "grant",
                "delta": "cap" if limit.delta < remaining.delta else "grant",
            }
        return answer

    def history(self, user_id: str, name: str, limit: object, cursor: object) -> dict[str, Any]:
        """The caller's archive on a dataset, newest first.

        A page holds at most ``limit`` records and, beyond its first record, no more than
        ``NEBLINA_MAX_RESULT_BYTES`` of records (archived results counted at their size),
        so that it fits a response; ``next_cursor`` continues after its last record.
        """
        n = validation.integer(limit, "limit", 20, 1, 100)
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidRequest("invalid cursor")
        dataset, _ = self._granted_dataset(user_id, name)
        records, next_cursor = self.store.list_queries(user_id, dataset.name, n, cursor or None)
        fitting = self._fitting(records)
        while fitting < len(records):  # ask again for fewer, so the cursor follows the last
            records, next_cursor = self.store.list_queries(
                user_id, dataset.name, fitting, cursor or None
            )
            fitting = min(fitting, self._fitting(records))
        now = self.clock()
        return {
            "queries": [
                record_json(self._released(self._settle_lease(r, now)), now) for r in records
            ],
            "next_cursor": next_cursor,
        }

    def _fitting(self, records: Sequence[QueryRecord]) -> int:
        """How many of ``records`` (at least one) fit a history page's byte budget."""
        total = 0
        for count, record in enumerate(records):
            total += _record_bytes(record)
            if count and total > self.settings.max_result_bytes:
                return count
        return len(records)

    def get_query(self, user_id: str, name: str, query_id: str) -> dict[str, Any]:
        """One of the caller's archived queries."""
        dataset, _ = self._granted_dataset(user_id, name)
        if not validation.QUERY_ID.match(query_id):
            raise QueryNotFound("no such query")
        record = self.store.get_query(query_id)
        if record is None or record.user_id != user_id or record.dataset != dataset.name:
            raise QueryNotFound("no such query")
        now = self.clock()
        return record_json(self._released(self._settle_lease(record, now)), now)

    def _released(self, record: QueryRecord) -> QueryRecord:
        """The record with an archived result fetched from S3 and checked against its pointer.

        An object that is missing or altered is never served: generic 500 (logged).
        """
        if not result_overflow.is_pointer(record.result):
            return record
        assert record.result is not None
        try:
            result = self.results.get(record.query_id, record.result)
        except Exception:
            log.exception("query %s: its archived result cannot be served", record.query_id)
            raise InternalError() from None
        return replace(record, result=result)

    def _settle_lease(self, record: QueryRecord, now: datetime) -> QueryRecord:
        """Write the lease rule back for a record whose lease expired (see effective_state)."""
        if record.lease_expired(now):
            try:
                self.store.expire_query(record.query_id, now, dict(INTERRUPTED))
            except Exception:  # the answer does not depend on it: the rule is applied anyway
                log.warning("query %s: could not persist its expired lease", record.query_id)
        return record

    # cost and queries ----------------------------------------------------------------
    def _parse(self, body: object) -> tuple[Engine[Any], EngineRequest, dict[str, Any]]:
        document = validation.require_object(body)
        engine = self.engines.get(document.get("engine"))
        return engine, engine.parse(document), document

    def _price(self, engine: Engine[Any], dataset: Dataset, request: EngineRequest) -> PrivacyCost:
        """The charge: the engine's exact price rounded up to the ledger's grid, memoised.

        It is a pure function of metadata and request. The rounding is the one rule of
        ``docs/ledger.md`` ("Amounts"), applied here for every engine and backend before
        anything is read or debited: what ``/cost`` shows, what is archived and what is
        debited are this same number, never below the engine's charge. A charge the ledger
        cannot hold (above 1e9) is a 400.
        """
        key = json.dumps(
            [engine.name, dataset.name, dataset.metadata, request.canonical()],
            sort_keys=True,
            default=str,
        )
        cost = self._costs.get(key)
        if cost is None:
            exact = engine.cost(dataset, request)
            if exact.is_negative():  # pragma: no cover - engines never price below zero
                raise EngineRefused("the engine priced the query below zero")
            try:
                cost = exact.charged()  # rounded up to the ledger's grid (docs/ledger.md)
            except AmountOutOfRange as exc:
                raise InvalidRequest(f"this query's cost cannot be charged: {exc}") from None
            self._costs.put(key, cost)
        return cost

    def _throttle(self, user_id: str) -> None:
        """Count the request against the user's rate limit (fixed windows); 429 beyond it."""
        limit, window = self.settings.rate_limit, self.settings.rate_window_seconds
        if limit <= 0:
            return
        now = self.clock().timestamp()
        start = int(now) // window * window
        if not self.store.take_request(user_id, datetime.fromtimestamp(start, UTC), window, limit):
            retry_after = max(1, math.ceil(start + window - now))
            raise RateLimited(
                f"more than {limit} query and cost requests in {window} s; "
                f"retry in {retry_after} s",
                retry_after,
            )

    @contextmanager
    def _hardening(self, hardening: _Hardening) -> Iterator[None]:
        """Apply hardened mode (if the watched dataset has it) to whatever the block does."""
        try:
            yield
        except NeblinaError as error:
            if hardening.dataset is None or not hardening.generic:
                raise
            replacement = hardened_error(error)
            if replacement is error:
                raise
            raise replacement from None
        finally:
            if hardening.dataset is not None:
                wait = hardening.release_at(self.timer()) - self.timer()
                if wait > 0:
                    self.sleep(wait)

    def _check_cap(self, dataset: Dataset, cost: PrivacyCost) -> None:
        """403 when one query would cost more than the dataset (or deployment) allows."""
        cap = PrivacyCost(
            epsilon=self.settings.max_epsilon_per_query, delta=self.settings.max_delta_per_query
        )
        if dataset.per_query_cap is not None:
            own = dataset.per_query_cap
            cap = PrivacyCost(
                epsilon=min(cap.epsilon, own.epsilon), delta=min(cap.delta, own.delta)
            )
        if not cost <= cap:
            raise QueryCapExceeded(
                f"this query costs epsilon {format_decimal(cost.epsilon)}, delta "
                f"{format_decimal(cost.delta)}; one query on {dataset.name} may cost at most "
                f"epsilon {format_decimal(cap.epsilon)}, delta {format_decimal(cap.delta)}"
            )

    def cost(self, user_id: str, name: str, body: object) -> dict[str, Any]:
        """The price of a query: metadata only, no debit."""
        hardening = _Hardening(self.timer())
        self._throttle(user_id)
        with self._hardening(hardening):
            engine, request, _ = self._parse(body)
            dataset, _ = self._granted_dataset(user_id, name)
            hardening.watch(dataset)
            cost = self._price(engine, dataset, request)
            return {"dataset": dataset.name, "engine": engine.name, "cost": cost.to_json()}

    def query(self, user_id: str, name: str, body: object) -> dict[str, Any]:
        """Run a query (see the module docstring for the order of steps)."""
        hardening = _Hardening(self.timer())
        self._throttle(user_id)
        with self._hardening(hardening):
            engine, request, document = self._parse(body)
            query_id = validation.query_id(document.get("query_id"))
            is_dummy = validation.boolean(document.get("dummy"), "dummy", False)
            dataset, _ = self._granted_dataset(user_id, name)
            hardening.watch(dataset, generic=not is_dummy)
            cost = self._price(engine, dataset, request)
            self._check_cap(dataset, cost)
            if is_dummy:
                return self._dummy_query(engine, dataset, request, document, query_id, cost)
            return self._debit_and_run(user_id, engine, dataset, request, query_id, cost)

    def _debit_and_run(
        self,
        user_id: str,
        engine: Engine[Any],
        dataset: Dataset,
        request: EngineRequest,
        query_id: str,
        cost: PrivacyCost,
    ) -> dict[str, Any]:
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
        )
        try:
            # the store tells its own retried write from another request's record
            self.store.reserve(record)
        except QueryIdTaken as taken:
            return self._replay(taken.existing, record)
        return self._run(engine, dataset, request, record)

    def _replay(self, existing: QueryRecord, record: QueryRecord) -> dict[str, Any]:
        """Answer a retry of a query id that already has a record."""
        if (
            existing.user_id != record.user_id
            or existing.dataset != record.dataset
            or existing.payload_hash != record.payload_hash
        ):
            raise QueryIdConflict("query_id already used with a different payload")
        now = self.clock()
        state = effective_state(self._settle_lease(existing, now), now)
        if state is QueryState.DONE:
            return self._response(existing, self._released(existing).result, replayed=True)
        if state is QueryState.RUNNING:
            raise QueryInProgress("this query_id is still running; retry later")
        if state is QueryState.REFUNDED:  # refunded meanwhile: a new attempt may run
            raise QueryInProgress("this query_id was refunded meanwhile; retry")
        raise QueryFailed(
            "this query_id failed after the data was read; its cost stands. "
            "Send the query again with a new query_id."
        )

    def _run(
        self, engine: Engine[Any], dataset: Dataset, request: EngineRequest, record: QueryRecord
    ) -> dict[str, Any]:
        """Steps 4-6 for a reserved record; every exception leaves the record settled.

        Before the engine is handed the rows, any failure refunds (nothing saw the data).
        From then on the spend stands: an engine failure or a failed archive write marks
        the record failed, and nothing is released unless the archive write succeeded.
        """
        try:
            loaded = self.loader.load(dataset)
            if loaded.digest != metadata_digest(dataset.metadata):  # pragma: no cover - keyed so
                raise RuntimeError("the rows were loaded under other metadata than was priced")
        except Exception as exc:
            self._refund(record, exc)
        try:
            result = engine.execute(loaded, request)
        except Exception:
            # The mechanism saw the data: the spend stands, the message says nothing.
            log.exception("query %s: engine failed on the private data", record.query_id)
            failure = EngineFailed()
            self._fail(record, {"error": failure.code, "message": failure.message})
            raise failure from None
        self._archive(dataset, record, result)
        return self._response(record, result, replayed=False)

    def _archive(self, dataset: Dataset, record: QueryRecord, result: dict[str, Any]) -> None:
        """Step 6: complete the record with the result (or a pointer to it in S3), or fail it.

        Over ``max_result_bytes`` nothing is released: the record fails with a fixed
        message (on a hardened dataset, the same one as an engine failure) and the spend
        stands. Over ``inline_result_bytes`` the result is written to S3 first and the
        record keeps a pointer; if the record write then fails, the object is left behind
        unreferenced (an orphan) and nothing is released.
        """
        try:
            body = result_overflow.encode(result)
        except Exception:
            log.exception("query %s: the result cannot be encoded", record.query_id)
            self._fail(record, dict(ARCHIVE_FAILED))
            raise InternalError() from None
        if len(body) > self.settings.max_result_bytes:
            too_large = ResultTooLarge(self.settings.max_result_bytes, spent=True)
            log.warning("query %s: result of %d bytes not released", record.query_id, len(body))
            stored: NeblinaError = EngineFailed() if dataset.hardened else too_large
            self._fail(record, {"error": stored.code, "message": stored.message})
            raise too_large
        inline = len(body) <= self.settings.inline_result_bytes
        try:
            kept = result if inline else self.results.put(record.query_id, body)
        except Exception:
            log.exception("query %s: the result could not be written to S3", record.query_id)
            self._fail(record, dict(ARCHIVE_FAILED))
            raise InternalError() from None
        try:
            self.store.finish(record.query_id, QueryState.DONE, self.clock(), result=kept)
        except Exception:
            log.exception("query %s: the release could not be archived", record.query_id)
            self._fail(record, dict(ARCHIVE_FAILED))
            raise InternalError() from None

    def _refund(self, record: QueryRecord, cause: Exception) -> NoReturn:
        """Give the debit back (no engine saw a row) and raise.

        A source that cannot be read or parsed is 503 ``dataset_unavailable`` (fixed
        message; retrying cannot help until the source is fixed); anything else a generic
        500.
        """
        failure: NeblinaError
        if isinstance(cause, DatasetUnavailable):
            failure, what = DatasetUnavailableError(), "dataset unavailable"
        else:
            what = "the query could not be run"
            failure = InternalError(f"{what}; the cost was refunded")
        try:
            self.store.refund(
                record, self.clock(), {"error": failure.code, "message": failure.message}
            )
        except Exception:
            # The record stays running: the lease rule settles it (the spend stands).
            log.exception("query %s: refund failed", record.query_id)
            raise InternalError() from cause
        log.error("query %s: %s before any engine ran: %r", record.query_id, what, cause)
        raise failure from cause

    def _fail(self, record: QueryRecord, error: dict[str, str]) -> None:
        """Mark a running record failed (the spend stands); a failure here is only logged.

        If the write fails the record stays running and the lease rule settles it the same
        way; if the record is no longer running (its release was archived after all), it
        keeps what it says.
        """
        try:
            self.store.finish(record.query_id, QueryState.FAILED, self.clock(), error=error)
        except Exception:
            log.exception("query %s: could not mark the record failed", record.query_id)

    def _dummy_query(
        self,
        engine: Engine[Any],
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
        if len(result_overflow.encode(result)) > self.settings.max_result_bytes:
            raise ResultTooLarge(self.settings.max_result_bytes, spent=False)
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
