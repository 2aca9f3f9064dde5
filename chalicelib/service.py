"""What the API does, framework-free: the routes call one method each.

This is the front (docs/architecture.md): it imports no DP library and no pandas. Whatever
needs an engine or the rows (pricing, dummy rows, steps 4-6) is one operation of the
engine's worker (:mod:`chalicelib.worker`), reached through :mod:`chalicelib.hop`.

The query path (``Service.query``), in order:

0. the caller's request is counted against the per-user rate limit (429 beyond it); the
   engine's name and the shared fields (``query_id``, ``dummy``, ``wait``) are checked (400);
1. the dataset exists (404) and the caller holds a grant on it (403);
2. the worker's engine validates the request (400) and prices it from the metadata only
   (400/422); the price is rounded up to the ledger's grid (400 when it cannot be held:
   docs/ledger.md); the price must fit the per-query cap of the dataset and the deployment
   (403);
3. ``store.reserve``: the debit and the creation of the archive record, one atomic write
   (409 when the budget does not cover the cost or the query id is taken); with
   ``"wait": false`` the record is a queued job, handed to the worker, and the answer is
   202 (``Service._submit``); otherwise the worker runs steps 4-6 while the request waits:
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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from chalicelib import accuracy, result_overflow, validation
from chalicelib.config import Settings
from chalicelib.engines import COMMON_FIELDS
from chalicelib.errors import (
    DatasetNotFound,
    DatasetUnavailableError,
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
    WorkerUnavailable,
)
from chalicelib.hop import (
    HopFailed,
    InProcessWorkers,
    Workers,
    dataset_to_wire,
    record_to_wire,
)
from chalicelib.lru import LruCache
from chalicelib.models import (
    INTERRUPTED,
    Dataset,
    Grant,
    PrivacyCost,
    QueryPhase,
    QueryRecord,
    QueryState,
    format_decimal,
    metadata_digest,
    reuse_digest,
    utcnow,
)
from chalicelib.result_overflow import ResultOverflow
from chalicelib.storage import QueryIdTaken, Store
from chalicelib.workers import (
    ASYNC_ENGINES,
    DUMMY_WORKER,
    ENGINE_WORKERS,
    SPARK_ENGINES,
    SPARK_WORKER,
)

if TYPE_CHECKING:  # the worker's parts import pandas: only for an in-process worker
    from chalicelib.datasets import DatasetLoader
    from chalicelib.engines import Engines
    from chalicelib.worker import Worker

log = logging.getLogger(__name__)


def payload_digest(dataset: str, engine: str, canonical: dict[str, Any]) -> str:
    """SHA-256 identifying a query's payload (what a retry must repeat exactly)."""
    document = {"dataset": dataset, "engine": engine, "request": canonical}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


MAX_PLAN_QUERIES = 100  # queries priced by one POST .../plan
RATE_BLOCK_MAX = 10


