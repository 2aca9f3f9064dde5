"""The Lambda packages: they fit, and they work from their unzipped folders alone.

The packages are built by ``make package`` (scripts/package_lambda.py, one per entry of its
``FUNCTIONS`` table: the front ``api``, the ``authorizer``, one ``worker-<family>`` per
engine family); these tests build them first only when an input changed since the last
build (``--if-stale``: a minute or two from scratch, nothing when up to date), so
``make test`` and CI cover them too. Each package is then unzipped and run in an isolated
interpreter (``python -I -S``) whose ``sys.path`` is the package plus the runtime-provided
boto3/botocore, nothing else.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from stackenv import emulator_env

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # package_lambda: the table of packages
BUILD = ROOT / "build" / "lambda"
SMOKE = ROOT / "scripts" / "package_smoke.py"
LIMIT = 262_144_000  # Lambda: 250 MB unzipped
HEAVY = {"pandas", "numpy", "opendp", "snsql", "sqlalchemy", "fastparquet", "polars", "duckdb"}
FRONT = ("api", "authorizer")
WORKERS = ("opendp",)  # chalicelib/workers.py's zipped families, one package each
# The sql worker is deployed from its container image (IMAGE_WORKERS): it runs DuckDB.
IMAGE_LIMIT = 10_737_418_240  # Lambda: a 10 GiB image
BASE_IMAGE_ALLOWANCE = 1_000_000_000  # public.ecr.aws/lambda/python:3.12 is ~0.6 GB


def package_names() -> list[str]:
    from package_lambda import FUNCTIONS

    return [package.name for package in FUNCTIONS]


def image_workers() -> dict[str, str]:
    """Families deployed from a container image (too large for a zip), and their requirements."""
    from package_lambda import IMAGE_WORKERS

    return dict(IMAGE_WORKERS)


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
def sql_image(manifest: dict[str, Any]) -> Path:
    """What the sql worker's image installs (Dockerfile.worker's pip install), without Docker."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package_lambda.py"), "--image-tree", "sql"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return BUILD / "image-sql"


@pytest.fixture(scope="module")
def worker_folders(unzipped: dict[str, Path], sql_image: Path) -> dict[str, Path]:
    """Each worker family's deployed code: its unzipped zip, or its image's installed tree."""
    return {"sql": sql_image, **{family: unzipped[f"worker-{family}"] for family in WORKERS}}


