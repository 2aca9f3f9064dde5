"""Issue 14, worker side: a cold worker's first answer and its memory, Parquet copy vs CSV.

    .venv/bin/python bench/parquet_cold.py [--rows 1000000] [--runs 3] [--warm 9]
                                           [--sources parquet,csv] [--engines sql,opendp]

On PEOPLE_<rows> (bench/people.py, seed 7). First the registration's conversion (CSV ->
typed Parquet copy, :func:`chalicelib.datasets.to_parquet`), timed once. Then, for each
source and engine, ``--runs`` fresh Python processes, each doing what a cold worker does for
its first request (modules the worker image lacks made unimportable, unless
``--with-extras``): import the engine (SmartNoise SQL + DuckDB, or OpenDP), load the dataset
version (the Parquet copy's bytes as the loader gets them from S3, here read from the local
disk; or the CSV read + coerce), price and run the first query (SQL COUNT, or the Lomas
anchor's OpenDP mean); the parent times process start (``Popen``) to the answer. The same
process then runs the warm cases ``--warm`` times (the in-process floor: p50) and reports
its RSS (VmRSS, VmHWM) after them: the worker's memory after the 1M cases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "client"), str(ROOT / "bench")]

SQL_CASES = {
    "SQL COUNT": "SELECT COUNT(*) AS n FROM df",
    "SQL GROUP BY sex + AVG": "SELECT sex, COUNT(*) AS n, AVG(income) AS b FROM df GROUP BY sex",
    "SQL GROUP BY region, sex + AVG": (
        "SELECT region, sex, COUNT(*) AS n, AVG(income) AS b FROM df GROUP BY region, sex"
    ),
}

# Installed in this virtualenv (other engines' extras) but not in the worker image
# (infra/docker/Dockerfile: requirements.txt + requirements-columnar.txt); SmartNoise and
# opendp.prelude import them when they find them (BENCHMARKS.md, "Cold start imports").
# --with-extras lets the child import them.
BLOCK = "scipy,sklearn,polars,pyarrow"

# The child: what a cold worker runs for its first request, then the warm cases.
CHILD = r"""
import json, os, statistics, sys, time, warnings
warnings.filterwarnings("ignore")
started = time.perf_counter()
if os.environ.get("NEBLINA_BLOCK"):  # modules the worker image does not have
    blocked = set(os.environ["NEBLINA_BLOCK"].split(","))
    class _NotInImage:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r} (not in the worker image)")
            return None
    sys.meta_path.insert(0, _NotInImage())
source, engine_name, data_path, meta_path, rows, warm = sys.argv[1:7]
rows, warm = int(rows), int(warm)
sys.path[:0] = [os.environ["NEBLINA_ROOT"], os.environ["NEBLINA_ROOT"] + "/client"]
if engine_name == "sql":
    from chalicelib.engines import smartnoise_engine as sn
    engine = sn.SmartnoiseSqlEngine(executor="duckdb")
else:
    from chalicelib.engines import opendp_engine as oe
    engine = oe.OpenDPEngine()
import yaml
from chalicelib import metadata as M
from chalicelib.datasets import LoadedDataset, coerce_types, read_csv
from chalicelib.models import Dataset, utcnow
imported = time.perf_counter()
meta = M.validate(yaml.safe_load(open(meta_path).read()))
name = f"PEOPLE_{rows}"
dataset = Dataset(name, "unused", meta, utcnow())
data = open(data_path, "rb").read()
if source == "parquet":
    loaded = LoadedDataset(name, "v1", meta, parquet=data)
else:
    loaded = LoadedDataset(name, "v1", meta, coerce_types(read_csv(data, meta), meta))
del data
read = time.perf_counter()
cases = json.loads(os.environ["NEBLINA_CASES"])
if engine_name == "opendp":
    import opendp.prelude as dp
    from neblina_client._opendp import input_space, pipeline_nodes
    dp.enable_features("contrib")
    pipeline = (
        input_space(list(meta["columns"]), "income")
        >> dp.t.then_cast_default(float) >> dp.t.then_impute_constant(0.0)
        >> dp.t.then_clamp((0.0, 200000.0)) >> dp.t.then_resize(rows, 100000.0)
        >> dp.t.then_mean() >> dp.m.then_laplace(5.0)
    )
    nodes = pipeline_nodes(pipeline)
    requests = {"OpenDP mean": engine.parse({"engine": "opendp", "pipeline": nodes})}
else:
    requests = {label: engine.parse({"query": q, "epsilon": "1", "delta": "0.00001"})
                for label, q in cases.items()}
