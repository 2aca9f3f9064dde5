"""Measure the built Lambda packages: cold import, first and warm request, peak memory.

    .venv/bin/python scripts/package_measure.py [--synthetic-rows 1000000]

Starts the embedded emulator (free port), seeds it (PENGUIN and a SYNTHETIC dataset of
``--synthetic-rows`` rows, a demo user with grants and a token), unzips the packages of
``build/lambda/`` (front, authorizer, workers; the sql worker from its image's tree,
``build/lambda/image-sql/``) and runs each scenario in a fresh isolated
interpreter (``scripts/package_smoke.py``
against the real DynamoDB code and S3 reads), so every first request is a cold start.
The figures chose the memory sizes and timeouts in infra/terraform (see infra/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "lambda"
# The sql worker ships as a container image: its tree (scripts/package_lambda.py --image-tree).
IMAGE_TREES = {"worker-sql": "image-sql"}
# (package, label, smoke arguments, dataset, query): each worker scenario is price,
# dummy_query (and dummy_table for the sql worker), then a run on the private rows.
SCENARIOS = [
    ("authorizer", "authorizer", ("--function", "authorizer"), "PENGUIN", ""),
    ("api", "front: budget + metadata", ("--function", "api"), "PENGUIN", ""),
    (
        "worker-sql",
        "sql worker, COUNT on PENGUIN (344 rows)",
        ("--function", "worker", "--worker", "sql"),
        "PENGUIN",
        "SELECT COUNT(*) AS n FROM df",
    ),
    (
        "worker-sql",
        "sql worker, GROUP BY on SYNTHETIC",
        ("--function", "worker", "--worker", "sql"),
        "SYNTHETIC",
        "SELECT region, COUNT(*) AS n, AVG(income) AS m FROM df GROUP BY region",
    ),
    (
        "worker-opendp",
        "opendp worker, Laplace count on PENGUIN",
        ("--function", "worker", "--worker", "opendp"),
        "PENGUIN",
        "",
    ),
]


def run(package: Path, stack: object, arguments: tuple[str, ...], dataset: str, query: str) -> dict:
    command = [sys.executable, "-I", "-S", "-B", str(ROOT / "scripts" / "package_smoke.py")]
    command += ["--package", str(package), "--runtime", str(BUILD / "runtime"), *arguments]
    command += ["--store", "dynamodb", "--dataset", dataset]
    command += ["--user", stack.user_id, "--token", stack.token]  # type: ignore[attr-defined]
    if query:
        command += ["--query", query]
    env = {
        key: value
        for key, value in stack.env().items()  # type: ignore[attr-defined]
        if key.startswith(("AWS_", "NEBLINA_")) or key == "PATH"
    }
    if "worker" in arguments:
        env["NEBLINA_WORKER"] = arguments[arguments.index("--worker") + 1]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"measure: {arguments} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "localstack"))
    sys.path.insert(0, str(ROOT))
    from stack import LocalStack

    with tempfile.TemporaryDirectory() as tmp:
        packages = {}
        for name in sorted({scenario[0] for scenario in SCENARIOS}):
            if name in IMAGE_TREES:  # an image worker: the tree its image installs
                packages[name] = BUILD / IMAGE_TREES[name]
                if not packages[name].is_dir():
                    raise SystemExit(
                        f"measure: no {packages[name]}: run scripts/package_lambda.py "
                        f"--image-tree {name.removeprefix('worker-')}"
                    )
                continue
            packages[name] = Path(tmp) / name
            with zipfile.ZipFile(BUILD / f"{name}.zip") as archive:
                archive.extractall(packages[name])
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        with LocalStack(synthetic_rows=args.synthetic_rows, quiet=True) as stack:
            print(
                f"| scenario ({args.synthetic_rows:,} SYNTHETIC rows) | import s | calls s "
                "(first, then each next) | peak RSS MB |"
            )
            print("|---|---|---|---|")
            for name, label, arguments, dataset, query in SCENARIOS:
                report = run(packages[name], stack, arguments, dataset, query)
                calls = report["call_seconds"]
                status = report.get("ok", report.get("status", report.get("effects")))
                print(
                    f"| {label} | {report['import_seconds']} | {', '.join(map(str, calls))} | "
                    f"{report['max_rss_mb']} |  <!-- {status} -->",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
