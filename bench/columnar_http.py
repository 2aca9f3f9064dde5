"""Issue 14's cases over HTTP on the local stack (front + worker processes + emulator).

    .venv/bin/python bench/columnar_http.py [--rows 1000000] [--runs 20]

Starts the local stack on free loopback ports (the demo's PENGUIN, SYNTHETIC kept small),
uploads PEOPLE_<rows> (bench/people.py) as CSV to the emulator's bucket, registers it as
``datasets add`` does (converting it to its Parquet copy, unless ``--no-copy``) and times
through the real client: the first query on the new dataset version from a cold worker (the
sql, then the opendp worker process restarted on its port just before: process start to
answer, the modules the worker image lacks made unimportable unless ``--with-extras``),
then the warm p50/p95 of each case after 2 warm-ups, and the workers' RSS (VmRSS, VmHWM) at
the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
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


def timed(fn: Callable[[], Any], runs: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    values = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        values.append((time.perf_counter() - start) * 1000)
    values.sort()
    return statistics.median(values), values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def rss_mib(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()

    def field(name: str) -> int:
        return int(status.split(f"{name}:")[1].split()[0]) // 1024

    return field("VmRSS"), field("VmHWM")


# Installed in this virtualenv but not in the worker image (bench/parquet_cold.py): a
# restarted worker gets a sitecustomize that makes them unimportable, unless --with-extras.
BLOCK = "scipy,sklearn,polars,pyarrow"
SITECUSTOMIZE = """
import os, sys
_blocked = set(os.environ.get("NEBLINA_BLOCK", "").split(",")) - {""}
class _NotInImage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the worker image)")
        return None
if _blocked:
    sys.meta_path.insert(0, _NotInImage())
