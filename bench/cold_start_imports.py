"""Cold-start import cost of each request path, each measured in a fresh interpreter.

    .venv/bin/python bench/cold_start_imports.py [--runs 7]

For each path a new Python process imports what a cold Lambda imports for that request:
the handler (``app``; all the authorizer and ``/health`` need), then the service, then the
engine the request names (``get_engine``). Times are ``time.perf_counter`` inside the child
(interpreter start-up excluded); the table gives the median and the minimum over the runs,
and which heavy modules each path ended up importing. Prints a Markdown section for
BENCHMARKS.md ("Cold start imports").
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

PATHS = {
    "handler only (authorizer, /health)": None,
    "SQL request (smartnoise_sql)": "smartnoise_sql",
    "OpenDP request (opendp)": "opendp",
}
WATCH = [
    "pandas",
    "opendp",
    "opendp.prelude",
    "snsql",
    "sqlalchemy",
    "polars",
    "chalicelib.engines.smartnoise_engine",
    "chalicelib.engines.opendp_engine",
]
CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
import app
t1 = time.perf_counter()
engine = {engine!r}
if engine is not None:
    import chalicelib.service
t2 = time.perf_counter()
if engine is not None:
    from chalicelib.engines import get_engine
    get_engine(engine)
t3 = time.perf_counter()
print(json.dumps({{
    "handler": t1 - t0, "service": t2 - t1, "engine": t3 - t2, "total": t3 - t0,
    "modules": len(sys.modules), "imported": [m for m in {watch!r} if m in sys.modules],
}}))
"""


def measure(engine: str | None) -> dict[str, object]:
    """One fresh interpreter's import times for the path that names ``engine``."""
    code = CHILD.format(root=str(ROOT), engine=engine, watch=WATCH)
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
    measure(None)  # warm the OS file cache and .pyc files once, not timed
    rows = []
    for label, engine in PATHS.items():
        runs = [measure(engine) for _ in range(args.runs)]

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
    print("| path | handler | + service | + engine | total | modules | heavy modules imported |")
    print("|---|---:|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
