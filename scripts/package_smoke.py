"""Run a built Lambda package from its unzipped folder alone, as the Lambda runtime would.

Run it with an isolated interpreter so nothing from the project's virtualenv leaks in:

    .venv/bin/python -I -S scripts/package_smoke.py --package DIR --runtime build/lambda/runtime \
        --function api --store stub

``sys.path`` becomes: the package folder, then ``--runtime`` (boto3/botocore, which the
Lambda runtime provides), then the standard library. Nothing else.

- ``--function api`` (the front): imports ``app`` (checking that the import pulls in no
  pandas or DP library), then sends API Gateway proxy events through ``app.app``:
  ``GET /v1/datasets/PENGUIN/budget`` and ``GET .../metadata`` (the front alone: no worker),
  and with ``--get-query ID`` ``GET .../queries/ID`` (a release a worker archived, perhaps
  in S3).
- ``--function authorizer``: calls ``app.token_authorizer`` with a TOKEN event.
- ``--function worker --worker sql|opendp``: calls ``chalicelib.worker.lambda_handler``
  with the operations the front sends it (``price``, ``dummy_query``, ``dummy_table`` for
  the dummy worker, and ``run`` in sync mode for a reserved record), for the engine of that
  worker: a COUNT on PENGUIN (SmartNoise SQL) or a Laplace count (an OpenDP pipeline built
  with the package's own OpenDP). For sql, the report says where SmartNoise's rewritten
  query ran (``sql_executor``: ``duckdb``, or ``sqlite`` when DuckDB is not installed).
- ``--store stub``: an in-process store answers the few lookups and records the writes
  (no AWS at all; the worker's ``run`` reads ``localstack/data/penguins.csv``);
  ``--store dynamodb``: the real DynamoDB and S3 code against ``AWS_ENDPOINT_URL`` (an
  emulator), with a record of every AWS call the function made (to compare with its IAM
  policy). For a worker, the smoke first reserves the record as the front would (those
  calls are the front's, not recorded).

Prints one JSON line: status, timings, peak memory, the AWS calls.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

HEAVY = ("pandas", "numpy", "opendp", "snsql", "sqlalchemy", "fastparquet", "yaml", "duckdb")
ROOT = Path(__file__).resolve().parent.parent
# penguin.yaml as JSON, written by scripts/package_lambda.py (no package ships PyYAML for it)
METADATA = ROOT / "build" / "lambda" / "penguin-metadata.json"
ROWS = ROOT / "localstack" / "data" / "penguins.csv"
ENGINES = {"sql": "smartnoise_sql", "opendp": "opendp"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, required=True)
    parser.add_argument("--runtime", type=Path, required=True)
    parser.add_argument("--function", choices=("api", "authorizer", "worker"), required=True)
    parser.add_argument("--worker", choices=sorted(ENGINES), help="the worker's family")
    parser.add_argument("--metadata", type=Path, default=METADATA, help="PENGUIN's, as JSON")
    parser.add_argument("--store", choices=("stub", "dynamodb"), default="stub")
    parser.add_argument("--user", default="smoke-user")
    parser.add_argument("--token", help="the token to authorize (dynamodb store)")
    parser.add_argument("--dataset", default="PENGUIN")
    parser.add_argument("--query", default="SELECT COUNT(*) AS n FROM df")
    parser.add_argument("--get-query", help="api: also GET this archived query (its release)")
    parser.add_argument("--list-modules", action="store_true", help="report every module file")
    return parser.parse_args()


def record_aws_calls(calls: list[dict[str, Any]]) -> None:
    """Remember (service, operation, tables/bucket) of every botocore call."""
    from botocore.client import BaseClient

    original = BaseClient._make_api_call

    def recording(self: Any, operation: str, params: dict[str, Any]) -> Any:
        resources: set[str] = set()
        if "TableName" in params:
            resources.add(params["TableName"])
        if "IndexName" in params:
            resources.add(f"{params['TableName']}/index/{params['IndexName']}")
        for item in params.get("TransactItems", []):
            for action, body in item.items():
                resources.add(f"{action}:{body['TableName']}")
        if "Bucket" in params:
            resources.add(f"{params['Bucket']}/{params.get('Key', '')}")
        calls.append(
            {
                "service": self.meta.service_model.service_name,
                "operation": operation,
                "resources": sorted(resources),
            }
        )
        return original(self, operation, params)

    BaseClient._make_api_call = recording  # type: ignore[method-assign]


def penguin(args: argparse.Namespace, source: str) -> Any:
    """The PENGUIN dataset as the front reads it from the store (metadata from JSON)."""
    from datetime import UTC, datetime

    from chalicelib.models import Dataset

    metadata = json.loads(args.metadata.read_text())
    try:  # as the admin stored it (the front does not ship the validator)
        from chalicelib.metadata import validate

        metadata = validate(metadata)
    except ImportError:
        pass
    return Dataset(args.dataset, source, metadata, datetime.now(UTC))


def stub_store(args: argparse.Namespace) -> Any:
    """Just enough of ``Store`` for the front's reads, one authorization and a worker's
    writes (which it keeps in ``writes``)."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from chalicelib.models import Grant, PrivacyCost, Token, User

    now = datetime.now(UTC)
    budget = PrivacyCost(epsilon=Decimal(10), delta=Decimal("0.001"))
    zero = PrivacyCost(epsilon=Decimal(0), delta=Decimal(0))
    user, token = args.user, args.token

    class Stub:
        def __init__(self) -> None:
            self.writes: list[dict[str, Any]] = []

        def get_dataset(self, name: str) -> Any:
            return penguin(args, "s3://nowhere/never-read.csv")

        def get_grant(self, user_id: str, dataset: str) -> Grant | None:
            return Grant(user_id, dataset, budget, zero, budget) if user_id == user else None

        def get_cap(self, dataset: str) -> None:
            return None

        def get_token(self, token_hash: str) -> Token | None:
            from chalicelib.auth import hash_token  # the authorizer's (not in a worker)

            if token is None or token_hash != hash_token(token):
                return None
            return Token(token_hash, token_hash[:12], user, now)

        def get_user(self, user_id: str) -> User | None:
            return User(user_id, now) if user_id == user else None

        def touch_token(self, token_hash: str, used_at: datetime, resolution: object) -> bool:
            return True  # the authorizer records the last use

        def take_request(self, user_id: str, window: datetime, seconds: int, limit: int) -> bool:
            return True  # query and cost requests count against the rate limit

        def claim(self, query_id: str, now: datetime) -> None:
            return None

        def set_progress(self, query_id: str, phase: str, progress: float | None) -> None:
            self.writes.append({"op": "set_progress", "phase": phase})

        def finish(self, query_id: str, state: Any, finished_at: datetime, **kw: Any) -> None:
            self.writes.append({"op": "finish", "state": str(state.value), **kw})

        def refund(self, record: Any, finished_at: datetime, error: dict[str, str]) -> None:
            self.writes.append({"op": "refund", "error": error})

    return Stub()


