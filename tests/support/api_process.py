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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
APISERVER = ROOT / "localstack" / "apiserver.py"


@dataclass
class ApiProcess:
    """A running API server: its URL, its process and its log."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL) unless it has already exited."""
        from stack import _stop_process  # localstack/stack.py

        if self.process.poll() is None:
            _stop_process(self.process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_api_server(
    stack: Any, env: dict[str, str], log_dir: Path, program: Path = APISERVER, *args: str
) -> ApiProcess:
    """Start ``program`` (an apiserver-compatible launcher) and wait until /health answers."""
    from stack import _wait_for_health, _wait_for_ready  # localstack/stack.py

    log = log_dir / f"{program.stem}-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, str(program), "--host", "127.0.0.1", "--port", "0", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**stack.env(), **env},
            cwd=ROOT,
            start_new_session=True,
        )
    api = ApiProcess("", process, log)
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
