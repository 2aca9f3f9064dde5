"""Start and stop the local stack: emulator, seeding, engine workers, API server.

    python localstack/stack.py up      # start in the background, write .neblina/local.env
    python localstack/stack.py down    # stop exactly what `up` started
    python localstack/stack.py status
    python localstack/stack.py demo    # start, run examples/researcher_session.py, stop

Tests and benchmarks use :class:`LocalStack` directly (free ports, their own table prefix).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STATE_DIR = Path(os.environ.get("NEBLINA_STATE_DIR") or ROOT / ".neblina")
STATE_FILE = STATE_DIR / "stack.json"
ENV_FILE = STATE_DIR / "local.env"
READY = re.compile(r"ready on (http://[0-9.]+:[0-9]+)")


class StackError(RuntimeError):
    """The stack could not start."""


def _wait_for_ready(log_path: Path, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        match = READY.search(text)
        if match:
            return match.group(1)
        if process.poll() is not None:
            raise StackError(f"{log_path.name}: exited with {process.returncode}:\n{text[-2000:]}")
        time.sleep(0.05)
    raise StackError(f"{log_path.name}: not ready after {timeout:.0f} s")


def _wait_for_health(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise StackError(f"API at {url} did not answer /health: {last}")


def _stop_process(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL if it does not go."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def spawn(
    name: str, script: str, port: int, env: dict[str, str], log_dir: Path, *args: str
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``localstack/{script}`` on 127.0.0.1:``port``; its URL once it says ready."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}.log"
    command = [sys.executable, str(HERE / script), "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*command, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        return _wait_for_ready(log_path, process, timeout=120), process
    except BaseException:
        _stop_process(process.pid)
        raise


def worker_families() -> list[str]:
    """The worker families the local stack runs, the Spark one included (chalicelib/workers.py)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from chalicelib.workers import local_families

    return sorted(local_families())


def workers_config(urls: dict[str, str]) -> str:
    """``NEBLINA_WORKERS`` (JSON) for worker processes at ``urls`` (family -> URL)."""
    from workerserver import function_name  # localstack/workerserver.py

    return json.dumps(
        {
            family: {"function": function_name(family), "endpoint": url}
            for family, url in urls.items()
        }
    )


