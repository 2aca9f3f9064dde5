"""The hop to the engine workers, and async queries, measured on the local stack.

    .venv/bin/python bench/workers.py [--runs 60] [--jobs 20] [--users 4]

Starts the local stack (emulator, one worker process per engine family, the API server that
reaches them through boto3's Lambda invoke), plus a second API server on the same tables
with ``NEBLINA_WORKERS=inprocess`` (the engines in the API's own process: the shape before
the split). Then, in the same run:

1. warm PENGUIN ``COUNT(*)`` over HTTP through the real client, alternating between the two
   servers query by query (so load on the machine hits both alike): p50/p90 of each and
   the difference, the hop's cost (target: at most +15 ms);
2. submit-to-202: the time of ``POST .../queries`` with ``"wait": false`` (target: p50 at
   most 50 ms);
3. ``--jobs`` async queries from ``--users`` users sent at once (one thread per query),
   then polled until settled: all must be ``done`` and each user's spend exactly its
   queries' costs.

Prints a Markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "localstack")]

COUNT = "SELECT COUNT(*) AS n FROM df"
EPSILON = 0.5


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--users", type=int, default=4)
    args = parser.parse_args()

    import httpx
    from stack import LocalStack, _stop_process, _wait_for_health, spawn

    from neblina_admin import operations as admin
    from neblina_client import Client

    with LocalStack(synthetic_rows=1_000, quiet=True) as stack:
        os.environ.update(stack.env())
        from chalicelib.config import get_settings
        from chalicelib.storage import get_store, reset_store

        get_settings.cache_clear()
        reset_store()
        store = get_store()
        inprocess_url, inprocess = spawn(
            "api-inprocess",
            "apiserver.py",
            0,
            {**stack.env(), "NEBLINA_WORKERS": "inprocess"},
            stack.log_dir,
        )
        try:
            _wait_for_health(inprocess_url, timeout=60)
            tokens = []
            users = []
            for _ in range(max(1, args.users)):
                user = f"bench-{uuid.uuid4().hex[:6]}"
                admin.add_user(store, user)
                admin.grant(store, user, "PENGUIN", epsilon="1000000", delta="0.5")
                tokens.append(admin.add_token(store, user).secret)
                users.append(user)
            token = tokens[0]

            # 1. warm COUNT through the hop vs in-process, alternating
            timings: dict[str, list[float]] = {"front + worker": [], "in-process": []}
            urls = {"front + worker": stack.api_url, "in-process": inprocess_url}
            clients = {
                name: Client(url=url, token=token, dataset="PENGUIN") for name, url in urls.items()
            }
            for client in clients.values():
                for _ in range(5):
                    client.sql.query(COUNT, EPSILON, 0)
            for _ in range(args.runs):
                for name, client in clients.items():
                    start = time.perf_counter()
                    client.sql.query(COUNT, EPSILON, 0)
                    timings[name].append((time.perf_counter() - start) * 1000)
            for client in clients.values():
                client.close()

            # 2. submit-to-202, on both servers alternating; GET /budget and a bare Event
            # invoke of the SQL worker for scale
            submits: dict[str, list[float]] = {name: [] for name in urls}
            locations: list[tuple[str, str]] = []
            headers = {"Authorization": f"Bearer {token}"}
            body = {"engine": "smartnoise_sql", "query": COUNT, "epsilon": EPSILON, "delta": 0}
            budget: list[float] = []
            invoke: list[float] = []
            lam = lambda_client(stack.workers["sql"])
            for _ in range(args.runs):
                for name, url in urls.items():
                    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
                        query_id = uuid.uuid4().hex
                        start = time.perf_counter()
                        answer = http.post(
                            "/v1/datasets/PENGUIN/queries",
                            json={**body, "query_id": query_id, "wait": False},
                        )
                        submits[name].append((time.perf_counter() - start) * 1000)
                        assert answer.status_code == 202, answer.text
                        locations.append((token, answer.headers["Location"]))
                        # the job runs on the same (single-threaded) emulator: let it
                        # settle, so that this times the front's own work
                        wait_all(url, locations[-1:])
                        start = time.perf_counter()
                        assert http.get("/v1/datasets/PENGUIN/budget").status_code == 200
                        budget.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                lam.invoke(FunctionName="neblina-worker-sql", InvocationType="Event", Payload=b"{}")
                invoke.append((time.perf_counter() - start) * 1000)

            # 3. concurrent async queries from several users
            before = {u: store.get_grant(u, "PENGUIN") for u in users}
            accepted: list[tuple[str, str]] = []
            errors: list[str] = []

            def send(n: int) -> None:
                user_token = tokens[n % len(tokens)]
                with httpx.Client(
                    base_url=stack.api_url,
                    headers={"Authorization": f"Bearer {user_token}"},
                    timeout=120,
                ) as http:
                    answer = http.post(
                        "/v1/datasets/PENGUIN/queries",
                        json={**body, "query_id": uuid.uuid4().hex, "wait": False},
                    )
                if answer.status_code != 202:
                    errors.append(answer.text)
                else:
                    accepted.append((user_token, answer.headers["Location"]))

            started = time.perf_counter()
            threads = [threading.Thread(target=send, args=(n,)) for n in range(args.jobs)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            all_202 = (time.perf_counter() - started) * 1000
            states = wait_all(stack.api_url, accepted + locations)
            all_done = (time.perf_counter() - started) * 1000
            done = sum(1 for s in states if s == "done")
            exact = True
            for n, user in enumerate(users):
                grant = store.get_grant(user, "PENGUIN")
                assert grant is not None and before[user] is not None
                sent = sum(1 for j in range(args.jobs) if j % len(users) == n)
                spent = grant.spent.epsilon - before[user].spent.epsilon  # type: ignore[union-attr]
                exact = exact and spent == Decimal(str(EPSILON)) * sent
        finally:
            _stop_process(inprocess.pid)

    hop = statistics.median(timings["front + worker"]) - statistics.median(timings["in-process"])
    print(
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()}. Date: {date.today().isoformat()}. Local stack (moto emulator, "
        f"worker processes behind the Lambda Invoke API); {args.runs} queries per row, "
        "alternating between the two servers; milliseconds.\n"
    )
    print("| PENGUIN `COUNT(*)`, warm, over HTTP | p50 | p90 |")
    print("|---|---:|---:|")
    for name, values in timings.items():
        print(f"| {name} | {pct(values, 0.5):.1f} | {pct(values, 0.9):.1f} |")
    print(f"\nThe hop costs {hop:+.1f} ms at the median (target: at most +15 ms).\n")
    print('| submit to 202 (`"wait": false`), each once the previous job settled | p50 | p90 |')
    print("|---|---:|---:|")
    for name, values in submits.items():
        print(f"| {name} | {pct(values, 0.5):.1f} | {pct(values, 0.9):.1f} |")
    print(
        f"\nTarget: p50 at most 50 ms. For scale, in the same run: `GET /budget` p50 "
        f"{pct(budget, 0.5):.1f} ms (authorizer + dataset and grant reads on the emulator); a "
        f"bare `Event` invoke of the SQL worker (boto3 -> workerserver, 202) p50 "
        f"{pct(invoke, 0.5):.1f} ms.\n"
    )
    print(
        f"{args.jobs} async queries from {len(users)} users sent at once: all 202 after "
        f"{all_202:.0f} ms; {done} of {len(states)} jobs done (with the {len(locations)} "
        f"above) after {all_done:.0f} ms; each user's spend exactly its queries' costs: "
        f"{'yes' if exact else 'NO'}; refused submissions: {len(errors)}."
    )


def lambda_client(url: str) -> Any:
    """boto3's Lambda client for a local worker process."""
    import boto3

    return boto3.client(
        "lambda",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def wait_all(api_url: str, jobs: list[tuple[str, str]], timeout: float = 600) -> list[str]:
    """Poll every job's record until it is settled; their states."""
    import httpx

    states: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=api_url, timeout=60) as http:
        while len(states) < len(jobs) and time.monotonic() < deadline:
            for n, (token, location) in enumerate(jobs):
                if n in states:
                    continue
                record: dict[str, Any] = http.get(
                    location, headers={"Authorization": f"Bearer {token}"}
                ).json()
                if record["state"] != "running":
                    states[n] = record["state"]
            time.sleep(0.1)
    return [states.get(n, "running") for n in range(len(jobs))]


if __name__ == "__main__":
    main()
