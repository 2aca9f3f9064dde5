"""Warm latency of DP SQL queries over HTTP, next to the same SmartNoise call in-process.

    .venv/bin/python bench/latency.py [--runs 60] [--write]

Starts the local stack (emulator + API server as child processes on free ports, 100,000
synthetic rows), creates a researcher with a large grant, warms each query up, then times
`runs` sequential queries per (dataset, query) through the real client. The in-process
floors time, on a frame already loaded in this process:

- "SmartNoise": `snsql.from_df(frame, ...)` built once, then `reader.execute_df(query)`;
- "engine": Neblina's SmartNoise engine (`ENGINE.execute`) on a `LoadedDataset`, which reuses
  the SQLite copy and memoises noise-scale searches.

With --write, the table replaces the "Warm query latency" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
import uuid
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "localstack")]

QUERIES = {
    "COUNT": "SELECT COUNT(*) AS n FROM df",
    "GROUP BY": {
        "PENGUIN": (
            "SELECT species, COUNT(*) AS n, AVG(bill_length_mm) AS b FROM df GROUP BY species"
        ),
        "SYNTHETIC": "SELECT region, COUNT(*) AS n, AVG(income) AS inc FROM df GROUP BY region",
    },
}
EPSILON, DELTA = 1.0, 1e-5
SYNTHETIC_ROWS = 100_000


def query_for(label: str, dataset: str) -> str:
    q = QUERIES[label]
    return q if isinstance(q, str) else q[dataset]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def timed(fn, runs: int, warmup: int = 5) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def frames() -> dict[str, object]:
    import pandas as pd
    import synthetic
    import yaml

    from chalicelib import metadata as M
    from chalicelib.datasets import coerce_types

    penguin_meta = M.validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))
    synth_raw = yaml.safe_load((ROOT / "localstack/data/synthetic.yaml").read_text())
    synth_raw["rows"] = SYNTHETIC_ROWS
    synth_meta = M.validate(synth_raw)
    penguin = coerce_types(pd.read_csv(ROOT / "localstack/data/penguins.csv"), penguin_meta)
    synth = coerce_types(
        pd.read_parquet(
            io.BytesIO(synthetic.to_parquet_bytes(synthetic.generate(SYNTHETIC_ROWS))),
            engine="fastparquet",
        ),
        synth_meta,
    )
    return {"PENGUIN": (penguin, penguin_meta), "SYNTHETIC": (synth, synth_meta)}


def in_process(runs: int) -> dict[tuple[str, str, str], list[float]]:
    import snsql

    from chalicelib import metadata as M
    from chalicelib.datasets import LoadedDataset
    from chalicelib.engines.smartnoise_engine import ENGINE

    results = {}
    for dataset, (frame, meta) in frames().items():
        reader = snsql.from_df(
            frame,
            privacy=snsql.Privacy(epsilon=EPSILON, delta=DELTA),
            metadata=M.to_smartnoise(meta, ["df"]),
        )
        loaded = LoadedDataset(dataset, "bench", meta, frame)
        for label in QUERIES:
            sql = query_for(label, dataset)
            request = ENGINE.parse(
                {"engine": "smartnoise_sql", "query": sql, "epsilon": EPSILON, "delta": DELTA}
            )
            results[("SmartNoise", dataset, label)] = timed(
                lambda r=reader, q=sql: r.execute_df(q), runs
            )
            results[("engine", dataset, label)] = timed(
                lambda d=loaded, q=request: ENGINE.execute(d, q), runs
            )
    return results


def over_http(runs: int) -> dict[tuple[str, str, str], list[float]]:
    from stack import LocalStack

    from neblina_admin import operations as admin
    from neblina_client import Client

    results = {}
    with LocalStack(synthetic_rows=SYNTHETIC_ROWS, quiet=True) as stack:
        os.environ.update(stack.env())
        from chalicelib.config import get_settings
        from chalicelib.storage import get_store, reset_store

        get_settings.cache_clear()
        reset_store()

        store = get_store()
        user = f"bench-{uuid.uuid4().hex[:6]}"
        admin.add_user(store, user)
        for dataset in ("PENGUIN", "SYNTHETIC"):
            admin.grant(store, user, dataset, epsilon="1000000", delta="0.5")
        token = admin.add_token(store, user).secret
        for dataset in ("PENGUIN", "SYNTHETIC"):
            with Client(url=stack.api_url, token=token, dataset=dataset) as client:
                for label in QUERIES:
                    sql = query_for(label, dataset)
                    results[("HTTP", dataset, label)] = timed(
                        lambda c=client, q=sql: c.sql.query(q, EPSILON, DELTA), runs
                    )
                group_sql = query_for("GROUP BY", dataset)
                results[("HTTP cost only", dataset, "GROUP BY")] = timed(
                    lambda c=client, q=group_sql: c.sql.cost(q, EPSILON, DELTA), runs
                )
                results[("HTTP budget read", dataset, "-")] = timed(client.budget, runs)
    return results


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"
    )


def render(results: dict[tuple[str, str, str], list[float]], runs: int) -> str:
    lines = [
        "## Warm query latency (bench/latency.py)",
        "",
        f"Machine: {machine()}. Date: {date.today().isoformat()}. {runs} sequential runs per row",
        f"after 5 warm-up runs; ε = {EPSILON}, δ = {DELTA} per aggregate; PENGUIN = 344 rows,",
        f"SYNTHETIC = {SYNTHETIC_ROWS:,} rows. HTTP = the real client → local API server",
        "(chalice local server + authorizer) → single-threaded moto emulator, all on loopback.",
        "",
        "| path | dataset | query | p50 ms | p95 ms |",
        "|---|---|---|---:|---:|",
    ]
    for (path, dataset, label), values in results.items():
        lines.append(
            f"| {path} | {dataset} | {label} | {pct(values, 0.5):.1f} | {pct(values, 0.95):.1f} |"
        )
    lines += ["", "HTTP overhead at p50 (HTTP p50 minus in-process p50):", ""]
    lines += [
        "| dataset | query | vs SmartNoise call | vs Neblina engine call |",
        "|---|---|---:|---:|",
    ]
    for dataset in ("PENGUIN", "SYNTHETIC"):
        for label in QUERIES:
            http = pct(results[("HTTP", dataset, label)], 0.5)
            sn = pct(results[("SmartNoise", dataset, label)], 0.5)
            eng = pct(results[("engine", dataset, label)], 0.5)
            lines.append(f"| {dataset} | {label} | {http - sn:+.1f} ms | {http - eng:+.1f} ms |")
    lines += [
        "",
        "Reading: the issue's target is the first overhead column (the HTTP path against the",
        "same SmartNoise call on an already-loaded frame): at most +30 ms at p50. The HTTP path",
        "can beat that floor because Neblina reuses the SQLite copy of the frame and memoises",
        "SmartNoise's noise-scale searches (~25 ms per aggregate in the plain call). The second",
        "column is the platform's own cost over its engine: a warm query makes 7 calls to the",
        "emulator (authorizer: token + user; dataset; grant; the reserve transaction; the S3",
        "version check; the archive write), ~3-5 ms each on the single-threaded moto server,",
        "plus HTTP and JSON; 'budget read' (4 emulator calls) shows that floor alone.",
    ]
    return "\n".join(lines) + "\n"


def write_section(text: str, marker: str = "## Warm query latency") -> None:
    """Replace the section starting with ``marker`` in BENCHMARKS.md (or append it)."""
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if marker in current:
        start = current.index(marker)
        rest = current[start + len(marker) :]
        nxt = rest.find("\n## ")
        end = len(current) if nxt < 0 else start + len(marker) + nxt + 1
        current = current[:start] + text + current[end:]
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    results = in_process(args.runs)
    results.update(over_http(args.runs))
    order = ["SmartNoise", "engine", "HTTP", "HTTP cost only", "HTTP budget read"]
    results = dict(
        sorted(results.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]), kv[0][2]))
    )
    text = render(results, args.runs)
    print(text)
    if args.write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
