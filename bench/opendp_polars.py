"""Server time of OpenDP Polars queries (engine ``opendp_polars``) on PENGUIN, in-process.

    .venv/bin/python bench/opendp_polars.py [--runs 30] [--write]

For each query shape, in a fresh calibration cache: the first price and release (the noise
scale is searched, the measurement built, the summary computed: what a new shape costs),
then ``runs`` repeated price + release pairs of the same shape (what the memoised
calibration leaves: parse, lookup, one run of the measurement on the cached Polars frame).
Also OpenDP's own ``LazyFrameQuery.release()`` path on the same frame (its binary search on
every release), and the import of the engine in a fresh process.

With --write, the table replaces the "OpenDP Polars" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
import warnings
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]
warnings.simplefilter("ignore")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    import_ms = _fresh_import_ms()
    import opendp.prelude as dp
    import polars as pl
    from opendp_pipelines import DATASET, META, loaded

    from chalicelib.engines import polars_engine
    from chalicelib.engines.polars_engine import ENGINE
    from chalicelib.lru import LruCache
    from neblina_client._polars import PolarsContext

    bill = pl.col("bill_length_mm").fill_null(45.0)
    shapes: dict[str, tuple[Any, bool]] = {  # (the query, grouped by sex)
        "count": (lambda q: q.select(dp.len()), False),
        "mean": (lambda q: q.select(bill.dp.mean((30.0, 65.0))), False),
        "group-by count + mean": (
            lambda q: q.group_by("sex").agg(dp.len(), bill.dp.mean((30.0, 65.0))),
            True,
        ),
        "median": (lambda q: q.select(bill.dp.median([35.0, 40.0, 45.0, 50.0])), False),
    }
    data = loaded()
    client_context = PolarsContext(None, META, 1.0, 1)  # type: ignore[arg-type]
    warm = client_context.query().select(dp.len()).body()
    ENGINE.execute(data, ENGINE.parse(warm))  # the Polars frame is built once per version
    rows = []
    for name, (build, grouped) in shapes.items():
        body = build(client_context.query()).body()
        polars_engine.CALIBRATIONS = LruCache(256)  # a new shape: nothing memoised
        t0 = time.perf_counter()
        request = ENGINE.parse(body)
        ENGINE.cost(DATASET, request)
        ENGINE.execute(data, request)
        first = (time.perf_counter() - t0) * 1000
        repeated = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            request = ENGINE.parse(body)
            ENGINE.cost(DATASET, request)
            ENGINE.execute(data, request)
            repeated.append((time.perf_counter() - t0) * 1000)
        opendp_own = _opendp_release_ms(build, grouped, data, META)
        rows.append((name, first, statistics.median(repeated), max(repeated), opendp_own))

    header = (
        f"`bench/opendp_polars.py --runs {args.runs}`, {date.today()}, {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()}. In-process engine on "
        "PENGUIN (344 rows), server time of price + release in ms. *first*: a new shape "
        "(scale search, build, summary); *repeated*: the same shape again (median and max "
        f"of {args.runs}); *OpenDP release()*: `dp.Context` `query.release().collect()` on "
        f"the same frame, which searches the scale on every release. Engine import in a "
        f"fresh process: {import_ms:.0f} ms."
    )
    table = [
        "| shape | first | repeated (median) | repeated (max) | OpenDP release() |",
        "|---|---:|---:|---:|---:|",
    ]
    table += [f"| {n} | {f:.0f} | {m:.1f} | {x:.1f} | {o:.0f} |" for n, f, m, x, o in rows]
    section = "\n".join([header, "", *table])
    print(section)
    print(f"(bench took {time.perf_counter() - started:.0f} s)")
    if args.write:
        _write(section)


def _opendp_release_ms(build: Any, grouped: bool, data: Any, meta: dict[str, Any]) -> float:
    """OpenDP's own path: a Context on the real frame, ``release().collect()``."""
    import opendp.prelude as dp
    import polars as pl
    from opendp.extras.polars import Margin

    from chalicelib.engines.polars_engine import frame_of, max_length

    context = dp.Context.compositor(
        data=frame_of(data.frame, meta).lazy(),
        privacy_unit=dp.unit_of(contributions=1),
        privacy_loss=dp.loss_of(epsilon=1.0),
        split_evenly_over=1,
        margins=[Margin(by=[], max_length=max_length(meta))],
    )
    query = build(context.query())
    if grouped:
        query = query.with_keys(pl.LazyFrame({"sex": ["female", "male"]}))
    t0 = time.perf_counter()
    query.release().collect()
    return (time.perf_counter() - t0) * 1000


def _fresh_import_ms() -> float:
    code = (
        "import time; t=time.perf_counter(); "
        "import chalicelib.engines.polars_engine; "
        "print((time.perf_counter()-t)*1000)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def _write(section: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    title = "## OpenDP Polars (bench/opendp_polars.py)"
    block = f"{title}\n\n{section}\n"
    if title in text:
        start = text.index(title)
        end = text.find("\n## ", start + len(title))
        text = text[:start] + block + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


if __name__ == "__main__":
    main()
