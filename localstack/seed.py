"""Seed a Neblina deployment: tables, bucket, demo datasets, a demo user, a grant and a token.

Uploads the demo data, then is ``neblina-admin apply localstack/demo.yaml`` (users, datasets
and grants are declared there), then issues a token. Works against whatever
``AWS_ENDPOINT_URL`` points to: the embedded emulator, LocalStack, or (only with
``--real-aws`` and no endpoint set) real AWS with your own credentials. Running it twice is
safe: the second apply changes nothing (the file is the whole desired state: users and
grants added by hand are removed, as ``plan`` shows); a new token is issued each time and
printed once.

    AWS_ENDPOINT_URL=http://127.0.0.1:4566 python localstack/seed.py --env-file .neblina/local.env
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
DEMO_FILE = HERE / "demo.yaml"
DEMO_USER = "demo-researcher"


@dataclass(frozen=True)
class SeedResult:
    """What seeding created: the demo user's token secret is only here."""

    user_id: str
    token: str
    datasets: tuple[str, ...]


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


def use_emulator_credentials() -> None:
    """Emulators accept any credentials; make sure boto3 finds some."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def seed(
    synthetic_rows: int = 200_000, user_id: str = DEMO_USER, quiet: bool = False
) -> SeedResult:
    """Upload the demo data, ``apply`` localstack/demo.yaml and issue a fresh token."""
    sys.path.insert(0, str(HERE))
    import synthetic  # localstack/synthetic.py

    from chalicelib.config import from_environ
    from chalicelib.storage.dynamo import DynamoStore
    from neblina_admin import declarative
    from neblina_admin import operations as admin

    settings = from_environ()
    store = DynamoStore(settings)
    started = time.perf_counter()
    _say(quiet, f"seed: tables with prefix {settings.table_prefix!r} ...")
    store.create_schema()
    _say(quiet, f"seed: bucket {settings.bucket} ...")
    # The datasets, and (written by the API) results too large for a record under its
    # archive/ prefix: S3 has no folders to create, the bucket is all they need.
    admin.ensure_bucket(settings, settings.bucket)
    admin.upload(
        settings, settings.bucket, "PENGUIN/penguins.csv", (DATA / "penguins.csv").read_bytes()
    )
    frame = synthetic.generate(rows=synthetic_rows)
    admin.upload(
        settings, settings.bucket, "SYNTHETIC/synthetic.parquet", synthetic.to_parquet_bytes(frame)
    )
    _say(quiet, f"seed: uploaded PENGUIN and SYNTHETIC ({synthetic_rows:,} rows)")

    desired = declarative.load(DEMO_FILE)
    for name, spec in list(desired.datasets.items()):
        source = spec.source.replace("s3://neblina-datasets/", f"s3://{settings.bucket}/", 1)
        metadata = dict(spec.metadata)
        if name == "SYNTHETIC":
            metadata["rows"] = synthetic_rows  # the public row count of what was generated
        desired.datasets[name] = replace(spec, source=source, metadata=metadata)
    if user_id != DEMO_USER:
        desired.users = {user_id: replace(desired.users[DEMO_USER], user_id=user_id)}
        desired.grants = {(user_id, d): g for (_, d), g in desired.grants.items()}
    changes = declarative.apply(store, desired, settings)
    for change in changes:
        _say(quiet, f"seed: apply {change.line().strip()}")
    if not changes:
        _say(quiet, f"seed: apply {DEMO_FILE.name}: no changes")
    issued = admin.add_token(store, user_id)
    _say(quiet, f"seed: done in {time.perf_counter() - started:.1f} s")
    return SeedResult(user_id=user_id, token=issued.secret, datasets=tuple(desired.datasets))


def write_env_file(path: Path, url: str, token: str, admin: dict[str, str] | None = None) -> None:
    """Write NEBLINA_URL and NEBLINA_TOKEN for the client (mode 600: it holds a secret).

    ``admin`` adds what ``neblina-admin`` needs to reach the same stack
    (``NEBLINA_ADMIN_ENDPOINT_URL``, ``..._TABLE_PREFIX``, ``..._BUCKET``, ``..._REGION``; see
    neblina_admin/admintarget.py); the client ignores them.
    """
    lines = ["# written by Neblina's local stack", f"NEBLINA_URL={url}", f"NEBLINA_TOKEN={token}"]
    if admin:
        lines.append(
            "# neblina-admin uses these when no AWS_ENDPOINT_URL, AWS_PROFILE or "
            "AWS_ACCESS_KEY_ID is set"
        )
        lines += [f"{key}={value}" for key, value in admin.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-rows", type=int, default=200_000)
    parser.add_argument("--user", default=DEMO_USER)
    parser.add_argument(
        "--env-file", type=Path, help="also write NEBLINA_TOKEN (and --api-url) here"
    )
    parser.add_argument("--api-url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--real-aws",
        action="store_true",
        help="allow seeding real AWS (AWS_ENDPOINT_URL unset) with your own credentials",
    )
    args = parser.parse_args(argv)
    if not os.environ.get("AWS_ENDPOINT_URL"):
        if not args.real_aws:
            print(
                "seed: AWS_ENDPOINT_URL is not set; refusing to seed real AWS without --real-aws",
                file=sys.stderr,
            )
            return 2
    else:
        use_emulator_credentials()
    if args.synthetic_rows < 100_000:
        print("seed: --synthetic-rows below 100000 (allowed, but the demo expects more)")
    result = seed(args.synthetic_rows, args.user)
    print(f"API token for {result.user_id} (shown once, only its hash is stored):")
    print(f"  {result.token}")
    if args.env_file:
        admin = None
        if os.environ.get("AWS_ENDPOINT_URL"):  # an emulator: let neblina-admin find it too
            admin = {
                "NEBLINA_ADMIN_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
                "NEBLINA_ADMIN_TABLE_PREFIX": os.environ.get("NEBLINA_TABLE_PREFIX", "neblina-"),
                "NEBLINA_ADMIN_BUCKET": os.environ.get("NEBLINA_BUCKET", "neblina-datasets"),
                "NEBLINA_ADMIN_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            }
        write_env_file(args.env_file, args.api_url, result.token, admin)
        print(f"seed: wrote {args.env_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
