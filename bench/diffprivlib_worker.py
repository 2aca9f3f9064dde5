"""The DiffPrivLib worker: its installed size, and its cold start (process start to first fit).

    .venv/bin/python bench/diffprivlib_worker.py [--runs 5]

1. Installed size: the distributions the worker's image installs on top of the API's
   (``requirements-diffprivlib.txt``: diffprivlib, scikit-learn, SciPy, joblib,
   threadpoolctl, cloudpickle), and pandas and NumPy, each with its dependencies
   (``Requires-Dist`` of the installed metadata, extras left out), summed from the files each
   distribution's RECORD lists in this virtualenv.
2. Cold start: the local stack (emulator, seeding, one worker per family) and a second API
   server whose ``NEBLINA_WORKERS`` points the diffprivlib family at a fixed free port. Each
   run starts a fresh ``localstack/workerserver.py --worker diffprivlib`` process on that port
   and times, from ``Popen``: the process saying ready (interpreter, the Invoke server, the
   worker's handler module); the first fit answered over HTTP (the real client's request to
   the front, the hop, ``build_worker``, pandas, the CSV read from S3, scikit-learn, SciPy
   and diffprivlib imported, the fit, the archive); then a second fit on the warm process.
   The worker is stopped after each run.

Prints a Markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "localstack")]

FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
FIT = {
    "engine": "diffprivlib",
    "feature_columns": FEATURES,
    "target_column": "species",
    "pipeline": [
        {"step": "StandardScaler", "params": {"epsilon": 0.1}},
        {"step": "GaussianNB", "params": {"epsilon": 0.1, "bounds": [-4.0, 4.0]}},
    ],
}
WORKER_REQUIREMENTS = ROOT / "requirements-diffprivlib.txt"


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def closure(roots: list[str]) -> list[str]:
    """The installed distributions ``roots`` need (markers evaluated here, no extras)."""
    from packaging.requirements import Requirement

    seen: dict[str, None] = {}
    queue = list(roots)
    while queue:
        name = _name(queue.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = None
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                queue.append(requirement.name)
    return sorted(seen)


def installed_bytes(name: str) -> int:
    dist = metadata.distribution(name)
    total = 0
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def sizes() -> tuple[list[tuple[str, int]], int, int]:
    """(per distribution, the worker's own on top of the API's, the total with pandas/numpy)."""
    own = [
        _name(line)
        for line in WORKER_REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.startswith(("#", "-r"))
    ]
    everything = closure([*own, "pandas", "numpy"])
    rows = [(name, installed_bytes(name)) for name in everything]
    base = set(closure(["pandas", "numpy"]))
    extra = sum(size for name, size in rows if name not in base)
    return rows, extra, sum(size for _, size in rows)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def fit(url: str, token: str) -> float:
    import httpx

    started = time.perf_counter()
    answer = httpx.post(
        f"{url}/v1/datasets/PENGUIN/queries",
        json={**FIT, "query_id": uuid.uuid4().hex},
        headers={"Authorization": f"Bearer {token}"},
        timeout=300,
    )
    if answer.status_code != 200 or answer.json()["result"]["type"] != "model":
        raise SystemExit(f"fit failed: {answer.status_code} {answer.text[:300]}")
    return time.perf_counter() - started


def cold_starts(runs: int) -> list[tuple[float, float, float]]:
    from stack import LocalStack, _stop_process, _wait_for_health, spawn, workers_config

    logs = Path(tempfile.mkdtemp(prefix="neblina-bench-dpl-"))
    stack = LocalStack(synthetic_rows=1000, quiet=True, log_dir=logs)
    stack.start()
    results = []
    try:
        port = free_port()
        workers = {**stack.workers, "diffprivlib": f"http://127.0.0.1:{port}"}
        env = {**stack.env(), "NEBLINA_WORKERS": workers_config(workers)}
        api_url, api = spawn("api-bench", "apiserver.py", 0, env, logs)
        _wait_for_health(api_url, timeout=60)
        try:
            for _ in range(runs):
                started = time.perf_counter()
                _, worker = spawn(
                    "worker-bench", "workerserver.py", port, stack.env(), logs,
                    "--worker", "diffprivlib",
                )  # fmt: skip
                ready = time.perf_counter() - started
                try:
                    fit(api_url, stack.token)
                    first = time.perf_counter() - started
                    warm = fit(api_url, stack.token)
                finally:
                    _stop_process(worker.pid)
                    worker.wait(timeout=10)
                results.append((ready, first, warm))
        finally:
            _stop_process(api.pid)
    finally:
        stack.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows, extra, total = sizes()
    runs = cold_starts(args.runs)
    load = os.getloadavg()[0]
    ms = [[value * 1000 for value in column] for column in zip(*runs, strict=True)]

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f} ({min(values):,.0f})"

    print(f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, ", end="")
    print(f"{platform.system()}. Date: {date.today()}. Load average at the end: {load:.1f}.\n")
    print("Installed (MB, from each distribution's RECORD in this virtualenv):\n")
    print("| distribution | MB |\n|---|---:|")
    for name, size in sorted(rows, key=lambda row: -row[1]):
        print(f"| {name} | {size / 1e6:.1f} |")
    print(f"| **the worker's own, on top of pandas/NumPy** | **{extra / 1e6:.0f}** |")
    print(f"| **total with pandas/NumPy** | **{total / 1e6:.0f}** |\n")
    print(f"Cold start, {args.runs} fresh worker processes; ms from `Popen`, median (min):\n")
    print("| process ready | first fit answered (HTTP) | warm fit (HTTP) |\n|---:|---:|---:|")
    print(f"| {cell(ms[0])} | {cell(ms[1])} | {cell(ms[2])} |")
    each = [[round(value) for value in run] for run in zip(*ms, strict=True)]
    print("\n" + json.dumps({"runs_ms": each}))


if __name__ == "__main__":
    main()
