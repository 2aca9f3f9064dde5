"""Cold-start import cost of each Lambda's first request, each measured in a fresh interpreter.

    .venv/bin/python bench/cold_start_imports.py [--runs 7]

For each path a new Python process imports what a cold Lambda imports for that request:

- the API handler (``app``): all the authorizer and ``/health`` need;
- the front's first ``GET /budget``: the handler, then the service as the composition root
  builds it with the workers configured (``NEBLINA_WORKERS``, so no engine in this process):
  the service, the hop, the DynamoDB store; and the same with ``NEBLINA_WORKERS=inprocess``
  (the loader and pandas in the front: the shape before the split), for comparison;
- a worker's first query: ``chalicelib.worker`` (the worker Lambda's handler module), the
  worker as ``deps.build_worker`` builds it (loader, pandas), then the engine it runs.

Times are ``time.perf_counter`` inside the child (interpreter start-up excluded); the table
gives the median and the minimum over the runs, and which heavy modules each path ended up
importing. Prints a Markdown section for BENCHMARKS.md ("Cold start imports").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# label -> (kind, engine): "handler", "front" (GET /budget) or "worker" (its first query)
PATHS: dict[str, tuple[str, str | None]] = {
    "API handler only (authorizer, /health)": ("handler", None),
    "front: first GET /budget (handler + service + hop + store)": ("front", None),
    "the same, engines in-process (the shape before the split)": ("front-inprocess", None),
    "SQL worker: first query (smartnoise_sql)": ("worker", "smartnoise_sql"),
    "OpenDP worker: first query (opendp)": ("worker", "opendp"),
    "Polars worker: first query (opendp_polars)": ("worker", "opendp_polars"),
    "DiffPrivLib worker: first fit (diffprivlib; its fit module too)": ("worker", "diffprivlib"),
    "Synth worker: first synthesis (smartnoise_synth; snsynth, mbi, jax)": (
        "worker",
        "smartnoise_synth",
    ),
}
WATCH = [
    "pandas",
    "numpy",
    "opendp",
    "opendp.prelude",
    "snsql",
    "sqlalchemy",
    "polars",
    "sklearn",
    "diffprivlib",
    "jax",
    "mbi",
    "snsynth",
    "chalicelib.engines.smartnoise_engine",
    "chalicelib.engines.opendp_engine",
    "chalicelib.engines.polars_engine",
]
CHILD = """
import json, os, sys, time
sys.path.insert(0, {root!r})
kind, engine = {kind!r}, {engine!r}
os.environ["NEBLINA_WORKERS"] = (
    "inprocess" if kind == "front-inprocess"
    else json.dumps({{"sql": {{"function": "neblina-worker-sql"}}}})
)
t0 = time.perf_counter()
if kind == "worker":
    import chalicelib.worker
else:
    import app
t1 = time.perf_counter()
from chalicelib.config import get_settings
from chalicelib import deps
if kind.startswith("front"):
    deps.build_service(get_settings())
elif kind == "worker":
    from chalicelib.workers import ENGINE_WORKERS
    worker = deps.build_worker(get_settings(), ENGINE_WORKERS[engine])
t2 = time.perf_counter()
if kind == "worker":
    worker.engines.get(engine)
    if engine == "diffprivlib":  # the engine imports its fit (sklearn) at the first fit
        import chalicelib.engines.diffprivlib_fit
    if engine == "smartnoise_synth":  # the fit imports snsynth, mbi and jax at the first fit
        import chalicelib.engines.synth_fit, mbi, snsynth.mst.mst, snsynth.aim.aim, snsynth.mwem
t3 = time.perf_counter()
print(json.dumps({{
    "handler": t1 - t0, "service": t2 - t1, "engine": t3 - t2, "total": t3 - t0,
    "modules": len(sys.modules), "imported": [m for m in {watch!r} if m in sys.modules],
}}))
"""


def measure(kind: str, engine: str | None) -> dict[str, object]:
    """One fresh interpreter's import times for one path."""
    code = CHILD.format(root=str(ROOT), kind=kind, engine=engine, watch=WATCH)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "AWS_DEFAULT_REGION": "us-east-1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    for kind, engine in PATHS.values():  # warm the OS file cache and .pyc files, not timed
        measure(kind, engine)
    rows = []
    for label, (kind, engine) in PATHS.items():
        runs = [measure(kind, engine) for _ in range(args.runs)]

        def ms(key: str, runs: list[dict[str, object]] = runs) -> str:
            values = [float(run[key]) * 1000 for run in runs]  # type: ignore[arg-type]
            return f"{statistics.median(values):.0f} ({min(values):.0f})"

        imported = ", ".join(f"`{m}`" for m in runs[0]["imported"]) or "-"  # type: ignore[attr-defined]
        rows.append(
            f"| {label} | {ms('handler')} | {ms('service')} | {ms('engine')} | "
            f"{ms('total')} | {runs[0]['modules']} | {imported} |"
        )
    print(
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()}. Date: {date.today().isoformat()}. {args.runs} fresh interpreters "
        "per row; milliseconds, median (min).\n"
    )
    print(
        "| path | handler module | + service or worker | + engine | total | modules "
        "| heavy modules imported |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
