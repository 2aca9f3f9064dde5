"""The hop from the front to the engine workers: wire format, errors, transports.

The front (routes, ledger, archive) hands each engine operation to the worker of the
engine's family (:mod:`chalicelib.workers`) as one JSON document ``{"op": OP, ...}``; the
worker answers ``{"ok": true, ...}`` or ``{"ok": false, "error": {"status", "code",
"type", "message", "headers"}}``, and :func:`unwrap` raises the matching
:class:`~chalicelib.errors.NeblinaError` on the front, so hardening and the HTTP mapping
work as if the engine had run in the front's process. The operations are listed in
:mod:`chalicelib.worker`.

Two transports answer the :class:`Workers` protocol:

- :class:`LambdaWorkers`: boto3's Lambda ``invoke`` (``RequestResponse`` for ``call``,
  ``Event`` for ``submit``), one function per family, configured by ``NEBLINA_WORKERS``
  (JSON ``{"sql": {"function": "neblina-worker-sql", "endpoint": "http://127.0.0.1:P"}}``,
  ``endpoint`` only locally, where ``localstack/workerserver.py`` serves the same Invoke
  API). botocore's retries are off for a synchronous ``run``: a duplicated run could run a
  mechanism twice (the client's own retry goes through ``reserve`` and replays).
- :class:`InProcessWorkers` (``NEBLINA_WORKERS=inprocess``, the unit tests, the benchmark's
  baseline): the same :meth:`Worker.handle <chalicelib.worker.Worker.handle>`, called in
  this process; ``submit`` runs it on a thread.

Nothing here imports boto3 before the first Lambda call, nor pandas or a DP library ever.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime
from typing import Any, Protocol

from chalicelib import errors
from chalicelib.config import Settings
from chalicelib.errors import InternalError, NeblinaError, RateLimited
from chalicelib.models import Dataset, PrivacyCost, QueryRecord, QueryState

log = logging.getLogger(__name__)

# Longest a synchronous invoke may take: Lambda's own maximum run time, plus slack.
READ_TIMEOUT_SECONDS = 910
CONNECT_TIMEOUT_SECONDS = 5


class HopFailed(Exception):
    """The transport failed (not an answer of the worker).

    ``delivered`` is False only when the request certainly never reached the worker (the
    connection was refused): then nothing ran. Otherwise the worker may have run.
    """

    def __init__(self, message: str, *, delivered: bool) -> None:
        super().__init__(message)
        self.delivered = delivered


# --- wire format of the domain values --------------------------------------------------
_TIMES = {"created_at", "lease_expires_at", "finished_at"}


def _encode_fields(value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in fields(value):
        v = getattr(value, item.name)
        if isinstance(v, datetime):
            v = v.isoformat()
        elif isinstance(v, PrivacyCost):
            v = v.to_json()
        elif isinstance(v, QueryState):
            v = v.value
        out[item.name] = v
    return out


def _decode_fields(document: Mapping[str, Any], costs: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, v in document.items():
        if v is not None and name in _TIMES:
            v = datetime.fromisoformat(v)
        elif v is not None and name in costs:
            v = PrivacyCost(epsilon=v["epsilon"], delta=v["delta"])
        out[name] = v
    return out


def dataset_to_wire(dataset: Dataset) -> dict[str, Any]:
    """A dataset as the front read it, as JSON (every field)."""
    return _encode_fields(dataset)


def dataset_from_wire(document: Mapping[str, Any]) -> Dataset:
    """The inverse of :func:`dataset_to_wire`."""
    return Dataset(**_decode_fields(document, {"per_query_cap"}))


def record_to_wire(record: QueryRecord) -> dict[str, Any]:
    """A query record as JSON, every field (the API's ``to_json`` leaves some out)."""
    return _encode_fields(record)


def record_from_wire(document: Mapping[str, Any]) -> QueryRecord:
    """The inverse of :func:`record_to_wire`."""
    values = _decode_fields(document, {"cost"})
    values["state"] = QueryState(values["state"])
    return QueryRecord(**values)


# --- errors across the hop -------------------------------------------------------------
def _error_classes() -> tuple[dict[str, type[NeblinaError]], dict[str, type[NeblinaError]]]:
    by_name: dict[str, type[NeblinaError]] = {}
    by_code: dict[str, type[NeblinaError]] = {}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, NeblinaError):
            by_name[value.__name__] = value
    queue: list[type[NeblinaError]] = [NeblinaError]
    while queue:  # breadth first: a code maps to its most general class
        cls = queue.pop(0)
        by_code.setdefault(cls.code, cls)
        queue.extend(cls.__subclasses__())
    return by_name, by_code


_BY_NAME, _BY_CODE = _error_classes()


def error_envelope(error: NeblinaError) -> dict[str, Any]:
    """A worker's answer for an error the front must raise."""
    return {
        "ok": False,
        "error": {
            "status": error.status_code,
            "code": error.code,
            "type": type(error).__name__,
            "message": error.message,
            "headers": error.headers(),
        },
    }


def rebuild_error(document: Mapping[str, Any]) -> NeblinaError:
    """The :class:`NeblinaError` a worker reported: its class (by name from
    :mod:`chalicelib.errors`, else by code), status, message and headers."""
    code = str(document.get("code", "internal_error"))
    cls = _BY_NAME.get(str(document.get("type"))) or _BY_CODE.get(code) or InternalError
    error = cls.__new__(cls)
    message = str(document.get("message", "internal error"))
    Exception.__init__(error, message)
    error.message = message
    status = document.get("status")
    if isinstance(status, int) and status != cls.status_code:
        error.status_code = status
    if isinstance(error, RateLimited):
        headers = document.get("headers") or {}
        error.retry_after = int(headers.get("Retry-After", 1))
    return error