@dataclass
class LocalStack:
    """The emulator and the API server as child processes, seeded with the demo data."""

    emulator_port: int = 0
    api_port: int = 0
    table_prefix: str = field(default_factory=lambda: f"nb{uuid.uuid4().hex[:8]}-")
    bucket: str = "neblina-datasets"
    synthetic_rows: int = 200_000
    log_dir: Path = STATE_DIR / "logs"
    extra_env: dict[str, str] = field(default_factory=dict)
    quiet: bool = False
    emulator_url: str = ""
    api_url: str = ""
    token: str = ""
    user_id: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    workers: dict[str, str] = field(default_factory=dict)  # family -> its URL

    def workers_config(self) -> str:
        """``NEBLINA_WORKERS`` for an API server using this stack's worker processes."""
        return workers_config(self.workers)

    def env(self) -> dict[str, str]:
        """The environment the API server (and seeding, and the workers) run with."""
        front = {"NEBLINA_WORKERS": self.workers_config()} if self.workers else {}
        return {
            **os.environ,
            "AWS_ENDPOINT_URL": self.emulator_url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "NEBLINA_TABLE_PREFIX": self.table_prefix,
            "NEBLINA_BUCKET": self.bucket,
            "PYTHONUNBUFFERED": "1",
            **front,
            **self.extra_env,
        }

    def _spawn(self, name: str, script: str, port: int, env: dict[str, str], *args: str) -> str:
        url, self.processes[name] = spawn(name, script, port, env, self.log_dir, *args)
        return url

    def _say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    def start(self, seed: bool = True) -> LocalStack:
        """Start the emulator, seed it, start the API; returns once /health answers."""
        try:
            started = time.perf_counter()
            self.emulator_url = self._spawn(
                "emulator", "emulator.py", self.emulator_port, os.environ.copy()
            )
            self._say(f"stack: emulator (moto, single-threaded) on {self.emulator_url}")
            env = self.env()
            if seed:
                self.seed(env)
            self.start_workers(env)
            env = self.env()
            self.api_url = self._spawn("api", "apiserver.py", self.api_port, env)
            _wait_for_health(self.api_url, timeout=60)
            self._say(
                f"stack: API on {self.api_url} (ready in {time.perf_counter() - started:.1f} s)"
            )
        except BaseException:
            self.stop()
            raise
        return self

    def start_workers(self, env: dict[str, str]) -> None:
        """One worker process per engine family (chalicelib/workers.py), on free ports."""
        for family in worker_families():
            self.workers[family] = self._spawn(
                f"worker-{family}", "workerserver.py", 0, env, "--worker", family
            )
        listed = ", ".join(f"{family} {url}" for family, url in sorted(self.workers.items()))
        self._say(f"stack: workers {listed}")

    def seed(self, env: dict[str, str]) -> None:
        """Run the seeding program in this process against the emulator."""
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            sys.path.insert(0, str(HERE))
            import seed as seed_module  # localstack/seed.py

            result = seed_module.seed(self.synthetic_rows, quiet=self.quiet)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.token, self.user_id = result.token, result.user_id

    def stop(self) -> None:
        """Stop what this object started (API first, then the workers, then the emulator)."""
        for name in sorted(self.processes, key=_stop_order):
            process = self.processes.pop(name, None)
            if process is not None:
                _stop_process(process.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _stop_order(name: str) -> int:
    """The API goes first (nothing new reaches the workers), the emulator last."""
    return {"api": 0, "emulator": 2}.get(name, 1)


def _is_ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(HERE) in cmdline


def stop_command() -> str:
    """The command that stops the stack of this state directory (not the default one)."""
    if STATE_DIR.resolve() == (ROOT / ".neblina").resolve():
        return "make down"
    script = os.path.relpath(HERE / "stack.py")
    return f"NEBLINA_STATE_DIR={STATE_DIR} {sys.executable} {script} down"


def cmd_up(args: argparse.Namespace) -> int:
    if STATE_FILE.exists():
        state = json.loads(STATE_FILE.read_text())
        if any(_is_ours(pid) for pid in state["pids"].values()):
            print(
                f"stack: already up (API {state['api_url']}); stop it first with "
                f"`{stop_command()}`, or start another one with its own NEBLINA_STATE_DIR "
                "and --emulator-port (docs/local-stack.md)"
            )
            return 1
    stack = LocalStack(
        emulator_port=args.emulator_port,
        api_port=args.api_port,
        table_prefix="neblina-",
        synthetic_rows=args.synthetic_rows,
    )
    stack.start()
    from seed import write_env_file  # localstack/seed.py (on sys.path after start)

    admin = {
        "NEBLINA_ADMIN_ENDPOINT_URL": stack.emulator_url,
        "NEBLINA_ADMIN_TABLE_PREFIX": stack.table_prefix,
        "NEBLINA_ADMIN_BUCKET": stack.bucket,
        "NEBLINA_ADMIN_REGION": "us-east-1",
    }
    write_env_file(ENV_FILE, stack.api_url, stack.token, admin)
    STATE_FILE.write_text(
        json.dumps(
            {
                "api_url": stack.api_url,
                "emulator_url": stack.emulator_url,
                "workers": stack.workers,
                "pids": {name: p.pid for name, p in stack.processes.items()},
            },
            indent=2,
        )
    )
    print(f"stack: up. NEBLINA_URL and NEBLINA_TOKEN written to {ENV_FILE}")
    print(f"stack: researcher console {stack.api_url}/console (sign in with NEBLINA_TOKEN)")
    print(
        f"stack: emulator {stack.emulator_url}; neblina-admin finds it through {ENV_FILE} "
        "(when no AWS_ENDPOINT_URL, AWS_PROFILE or AWS_ACCESS_KEY_ID is set)"
    )
    print(f"stack: stop it with `{stop_command()}`")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if not STATE_FILE.exists():
        print("stack: nothing to stop")
        return 0
    state = json.loads(STATE_FILE.read_text())
    for name in sorted(state["pids"], key=_stop_order):
        pid = state["pids"].get(name)
        if pid and _is_ours(pid):
            _stop_process(pid)
            print(f"stack: stopped {name} (pid {pid})")
    STATE_FILE.unlink()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if not STATE_FILE.exists():
        print("stack: down")
        return 1
    state = json.loads(STATE_FILE.read_text())
    alive = {name: _is_ours(pid) for name, pid in state["pids"].items()}
    print(f"stack: API {state['api_url']}, emulator {state['emulator_url']}, running: {alive}")
    return 0 if all(alive.values()) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    stack = LocalStack(
        emulator_port=args.emulator_port,
        api_port=args.api_port,
        synthetic_rows=args.synthetic_rows,
    )
    with stack:
        env = {**os.environ, "NEBLINA_URL": stack.api_url, "NEBLINA_TOKEN": stack.token}
        print("stack: running examples/researcher_session.py\n", flush=True)
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "researcher_session.py")], env=env, cwd=ROOT
        )
    print("\nstack: stopped")
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Neblina's local stack")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "demo"):
        command = sub.add_parser(name)
        command.add_argument("--emulator-port", type=int, default=4566 if name == "up" else 0)
        command.add_argument("--api-port", type=int, default=0)
        command.add_argument("--synthetic-rows", type=int, default=200_000)
    sub.add_parser("down")
    sub.add_parser("status")
    args = parser.parse_args(argv)
    handlers = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "demo": cmd_demo}
    try:
        return handlers[args.command](args)
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
