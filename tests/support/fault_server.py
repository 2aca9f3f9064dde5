"""The real local API server with faults injected into the query path. Tests only.

    python tests/support/fault_server.py --host 127.0.0.1 --port 0

Runs ``localstack/apiserver.py`` unchanged, after wrapping the service it builds so that a
query whose ``query_id`` names a fault (:func:`fault_id`) hits that fault at one step:

===============  ============================================================================
step             where
===============  ============================================================================
before-reserve   ``store.reserve`` is called, before the debit is written
after-reserve    the debit and the running record are written; the dataset is not loaded
after-load       the dataset is loaded; no engine has been handed the rows
after-execute    the engine has run and returned its release (held in memory only)
before-archive   ``store.finish(done)`` is called, before the archive write is sent
after-archive    the archive write succeeded; the answer has not been sent
===============  ============================================================================

and the fault is ``raise`` (an exception the service did not expect) or ``kill``
(``SIGKILL`` of this whole process: no ``finally``, no ``except``, no response). The last
four steps need the engines in this process (``NEBLINA_WORKERS=inprocess``); with engine
worker processes they happen there (``tests/support/fault_worker.py``).

An async query (``"wait": false``) whose id names a job fault (:func:`job_fault_id`) hits
it when the front hands the job to its worker (``service.workers.submit``):

===============  ============================================================================
job step         what happens
===============  ============================================================================
before-submit    ``SIGKILL`` after the debit and the queued record, before the hand-over
after-submit     ``SIGKILL`` after the hand-over, before the 202 is sent
deliver-twice    the job is handed over twice (a duplicated asynchronous delivery)
===============  ============================================================================

Queries with any other id run normally. Nothing here is importable from ``chalicelib`` or
``app.py``: production code has no hook; this file monkeypatches the objects at start-up.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "localstack"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

STEPS = (
    "before-reserve",
    "after-reserve",
    "after-load",
    "after-execute",
    "before-archive",
    "after-archive",
)
ACTIONS = ("raise", "kill")
JOB_STEPS = ("before-submit", "after-submit", "deliver-twice")


class InjectedFault(RuntimeError):
    """The exception a ``raise`` fault throws."""


def fault_id(step: str, action: str, suffix: str) -> str:
    """A query id that triggers ``action`` at ``step`` on this server."""
    assert step in STEPS and action in ACTIONS
    return f"fi-{step}-{action}-{suffix}"


def job_fault_id(step: str, suffix: str) -> str:
    """A query id that hits the job fault ``step`` on this server."""
    assert step in JOB_STEPS
    return f"fj-{step}-{suffix}"


def parse_fault(query_id: object) -> tuple[str, str] | None:
    """(step, action) named by a query id, or None (a job fault's action is its step's)."""
    if not isinstance(query_id, str):
        return None
    for step in JOB_STEPS:
        if query_id.startswith(f"fj-{step}-"):
            return step, "twice" if step == "deliver-twice" else "kill"
    if not query_id.startswith("fi-"):
        return None
    for step in STEPS:
        for action in ACTIONS:
            if query_id.startswith(f"fi-{step}-{action}-"):
                return step, action
    return None


_current = threading.local()  # the fault of the request this thread is serving


def strike(step: str) -> None:
    """Hit the current request's fault if it is at ``step``."""
    fault = getattr(_current, "fault", None)
    if fault is None or fault[0] != step:
        return
    if fault[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"fault injected {step}")


class _FaultyEngine:
    """An engine whose ``execute`` returns, then hits ``after-execute``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def execute(self, loaded: Any, request: Any) -> Any:
        result = self._inner.execute(loaded, request)
        strike("after-execute")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def install(service: Any) -> None:
    """Wrap the service's store, loader and engines at the steps above."""
    from chalicelib.models import QueryState

    real_query = service.query
    real_reserve, real_finish = service.store.reserve, service.store.finish
    real_submit = service.workers.submit

    def query(user_id: str, name: str, body: object) -> Any:
        _current.fault = parse_fault(body.get("query_id") if isinstance(body, dict) else None)
        try:
            return real_query(user_id, name, body)
        finally:
            _current.fault = None

    def reserve(record: Any) -> None:
        strike("before-reserve")
        real_reserve(record)

    def load(dataset: Any) -> Any:
        strike("after-reserve")
        loaded = real_load(dataset)
        strike("after-load")
        return loaded

    def finish(query_id: str, state: Any, *args: Any, **kwargs: Any) -> None:
        if state is QueryState.DONE:
            strike("before-archive")
        real_finish(query_id, state, *args, **kwargs)
        if state is QueryState.DONE:
            strike("after-archive")

    def submit(worker: str, payload: Any) -> None:
        strike("before-submit")
        real_submit(worker, payload)
        if getattr(_current, "fault", None) == ("deliver-twice", "twice"):
            real_submit(worker, payload)
        strike("after-submit")

    service.query = query
    service.store.reserve = reserve
    service.store.finish = finish
    service.workers.submit = submit
    if getattr(service, "local", None) is None:
        return  # the engines run in worker processes: their steps are fault_worker.py's
    real_load = service.loader.load
    real_get_engine = service.engines.get
    service.loader.load = load
    service.engines.get = lambda name: _FaultyEngine(real_get_engine(name))


def main() -> int:
    import apiserver  # localstack/apiserver.py

    import app as app_module

    real_get_service = app_module.get_service
    lock = threading.Lock()
    installed: list[Any] = []

    def get_service() -> Any:
        service = real_get_service()
        with lock:
            if service not in installed:
                install(service)
                installed.append(service)
        return service

    app_module.get_service = get_service  # the routes look it up on every request
    return apiserver.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
