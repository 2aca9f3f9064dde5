"""`make up` / `make down`: the stack starts in the background, the client finds it, down stops it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "localstack/stack.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    )


def test_up_writes_the_env_file_and_down_stops_exactly_what_up_started(tmp_path: Path) -> None:
    """`up` on a free emulator port with its own NEBLINA_STATE_DIR (a second stack)."""
    state = tmp_path / ".neblina"
    env = {**os.environ, "NEBLINA_STATE_DIR": str(state)}
    up = run(["up", "--emulator-port", "0", "--synthetic-rows", "100000"], env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        pids = json.loads((state / "stack.json").read_text())["pids"]
        from chalicelib.workers import local_families

        workers = {f"worker-{family}" for family in local_families()}
        assert set(pids) == {"api", "emulator", *workers} and all(alive(p) for p in pids.values())
        # the output names the researcher console's URL, and the stack serves it
        (line,) = [x for x in up.stdout.splitlines() if "researcher console" in x]
        console = next(word for word in line.split() if word.startswith("http://"))
        page = httpx.get(console, timeout=30)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        env_file = state / "local.env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert run(["up", "--emulator-port", "0"], env).returncode == 1  # already up

        # the client reads .neblina/local.env from the working directory (or a parent)
        script = (
            "from neblina_client import Client; c = Client(dataset='PENGUIN'); "
            "print(c.budget().remaining.epsilon)"
        )
        sub = tmp_path / "notebooks"
        sub.mkdir()
        clean = {k: v for k, v in os.environ.items() if not k.startswith("NEBLINA_")}
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=sub,
            env=clean,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert out.stdout.strip() == "10"

        # neblina-admin finds the same stack, with no AWS_* variable set, and says so
        script = Path(sys.executable).parent / "neblina-admin"
        bare = {k: v for k, v in clean.items() if not k.startswith("AWS_")}
        for cwd, extra in ((sub, {}), (ROOT, {"NEBLINA_STATE_DIR": str(state)})):
            listed = subprocess.run(
                [str(script), "users", "list", "--json"],
                cwd=cwd,
                env={**bare, **extra},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert listed.returncode == 0, listed.stderr
            assert [u["user"] for u in json.loads(listed.stdout)] == ["demo-researcher"]
            emulator = json.loads((state / "stack.json").read_text())["emulator_url"]
            assert listed.stderr.startswith(f"target: local stack at {emulator}, tables neblina-*")
            assert str(env_file) in listed.stderr
        # this stack's own stop command, not `make down` (which stops the default stack)
        assert f"stop it with `NEBLINA_STATE_DIR={state} " in up.stdout
        assert "stack.py down`" in up.stdout
    finally:
        down = run(["down"], env)
    assert down.returncode == 0
    assert not any(alive(p) for p in pids.values())
    assert not (state / "stack.json").exists()
    assert run(["down"], env).stdout.strip() == "stack: nothing to stop"
