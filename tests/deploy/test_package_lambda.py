"""The Lambda packages: they fit, and they work from their unzipped folders alone.

The packages are built by ``make package`` (scripts/package_lambda.py); these tests build
them first only when an input changed since the last build (``--if-stale``: about a minute
from scratch, nothing when up to date), so ``make test`` and CI cover them too. Each
package is then unzipped and run in an isolated interpreter (``python -I -S``) whose
``sys.path`` is the package plus the runtime-provided boto3/botocore, nothing else.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from stackenv import emulator_env

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "lambda"
SMOKE = ROOT / "scripts" / "package_smoke.py"
LIMIT = 262_144_000  # Lambda: 250 MB unzipped
HEAVY = {"pandas", "numpy", "opendp", "snsql", "sqlalchemy", "fastparquet"}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package_lambda.py"), "--if-stale"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document: dict[str, Any] = json.loads((BUILD / "manifest.json").read_text())
    return document


@pytest.fixture(scope="module")
def unzipped(manifest: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name in ("api", "authorizer"):
        target = tmp_path_factory.mktemp(f"lambda-{name}")
        with zipfile.ZipFile(ROOT / manifest[name]["zip"]) as archive:
            archive.extractall(target)
        out[name] = target
    return out


def smoke(package: Path, function: str, *args: str, env: dict[str, str] | None = None) -> dict:
    command = [sys.executable, "-I", "-S", "-B", str(SMOKE), "--package", str(package)]
    command += ["--runtime", str(BUILD / "runtime"), "--function", function, *args]
    result = subprocess.run(
        command, capture_output=True, text=True, env=env or {}, check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def test_api_package_fits_the_zip_limit(manifest: dict[str, Any], unzipped: dict) -> None:
    api = manifest["api"]
    on_disk = sum(p.stat().st_size for p in unzipped["api"].rglob("*") if p.is_file())
    assert on_disk == api["unzipped_bytes"]
    assert api["unzipped_bytes"] <= LIMIT, f"{api['unzipped_bytes']:,} bytes unzipped"
    tops = {p.name for p in unzipped["api"].iterdir()}
    assert not tops & {"boto3", "botocore"}, "the runtime provides boto3/botocore"
    assert (unzipped["api"] / "chalice" / "app.py").exists()
    assert not (unzipped["api"] / "chalice" / "cli").exists(), "only Chalice's runtime ships"
    assert not tops & {"neblina_admin", "typer", "click", "rich"}, "the admin never ships"


def test_authorizer_package_is_small_and_has_no_dp_library(
    manifest: dict[str, Any], unzipped: dict
) -> None:
    assert manifest["authorizer"]["unzipped_bytes"] < 5_000_000
    tops = {p.name.split("-")[0] for p in unzipped["authorizer"].iterdir()}
    assert not tops & HEAVY
    assert "pynamodb" in tops


def test_slimmed_api_package_imports_and_answers_a_query(unzipped: dict) -> None:
    report = smoke(unzipped["api"], "api", "--store", "stub")
    assert report["status"] == 200, report
    records = report["body"]["result"]["records"]
    assert report["body"]["dummy"] is True
    assert isinstance(records[0]["n"], int) and records[0]["n"] > 0
    assert report["heavy_after_import"] == [], "importing app.py must stay light"
    assert report["modules_from_elsewhere"] == []
    assert {"pandas", "snsql", "opendp"} <= set(report["heavy_at_end"])


def test_api_package_serves_the_openapi_document_without_pydantic(unzipped: dict) -> None:
    script = (
        "import json, sys; import app; body = app.openapi().body; "
        "print(json.dumps([body['info']['version'], len(body['paths']), "
        "sorted(m for m in sys.modules if m.startswith(('pydantic', 'chalicelib.api_models')))]))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", f"import sys; sys.path[:0] = [sys.argv[1]]; {script}",
         str(unzipped["api"])],
        capture_output=True, text=True, check=False, timeout=120, cwd=unzipped["api"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    version, paths, loaded = json.loads(result.stdout.splitlines()[-1])
    assert version and paths >= 9 and loaded == []
    assert not (unzipped["api"] / "chalicelib" / "api_models.py").exists(), "build time only"


def test_authorizer_package_authorizes_from_its_unzipped_folder(unzipped: dict) -> None:
    token = "nbl_" + "A" * 43
    report = smoke(unzipped["authorizer"], "authorizer", "--store", "stub", "--token", token)
    assert report["effects"] == ["Allow"] and report["principal"] == "smoke-user"
    assert report["heavy_at_end"] == [] and report["modules_from_elsewhere"] == []


# --- against the emulator: the real DynamoDB/S3 code, and the IAM policies ----------------
def allowed_operations(policy: str) -> set[tuple[str, str]]:
    """{(action, resource)} granted by one of the module's IAM policy documents, with table
    and bucket references turned into kinds ("table:grants", "index:queries/by_owner")."""
    from test_infra_terraform import MODULE, parse, statements

    allowed = set()
    for statement in statements(parse(MODULE), policy):
        for resource in statement["resources"]:
            table = re.search(
                r'aws_dynamodb_table\.neblina\["(\w+)"\]\.arn\}(/index/(\w+))?', resource
            )
            bucket = re.search(r'aws_s3_bucket\.neblina\["(\w+)"\]\.arn\}/([\w/-]*)\*', resource)
            if table and table.group(3):
                name = f"index:{table.group(1)}/{table.group(3)}"
            elif table:
                name = f"table:{table.group(1)}"
            elif bucket:  # "bucket:datasets/" (any key) or "bucket:datasets/archive/"
                name = f"bucket:{bucket.group(1)}/{bucket.group(2)}"
            else:
                continue
            allowed.update((action, name) for action in statement["actions"])
    return allowed


TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
S3_ACTIONS = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
}


def needed_operations(calls: list[dict], prefix: str, bucket: str) -> set[tuple[str, str]]:
    """The IAM (action, resource kind) pairs that recorded AWS calls need."""
    needed = set()
    for call in calls:
        for resource in call["resources"]:
            if call["service"] == "s3":
                assert resource.startswith(f"{bucket}/"), resource
                key = resource.removeprefix(f"{bucket}/")
                needed.add((S3_ACTIONS[call["operation"]], f"bucket:datasets/{key}"))
            elif ":" in resource:  # a TransactWriteItems part: "Update:<table>"
                part, table = resource.split(":", 1)
                action = f"dynamodb:{TRANSACT_ACTIONS[part]}"
                needed.add((action, f"table:{table.removeprefix(prefix)}"))
            elif "/index/" in resource:
                table, index = resource.split("/index/")
                needed.add(
                    (f"dynamodb:{call['operation']}", f"index:{table.removeprefix(prefix)}/{index}")
                )
            elif call["operation"] != "Query" or "/index/" not in " ".join(call["resources"]):
                needed.add(
                    (f"dynamodb:{call['operation']}", f"table:{resource.removeprefix(prefix)}")
                )
    return needed


@pytest.mark.stack
def test_packages_work_against_the_emulator_within_their_iam_policies(
    stack: Any, make_researcher: Any, unzipped: dict
) -> None:
    researcher = make_researcher({"PENGUIN": ("10", "0.001")})
    env = emulator_env(stack.emulator_url, stack.table_prefix)
    common = ["--store", "dynamodb", "--user", researcher.user_id, "--token", researcher.token]

    authorizer = smoke(unzipped["authorizer"], "authorizer", *common, env=env)
    assert authorizer["effects"] == ["Allow"]
    assert authorizer["principal"] == researcher.user_id

    dummy = smoke(unzipped["api"], "api", *common, env=env)
    real = smoke(unzipped["api"], "api", *common, "--real", env=env)
    assert dummy["status"] == 200 and dummy["body"]["dummy"] is True
    assert real["status"] == 200 and real["body"]["dummy"] is False, real["body"]
    assert real["body"]["result"]["records"][0]["n"] > 0
    # every result archived in S3 (written, then read back by the replay)
    archived_env = {**env, "NEBLINA_INLINE_RESULT_BYTES": "0"}
    archived = smoke(unzipped["api"], "api", *common, "--real", "--replay", env=archived_env)
    assert archived["status"] == 200 and archived["body"]["replayed"] is True, archived["body"]
    assert {"PutObject", "GetObject"} <= {c["operation"] for c in archived["aws_calls"]}

    prefix, bucket = stack.table_prefix, env["NEBLINA_BUCKET"]
    runs = ((authorizer, "authorizer"), (dummy, "api"), (real, "api"), (archived, "api"))
    for report, policy in runs:
        needed = needed_operations(report["aws_calls"], prefix, bucket)
        assert needed, f"{policy}: no AWS call recorded"
        allowed = allowed_operations(policy)
        missing = {
            (action, resource)
            for action, resource in needed
            if not any(  # an object resource is covered by a statement on its prefix
                action == granted
                and (resource == kind or (kind.startswith("bucket:") and resource.startswith(kind)))
                for granted, kind in allowed
            )
        }
        assert not missing, f"the {policy} role lacks {sorted(missing)}"
