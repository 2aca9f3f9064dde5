"""Start one more API server process against the session stack's emulator and tables.

Tests that need a server configured differently from the session's (a low rate limit, a
short query lease, faults injected) start their own with :func:`api_server`, on a free
port on 127.0.0.1, with the stack's environment plus their own variables.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
APISERVER = ROOT / "localstack" / "apiserver.py"


@dataclass
class ApiProcess:
    """A running API server: its URL, its process and its log (and its own workers)."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL) unless it has already exited, then its workers."""
        from stack import _stop_process  # localstack/stack.py

        for process in [self.process, *self.workers]:
            if process.poll() is None:
                _stop_process(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_api_server(
    stack: Any, env: dict[str, str], log_dir: Path, program: Path = APISERVER, *args: str
) -> ApiProcess:
    """Start ``program`` (an apiserver-compatible launcher) and wait until /health answers.

    Unless ``env`` sets ``NEBLINA_WORKERS``, the server gets worker processes of its own,
    started with the same environment (settings such as the result limits are the
    worker's as much as the front's).
    """
    from stack import (  # localstack/stack.py
        _stop_process,
        _wait_for_health,
        _wait_for_ready,
        spawn,
        worker_families,
        workers_config,
    )

    full = {**stack.env(), **env}
    helpers: list[subprocess.Popen[bytes]] = []
    try:
        if "NEBLINA_WORKERS" not in env:
            urls = {}
            for family in worker_families():
                urls[family], helper = spawn(
                    f"worker-{family}", "workerserver.py", 0, full, log_dir, "--worker", family
                )
                helpers.append(helper)
            full["NEBLINA_WORKERS"] = workers_config(urls)
    except BaseException:
        for helper in helpers:
            _stop_process(helper.pid)
        raise
    log = log_dir / f"{program.stem}-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, str(program), "--host", "127.0.0.1", "--port", "0", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=full,
            cwd=ROOT,
            start_new_session=True,
        )
    api = ApiProcess("", process, log, helpers)
    try:
        api.url = _wait_for_ready(log, process, timeout=120)
        _wait_for_health(api.url, timeout=60)
    except BaseException:
        api.stop()
        raise
    return api


@contextlib.contextmanager
def api_server(
    stack: Any, env: dict[str, str], log_dir: Path, program: Path = APISERVER, *args: str
) -> Iterator[ApiProcess]:
    """:func:`start_api_server` as a context manager that always stops the server."""
    api = start_api_server(stack, env, log_dir, program, *args)
    try:
        yield api
    finally:
        api.stop()
