"""Warm latency of issue 14's PENGUIN cases over HTTP, beside their in-process floors.

    .venv/bin/python bench/warm.py [--runs 40] [--write]

Cases: SQL ``COUNT(*)``, SQL ``GROUP BY sex`` with ``AVG``, an OpenDP mean (cast, impute,
clamp, resize, mean, Laplace) and a budget read. For each, the median and p95 of ``runs``
sequential requests after 5 warm-ups, three ways:

- *engine*: the engine's ``execute`` on the loaded rows in this process (priced once);
- *service*: ``Service.query`` / ``Service.budget`` in this process on the in-memory store
  with an in-process worker: all of Neblina's Python on the path, no network, no emulator;
- *HTTP*: the real client against the local stack on free loopback ports (API server with
  its authorizer, one worker process per engine family, the single-threaded moto emulator),
  with the deployment's defaults: authorizer TTL 60 s, cached lookups 5 s.

With ``--against REF`` it instead compares this tree with the commit REF (``git archive``
into a temporary directory): two local stacks side by side, the same cases sent to each in
turn, so both see the same machine load; wall p50 and CPU per request of each.

With --write the table replaces the "Warm path" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "localstack"), str(ROOT / "client"), str(ROOT / "bench")]
warnings.filterwarnings("ignore", category=DeprecationWarning)

EPSILON, DELTA = 1.0, 1e-5
COUNT = "SELECT COUNT(*) AS n FROM df"
GROUP = "SELECT sex, COUNT(*) AS n, AVG(bill_length_mm) AS b FROM df GROUP BY sex"
TARGETS = {"SQL COUNT": 30, "SQL GROUP BY sex + AVG": 30, "OpenDP mean": 20, "budget read": 8}
MARKER = "## Warm path (bench/warm.py)"

from latency import write_section  # noqa: E402  (bench/latency.py: replaces one section)

Timing = tuple[float, float, float]  # p50, p95 (wall ms), CPU ms per request


def timed(fn: Callable[[], Any], runs: int, cpu: Callable[[], float] = time.process_time) -> Timing:
    """Wall p50 and p95 of ``runs`` calls after 5 warm-ups, and the CPU seconds ``cpu``
    counts per call (in ms): on a shared machine the wall time is mostly waiting for a
    core, the CPU time is not."""
    for _ in range(5):
        fn()
    values = []
    before = cpu()
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        values.append((time.perf_counter() - start) * 1000)
    spent = (cpu() - before) * 1000 / runs
    values.sort()
    mid = len(values) // 2
    p50 = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return p50, values[min(len(values) - 1, round(0.95 * (len(values) - 1)))], spent


def process_cpu(pids: list[int]) -> Callable[[], float]:
    """CPU seconds (user + system) used so far by this process and ``pids``."""
    tick = os.sysconf("SC_CLK_TCK")

    def total() -> float:
        used = time.process_time()
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            used += (int(fields[11]) + int(fields[12])) / tick
        return used

    return total


def mean_pipeline(columns: list[str]) -> Any:
    import opendp.prelude as dp

    from neblina_client._opendp import input_space

    dp.enable_features("contrib")
    return (
        input_space(columns, "bill_length_mm")
        >> dp.t.then_cast_default(float)
        >> dp.t.then_impute_constant(45.0)
        >> dp.t.then_clamp((30.0, 65.0))
        >> dp.t.then_resize(344, 45.0)
        >> dp.t.then_mean()
        >> dp.m.then_laplace(0.5)
    )


def bodies(columns: list[str]) -> dict[str, dict[str, Any]]:
    from neblina_client._client import _opendp_body, _sql_body

    return {
        "SQL COUNT": _sql_body(COUNT, EPSILON, DELTA, None),
        "SQL GROUP BY sex + AVG": _sql_body(GROUP, EPSILON, DELTA, None),
        "OpenDP mean": _opendp_body(mean_pipeline(columns), None),
    }


def in_process(runs: int) -> dict[tuple[str, str], Timing]:
    import yaml

    from chalicelib import metadata
    from chalicelib.config import from_environ
    from chalicelib.datasets import DatasetLoader
    from chalicelib.engines import Engines
    from chalicelib.models import Dataset, PrivacyCost, User, utcnow
    from chalicelib.service import Service
    from chalicelib.storage.memory import MemoryStore

    settings = dataclasses.replace(from_environ(), rate_limit=0)
    meta = metadata.validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))
    dataset = Dataset("PENGUIN", str(ROOT / "localstack/data/penguins.csv"), meta, utcnow())
    cases = bodies(list(meta["columns"]))
    out: dict[tuple[str, str], Timing] = {}
    loaded = DatasetLoader(settings).load(dataset)
    engines = Engines(settings)
    for label, body in cases.items():
        engine = engines.get(body["engine"])
        request = engine.parse(body)
        engine.cost(dataset, request)
        out[("engine", label)] = timed(lambda e=engine, r=request: e.execute(loaded, r), runs)
    store = MemoryStore()
    store.put_user(User(user_id="bench", created_at=utcnow()))
    store.put_dataset(dataset)
    store.create_grant("bench", "PENGUIN", PrivacyCost(epsilon=1_000_000, delta="0.5"))
    service = Service(store, settings, DatasetLoader(settings))
    for label, body in cases.items():
        out[("service", label)] = timed(
            lambda b=body: service.query("bench", "PENGUIN", {**b, "query_id": uuid.uuid4().hex}),
            runs,
        )
    out[("service", "budget read")] = timed(lambda: service.budget("bench", "PENGUIN"), runs)
    return out


def researcher(stack: Any) -> str:
    """A user with a large grant on PENGUIN in ``stack``'s tables; their token."""
    from neblina_admin import operations as admin

    saved = dict(os.environ)
    os.environ.update(stack.env())
    try:
        from chalicelib.config import get_settings
        from chalicelib.storage import get_store, reset_store

        get_settings.cache_clear()
        reset_store()
        store = get_store()
        user = f"bench-{uuid.uuid4().hex[:6]}"
        admin.add_user(store, user)
        admin.grant(store, user, "PENGUIN", epsilon="1000000", delta="0.5")
        return admin.add_token(store, user).secret
    finally:
        os.environ.clear()
        os.environ.update(saved)


