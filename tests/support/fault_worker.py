"""The real engine worker process with faults injected into a job's steps. Tests only.

    python tests/support/fault_worker.py --worker sql --host 127.0.0.1 --port 0

Runs ``localstack/workerserver.py`` unchanged (the Lambda Invoke API around
``chalicelib.worker.lambda_handler``), after wrapping the worker it builds so that a job
whose ``query_id`` names a fault (:func:`worker_fault_id`) is killed (``SIGKILL`` of this
whole process: no ``finally``, no ``except``, no answer) at one step:

================  ===========================================================================
step              where
================  ===========================================================================
before-load       the job is claimed (phase ``loading``); the dataset is not loaded
after-load        the dataset is loaded; no engine has been handed the rows
during-mechanism  inside the engine: it has the rows and has drawn its noise; its release
                  has not left the engine
after-archive     the archive write (``store.finish(done)``) succeeded; nothing answered
================  ===========================================================================

The worker runs as a child of a warm supervisor (:func:`main`) that restarts it on demand.
Whatever the fault, the worker also reports what it did on its standard output (the test
reads its log): ``fault-worker: event <JSON>`` for every job it is handed (so a test can
deliver the same event again), ``fault-worker: claimed <id>`` / ``not claimed <id>`` after
each claim, and ``fault-worker: mechanism <id>`` each time an engine is handed a job's rows.
Jobs with any other id run normally. The faults are selected through the query id, the same
mechanism as ``tests/support/fault_server.py`` (the front's faults); nothing here is
importable from ``chalicelib``: production code has no hook.
"""

from __future__ import annotations

import json
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

WORKER_STEPS = ("before-load", "after-load", "during-mechanism", "after-archive")
PREFIX = "fw-"

_current = threading.local()  # the fault of the job this thread is running
_say_lock = threading.Lock()


def worker_fault_id(step: str, suffix: str) -> str:
    """A query id that kills the worker at ``step``."""
    assert step in WORKER_STEPS
    return f"{PREFIX}{step}-{suffix}"


def parse_worker_fault(query_id: object) -> str | None:
    """The step a query id names, or None."""
    if not isinstance(query_id, str) or not query_id.startswith(PREFIX):
        return None
    return next((s for s in WORKER_STEPS if query_id.startswith(f"{PREFIX}{s}-")), None)


def say(what: str, detail: str) -> None:
    """One line on the log, written whole before anything else can happen (kills included)."""
    with _say_lock:
        sys.stdout.write(f"fault-worker: {what} {detail}\n")
        sys.stdout.flush()


def strike(step: str) -> None:
    """Kill this process if the current job's fault is at ``step``."""
    if getattr(_current, "fault", None) == step:
        say("killed", step)
        os.kill(os.getpid(), signal.SIGKILL)


class _FaultyEngine:
    """An engine whose ``execute`` reports each run and may be killed before it returns."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def execute(self, loaded: Any, request: Any, **kwargs: Any) -> Any:
        say("mechanism", getattr(_current, "query_id", "?"))
        result = self._inner.execute(loaded, request, **kwargs)
        strike("during-mechanism")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def install(worker: Any) -> None:
    """Wrap the worker's handler, store, loader and engines at the steps above."""
    from chalicelib.models import QueryState

    real_handle = worker.handle
    real_claim, real_finish = worker.store.claim, worker.store.finish
    real_load = worker.loader.load
    real_get_engine = worker.engines.get

    def handle(payload: dict[str, Any]) -> dict[str, Any]:
        record = payload.get("record") if isinstance(payload, dict) else None
        query_id = record.get("query_id") if isinstance(record, dict) else None
        _current.query_id = query_id
        _current.fault = parse_worker_fault(query_id)
        if payload.get("op") == "run" and payload.get("mode") == "job":
            say("event", json.dumps(payload, sort_keys=True))
        try:
            return real_handle(payload)
        finally:
            _current.fault = _current.query_id = None

    def claim(query_id: str, now: Any) -> Any:
        claimed = real_claim(query_id, now)
        say("claimed" if claimed is not None else "not-claimed", query_id)
        return claimed

    def load(dataset: Any) -> Any:
        strike("before-load")
        loaded = real_load(dataset)
        strike("after-load")
        return loaded

    def finish(query_id: str, state: Any, *args: Any, **kwargs: Any) -> None:
        real_finish(query_id, state, *args, **kwargs)
        if state is QueryState.DONE:
            strike("after-archive")

    worker.handle = handle
    worker.loader.load = load
    worker.engines.get = lambda name: _FaultyEngine(real_get_engine(name))
    if getattr(worker.store, "fault_worker_installed", False):
        return  # two first events at once build two workers around the one cached store
    worker.store.fault_worker_installed = True
    worker.store.claim = claim
    worker.store.finish = finish


def serve(argv: list[str]) -> int:
    """One worker server whose worker is wrapped as above."""
    import workerserver  # localstack/workerserver.py

    import chalicelib.deps as deps

    real_build = deps.build_worker

    def build_worker(*args: Any, **kwargs: Any) -> Any:
        worker = real_build(*args, **kwargs)
        install(worker)
        return worker

    deps.build_worker = build_worker  # lambda_handler builds its worker through it
    return workerserver.main(argv)


def main() -> int:
    """A warm supervisor: it imports the engines' libraries once, then forks the server.

    When the server dies (a kill fault), the supervisor says ``fault-worker: exited <code>``
    and waits for ``SIGUSR1`` before forking a new one on the same port, so a test restarts
    a killed worker in a fraction of a second (no new interpreter, no imports again) and can
    keep it down meanwhile (a hand-over to nobody). SIGTERM stops both (the test stops the
    process group).
    """
    import chalicelib.datasets
    import chalicelib.deps
    import chalicelib.engines.smartnoise_engine
    import chalicelib.worker  # noqa: F401  (imported here, once, for every server forked)

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    while True:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
            os._exit(serve(sys.argv[1:]))
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        say("exited", str(code))
        if code != -signal.SIGKILL:
            return code
        signal.sigwait({signal.SIGUSR1})


if __name__ == "__main__":
    sys.exit(main())