def install_stub(args: argparse.Namespace) -> Any:
    from chalicelib import storage

    stub = stub_store(args)
    storage.reset_store()
    storage._STORE.append(stub)
    return stub


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: ``ru_maxrss`` survives exec on Linux,
    so a child started by a big parent would report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def api_event(
    dataset: str,
    user: str,
    body: dict[str, Any] | None,
    method: str = "POST",
    route: str = "queries",
    query_id: str | None = None,
) -> dict[str, Any]:
    """An API Gateway REST proxy event, as the deployed integration sends it."""
    resource_path = f"/v1/datasets/{{name}}/{route}"
    path = f"/v1/datasets/{dataset}/{route}"
    parameters = {"name": dataset}
    if query_id is not None:
        resource_path += "/{query_id}"
        path += f"/{query_id}"
        parameters["query_id"] = query_id
    headers = {"Content-Type": "application/json"} if body is not None else {}
    return {
        "resource": resource_path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": parameters,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource_path,
            "httpMethod": method,
            "path": f"/api{path}",
            "stage": "api",
            "apiId": "smoke",
            "authorizer": {"principalId": user},
        },
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
    }


def front_calls(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """GET budget, metadata (and an archived query) through ``app.app``: the front alone.

    As on Lambda, ``NEBLINA_WORKERS`` names the workers (Terraform sets it; here the names
    are never called): unset, the front would run the engines in-process, which its
    package cannot.
    """
    import os

    import app

    workers = {family: {"function": f"smoke-worker-{family}"} for family in ENGINES}
    os.environ.setdefault("NEBLINA_WORKERS", json.dumps(workers))
    timings, answers = [], {}
    calls = [("budget", "budget", None), ("metadata", "metadata", None)]
    if args.get_query:
        calls.append(("query", "queries", args.get_query))
    for name, route, query_id in calls:
        event = api_event(args.dataset, args.user, None, method="GET", route=route,
                          query_id=query_id)  # fmt: skip
        started = time.perf_counter()
        response = app.app(event, None)
        timings.append(round(time.perf_counter() - started, 3))
        answers[name] = {"status": response["statusCode"], "body": json.loads(response["body"])}
    report["call_seconds"] = timings
    report["status"] = answers["budget"]["status"]
    report["answers"] = answers


def authorizer_call(args: argparse.Namespace, report: dict[str, Any]) -> None:
    import app

    event = {
        "type": "TOKEN",
        "authorizationToken": f"Bearer {args.token}",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:smoke/api/GET/v1/datasets",
    }
    started = time.perf_counter()
    policy = app.token_authorizer(event, None)
    report["call_seconds"] = [round(time.perf_counter() - started, 3)]
    report["principal"] = policy.get("principalId")
    statements = policy.get("policyDocument", {}).get("Statement", [])
    report["effects"] = sorted({s.get("Effect") for s in statements})


def worker_body(args: argparse.Namespace, query_id: str) -> dict[str, Any]:
    """The request document of a query for this worker's engine."""
    engine = ENGINES[args.worker]
    if engine == "opendp":
        import opendp.prelude as dp

        dp.enable_features("contrib")
        columns = list(json.loads(args.metadata.read_text())["columns"])
        count = (
            dp.t.make_split_dataframe(separator=",", col_names=columns)
            >> dp.t.make_select_column(key="species", TOA=str)
            >> dp.t.then_count()
            >> dp.m.then_laplace(2.0)
        )
        return {"engine": engine, "query_id": query_id, "pipeline": dp.serialize(count)}
    body = {"engine": engine, "query_id": query_id, "query": args.query}
    return {**body, "epsilon": 1.0, "delta": 1e-5}


def worker_calls(args: argparse.Namespace, report: dict[str, Any], start_recording: Any) -> None:
    """price, dummy_query (and dummy_table), then a sync run of a record reserved first."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from chalicelib import hop, worker
    from chalicelib.models import PrivacyCost, QueryRecord, QueryState
    from chalicelib.workers import DUMMY_WORKER

    engine = ENGINES[args.worker]
    query_id = f"smoke{int(time.time() * 1000)}{args.worker}"
    body = worker_body(args, query_id)
    if args.store == "stub":
        dataset = penguin(args, str(ROWS))
    else:
        from chalicelib.storage import get_store

        dataset = get_store().get_dataset(args.dataset)
    wire = hop.dataset_to_wire(dataset)
    operations: list[tuple[str, dict[str, Any]]] = [
        ("price", {"op": "price", "engine": engine, "dataset": wire, "body": body}),
        ("dummy_query", {"op": "dummy_query", "engine": engine, "dataset": wire, "body": body,
                         "rows": 1000, "seed": 7}),
    ]  # fmt: skip
    if args.worker == DUMMY_WORKER:
        operations.append(
            ("dummy_table", {"op": "dummy_table", "dataset": wire, "rows": 20, "seed": 7})
        )
    answers: dict[str, Any] = {}
    timings = []
    for name, payload in operations:
        started = time.perf_counter()
        answers[name] = worker.lambda_handler(payload, None)
        timings.append(round(time.perf_counter() - started, 3))
    price = answers["price"]
    if price.get("ok"):
        now = datetime.now(UTC)
        record = QueryRecord(
            query_id=query_id,
            user_id=args.user,
            dataset=args.dataset,
            engine=engine,
            payload_hash="smoke",
            request={"engine": engine, **price["canonical"]},
            cost=PrivacyCost(
                epsilon=Decimal(price["cost"]["epsilon"]), delta=Decimal(price["cost"]["delta"])
            ),
            state=QueryState.RUNNING,
            created_at=now,
            lease_expires_at=now + timedelta(minutes=15),
        )
        if args.store == "dynamodb":
            from chalicelib.storage import get_store

            get_store().reserve(record)  # the front's debit, before the hop
        start_recording()
        payload = {"op": "run", "mode": "sync", "dataset": wire, "body": body,
                   "record": hop.record_to_wire(record)}  # fmt: skip
        started = time.perf_counter()
        answers["run"] = worker.lambda_handler(payload, None)
        timings.append(round(time.perf_counter() - started, 3))
    report["call_seconds"] = timings
    report["answers"] = answers
    if engine == "smartnoise_sql":  # where SmartNoise's rewritten SQL ran: duckdb or sqlite
        from chalicelib.engines import smartnoise_engine

        report["sql_executor"] = smartnoise_engine.DEFAULT_EXECUTOR
        report["duckdb_used"] = "duckdb" in sys.modules
    report["ok"] = {name: answer.get("ok") for name, answer in answers.items()}


def main() -> int:
    args = parse_args()
    sys.path[:0] = [str(args.package.resolve()), str(args.runtime.resolve())]
    calls: list[dict[str, Any]] = []
    report: dict[str, Any] = {"function": args.function, "store": args.store}

    started = time.perf_counter()
    if args.function == "worker":
        import chalicelib.worker  # noqa: F401
    else:
        import app  # noqa: F401
    report["import_seconds"] = round(time.perf_counter() - started, 3)
    report["heavy_after_import"] = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    stub = install_stub(args) if args.store == "stub" else None

    def start_recording() -> None:
        if args.store == "dynamodb":
            record_aws_calls(calls)

    if args.function == "api":
        start_recording()
        front_calls(args, report)
    elif args.function == "authorizer":
        start_recording()
        authorizer_call(args, report)
    else:
        worker_calls(args, report, start_recording)
        if stub is not None:
            report["writes"] = stub.writes

    report["heavy_at_end"] = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    outside = sorted(
        {
            Path(m.__file__).resolve().as_posix()
            for m in list(sys.modules.values())
            if getattr(m, "__file__", None)
            and "site-packages" in str(m.__file__)
            and not Path(m.__file__).resolve().is_relative_to(args.package.resolve())
            and not Path(m.__file__).resolve().is_relative_to(args.runtime.resolve())
        }
    )
    report["modules_from_elsewhere"] = outside
    if args.list_modules:
        report["module_files"] = sorted(
            str(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)
        )
    report["max_rss_mb"] = peak_rss_mb()
    report["aws_calls"] = calls
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
