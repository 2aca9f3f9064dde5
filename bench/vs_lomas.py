"""Neblina beside Lomas 0.4.1, one run, same machine, same data, same cases, raw HTTP.

    .venv/bin/python bench/vs_lomas.py [--n 20] [--warmup 2] [--out build/bench/vs_lomas.md]
    make bench-vs-lomas                       # the same, n = 20 after 2 warm-ups

One after the other, never both at once:

1. Lomas: ``../shared/anchors/lomas/run.sh nojitter`` (its venvs must exist: ``setup.sh``,
   run once, not here) on a free 127.0.0.1 port, with its run directory under
   ``build/bench/lomas-run``; the anchor's ``measure.py`` times its cases (n, warm-ups as
   given, no lomas_client check); ``stop.sh`` stops it.
2. Neblina: the local stack (emulator, API server, one process per worker family) on free
   127.0.0.1 ports (never 4566), PEOPLE_1M registered from ``bench/people.py`` (the anchor's
   generator and seed; the CSVs are compared; with its Parquet copy, as ``neblina-admin
   datasets add`` makes it), then the same cases over raw HTTP (httpx,
   keep-alive; one request at a time, a new ``query_id`` per query): the request bodies are
   built once by the client library, the timing covers the HTTP call alone.

Prints one Markdown table (case, Lomas p50, Neblina p50, ratio, the issue 14 target) and the
RSS of each process, and writes it to ``--out``. p50/p95 by linear interpolation over n, as
the anchor's measure.py does. Takes ~6 minutes at n = 20 on an idle 2-core machine (Lomas's 66
one-million-row requests are 2-5 s each: ~4.5 minutes); 6.3 minutes at n = 3 on a loaded one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import socket
import subprocess
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

ANCHOR = Path(os.environ.get("LOMAS_ANCHOR", ROOT.parent / "shared" / "anchors" / "lomas"))
# a worktree under /work/wt/<name>: the anchor is /work/shared/...
if not ANCHOR.is_dir() and "LOMAS_ANCHOR" not in os.environ:
    ANCHOR = ROOT.parent.parent / "shared" / "anchors" / "lomas"
LOMAS_VENV = Path(os.environ.get("LOMAS_VENV", Path.home() / ".cache" / "lomas-anchor" / "venv"))
RUN_DIR = ROOT / "build" / "bench" / "lomas-run"
EPSILON, DELTA = 1.0, 1e-5
PEOPLE_ROWS = 1_000_000
PEOPLE = "PEOPLE_1M"  # the anchor's dataset name

COUNT = "SELECT COUNT(*) AS n FROM df"
# The anchor's case b: Lomas 0.4.1 refuses the NULL-sex group, so both filter it out.
GROUP_PENGUIN = (
    "SELECT sex, COUNT(*) AS n, AVG(bill_length_mm) AS b FROM df WHERE sex IS NOT NULL GROUP BY sex"
)
GROUP_PEOPLE = "SELECT sex, COUNT(*) AS n, AVG(income) AS b FROM df GROUP BY sex"

# (case, the anchor's measure.py case, issue 14's target for Neblina's warm p50)
CASES = (
    ("SQL COUNT, PENGUIN", "a_sql_count_penguin", "≤ 30 ms"),
    ("SQL GROUP BY sex + AVG, PENGUIN", "b_sql_groupby_penguin", "≤ 30 ms"),
    ("SQL COUNT, 1M", "c1_sql_count_1m", "≤ 40 ms"),
    ("SQL GROUP BY sex + AVG(income), 1M", "c2_sql_groupby_1m", "≤ 100 ms"),
    ("OpenDP mean, PENGUIN", "g1_opendp_mean_penguin", "≤ 20 ms"),
    ("OpenDP mean, 1M", "g2_opendp_mean_1m", "≤ 150 ms"),
    ("cost estimate, PENGUIN COUNT", "d_cost_sql_count_penguin", "–"),
    ("dummy, 100 rows", "e_dummy_100_penguin", "–"),
    ("budget read", "f_remaining_budget_penguin", "≤ 8 ms"),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_lomas(n: int, warmup: int) -> dict[str, Any]:
    """Start the anchor (nojitter), run its measure.py, stop it; measure.py's JSON document."""
    if not (LOMAS_VENV / "bin" / "python").exists():
        raise SystemExit(f"no Lomas venv at {LOMAS_VENV}: run {ANCHOR}/setup.sh once")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "LOMAS_RUN_DIR": str(RUN_DIR), "LOMAS_PORT": str(port)}
    env["LOMAS_VENV"] = str(LOMAS_VENV)
    out = RUN_DIR / "results-nojitter.json"
    print(f"lomas: starting on 127.0.0.1:{port} (run dir {RUN_DIR})", file=sys.stderr)
    subprocess.run([str(ANCHOR / "run.sh"), "nojitter"], env=env, check=True, timeout=600)
    try:
        subprocess.run(
            [str(LOMAS_VENV / "bin" / "python"), str(ANCHOR / "measure.py"), "--n", str(n),
             "--warmup", str(warmup), "--label", "nojitter", "--no-client-check",
             "--only", ",".join(key for _, key, _ in CASES),
             "--url", f"http://127.0.0.1:{port}", "--out", str(out)],
            env=env, check=True, timeout=7200, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        subprocess.run([str(ANCHOR / "stop.sh")], env=env, check=False, timeout=60)
    document: dict[str, Any] = json.loads(out.read_text())
    return document


def same_people_table() -> str:
    """Whether the anchor's 1M CSV is bench/people.py's (bytes, else values)."""
    import pandas as pd
    import people

    ours, _ = people.ensure(PEOPLE_ROWS)
    theirs = RUN_DIR / "data" / "synth_people.csv"
    if not theirs.exists():
        return "the anchor's CSV is missing"
    if sha256(ours) == sha256(theirs):
        return f"identical bytes (sha256 {sha256(ours)[:12]}…)"
    equal = pd.read_csv(ours).equals(pd.read_csv(theirs))
    return "same values, different bytes" if equal else "DIFFERENT DATA"


def rss_mib(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":")
            fields[key] = int(value.split()[0]) / 1024
    return round(fields["VmRSS"], 1), round(fields["VmHWM"], 1)


def run_neblina(n: int, warmup: int) -> dict[str, Any]:
    """The same cases on the local stack, raw HTTP; {case: {p50_ms, p95_ms, codes}} + RSS."""
    import httpx
    import opendp.prelude as dp
    from columnar_http import BLOCK, register_people, restart_worker
    from latency import pct
    from stack import LocalStack

    from neblina_client._client import _opendp_body, _sql_body

    dp.enable_features("contrib")

    def mean(columns: list[str], column: str, bounds: tuple[float, float], size: int,
             scale: float) -> dict[str, Any]:  # fmt: skip
        # the anchor's pipeline (opendp_pipeline.py), from the client's input space
        from neblina_client._opendp import input_space

        lo, hi = bounds
        measurement = (
            input_space(columns, column)
            >> dp.t.then_cast_default(TOA=float)
            >> dp.t.then_impute_constant(0.0)  # OpenDP 0.14: no NaN into clamp (0.10 let it)
            >> dp.t.then_clamp(bounds=(lo, hi))
            >> dp.t.then_resize(size=size, constant=(lo + hi) / 2)
            >> dp.t.then_mean()
            >> dp.m.then_laplace(scale=scale)
        )
        return _opendp_body(measurement, None)

    results: dict[str, Any] = {"cases": {}}
    with LocalStack(synthetic_rows=1000, quiet=True) as stack:
        print(f"neblina: local stack at {stack.api_url}", file=sys.stderr)
        token, converted = register_people(stack, PEOPLE_ROWS, PEOPLE, ("PENGUIN", PEOPLE))
        results["parquet_copy_ms"] = None if converted is None else round(converted, 1)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=600) as http:
            penguin_columns = list(
                http.get("/v1/datasets/PENGUIN/metadata").json()["metadata"]["columns"]
            )
            people_columns = list(
                http.get(f"/v1/datasets/{PEOPLE}/metadata").json()["metadata"]["columns"]
            )

            def query(dataset: str, body: dict[str, Any]) -> Callable[[], httpx.Response]:
                def call() -> httpx.Response:
                    document = {**body, "query_id": uuid.uuid4().hex}
                    return http.post(f"/v1/datasets/{dataset}/queries", json=document)

                return call

            def sql(query_text: str) -> dict[str, Any]:
                return _sql_body(query_text, EPSILON, DELTA, None)

            calls: dict[str, Callable[[], httpx.Response]] = {
                "a_sql_count_penguin": query("PENGUIN", sql(COUNT)),
                "b_sql_groupby_penguin": query("PENGUIN", sql(GROUP_PENGUIN)),
                "c1_sql_count_1m": query(PEOPLE, sql(COUNT)),
                "c2_sql_groupby_1m": query(PEOPLE, sql(GROUP_PEOPLE)),
                "d_cost_sql_count_penguin": lambda: http.post(
                    "/v1/datasets/PENGUIN/cost", json=sql(COUNT)
                ),
                "e_dummy_100_penguin": lambda: http.get(
                    "/v1/datasets/PENGUIN/dummy", params={"rows": 100, "seed": 42}
                ),
                "f_remaining_budget_penguin": lambda: http.get("/v1/datasets/PENGUIN/budget"),
                "g1_opendp_mean_penguin": query(
                    "PENGUIN", mean(penguin_columns, "bill_length_mm", (30.0, 60.0), 344, 0.5)
                ),
                "g2_opendp_mean_1m": query(
                    PEOPLE, mean(people_columns, "income", (0.0, 200000.0), PEOPLE_ROWS, 5.0)
                ),
            }
            # The first query on the new 1M version, from a new sql worker process's start
            # (bench/columnar_http.py's cold worker: modules not in its image blocked)
            started = restart_worker(stack, "sql", BLOCK)
            first = calls["c1_sql_count_1m"]()
            results["first_query_1m_ms"] = round((time.perf_counter() - started) * 1000, 1)
            if first.status_code != 200:
                raise SystemExit(f"neblina: first 1M query answered {first.text[:500]}")
            for name, call in calls.items():
                codes: dict[int, int] = {}
                values = []
                for i in range(warmup + n):
                    started = time.perf_counter()
                    response = call()
                    elapsed = (time.perf_counter() - started) * 1000
                    codes[response.status_code] = codes.get(response.status_code, 0) + 1
                    if i >= warmup:
                        values.append(elapsed)
                if set(codes) != {200}:
                    raise SystemExit(f"neblina: {name} answered {codes}: {response.text[:500]}")
                results["cases"][name] = {
                    "p50_ms": round(pct(values, 0.5), 1),
                    "p95_ms": round(pct(values, 0.95), 1),
                    "codes": codes,
                }
                print(f"neblina: {name:28s} p50 {pct(values, 0.5):9.1f} ms", file=sys.stderr)
        results["rss_mib"] = {
            label: rss_mib(process.pid)
            for label, process in stack.processes.items()
            if label.startswith("worker-") or label == "api"
        }
    return results


