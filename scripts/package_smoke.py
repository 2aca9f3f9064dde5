"""Run a built Lambda package from its unzipped folder alone, as the Lambda runtime would.

Run it with an isolated interpreter so nothing from the project's virtualenv leaks in:

    .venv/bin/python -I -S scripts/package_smoke.py --package DIR --runtime build/lambda/runtime \
        --function api --store stub

``sys.path`` becomes: the package folder, then ``--runtime`` (boto3/botocore, which the
Lambda runtime provides), then the standard library. Nothing else.

- ``--function api``: imports ``app`` (checking that the import pulls in no pandas or DP
  library), then sends one API Gateway proxy event through ``app.app``: a SmartNoise SQL
  query on dummy rows of the PENGUIN metadata (``POST /v1/datasets/PENGUIN/queries``);
  ``--replay`` sends the warm call with the same ``query_id`` (answered from the archive).
- ``--function authorizer``: calls ``app.token_authorizer`` with a TOKEN event.
- ``--store stub``: an in-process store answers the few lookups (no AWS at all);
  ``--store dynamodb``: the real DynamoDB code against ``AWS_ENDPOINT_URL`` (an emulator),
  with a record of every AWS call made (to compare with the IAM policies).

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

HEAVY = ("pandas", "numpy", "opendp", "snsql", "sqlalchemy", "fastparquet", "yaml")
METADATA = Path(__file__).resolve().parent.parent / "localstack" / "data" / "penguin.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, required=True)
    parser.add_argument("--runtime", type=Path, required=True)
    parser.add_argument("--function", choices=("api", "authorizer"), required=True)
    parser.add_argument("--store", choices=("stub", "dynamodb"), default="stub")
    parser.add_argument("--user", default="smoke-user")
    parser.add_argument("--token", help="the token to authorize (dynamodb store)")
    parser.add_argument("--dataset", default="PENGUIN")
    parser.add_argument("--real", action="store_true", help="query the private rows, not dummy")
    parser.add_argument("--query", default="SELECT COUNT(*) AS n FROM df")
    parser.add_argument("--replay", action="store_true", help="warm call: the same query_id")
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


def stub_store(user: str, token: str | None) -> Any:
    """Just enough of ``Store`` for one dummy query and one authorization."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from chalicelib.auth import hash_token
    from chalicelib.models import Dataset, Grant, PrivacyCost, Token, User

    now = datetime.now(UTC)
    budget = PrivacyCost(epsilon=Decimal(10), delta=Decimal("0.001"))
    zero = PrivacyCost(epsilon=Decimal(0), delta=Decimal(0))

    class Stub:
        def get_dataset(self, name: str) -> Dataset | None:
            import yaml  # only the API package has these two

            from chalicelib.metadata import validate

            metadata = validate(yaml.safe_load(METADATA.read_text()))
            return Dataset(name, "s3://nowhere/never-read.csv", metadata, now)

        def get_grant(self, user_id: str, dataset: str) -> Grant | None:
            return Grant(user_id, dataset, budget, zero, budget) if user_id == user else None

        def get_token(self, token_hash: str) -> Token | None:
            if token is None or token_hash != hash_token(token):
                return None
            return Token(token_hash, token_hash[:12], user, now)

        def get_user(self, user_id: str) -> User | None:
            return User(user_id, now) if user_id == user else None

        def touch_token(self, token_hash: str, used_at: datetime, resolution: object) -> bool:
            return True  # the authorizer records the last use

        def take_request(self, user_id: str, window: datetime, seconds: int, limit: int) -> bool:
            return True  # query and cost requests count against the rate limit

    return Stub()


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


def api_event(dataset: str, user: str, body: dict[str, Any]) -> dict[str, Any]:
    """An API Gateway REST proxy event, as the deployed integration sends it."""
    resource_path = "/v1/datasets/{name}/queries"
    return {
        "resource": resource_path,
        "path": f"/v1/datasets/{dataset}/queries",
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"name": dataset},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource_path,
            "httpMethod": "POST",
            "path": f"/api/v1/datasets/{dataset}/queries",
            "stage": "api",
            "apiId": "smoke",
            "authorizer": {"principalId": user},
        },
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def main() -> int:
    args = parse_args()
    sys.path[:0] = [str(args.package.resolve()), str(args.runtime.resolve())]
    calls: list[dict[str, Any]] = []
    report: dict[str, Any] = {"function": args.function, "store": args.store}

    started = time.perf_counter()
    import app

    report["import_seconds"] = round(time.perf_counter() - started, 3)
    report["heavy_after_import"] = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    if args.store == "dynamodb":
        record_aws_calls(calls)
    else:
        from chalicelib import storage

        storage.reset_store()
        storage._STORE.append(stub_store(args.user, args.token))

    if args.function == "api":
        body = {
            "engine": "smartnoise_sql",
            "query_id": f"smoke{int(time.time() * 1000)}",
            "query": args.query,
            "epsilon": 1.0,
            "delta": 1e-5,
        }
        if not args.real:
            body.update({"dummy": True, "dummy_rows": 1000, "dummy_seed": 7})
        timings = []
        response: dict[str, Any] = {}
        for attempt in range(2):  # cold, then warm
            if attempt and not args.replay:
                body["query_id"] += "w"
            started = time.perf_counter()
            response = app.app(api_event(args.dataset, args.user, body), None)
            timings.append(round(time.perf_counter() - started, 3))
        report["call_seconds"] = timings
        report["status"] = response["statusCode"]
        report["body"] = json.loads(response["body"])
    else:
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