@pytest.fixture(scope="module")
def unzipped(manifest: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, summary in manifest["functions"].items():
        target = tmp_path_factory.mktemp(f"lambda-{name}")
        with zipfile.ZipFile(ROOT / summary["zip"]) as archive:
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


def tops(folder: Path) -> set[str]:
    return {p.name.split("-")[0] for p in folder.iterdir()}


def test_the_table_builds_the_front_its_authorizer_and_one_zip_per_zipped_worker(
    manifest: dict[str, Any],
) -> None:
    from chalicelib.workers import families

    zipped = families() - set(image_workers())
    expected = {*FRONT, *(f"worker-{family}" for family in zipped)}
    assert set(package_names()) == expected == set(manifest["functions"])
    assert set(WORKERS) == zipped
    for requirements in image_workers().values():  # infra/docker/Dockerfile.worker's input
        assert (ROOT / requirements).is_file()


def test_every_family_running_duckdb_sql_is_deployed_from_an_image_that_installs_duckdb() -> None:
    # A zip cannot hold DuckDB beside SmartNoise, OpenDP, pandas and NumPy; a family whose
    # engine routes SQL to DuckDB must not be a zip, or it silently falls back to SQLite.
    from package_lambda import ENGINE_MODULES, image_requirements

    pins = (ROOT / "requirements-columnar.txt").read_text()
    (duckdb_pin,) = re.findall(r"^duckdb==[\w.]+$", pins, re.MULTILINE)
    families = [f for f, modules in ENGINE_MODULES.items() if "duckdb_sql.py" in modules]
    assert families == ["sql"]
    assert "worker-sql" not in package_names()
    assert "sql" in image_workers()
    installed = "\n".join(path.read_text() for path in image_requirements("sql"))
    assert re.search(rf"^{re.escape(duckdb_pin)}$", installed, re.MULTILINE), installed


def test_the_sql_workers_image_tree_fits_lambdas_image_limit_and_holds_duckdb(
    sql_image: Path,
) -> None:
    size = sum(p.stat().st_size for p in sql_image.rglob("*") if p.is_file())
    assert size + BASE_IMAGE_ALLOWANCE < IMAGE_LIMIT, f"{size:,} bytes"
    assert {"duckdb", "snsql", "opendp", "pandas", "numpy", "chalicelib"} <= tops(sql_image)
    # chalice is the front's; boto3 comes with the base image (botocore is pynamodb's, pinned)
    assert not tops(sql_image) & {"boto3", "chalice"}
    assert (sql_image / "chalicelib" / "engines" / "duckdb_sql.py").is_file()


def test_every_engine_module_belongs_to_one_family() -> None:
    from package_lambda import ENGINE_MODULES

    from chalicelib.workers import families

    declared = [module for modules in ENGINE_MODULES.values() for module in modules]
    present = sorted(p.name for p in (ROOT / "chalicelib" / "engines").glob("[!_]*.py"))
    assert sorted(declared) == present, "place each engine module in ENGINE_MODULES"
    assert families() <= set(ENGINE_MODULES)


@pytest.mark.parametrize("name", package_names())
def test_each_package_fits_lambdas_unzipped_limit(
    manifest: dict[str, Any], unzipped: dict, name: str
) -> None:
    summary = manifest["functions"][name]
    on_disk = sum(p.stat().st_size for p in unzipped[name].rglob("*") if p.is_file())
    assert on_disk == summary["unzipped_bytes"]
    assert summary["unzipped_bytes"] <= LIMIT, f"{name}: {summary['unzipped_bytes']:,} bytes"
    assert not tops(unzipped[name]) & {"boto3", "botocore"}, "the runtime provides boto3/botocore"
    assert not tops(unzipped[name]) & {"neblina_admin", "typer", "click", "rich", "pydantic"}
    assert not (unzipped[name] / "chalicelib" / "api_models.py").exists(), "build time only"


def test_make_package_prints_each_packages_size_and_headroom(manifest: dict[str, Any]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package_lambda.py"), "--if-stale"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    for name, summary in manifest["functions"].items():
        headroom = (LIMIT - summary["unzipped_bytes"]) / 1e6
        line = next(x for x in result.stdout.splitlines() if x.startswith(f"package: {name}: "))
        assert f"{summary['unzipped_bytes'] / 1e6:.1f} MB unzipped" in line
        assert f"headroom {headroom:.1f} MB" in line


@pytest.mark.parametrize("name", FRONT)
def test_front_packages_carry_no_data_or_dp_library(
    manifest: dict[str, Any], unzipped: dict, name: str
) -> None:
    assert manifest["functions"][name]["unzipped_bytes"] < 5_000_000
    assert not tops(unzipped[name]) & HEAVY
    assert "pynamodb" in tops(unzipped[name])
    assert (unzipped[name] / "chalice" / "app.py").exists()
    assert not (unzipped[name] / "chalice" / "cli").exists(), "only Chalice's runtime ships"
    assert not (unzipped[name] / "chalicelib" / "worker.py").exists()
    assert not list((unzipped[name] / "chalicelib").rglob("*_engine.py"))


@pytest.mark.parametrize("family", WORKERS)
def test_worker_packages_carry_their_engine_and_no_front_code(unzipped: dict, family: str) -> None:
    folder = unzipped[f"worker-{family}"]
    expected = {"sql": {"snsql", "opendp", "pandas"}, "opendp": {"opendp", "pandas"}}[family]
    assert expected <= tops(folder)
    assert (folder / "chalicelib" / "worker.py").exists()
    assert not (folder / "app.py").exists() and not (folder / "chalice").exists()
    assert not (folder / "chalicelib" / "service.py").exists()
    assert not (folder / "chalicelib" / "auth.py").exists()
    if family == "opendp":
        assert not tops(folder) & {"snsql", "sqlalchemy"}


def test_front_package_answers_from_its_unzipped_folder_without_heavy_imports(
    unzipped: dict,
) -> None:
    report = smoke(unzipped["api"], "api", "--store", "stub")
    assert report["status"] == 200, report
    budget = report["answers"]["budget"]["body"]
    assert Decimal(budget["remaining"]["epsilon"]) == 10
    assert report["answers"]["metadata"]["status"] == 200
    assert report["heavy_after_import"] == [] and report["heavy_at_end"] == []
    assert report["modules_from_elsewhere"] == []


def test_front_package_serves_the_openapi_document_without_pydantic(unzipped: dict) -> None:
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


def test_authorizer_package_authorizes_from_its_unzipped_folder(unzipped: dict) -> None:
    token = "nbl_" + "A" * 43
    report = smoke(unzipped["authorizer"], "authorizer", "--store", "stub", "--token", token)
    assert report["effects"] == ["Allow"] and report["principal"] == "smoke-user"
    assert report["heavy_at_end"] == [] and report["modules_from_elsewhere"] == []


# A COUNT of PENGUIN's 344 rows: SmartNoise at epsilon 1 (Laplace scale 1 per row of
# sensitivity 1), OpenDP's pipeline with Laplace scale 2 (epsilon max_ids/2 = 0.5). The noise
# exceeds 30 (resp. 60) with probability e^-30 < 1e-12: a bound, not a noisy number.
PRICE = {"sql": Decimal(1), "opendp": Decimal("0.5")}
BOUND = {"sql": 30, "opendp": 60}


def count_of(result: dict[str, Any]) -> int:
    if result["type"] == "table":
        (row,) = result["records"]
        return int(row["n"])
    return int(result["value"])


@pytest.mark.parametrize("family", ("sql", *WORKERS))
def test_worker_package_prices_and_runs_a_query_from_its_unzipped_folder(
    worker_folders: dict[str, Path], family: str
) -> None:
    report = smoke(worker_folders[family], "worker", "--worker", family, "--store", "stub")
    answers = report["answers"]
    assert all(report["ok"].values()), answers
    assert Decimal(answers["price"]["cost"]["epsilon"]) == PRICE[family]
    assert abs(count_of(answers["run"]["result"]) - 344) <= BOUND[family]
    assert count_of(answers["dummy_query"]["result"]) > 0
    (finish,) = report["writes"]  # the release archived, once
    assert finish["op"] == "finish" and finish["state"] == "done"
    assert finish["result"] == answers["run"]["result"]
    assert report["modules_from_elsewhere"] == []
    assert report["heavy_after_import"] == [], "importing the handler stays light"
    if family == "sql":  # the deployed SQL worker runs DuckDB, never the SQLite fallback
        assert report["sql_executor"] == "duckdb" and report["duckdb_used"], report


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
    stack: Any, make_researcher: Any, unzipped: dict, worker_folders: dict[str, Path]
) -> None:
    researcher = make_researcher({"PENGUIN": ("10", "0.001")})
    env = emulator_env(stack.emulator_url, stack.table_prefix)
    common = ["--store", "dynamodb", "--user", researcher.user_id, "--token", researcher.token]

    authorizer = smoke(unzipped["authorizer"], "authorizer", *common, env=env)
    assert authorizer["effects"] == ["Allow"]
    assert authorizer["principal"] == researcher.user_id

    # Each worker runs a record the smoke reserved first (the front's debit, not recorded);
    # the SQL worker's release goes to S3 (every result over 0 bytes does), and the front
    # then reads it back for the researcher.
    runs: list[tuple[dict[str, Any], str]] = [(authorizer, "authorizer")]
    archived = None
    for family in ("sql", *WORKERS):
        worker_env = {**env, "NEBLINA_WORKER": family}
        if family == "sql":
            worker_env["NEBLINA_INLINE_RESULT_BYTES"] = "0"
        report = smoke(worker_folders[family], "worker", "--worker", family, *common,
                       env=worker_env)  # fmt: skip
        assert all(report["ok"].values()), report["answers"]
        operations = {c["operation"] for c in report["aws_calls"]}
        assert {"GetObject", "UpdateItem"} <= operations, operations
        if family == "sql":
            archived = report["answers"]["run"]["result"]
            assert "PutObject" in operations and archived["key"]
        runs.append((report, "worker"))
    assert archived is not None
    query_id = archived["key"].removeprefix("archive/").removesuffix(".json")
    front = smoke(unzipped["api"], "api", *common, "--get-query", query_id, env=env)
    assert front["status"] == 200 and front["answers"]["metadata"]["status"] == 200, front
    read_back = front["answers"]["query"]
    assert read_back["status"] == 200 and read_back["body"]["state"] == "done", read_back
    assert "GetObject" in {c["operation"] for c in front["aws_calls"]}
    runs.append((front, "api"))

    prefix, bucket = stack.table_prefix, env["NEBLINA_BUCKET"]
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
