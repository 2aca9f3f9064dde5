"""In-process floors of issue 14: SmartNoise SQL on DuckDB vs SQLite, OpenDP prepared input.

    .venv/bin/python bench/columnar.py [--rows 1000000] [--runs 9] [--executors duckdb,sqlite]
                                       [--skip-opendp]

On PEOPLE_<rows> (bench/people.py, seed 7), in one fresh process: the loader's read + coerce
(pandas), then per executor the first query (builds the executor's copy of the version: the
DuckDB table, or the SQLite copy) and the warm p50/p95 of each query over ``--runs`` runs
(ε = 1, δ = 1e-5). OpenDP: the Lomas anchor's mean pipeline on ``income`` (split, select,
cast, impute, clamp, resize, mean, Laplace), first release on the version (CSV text +
prefix) and warm p50, through the engine (prepared column) and as the whole pipeline on the
cached CSV text (the pre-issue-14 path). Prints a Markdown table and the process RSS.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "client"), str(ROOT / "bench")]
warnings.filterwarnings("ignore", category=DeprecationWarning)

QUERIES = {
    "COUNT": "SELECT COUNT(*) AS n FROM df",
    "GROUP BY sex + AVG": "SELECT sex, COUNT(*) AS n, AVG(income) AS b FROM df GROUP BY sex",
    "GROUP BY region, sex + AVG": (
        "SELECT region, sex, COUNT(*) AS n, AVG(income) AS b FROM df GROUP BY region, sex"
    ),
}


def rss_mib() -> tuple[int, int]:
    status = Path("/proc/self/status").read_text()

    def field(name: str) -> int:
        return int(status.split(f"{name}:")[1].split()[0]) // 1024

    return field("VmRSS"), field("VmHWM")


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    values = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        values.append((time.perf_counter() - start) * 1000)
    values.sort()
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return statistics.median(values), p95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--executors", default="duckdb,sqlite")
    parser.add_argument("--skip-opendp", action="store_true")
    args = parser.parse_args()

    import pandas as pd
    import people
    import yaml

    from chalicelib import metadata as M
    from chalicelib.datasets import LoadedDataset, coerce_types
    from chalicelib.engines import opendp_engine as oe
    from chalicelib.engines import smartnoise_engine as sn
    from chalicelib.models import Dataset, utcnow

    csv, meta_path = people.ensure(args.rows)
    meta = M.validate(yaml.safe_load(meta_path.read_text()))
    name = f"PEOPLE_{args.rows}"
    rows: list[tuple[str, str, str, str]] = []

    start = time.perf_counter()
    frame = coerce_types(pd.read_csv(csv), meta)
    load_ms = (time.perf_counter() - start) * 1000
    rows.append(("loader", "read CSV + coerce (pandas)", f"{load_ms:,.0f}", ""))

    for executor in args.executors.split(","):
        engine = sn.SmartnoiseSqlEngine(executor=executor)
        dataset = Dataset(name, str(csv), meta, utcnow())
        loaded = LoadedDataset(name, "v1", meta, frame)
        for label, query in QUERIES.items():
            request = engine.parse({"query": query, "epsilon": "1", "delta": "0.00001"})
            engine.cost(dataset, request)  # priced first, as the service does (scales memoised)
            start = time.perf_counter()
            engine.execute(loaded, request)
            first = (time.perf_counter() - start) * 1000
            p50, p95 = timed(lambda: engine.execute(loaded, request), args.runs)  # noqa: B023
            rows.append((f"SQL {executor}", label, f"{p50:,.1f}", f"{p95:,.1f}"))
            if label == "COUNT":
                rows.append(
                    (f"SQL {executor}", "first query (builds the copy)", f"{first:,.0f}", "")
                )
        print(f"after {executor}: RSS, peak (MiB) = {rss_mib()}", flush=True)

    if not args.skip_opendp:
        import opendp.prelude as dp

        from neblina_client._opendp import input_space, pipeline_nodes

        dp.enable_features("contrib")
        pipeline = (
            input_space(list(meta["columns"]), "income")
            >> dp.t.then_cast_default(float)
            >> dp.t.then_impute_constant(0.0)
            >> dp.t.then_clamp((0.0, 200000.0))
            >> dp.t.then_resize(args.rows, 100000.0)
            >> dp.t.then_mean()
            >> dp.m.then_laplace(5.0)
        )
        engine = oe.OpenDPEngine()
        request = engine.parse({"engine": "opendp", "pipeline": pipeline_nodes(pipeline)})
        loaded = LoadedDataset(name, "v2", meta, frame)
        start = time.perf_counter()
        engine.execute(loaded, request)
        first = (time.perf_counter() - start) * 1000
        rows.append(("OpenDP", "first release (CSV text + prefix, once)", f"{first:,.0f}", ""))
        p50, p95 = timed(lambda: engine.execute(loaded, request), args.runs)
        rows.append(("OpenDP", "mean, prepared column (engine)", f"{p50:,.1f}", f"{p95:,.1f}"))
        text = oe.csv_text(frame)
        measurement = request.measurement()
        p50, p95 = timed(lambda: measurement(text), args.runs)
        rows.append(("OpenDP", "mean, whole pipeline on the text", f"{p50:,.1f}", f"{p95:,.1f}"))

    now, peak = rss_mib()
    print(
        f"\n{name}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"Python {platform.python_version()}, runs {args.runs}; RSS {now} MiB (peak {peak})\n"
    )
    print("| path | case | p50 ms | p95 ms |\n|---|---|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