def unwrap(answer: Mapping[str, Any]) -> dict[str, Any]:
    """A worker's answer without its envelope; its error raised."""
    if answer.get("ok") is True:
        return dict(answer)
    error = answer.get("error")
    if answer.get("ok") is False and isinstance(error, Mapping):
        raise rebuild_error(error)
    raise HopFailed("the worker answered something that is not an answer", delivered=True)


# --- transports ------------------------------------------------------------------------
class Workers(Protocol):
    """How the front reaches the workers."""

    def call(self, worker: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Run ``payload`` on ``worker`` and return its answer (its error raised);
        :class:`HopFailed` when the transport fails."""
        ...

    def submit(self, worker: str, payload: dict[str, Any]) -> None:
        """Hand ``payload`` to ``worker`` without waiting (:class:`HopFailed` if refused)."""
        ...


class Handler(Protocol):
    """What :class:`InProcessWorkers` calls (a :class:`chalicelib.worker.Worker`)."""

    def handle(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One operation: the answer envelope, never an exception."""
        ...


class InProcessWorkers:
    """Every family served by one worker object in this process: the same code, no hop."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def call(self, worker: str, payload: dict[str, Any]) -> dict[str, Any]:
        return unwrap(self.handler.handle(payload))

    def submit(self, worker: str, payload: dict[str, Any]) -> None:
        thread = threading.Thread(target=self.handler.handle, args=(payload,), daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the submitted jobs (tests, benchmarks)."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)


class LambdaWorkers:
    """Each family is a Lambda function, reached through boto3's ``invoke``."""

    def __init__(self, config: Mapping[str, Mapping[str, str]], settings: Settings) -> None:
        self.config = {name: dict(entry) for name, entry in config.items()}
        self.settings = settings
        self._clients: dict[tuple[str, bool], Any] = {}
        self._lock = threading.Lock()

    def _entry(self, worker: str) -> dict[str, str]:
        entry = self.config.get(worker)
        if entry is None or not entry.get("function"):
            # not deployed: nothing can have run (a job is refunded, a call is a 503)
            log.error("no worker %r in NEBLINA_WORKERS", worker)
            raise HopFailed(f"no worker {worker!r} in NEBLINA_WORKERS", delivered=False)
        return entry

    def _client(self, worker: str, *, retries: bool) -> Any:
        key = (worker, retries)
        with self._lock:
            if key not in self._clients:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    read_timeout=READ_TIMEOUT_SECONDS,
                    retries={"mode": "standard"} if retries else {"total_max_attempts": 1},
                    tcp_keepalive=True,
                )
                self._clients[key] = boto3.session.Session().client(
                    "lambda",
                    region_name=self.settings.region,
                    endpoint_url=self._entry(worker).get("endpoint") or None,
                    config=config,
                )
            return self._clients[key]

    def _invoke(self, worker: str, payload: dict[str, Any], kind: str, retries: bool) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        function = self._entry(worker)["function"]
        try:
            return self._client(worker, retries=retries).invoke(
                FunctionName=function,
                InvocationType=kind,
                Payload=json.dumps(payload, separators=(",", ":")).encode(),
            )
        except EndpointConnectionError as exc:  # the TCP connection was refused: nothing ran
            raise HopFailed(f"worker {worker} unreachable: {exc}", delivered=False) from exc
        except ClientError as exc:  # refused (4xx: nothing ran) or failed (5xx: unknown)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
            raise HopFailed(f"worker {worker}: {exc}", delivered=status >= 500) from exc
        except BotoCoreError as exc:
            raise HopFailed(f"worker {worker}: {exc}", delivered=True) from exc

    def call(self, worker: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = self._invoke(worker, payload, "RequestResponse", payload.get("op") != "run")
        body = response["Payload"].read()
        if response.get("FunctionError"):  # crashed, timed out, out of memory
            raise HopFailed(f"worker {worker} failed: {body[:500]!r}", delivered=True)
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise HopFailed(f"worker {worker} answered non-JSON", delivered=True) from exc
        if not isinstance(answer, dict):
            raise HopFailed(f"worker {worker} answered {type(answer).__name__}", delivered=True)
        return unwrap(answer)

    def submit(self, worker: str, payload: dict[str, Any]) -> None:
        response = self._invoke(worker, payload, "Event", True)
        if response.get("StatusCode") != 202:
            raise HopFailed(f"worker {worker}: status {response.get('StatusCode')}", delivered=True)


def workers_config(raw: str | None) -> dict[str, dict[str, str]] | None:
    """``NEBLINA_WORKERS`` parsed: None for in-process (unset, empty or ``inprocess``)."""
    if raw is None or raw.strip() in ("", "inprocess"):
        return None
    document = json.loads(raw)
    if not isinstance(document, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("function"), str)
        for entry in document.values()
    ):
        raise ValueError('NEBLINA_WORKERS: expected {"family": {"function": NAME, ...}, ...}')
    return {
        str(name): {str(k): str(v) for k, v in entry.items()} for name, entry in document.items()
    }
