"""An engine worker: prices queries and runs them on the data (docs/architecture.md).

A worker holds the engines of its family (:mod:`chalicelib.workers`), the dataset loader,
the result overflow and the store. It never debits and never reads users, tokens or
grants: the front owns the debit (``store.reserve``). It answers four operations
(JSON in, JSON out; :func:`lambda_handler` is the handler of every worker Lambda, whose
family comes from ``NEBLINA_WORKER``):

- ``price`` ``{engine, dataset, body, level}`` -> ``{cost, canonical, accuracy}``: the
  engine validates the body and prices it from the metadata only, rounded up to the
  ledger's grid; ``accuracy`` at ``level`` (default 0.95) comes from the same request and
  metadata (:mod:`chalicelib.accuracy`; an engine without an ``accuracy`` method says
  null with a reason).
- ``run`` ``{dataset, record, body, mode}`` -> ``{result}``: for a record the front has
  reserved (debited), steps 4-6 of the query path (:mod:`chalicelib.service`): load, run
  the mechanism once, archive the release, or fail the record, or refund it if it fails
  before any engine got rows. ``result`` is the release, or the pointer to it in S3 when
  it was archived there. In ``job`` mode (nobody waits) the worker first claims the
  record (``store.claim``: of all deliveries of a job, one gets it; the others answer
  ``{"result": null, "claimed": false}`` and do nothing), then writes each phase
  (``store.set_progress``: ``running``, ``archiving``; a fraction from an engine whose
  ``reports_progress`` is true, through the ``progress`` callback its ``execute`` gets).
- ``version`` ``{dataset}`` -> ``{version}``: a digest of the source's current version
  (one HEAD/stat, no rows read), for identical-query reuse (:func:`models.reuse_digest`).
  A ``run`` whose record carries a ``reuse_key`` refunds (nothing ran) if the rows loaded
  are of another version than the key names: a reusable release always matches its key.
- ``dummy_table`` ``{dataset, rows, seed}`` -> ``{table}``;
  ``dummy_query`` ``{engine, dataset, body, rows, seed}`` -> ``{result}``: dummy rows are
  public, so the engine's messages are returned.

Every failure is answered as an error envelope (:func:`chalicelib.hop.error_envelope`);
messages of failures after the rows reached an engine are fixed strings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from chalicelib import accuracy, hop, result_overflow, validation
from chalicelib.config import Settings
from chalicelib.engines import Engine, EngineRequest, Engines
from chalicelib.errors import (
    DatasetUnavailableError,
    EngineFailed,
    EngineRefused,
    InternalError,
    InvalidRequest,
    NeblinaError,
    ResultTooLarge,
)
from chalicelib.models import (
    AmountOutOfRange,
    Dataset,
    QueryPhase,
    QueryRecord,
    QueryState,
    metadata_digest,
    reuse_digest,
    utcnow,
)
from chalicelib.result_overflow import ResultOverflow
from chalicelib.workers import DUMMY_WORKER, ENGINE_WORKERS, SPARK_ENGINES, SPARK_WORKER

if TYPE_CHECKING:
    from datetime import datetime

    from chalicelib.datasets import DatasetLoader, LoadedDataset
    from chalicelib.storage import Ledger

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 1.0  # the most often a job's fraction is written
ARCHIVE_FAILED = {
    "error": "internal_error",
    "message": "the release could not be archived, so it was not released; the cost stands",
}


def version_digest(version: str) -> str:
    """A one-way digest of a source version (an S3 ETag is an MD5 of the rows)."""
    return hashlib.sha256(f"neblina-source-version:{version}".encode()).hexdigest()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class Worker:
    """The engine operations of one worker family (``family`` None: every engine)."""

    def __init__(
        self,
        store: Ledger,
        settings: Settings,
        loader: DatasetLoader,
        *,
        results: ResultOverflow | None = None,
        engines: Engines | None = None,
        clock: Callable[[], datetime] = utcnow,
        family: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.loader = loader
        self.results = results or ResultOverflow(settings)
        self.engines = engines or Engines(settings)
        self.clock = clock
        self.family = family
        self._spark: tuple[Any, Any] | None = None  # (loader, engine), built on first use

    # the handler ---------------------------------------------------------------------
    def handle(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One operation: its answer, or its error as an envelope (never raises)."""
        try:
            op = payload.get("op")
            if op == "price":
                return {"ok": True, **self.price(payload)}
            if op == "run":
                return {"ok": True, **self.run(payload)}
            if op == "version":
                return {"ok": True, **self.version(payload)}
            if op == "dummy_table":
                return {"ok": True, **self.dummy_table(payload)}
            if op == "dummy_query":
                return {"ok": True, **self.dummy_query(payload)}
            raise InvalidRequest(f"unknown worker operation {op!r}")
        except NeblinaError as error:
            return hop.error_envelope(error)
        except Exception:
            log.exception("worker %s: operation failed", self.family)
            return hop.error_envelope(InternalError())

    def _engine(self, name: object) -> Engine[Any]:
        if self.family == SPARK_WORKER and name in SPARK_ENGINES:
            return self.engines.get(name)
        if self.family is not None and ENGINE_WORKERS.get(str(name)) != self.family:
            log.error("worker %s asked to run engine %r", self.family, name)
            raise InternalError()
        return self.engines.get(name)

    def _parse(self, engine: Engine[Any], body: object) -> EngineRequest:
        request: EngineRequest = engine.parse(validation.require_object(body))
        return request

    # price -----------------------------------------------------------------------------
    def price(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The charge of a request (metadata only), and its canonical form."""
        engine = self._engine(payload.get("engine"))
        dataset = hop.dataset_from_wire(payload["dataset"])
        request = self._parse(engine, payload.get("body"))
        exact = engine.cost(dataset, request)
        if exact.is_negative():  # pragma: no cover - engines never price below zero
            raise EngineRefused("the engine priced the query below zero")
        try:
            cost = exact.charged()  # rounded up to the ledger's grid (docs/ledger.md)
        except AmountOutOfRange as exc:
            raise InvalidRequest(f"this query's cost cannot be charged: {exc}") from None
        at = accuracy.level(payload.get("level"))
        answer = getattr(engine, "accuracy", None)
        if answer is None:
            stated = accuracy.unavailable(at, f"the {engine.name} engine has no analytic accuracy")
        else:
            stated = accuracy.computed(at, lambda: answer(dataset, request, at))
        return {"cost": cost.to_json(), "canonical": request.canonical(), "accuracy": stated}

    # run -------------------------------------------------------------------------------
    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Steps 4-6 for a reserved record; every exception leaves the record settled.

        Before the engine is handed the rows, any failure refunds (nothing saw the data).
        From then on the spend stands: an engine failure or a failed archive write marks
        the record failed, and nothing is released unless the archive write succeeded.
        """
        record = hop.record_from_wire(payload["record"])
        job = payload.get("mode") == "job"
        if job:
            # The one gate before any read: of all deliveries of this job, one claims it.
            claimed = self.store.claim(record.query_id, self.clock())
            if claimed is None:
                log.warning("query %s: not claimable (a duplicate delivery?)", record.query_id)
                return {"result": None, "claimed": False}
            record = claimed
        try:
            dataset = hop.dataset_from_wire(payload["dataset"])
            engine = self._engine(record.engine)
            request = self._parse(engine, payload.get("body"))
            if _json({"engine": engine.name, **request.canonical()}) != _json(record.request):
                raise RuntimeError("the body is not the request that was reserved")
            loader: Any = self.loader
            if dataset.metadata.get("executor") == "spark":
                loader, engine = self._spark_parts(engine)
            loaded = loader.load(dataset)
            if loaded.digest != metadata_digest(dataset.metadata):  # pragma: no cover - keyed
                raise RuntimeError("the rows were loaded under other metadata than was priced")
            key = record.extra.get("reuse_key")
            if key is not None and key != reuse_digest(
                record.payload_hash, version_digest(loaded.version), loaded.digest
            ):
                raise RuntimeError("the source changed between the reuse lookup and the load")
        except Exception as exc:
            self._refund(record, exc)
        if job:
            self._progress(record, QueryPhase.RUNNING, None)
        try:
            result = self._execute(engine, loaded, request, record if job else None)
        except Exception:
            # The mechanism saw the data: the spend stands, the message says nothing.
            log.exception("query %s: engine failed on the private data", record.query_id)
            failure = EngineFailed()
            self._fail(record, {"error": failure.code, "message": failure.message})
            raise failure from None
        if job:
            self._progress(record, QueryPhase.ARCHIVING, None)
        return {"result": self._archive(dataset, record, result)}

    def _spark_parts(self, engine: Engine[Any]) -> tuple[Any, Engine[Any]]:
        """The Spark loader and the SQL engine on Spark (docs/spark.md), for a Spark-backed
        dataset's job; built on first use (pyspark is imported then, never before)."""
        if engine.name not in SPARK_ENGINES:
            raise RuntimeError(f"engine {engine.name} does not run on Spark")
        if self._spark is None:
            from chalicelib.engines.spark_sql import SparkLoader, SparkSqlEngine

            s3 = getattr(self.loader, "_s3", None)
            self._spark = (
                SparkLoader(s3),
                SparkSqlEngine(max_query_chars=self.settings.max_query_chars),
            )
        return self._spark

    def _execute(
        self,
        engine: Engine[Any],
        loaded: LoadedDataset,
        request: EngineRequest,
        record: QueryRecord | None,
    ) -> dict[str, Any]:
        """The mechanism, once. An engine with ``reports_progress`` is handed a callback
        ``progress(fraction)`` (written at most once a second, jobs only); others run as is."""
        if record is None or not getattr(engine, "reports_progress", False):
            result: dict[str, Any] = engine.execute(loaded, request)
            return result
        last = [0.0]

        def progress(fraction: float) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_SECONDS:
                last[0] = now
                self._progress(record, QueryPhase.RUNNING, min(1.0, max(0.0, float(fraction))))

        answer: dict[str, Any] = engine.execute(loaded, request, progress=progress)  # type: ignore[call-arg]
        return answer

    def _progress(self, record: QueryRecord, phase: QueryPhase, fraction: float | None) -> None:
        """Show a job's phase (and fraction); never fails the job (only logged)."""
        try:
            self.store.set_progress(record.query_id, phase.value, fraction)
        except Exception:
            log.warning("query %s: could not write its progress", record.query_id)

    def _archive(
        self, dataset: Dataset, record: QueryRecord, result: dict[str, Any]
    ) -> dict[str, Any]:
        """Step 6: complete the record with the result (or a pointer to it in S3), or fail it.

        Over ``max_result_bytes`` nothing is released: the record fails with a fixed
        message (on a hardened dataset, the same one as an engine failure) and the spend
        stands. Over ``inline_result_bytes`` the result is written to S3 first and the
        record keeps a pointer; if the record write then fails, the object is left behind
        unreferenced (an orphan) and nothing is released. Returns what the record keeps.
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
        return kept

    def _refund(self, record: QueryRecord, cause: Exception) -> NoReturn:
        """Give the debit back (no engine saw a row) and raise.

        A source that cannot be read or parsed is 503 ``dataset_unavailable`` (fixed
        message; retrying cannot help until the source is fixed); anything else a generic
        500.
        """
        from chalicelib.datasets import DatasetUnavailable

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

    # version -----------------------------------------------------------------------------
    def version(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A digest of the source's current version (no rows read)."""
        dataset = hop.dataset_from_wire(payload["dataset"])
        return {"version": version_digest(self.loader.version(dataset))}

    # dummy data ------------------------------------------------------------------------
    def dummy_table(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Dummy rows from the metadata only, as a wire table."""
        if self.family is not None and self.family != DUMMY_WORKER:
            log.error("worker %s asked for a dummy table", self.family)
            raise InternalError()
        from chalicelib.wire_tables import frame_to_table

        dataset = hop.dataset_from_wire(payload["dataset"])
        loaded = self.loader.dummy(dataset, int(payload["rows"]), int(payload["seed"]))
        return {"table": frame_to_table(loaded.frame)}

    def dummy_query(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A query run on dummy rows (public: the engine's own message is returned)."""
        engine = self._engine(payload.get("engine"))
        dataset = hop.dataset_from_wire(payload["dataset"])
        request = self._parse(engine, payload.get("body"))
        loaded = self.loader.dummy(dataset, int(payload["rows"]), int(payload["seed"]))
        try:
            result = engine.execute(loaded, request)
        except NeblinaError:
            raise
        except Exception as exc:
            raise EngineRefused(str(exc).splitlines()[0][:500] or type(exc).__name__) from exc
        if len(result_overflow.encode(result)) > self.settings.max_result_bytes:
            raise ResultTooLarge(self.settings.max_result_bytes, spent=False)
        return {"result": result}


_WORKER: list[Worker] = []


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The handler of every worker Lambda: one operation (see the module docstring)."""
    if not _WORKER:
        from chalicelib.config import get_settings
        from chalicelib.deps import build_worker

        _WORKER.append(build_worker(get_settings(), os.environ.get("NEBLINA_WORKER") or None))
    return _WORKER[0].handle(event)
