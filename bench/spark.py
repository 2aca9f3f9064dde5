"""Spark local vs the in-function SQL engine on PEOPLE (docs/spark.md, BENCHMARKS.md).

    .venv/bin/python bench/spark.py [--rows 1000000 10000000] [--runs 3]

Each (path, rows) runs in a fresh interpreter, so each measures its own memory: submit to
done through the service (in-process workers, a memory store), ``--runs`` queries, the first
one cold (the function path loads the table; the Spark path starts its session), p50 of
all. Memory: the peak RSS of the Python process, and for Spark that of its JVM too.
The Spark job's fixed cost: the session start and the open of the Parquet, timed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
SQL = "SELECT region, COUNT(*) AS n, AVG(income) AS income FROM df GROUP BY region"


def parquet(rows: int) -> Path:
    import people  # bench/people.py

    path = ROOT / "bench" / "data" / f"people_{rows}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        people.frame(rows).to_parquet(path, engine="fastparquet", index=False)
    return path


def jvm_peak_kb() -> int:
    """VmHWM of this process's java children (Spark's JVM), in kB."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            if f"PPid:\t{os.getpid()}" in status and "Name:\tjava" in status:
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def one(path_kind: str, rows: int, runs: int) -> dict[str, object]:
    import people
    import yaml

    from chalicelib import metadata
    from chalicelib.config import from_environ
    from chalicelib.datasets import DatasetLoader
    from chalicelib.models import Dataset, PrivacyCost, User, utcnow
    from chalicelib.service import Accepted, Service
    from chalicelib.storage.memory import MemoryStore

    source = parquet(rows)
    meta = yaml.safe_load(people.metadata_yaml(rows))
    fixed: dict[str, float] = {}
    if path_kind == "spark":
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        meta["executor"] = "spark"
        from chalicelib.engines import spark_sql

        started = time.perf_counter()
        spark_sql.spark_session()
        fixed["session_start_s"] = time.perf_counter() - started
        probe = Dataset("P", str(source), metadata.validate(meta), utcnow(), "", "parquet")
        started = time.perf_counter()
        spark_sql.SparkLoader().load(probe)
        fixed["open_parquet_s"] = time.perf_counter() - started
    store = MemoryStore()
    store.put_user(User(user_id="u", created_at=utcnow()))
    store.put_dataset(Dataset("P", str(source), metadata.validate(meta), utcnow(), "", "parquet"))
    store.create_grant("u", "P", PrivacyCost(epsilon=1000, delta="0.5"))
    service = Service(store, from_environ(), DatasetLoader(from_environ()))
    body = {"engine": "smartnoise_sql", "query": SQL, "epsilon": 0.1, "delta": "1e-6"}
    times = []
    for i in range(runs):
        started = time.perf_counter()
        answer = service.query("u", "P", {**body, "query_id": f"bench-{i:08d}"})
        if isinstance(answer, Accepted):
            service.workers.join()  # type: ignore[attr-defined]
            record = service.get_query("u", "P", f"bench-{i:08d}")
            assert record["state"] == "done", record
        times.append(time.perf_counter() - started)
    return {
        "path": path_kind,
        "rows": rows,
        "runs_s": [round(t, 3) for t in times],
        "p50_s": round(statistics.median(times), 3),
        "python_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "jvm_peak_mb": round(jvm_peak_kb() / 1024),
        **{k: round(v, 3) for k, v in fixed.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("PATH", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.runs)))
        return
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for rows in args.rows:
        parquet(rows)
        for kind in ("function", "spark"):
            command = [sys.executable, __file__, "--one", kind, str(rows), "--runs", str(args.runs)]
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            line = out.stdout.strip().splitlines()[-1:] or [out.stderr[-500:]]
            print(line[0], flush=True)


if __name__ == "__main__":
    main()