def number(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def render(lomas: dict[str, Any], neblina: dict[str, Any], n: int, warmup: int, same: str) -> str:
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs, "
        f"{platform.machine()}, load average {os.getloadavg()[0]:.1f} at the end; "
        f"warm p50 over n = {n} after {warmup} warm-ups, raw HTTP on 127.0.0.1, one at a time; "
        f"Lomas 0.4.1 `nojitter` (measured {lomas.get('date_utc', '?')}); PEOPLE_1M: {same}",
        "",
        "| case | Lomas p50 ms | Neblina p50 ms | ratio | target (Neblina) |",
        "|---|---:|---:|---:|---|",
    ]
    for label, key, target in CASES:
        theirs = lomas["cases"].get(key, {}).get("p50_ms")
        ours = neblina["cases"][key]["p50_ms"]
        ratio = (
            "–"
            if not theirs
            else f"{ours / theirs:.2f}"
            if ours >= theirs / 10
            else f"{ours / theirs:.2g}"
        )
        lines.append(f"| {label} | {number(theirs)} | {number(ours)} | {ratio} | {target} |")
    lines.append(
        f"| first query on the new 1M version (from the sql worker's process start) | "
        f"every query reloads | "
        f"{number(neblina['first_query_1m_ms'])} | – | ≤ 1,500 ms |"
    )
    peak = lomas.get("rss_end", {}).get("peak_rss_mib")
    for family in ("sql", "opendp"):  # Lomas: one server process does everything
        _, worker_peak = neblina["rss_mib"][f"worker-{family}"]
        lines.append(
            f"| RSS peak, MiB: Lomas server / Neblina's {family} worker | {number(peak)} | "
            f"{number(worker_peak)} | – | ≤ 350 MiB |"
        )
    lines.append("")
    lines.append(
        "Neblina RSS (MiB, now / peak): "
        + ", ".join(f"{k} {v[0]:,.0f} / {v[1]:,.0f}" for k, v in neblina["rss_mib"].items())
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "vs_lomas.md")
    parser.add_argument(
        "--reuse-lomas",
        action="store_true",
        help="skip Lomas: reuse the last run's measure.py JSON (to re-run Neblina's side only)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    previous = RUN_DIR / "results-nojitter.json"
    if args.reuse_lomas and previous.exists():
        lomas = json.loads(previous.read_text())
        print(f"lomas: reusing {previous} ({lomas['date_utc']})", file=sys.stderr)
    else:
        lomas = run_lomas(args.n, args.warmup)
    same = same_people_table()
    neblina = run_neblina(args.n, args.warmup)
    table = render(lomas, neblina, args.n, args.warmup, same)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    (args.out.with_suffix(".json")).write_text(
        json.dumps({"lomas": lomas, "neblina": neblina}, indent=2) + "\n"
    )
    print(table)
    print(f"({time.perf_counter() - started:.0f} s; also in {args.out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