def rate_block(limit: int) -> int:
    """How many requests the service counts in the store at once under ``limit``."""
    return max(1, min(RATE_BLOCK_MAX, limit // 60))


HARDENED_ENGINE_MESSAGE = (
    "the query could not be answered; on this dataset failure details are withheld "
    "(develop the query on dummy data to see the engine's messages)"
)


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
    """A record as the API returns it (lease rule applied), with the accuracy stated when
    it was reserved (``extra["accuracy"]``; null on records from before it existed)."""
    return {**record.as_seen(now).to_json(), "accuracy": record.extra.get("accuracy")}


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


@dataclass(frozen=True)
class Priced:
    """A request's charge, its canonical form and its accuracy (the worker's ``price``)."""

    cost: PrivacyCost
    canonical: dict[str, Any]
    accuracy: dict[str, Any]


@dataclass(frozen=True)
class Accepted:
    """A 202 answer: the query runs as a job; ``location`` is its record's route."""

    body: dict[str, Any]
    location: str


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
        loader: DatasetLoader | None = None,
        clock: Callable[[], datetime] = utcnow,
        timer: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        results: ResultOverflow | None = None,
        engines: Engines | None = None,
        workers: Workers | None = None,
    ) -> None:
        """``workers`` None: one in-process :class:`~chalicelib.worker.Worker` built from
        ``loader`` and ``engines`` serves every engine (tests, ``NEBLINA_WORKERS=inprocess``)."""
        self.store = store
        self.settings = settings
        self.results = results or ResultOverflow(settings)
        self.clock = clock
        self.timer = timer
        self.sleep = sleep
        self.engine_workers: dict[str, str] = dict(ENGINE_WORKERS)
        self.local: Worker | None = None
        if workers is None:
            from chalicelib.worker import Worker

            if loader is None:
                from chalicelib.datasets import DatasetLoader

                loader = DatasetLoader(settings)
            self.local = Worker(
                store, settings, loader, results=self.results, engines=engines, clock=clock
            )
            workers = InProcessWorkers(self.local)
        self.workers = workers
        self._costs: LruCache[str, Priced] = LruCache(1024)
        # Cached lookups (docs/threat-model.md, "Cached lookups"): a dataset record, and the
        # fact that a user holds a grant, each kept until a monotonic deadline.
        self._datasets: LruCache[str, tuple[float, Dataset]] = LruCache(256)
        self._grants_seen: LruCache[tuple[str, str], float] = LruCache(4096)
        # (user, window start) -> requests counted in the store and not served yet
        self._allowance: dict[tuple[str, int], int] = {}
        self._allowance_lock = threading.Lock()

    # the in-process worker's parts (tests reach them through the service) ---------------
    def _in_process(self) -> Worker:
        if self.local is None:
            raise AttributeError("the engines run in workers, not in this process")
        return self.local

    @property
    def loader(self) -> DatasetLoader:
        return self._in_process().loader

    @loader.setter
    def loader(self, loader: DatasetLoader) -> None:
        self._in_process().loader = loader

    @property
    def engines(self) -> Engines:
        return self._in_process().engines

    @engines.setter
    def engines(self, engines: Engines) -> None:
        self._in_process().engines = engines

    # lookups -------------------------------------------------------------------------
    def _dataset(self, name: str) -> Dataset:
        """The dataset's record, read at most once per ``lookup_cache_seconds`` (only a
        record found is kept: a new dataset is seen at once)."""
        validation.dataset_name(name)
        now = self.timer()
        kept = self._datasets.get(name)
        if kept is not None and now < kept[0]:
            return kept[1]
        dataset = self.store.get_dataset(name)
        if dataset is None:
            raise DatasetNotFound(f"dataset {name} does not exist")
        if self.settings.lookup_cache_seconds > 0:
            self._datasets.put(name, (now + self.settings.lookup_cache_seconds, dataset))
        return dataset

    def _grant(self, user_id: str, dataset: Dataset) -> Grant:
        """The caller's grant, read now (amounts are never cached)."""
        grant = self.store.get_grant(user_id, dataset.name)
        if grant is None:
            self._grants_seen.discard(lambda key: key != (user_id, dataset.name))
            raise NoGrant(f"no grant on dataset {dataset.name}")
        self._seen_grant(user_id, dataset.name)
        return grant

    def _seen_grant(self, user_id: str, dataset: str) -> None:
        """Remember (for ``lookup_cache_seconds``) that the user holds a grant on ``dataset``."""
        if self.settings.lookup_cache_seconds > 0:
            deadline = self.timer() + self.settings.lookup_cache_seconds
            self._grants_seen.put((user_id, dataset), deadline)

    def _granted_dataset(self, user_id: str, name: str) -> tuple[Dataset, Grant]:
        dataset = self._dataset(name)
        return dataset, self._grant(user_id, dataset)

    def _permitted_dataset(self, user_id: str, name: str) -> Dataset:
        """The dataset, once the caller is known to hold a grant on it (403 otherwise).

        Routes that need no amounts only need to know that the grant exists: a grant read
        less than ``lookup_cache_seconds`` ago says so without a store call. The debit
        itself never relies on this: ``reserve`` checks the grant inside its own
        conditional write (a grant removed meanwhile is refused there, nothing debited).
        """
        dataset = self._dataset(name)
        deadline = self._grants_seen.get((user_id, dataset.name))
        if deadline is None or self.timer() >= deadline:
            self._grant(user_id, dataset)
        return dataset

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
        dataset = self._permitted_dataset(user_id, name)
        return {"dataset": dataset.name, "metadata": dataset.metadata}

    def dummy(self, user_id: str, name: str, rows: object, seed: object) -> dict[str, Any]:
        """Dummy rows from the metadata only."""
        n_rows = validation.integer(rows, "rows", 100, 1, self.settings.max_dummy_rows)
        n_seed = validation.integer(seed, "seed", 42, 0, 2**32 - 1)
        dataset = self._permitted_dataset(user_id, name)
        payload = {"op": "dummy_table", "dataset": dataset_to_wire(dataset)}
        answer = self._call(DUMMY_WORKER, {**payload, "rows": n_rows, "seed": n_seed})
        return {"dataset": dataset.name, "rows": n_rows, "seed": n_seed, "table": answer["table"]}

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
        dataset = self._permitted_dataset(user_id, name)
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
        dataset = self._permitted_dataset(user_id, name)
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
    def _parse(self, body: object) -> tuple[str, dict[str, Any]]:
        """The engine's name (400 unless a worker runs it) and the request document."""
        document = validation.require_object(body)
        name = document.get("engine")
        if not isinstance(name, str) or name not in self.engine_workers:
            known = ", ".join(sorted(self.engine_workers))
            raise InvalidRequest(f"unknown engine {name!r} (expected one of: {known})")
        return name, document

    def _call(self, worker: str, payload: dict[str, Any]) -> dict[str, Any]:
        """An operation that reads no private data (price, dummy): a failed hop is a 503."""
        try:
            return self.workers.call(worker, payload)
        except HopFailed as failure:
            log.error("worker %s: %s", worker, failure)
            raise WorkerUnavailable() from None

    def _price(
        self, engine: str, dataset: Dataset, document: dict[str, Any], level: float
    ) -> Priced:
        """The charge, the canonical request and the accuracy at ``level`` (the worker's
        ``price``), memoised.

        The worker's engine validates the request (400) and prices it from the metadata
        only, rounded up to the ledger's grid (the one rule of ``docs/ledger.md``,
        "Amounts"): what ``/cost`` shows, what is archived and what is debited are this
        same number, never below the engine's charge. The accuracy comes from the same
        request and metadata (:mod:`chalicelib.accuracy`). Both are pure functions of the
        metadata, the engine's fields of the request and the level, so the front keeps
        them (LRU) under their digests: a repeated query is one hop.
        """
        own = {k: v for k, v in document.items() if k not in COMMON_FIELDS}
        body = json.dumps(own, sort_keys=True, default=str).encode()
        key = json.dumps(
            [
                engine,
                dataset.name,
                metadata_digest(dataset.metadata),
                hashlib.sha256(body).hexdigest(),
                repr(level),
            ]
        )
        priced = self._costs.get(key)
        if priced is None:
            payload = {"op": "price", "engine": engine, "dataset": dataset_to_wire(dataset)}
            answer = self._call(
                self.engine_workers[engine], {**payload, "body": document, "level": level}
            )
            charge = answer["cost"]
            cost = PrivacyCost(epsilon=charge["epsilon"], delta=charge["delta"])
            if cost.is_negative():  # pragma: no cover - workers never price below zero
                raise EngineRefused("the engine priced the query below zero")
            stated = answer.get("accuracy") or accuracy.unavailable(level, "not computed")
            priced = Priced(cost, dict(answer["canonical"]), dict(stated))
            self._costs.put(key, priced)
        return priced

    def _throttle(self, user_id: str) -> None:
        """Count the request against the user's rate limit (fixed windows); 429 beyond it.

        The process counts requests in the store a block at a time (:func:`rate_block`:
        at most a 60th of the limit, at most 10) and serves the block's other requests
        from its own allowance, so most requests make no store call. No window ever serves
        more than the limit (each request served used one counted slot); slots one process
        took and did not use are lost with the window, so a user whose requests are spread
        over several processes may be refused up to ``block - 1`` requests per other
        process early. Near the limit, when a block no longer fits, requests are counted
        one by one.
        """
        limit, window = self.settings.rate_limit, self.settings.rate_window_seconds
        if limit <= 0:
            return
        now = self.clock().timestamp()
        start = int(now) // window * window
        key = (user_id, start)
        with self._allowance_lock:
            left = self._allowance.get(key, 0)
            if left > 0:
                self._allowance[key] = left - 1
                return
        window_start = datetime.fromtimestamp(start, UTC)
        block = rate_block(limit)
        taken = self.store.take_request(user_id, window_start, window, limit, block)
        if not taken and block > 1:
            block = 1
            taken = self.store.take_request(user_id, window_start, window, limit, 1)
        if taken:
            with self._allowance_lock:
                for old in [k for k in self._allowance if k[1] != start]:
                    del self._allowance[old]  # windows that ended
                self._allowance[key] = self._allowance.get(key, 0) + block - 1
            return
        retry_after = max(1, math.ceil(start + window - now))
        raise RateLimited(
            f"more than {limit} query and cost requests in {window} s; retry in {retry_after} s",
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
            engine, document = self._parse(body)
            level = accuracy.level(document.get("level"))
            dataset = self._permitted_dataset(user_id, name)
            hardening.watch(dataset)
            priced = self._price(engine, dataset, document, level)
            return {
                "dataset": dataset.name,
                "engine": engine,
                "cost": priced.cost.to_json(),
                "accuracy": priced.accuracy,
            }

    def plan(self, user_id: str, name: str, body: object) -> dict[str, Any]:
        """Price a workload: each query's price and accuracy, the total, and whether it fits.

        Free and reads no data: every query is priced by its engine's worker from the
        metadata only, exactly as ``/cost`` prices it (same memo). ``total`` is the basic
        composition (the exact sum) of the charges; ``fits`` says whether that total is
        within the caller's grant and the dataset's cap, and whether every query is within
        the per-query cap. A query the engine refuses fails the whole plan with its own
        4xx, its message prefixed by ``queries[i]``.
        """
        hardening = _Hardening(self.timer())
        self._throttle(user_id)
        with self._hardening(hardening):
            document = validation.require_object(body)
            validation.refuse_unknown(document, {"queries", "level"})
            level = accuracy.level(document.get("level"))
            queries = document.get("queries")
            if not isinstance(queries, list) or not 1 <= len(queries) <= MAX_PLAN_QUERIES:
                raise InvalidRequest(
                    f"queries must be a list of 1 to {MAX_PLAN_QUERIES} query bodies"
                )
            dataset, grant = self._granted_dataset(user_id, name)
            hardening.watch(dataset)
            items: list[dict[str, Any]] = []
            total = PrivacyCost.zero()
            every_within = True
            for i, query in enumerate(queries):
                try:
                    engine, own = self._parse(query)
                    if "query_id" in own or own.get("dummy"):
                        raise InvalidRequest("a planned query has no query_id and no dummy")
                    at = accuracy.level(own.get("level", level))
                    priced = self._price(engine, dataset, own, at)
                except NeblinaError as error:
                    error.message = f"queries[{i}]: {error.message}"
                    error.args = (error.message,)
                    raise
                try:
                    self._check_cap(dataset, priced.cost)
                    within = True
                except QueryCapExceeded:
                    within = False
                every_within = every_within and within
                total = total + priced.cost
                items.append(
                    {
                        "engine": engine,
                        "cost": priced.cost.to_json(),
                        "accuracy": priced.accuracy,
                        "within_query_cap": within,
                    }
                )
            cap = self.store.get_cap(dataset.name) if grant.capped else None
            limit = cap.remaining if cap is not None else None
            return {
                "dataset": dataset.name,
                "level": level,
                "queries": items,
                "total": total.to_json(),
                "remaining": grant.remaining.to_json(),
                "cap_remaining": None if limit is None else limit.to_json(),
                "fits": {
                    "grant": total <= grant.remaining,
                    "cap": None if limit is None else total <= limit,
                    "query_cap": every_within,
                    "all": total <= grant.remaining
                    and (limit is None or total <= limit)
                    and every_within,
                },
            }

    def query(self, user_id: str, name: str, body: object) -> dict[str, Any] | Accepted:
        """Run a query (see the module docstring for the order of steps)."""
        hardening = _Hardening(self.timer())
        self._throttle(user_id)
        with self._hardening(hardening):
            engine, document = self._parse(body)
            query_id = validation.query_id(document.get("query_id"))
            is_dummy = validation.boolean(document.get("dummy"), "dummy", False)
            reuse = validation.boolean(document.get("reuse"), "reuse", False)
            level = accuracy.level(document.get("level"))
            dataset = self._permitted_dataset(user_id, name)
            hardening.watch(dataset, generic=not is_dummy)
            wait = validation.boolean(document.get("wait"), "wait", True)
            if dataset.metadata.get("executor") == "spark":
                if engine not in SPARK_ENGINES:
                    raise InvalidRequest(
                        f"{dataset.name} runs on Spark: query it with engine "
                        f"{' or '.join(sorted(SPARK_ENGINES))} (docs/spark.md)"
                    )
                wait = False  # a Spark job is always asynchronous: 202, then poll
                reuse = False  # its source version is not the loader's: never reused
            if engine in ASYNC_ENGINES:
                wait = False  # a synthesizer's fit is always a job: 202, then poll
            priced = self._price(engine, dataset, document, level)
            cost, canonical, stated = priced.cost, priced.canonical, priced.accuracy
            self._check_cap(dataset, cost)
            if is_dummy:  # public rows, nothing debited: always answered at once
                answer = self._dummy_query(engine, dataset, document, query_id, cost)
                return {**answer, "accuracy": stated}
            record = self._record(user_id, engine, dataset, canonical, query_id, cost, job=not wait)
            if reuse:
                key = self._reuse_key(engine, dataset, record.payload_hash)
                earlier = self.store.find_release(user_id, dataset.name, key)
                if earlier is not None and earlier.query_id == query_id:  # a plain retry
                    return {**self._replay(earlier, record), "accuracy": stated}
                if earlier is not None:  # post-processing of the caller's own release: free
                    result = self._released(earlier).result
                    answer = self._response(earlier, result, replayed=False)
                    return {**answer, "reused": True, "accuracy": stated}
                record = replace(record, extra={**record.extra, "reuse_key": key})
            record = replace(record, extra={**record.extra, "accuracy": stated})
            try:
                # the store tells its own retried write from another request's record; the
                # grant is checked inside the same conditional write (NoGrant if it is gone)
                self.store.reserve(record)
            except QueryIdTaken as taken:
                return {**self._replay(taken.existing, record), "accuracy": stated}
            except NoGrant:
                self._grants_seen.discard(lambda key: key != (user_id, dataset.name))
                raise
            self._seen_grant(user_id, dataset.name)  # the debit just found it
            if not wait:
                return self._submit(dataset, document, record)
            return {**self._run(dataset, document, record), "accuracy": stated}

    def _record(
        self,
        user_id: str,
        engine: str,
        dataset: Dataset,
        canonical: dict[str, Any],
        query_id: str,
        cost: PrivacyCost,
        *,
        job: bool,
    ) -> QueryRecord:
        """The record ``reserve`` creates with the debit (state running, with its lease).

        A job starts ``queued`` (a worker claims it) with the job lease; a synchronous run
        starts ``running`` (nothing retries it) with the query lease.
        """
        now = self.clock()
        lease = self.settings.job_lease_seconds if job else self.settings.query_lease_seconds
        return QueryRecord(
            query_id=query_id,
            user_id=user_id,
            dataset=dataset.name,
            engine=engine,
            payload_hash=payload_digest(dataset.name, engine, canonical),
            request={"engine": engine, **canonical},
            cost=cost,
            state=QueryState.RUNNING,
            created_at=now,
            lease_expires_at=now + timedelta(seconds=lease),
            phase=(QueryPhase.QUEUED if job else QueryPhase.RUNNING).value,
        )

    def _reuse_key(self, engine: str, dataset: Dataset, payload_hash: str) -> str:
        """The identical-query reuse key of a request on the dataset's current version (one
        hop to the engine's worker, which asks the source for its version; no rows read)."""
        payload = {"op": "version", "dataset": dataset_to_wire(dataset)}
        version = str(self._call(self.engine_workers[engine], payload)["version"])
        return reuse_digest(payload_hash, version, metadata_digest(dataset.metadata))

    def _submit(self, dataset: Dataset, document: dict[str, Any], record: QueryRecord) -> Accepted:
        """Hand a reserved job to its worker and answer 202 with its record.

        If the hand-over fails, the front takes the job back with the same ``claim`` a
        worker would use: then no worker can ever run it, nothing has read the data, and
        the debit is refunded (503 ``worker_unavailable``). If the claim fails, a worker
        has the job already (the event did arrive): the answer is the usual 202.
        """
        payload = {
            "op": "run",
            "mode": "job",
            "dataset": dataset_to_wire(dataset),
            "record": record_to_wire(record),
            "body": document,
        }
        worker = self.engine_workers[record.engine]
        if dataset.metadata.get("executor") == "spark":
            worker = SPARK_WORKER  # docs/spark.md
        try:
            self.workers.submit(worker, payload)
        except HopFailed as failure:
            log.error("query %s: the job could not be handed over: %s", record.query_id, failure)
            if self.store.claim(record.query_id, self.clock()) is not None:
                unavailable = WorkerUnavailable()
                error = {"error": unavailable.code, "message": unavailable.message}
                try:
                    self.store.refund(record, self.clock(), error)
                except Exception:  # held by the front: the lease rule settles it
                    log.exception("query %s: refund failed", record.query_id)
                    raise InternalError() from None
                raise unavailable from None
        location = f"/v1/datasets/{record.dataset}/queries/{record.query_id}"
        return Accepted(record_json(record, self.clock()), location)

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
        self, dataset: Dataset, document: dict[str, Any], record: QueryRecord
    ) -> dict[str, Any]:
        """Steps 4-6, by the engine's worker (its ``run``); every outcome leaves the record
        settled. A hop that certainly never reached the worker refunds (nothing ran); one
        that may have reached it fails the record (the spend stands; if the worker archived
        a release meanwhile, the record keeps it and a retry of the query id replays it)."""
        payload = {
            "op": "run",
            "mode": "sync",
            "dataset": dataset_to_wire(dataset),
            "record": record_to_wire(record),
            "body": document,
        }
        try:
            answer = self.workers.call(self.engine_workers[record.engine], payload)
        except HopFailed as failure:
            self._lost(record, failure)
        result = self._released(replace(record, result=answer["result"])).result
        return self._response(record, result, replayed=False)

    def _lost(self, record: QueryRecord, failure: HopFailed) -> NoReturn:
        """Settle a reserved record whose worker could not be reached, and raise."""
        log.error("query %s: worker hop failed: %s", record.query_id, failure)
        now = self.clock()
        if not failure.delivered:
            unavailable = WorkerUnavailable()
            try:
                self.store.refund(
                    record, now, {"error": unavailable.code, "message": unavailable.message}
                )
            except Exception:
                log.exception("query %s: refund failed", record.query_id)
                raise InternalError() from None
            raise unavailable
        try:
            self.store.finish(record.query_id, QueryState.FAILED, now, error=dict(INTERRUPTED))
        except Exception:  # not running any more (archived meanwhile), or the write failed
            log.exception("query %s: could not mark the record failed", record.query_id)
        raise InternalError()

    def _dummy_query(
        self,
        engine: str,
        dataset: Dataset,
        document: dict[str, Any],
        query_id: str,
        cost: PrivacyCost,
    ) -> dict[str, Any]:
        rows = validation.integer(
            document.get("dummy_rows"), "dummy_rows", 100, 1, self.settings.max_dummy_rows
        )
        seed = validation.integer(document.get("dummy_seed"), "dummy_seed", 42, 0, 2**32 - 1)
        payload = {"op": "dummy_query", "engine": engine, "dataset": dataset_to_wire(dataset)}
        answer = self._call(
            self.engine_workers[engine], {**payload, "body": document, "rows": rows, "seed": seed}
        )
        return {
            "query_id": query_id,
            "dataset": dataset.name,
            "engine": engine,
            "dummy": True,
            "replayed": False,
            "reused": False,
            "cost": cost.to_json(),
            "created_at": self.clock().isoformat(),
            "result": answer["result"],
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
            "reused": False,
            "cost": record.cost.to_json(),
            "created_at": record.created_at.isoformat(),
            "result": result,
        }