"""


def restart_worker(stack: Any, family: str, block: str) -> float:
    """Stop a worker process and start a new one on the same port (a cold worker).

    Returns the ``perf_counter`` at which the new process was started.
    """
    import tempfile
    from urllib.parse import urlparse

    from stack import _stop_process, spawn

    label = f"worker-{family}"
    old = stack.processes[label]
    _stop_process(old.pid)
    old.wait(timeout=10)
    port = urlparse(stack.workers[family]).port
    site = Path(tempfile.mkdtemp(prefix="neblina-bench-site-"))
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in stack.env().items() if k != "NEBLINA_WORKERS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    env["NEBLINA_BLOCK"] = block
    started = time.perf_counter()
    _, stack.processes[label] = spawn(
        label, "workerserver.py", port, env, stack.log_dir, "--worker", family
    )
    return started


def register_people(
    stack: Any, rows: int, name: str, grants: tuple[str, ...], copy: bool = True
) -> tuple[str, float | None]:
    """Upload PEOPLE_<rows> (bench/people.py) to the stack's bucket as CSV and register it as
    ``name`` as ``neblina-admin datasets add`` does (with its Parquet copy unless ``copy`` is
    false). Returns the token of a new user granted a large budget on ``grants``, and the
    conversion's milliseconds (None without the copy)."""
    import people
    import yaml

    from chalicelib import metadata as metadata_module
    from chalicelib.models import Dataset, utcnow
    from neblina_admin import operations as admin

    os.environ.update(stack.env())
    from chalicelib.config import from_environ, get_settings
    from chalicelib.storage import get_store, reset_store

    get_settings.cache_clear()
    reset_store()
    csv, meta_path = people.ensure(rows)
    settings = from_environ()
    store = get_store()
    admin.upload(settings, settings.bucket, f"{name}/people.csv", csv.read_bytes())
    source = f"s3://{settings.bucket}/{name}/people.csv"
    metadata = metadata_module.validate(yaml.safe_load(meta_path.read_text()))
    columnar, converted = None, None
    if copy:  # what datasets add does: the Parquet copy, once
        start = time.perf_counter()
        columnar = admin.columnar_copy(settings, Dataset(name, source, metadata, utcnow()))
        converted = (time.perf_counter() - start) * 1000
    admin.add_dataset(store, name, source, metadata, columnar=columnar)
    user = f"bench-{uuid.uuid4().hex[:6]}"
    admin.add_user(store, user)
    for dataset in grants:
        admin.grant(store, user, dataset, epsilon="1000000", delta="0.5")
    return str(admin.add_token(store, user).secret), converted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-copy", action="store_true", help="register without a Parquet copy")
    parser.add_argument("--with-extras", action="store_true", help="do not block " + BLOCK)
    args = parser.parse_args()

    import opendp.prelude as dp
    from stack import LocalStack

    from neblina_client import Client

    dp.enable_features("contrib")
    name = f"PEOPLE_{args.rows}"
    rows: list[tuple[str, str, str]] = []
    with LocalStack(synthetic_rows=1000, quiet=True) as stack:
        token, converted = register_people(
            stack, args.rows, name, ("PENGUIN", name), copy=not args.no_copy
        )
        if converted is not None:
            rows.append(
                (f"{name}: registration's conversion to Parquet (once)", f"{converted:,.0f}", "")
            )

        with Client(url=stack.api_url, token=token, dataset=name) as client:
            count = "SELECT COUNT(*) AS n FROM df"
            started = restart_worker(stack, "sql", "" if args.with_extras else BLOCK)
            client.sql.query(count, EPSILON, DELTA)
            first = (time.perf_counter() - started) * 1000
            rows.append(
                (
                    f"{name}: first query on the new version (SQL COUNT), "
                    "from the sql worker's process start",
                    f"{first:,.0f}",
                    "",
                )
            )
            cases: dict[str, Callable[[], Any]] = {
                "SQL COUNT": lambda: client.sql.query(count, EPSILON, DELTA),
                "SQL GROUP BY sex + AVG(income)": lambda: client.sql.query(
                    "SELECT sex, COUNT(*) AS n, AVG(income) AS b FROM df GROUP BY sex",
                    EPSILON,
                    DELTA,
                ),
                "SQL GROUP BY region, sex + AVG(income)": lambda: client.sql.query(
                    "SELECT region, sex, COUNT(*) AS n, AVG(income) AS b FROM df"
                    " GROUP BY region, sex",
                    EPSILON,
                    DELTA,
                ),
            }
            mean = (
                client.opendp.space("income")
                >> dp.t.then_cast_default(float)
                >> dp.t.then_impute_constant(0.0)
                >> dp.t.then_clamp((0.0, 200000.0))
                >> dp.t.then_resize(args.rows, 100000.0)
                >> dp.t.then_mean()
                >> dp.m.then_laplace(5.0)
            )
            started = restart_worker(stack, "opendp", "" if args.with_extras else BLOCK)
            client.opendp.query(mean)
            first = (time.perf_counter() - started) * 1000
            rows.append(
                (
                    f"{name}: first OpenDP mean, from the opendp worker's process start",
                    f"{first:,.0f}",
                    "",
                )
            )
            cases["OpenDP mean (cast, impute, clamp, resize, mean, Laplace)"] = lambda: (
                client.opendp.query(mean)
            )
            for label, fn in cases.items():
                p50, p95 = timed(fn, args.runs)
                rows.append((f"{name}: {label}", f"{p50:,.1f}", f"{p95:,.1f}"))
        with Client(url=stack.api_url, token=token, dataset="PENGUIN") as client:
            bill = (
                client.opendp.space("bill_length_mm")
                >> dp.t.then_cast_default(float)
                >> dp.t.then_impute_constant(45.0)
                >> dp.t.then_clamp((30.0, 65.0))
                >> dp.t.then_resize(344, 45.0)
                >> dp.t.then_mean()
                >> dp.m.then_laplace(0.5)
            )
            penguin: dict[str, Callable[[], Any]] = {
                "SQL COUNT": lambda: client.sql.query(
                    "SELECT COUNT(*) AS n FROM df", EPSILON, DELTA
                ),
                "SQL GROUP BY sex + AVG": lambda: client.sql.query(
                    "SELECT sex, COUNT(*) AS n, AVG(bill_length_mm) AS b FROM df GROUP BY sex",
                    EPSILON,
                    DELTA,
                ),
                "OpenDP mean": lambda: client.opendp.query(bill),
                "budget read": client.budget,
            }
            for label, fn in penguin.items():
                p50, p95 = timed(fn, args.runs)
                rows.append((f"PENGUIN: {label}", f"{p50:,.1f}", f"{p95:,.1f}"))
        memory = {
            label: rss_mib(process.pid)
            for label, process in stack.processes.items()
            if label.startswith("worker-") or label == "api"
        }
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"Python {platform.python_version()}, runs {args.runs} after 2 warm-ups; load average "
        f"{os.getloadavg()[0]:.2f}; Parquet copy: {not args.no_copy}; restarted workers could "
        f"not import: {'nothing' if args.with_extras else BLOCK}\n"
    )
    print("| case | p50 ms | p95 ms |\n|---|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        "\nRSS (MiB, now / peak): " + ", ".join(f"{k} {v[0]} / {v[1]}" for k, v in memory.items())
    )


if __name__ == "__main__":
    main()