first_label = next(iter(requests))
engine.cost(dataset, requests[first_label])
engine.execute(loaded, requests[first_label])
answered = time.perf_counter()
print(json.dumps({"answered": True}), flush=True)
warm_ms = {}
for label, request in requests.items():
    engine.cost(dataset, request)
    engine.execute(loaded, request)
    values = []
    for _ in range(warm):
        t = time.perf_counter()
        engine.execute(loaded, request)
        values.append((time.perf_counter() - t) * 1000)
    warm_ms[label] = statistics.median(values)
status = open("/proc/self/status").read()
field = lambda n: int(status.split(n + ":")[1].split()[0]) // 1024
print(json.dumps({
    "import_s": imported - started, "load_s": read - imported, "first_s": answered - read,
    "warm_ms": warm_ms, "rss": field("VmRSS"), "hwm": field("VmHWM"),
    "frame_built": loaded.has_frame,
}), flush=True)
"""


def run_child(
    source: str, engine: str, data: Path, meta: Path, rows: int, warm: int, block: str
) -> dict[str, float]:
    env = {
        **os.environ,
        "NEBLINA_ROOT": str(ROOT),
        "NEBLINA_CASES": json.dumps(SQL_CASES),
        "NEBLINA_BLOCK": block,
    }
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, source, engine, str(data), str(meta), str(rows), str(warm)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert process.stdout is not None
    first_line = process.stdout.readline()
    to_answer = time.perf_counter() - start
    assert json.loads(first_line)["answered"], first_line
    result = json.loads(process.stdout.readline())  # the child prints nothing else
    process.wait(timeout=600)
    return {**result, "process_start_to_answer_s": to_answer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warm", type=int, default=9)
    parser.add_argument("--sources", default="parquet,csv")
    parser.add_argument("--engines", default="sql,opendp")
    parser.add_argument("--with-extras", action="store_true", help="do not block " + BLOCK)
    args = parser.parse_args()
    block = "" if args.with_extras else BLOCK

    import pandas as pd
    import people
    import yaml

    from chalicelib import metadata as M
    from chalicelib.datasets import read_csv, to_parquet

    csv, meta_path = people.ensure(args.rows)
    meta = M.validate(yaml.safe_load(meta_path.read_text()))
    parquet = csv.with_suffix(".csv.parquet")
    start = time.perf_counter()
    data = to_parquet(read_csv(csv.read_bytes(), meta), meta)
    convert_s = time.perf_counter() - start
    parquet.write_bytes(data)
    del data
    assert len(pd.read_parquet(parquet, columns=["sex"])) == args.rows
    load = os.getloadavg()
    print(
        f"PEOPLE_{args.rows}: CSV {csv.stat().st_size / 1e6:.1f} MB, Parquet copy "
        f"{parquet.stat().st_size / 1e6:.1f} MB, conversion (registration, once) "
        f"{convert_s:.2f} s; load average {load[0]:.2f}",
        flush=True,
    )
    lines = []
    for engine in args.engines.split(","):
        for source in args.sources.split(","):
            path = parquet if source == "parquet" else csv
            runs = [
                run_child(source, engine, path, meta_path, args.rows, args.warm, block)
                for _ in range(args.runs)
            ]

            def med(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(float(r[key]) for r in runs)

            warm = {
                label: statistics.median(float(r["warm_ms"][label]) for r in runs)  # type: ignore[index]
                for label in runs[0]["warm_ms"]  # type: ignore[union-attr]
            }
            lines.append(
                f"| {engine} | {source} | {med('process_start_to_answer_s'):.2f} | "
                f"{med('import_s'):.2f} | {med('load_s'):.2f} | {med('first_s'):.2f} | "
                + "; ".join(f"{k} {v:.1f}" for k, v in warm.items())
                + f" | {med('rss'):.0f} / {med('hwm'):.0f} | {runs[0]['frame_built']} |"
            )
            print(lines[-1], flush=True)
    load = os.getloadavg()
    print(
        f"\nPEOPLE_{args.rows}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, runs {args.runs} "
        f"(medians), warm {args.warm}; load average at the end {load[0]:.2f}; "
        f"unimportable: {block or 'nothing'}\n"
    )
    print(
        "| engine | source | process start to answer s | import s | load s | first query s "
        "| warm p50 ms | RSS / peak MiB after the cases | pandas frame built |\n"
        "|---|---|---:|---:|---:|---:|---|---:|---|"
    )
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