def http_cases(client: Any) -> dict[str, Callable[[], Any]]:
    pipeline = mean_pipeline([str(name) for name in client.metadata()["columns"]])
    return {
        "SQL COUNT": lambda: client.sql.query(COUNT, EPSILON, DELTA),
        "SQL GROUP BY sex + AVG": lambda: client.sql.query(GROUP, EPSILON, DELTA),
        "OpenDP mean": lambda: client.opendp.query(pipeline),
        "budget read": client.budget,
    }


def over_http(runs: int) -> dict[tuple[str, str], Timing]:
    from stack import LocalStack

    from neblina_client import Client

    out: dict[tuple[str, str], Timing] = {}
    with LocalStack(synthetic_rows=1000, quiet=True) as stack:
        token = researcher(stack)
        cpu = process_cpu([process.pid for process in stack.processes.values()])
        with Client(url=stack.api_url, token=token, dataset="PENGUIN") as client:
            for label, fn in http_cases(client).items():
                out[("HTTP", label)] = timed(fn, runs, cpu)
    return out


def against(ref: str, runs: int) -> str:
    """This tree and ``ref`` side by side (see the module docstring)."""
    import importlib.util
    import subprocess
    import tempfile

    from neblina_client import Client

    def stack_module(root: Path, name: str) -> Any:
        spec = importlib.util.spec_from_file_location(name, root / "localstack" / "stack.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        trees = {ref: Path(tmp), "this tree": ROOT}
        stacks = {
            label: stack_module(root, f"stack_{i}").LocalStack(synthetic_rows=1000, quiet=True)
            for i, (label, root) in enumerate(trees.items())
        }
        try:
            for stack in stacks.values():
                stack.start()
            clients = {
                label: Client(url=stack.api_url, token=researcher(stack), dataset="PENGUIN")
                for label, stack in stacks.items()
            }
            cpus = {
                label: process_cpu([p.pid for p in stack.processes.values()])
                for label, stack in stacks.items()
            }
            cases = {label: http_cases(client) for label, client in clients.items()}
            lines = [
                f"| PENGUIN, warm, HTTP | {ref}: p50 (p95); CPU | this tree: p50 (p95); CPU |",
                "|---|---:|---:|",
            ]
            for case in TARGETS:
                walls: dict[str, list[float]] = {label: [] for label in clients}
                spent = dict.fromkeys(clients, 0.0)
                for n in range(runs + 5):
                    for label in clients:  # in turn: both see the same load
                        before, start = cpus[label](), time.perf_counter()
                        cases[label][case]()
                        if n >= 5:
                            walls[label].append((time.perf_counter() - start) * 1000)
                            spent[label] += (cpus[label]() - before) * 1000
                cells = []
                for label, values in walls.items():
                    values.sort()
                    p95 = values[round(0.95 * (len(values) - 1))]
                    cells.append(
                        f"{values[len(values) // 2]:.1f} ({p95:.1f}); {spent[label] / runs:.1f}"
                    )
                lines.append(f"| {case} | {' | '.join(cells)} |")
            for client in clients.values():
                client.close()
        finally:
            for stack in stacks.values():
                stack.stop()
    return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    python = platform.python_version()
    return f"{os.cpu_count()} cores ({cpu}), Python {python}, {platform.system()}"


def render(results: dict[tuple[str, str], Timing], runs: int, load: str) -> str:
    lines = [
        MARKER,
        "",
        f"Machine: {machine()}. {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {load}.",
        f"{runs} sequential requests per row after 5 warm-ups; milliseconds: wall p50 (p95),",
        "then the CPU time per request (for HTTP: client, API server, workers and emulator",
        "together), which the machine's load inflates far less than the wall time.",
        "",
        "| PENGUIN, warm | engine in-process | service in-process (memory store) "
        "| HTTP, local stack | target (HTTP p50) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, target in TARGETS.items():
        cells = []
        for path in ("engine", "service", "HTTP"):
            value = results.get((path, label))
            cells.append(
                "-" if value is None else f"{value[0]:.1f} ({value[1]:.1f}); CPU {value[2]:.1f}"
            )
        lines.append(f"| {label} | {' | '.join(cells)} | ≤ {target} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--http-only", action="store_true")
    parser.add_argument("--against", metavar="REF", help="compare with this git commit")
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    if args.against:
        text = against(args.against, args.runs)
        load_after = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load {load} -> {load_after}")
        print(text)
        return 0
    results = {} if args.http_only else in_process(args.runs)
    results.update(over_http(args.runs))
    text = render(results, args.runs, load)
    print(text)
    if args.write:
        write_section(text, MARKER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
