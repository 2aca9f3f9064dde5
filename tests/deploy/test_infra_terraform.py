"""The Terraform module (infra/terraform) against the code it deploys, checked offline.

Expectations come from the code, not from lists kept here: tables, keys, attribute types
and indexes from ``chalicelib.storage.dynamo.build_models()``; environment variables from
an AST scan of ``app.py`` and ``chalicelib/``; routes and the authorizer from the Chalice
app; gateway-response bodies from ``localstack/apiserver.py``. Renaming any of these on one
side only fails a test here.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "infra" / "terraform"
EXAMPLE = MODULE / "examples" / "complete"
PROVIDER_MIRROR = Path(os.environ.get("NEBLINA_TF_PLUGIN_DIR", "/opt/tf-plugins"))
PLUGIN_DIR_ARG = f"-plugin-dir={PROVIDER_MIRROR}"

# Variables the code reads that the Lambda functions must NOT get, and why.
NOT_ON_LAMBDA = {
    "AWS_REGION": "set by the Lambda runtime (reserved)",
    "AWS_DEFAULT_REGION": "set by the Lambda runtime (reserved)",
    "AWS_ENDPOINT_URL": "emulators only; in the cloud botocore must use AWS's endpoints",
    "MONGODB_URI": "MongoDB backend only (a secret); this module deploys the DynamoDB backend",
    "NEBLINA_MONGODB_DATABASE": "MongoDB backend only; this module deploys DynamoDB",
    "NEBLINA_TOKEN_DEFAULT_DAYS": "neblina-admin only (lifetime of the tokens it issues)",
    # neblina_admin/admintarget.py: how neblina-admin picks its target (never on Lambda)
    "AWS_PROFILE": "neblina-admin only (the operator's profile names real AWS as target)",
    "AWS_ACCESS_KEY_ID": "neblina-admin only (checked, never set; the runtime's role signs)",
    "NEBLINA_STATE_DIR": "neblina-admin and the local stack only (where local.env is)",
    # chalicelib/engines/spark_sql.py runs in the Spark process (docs/spark.md), not in a Lambda
    "NEBLINA_SPARK_MASTER": "the local Spark worker process only (EMR sets its own master)",
    "NEBLINA_SPARK_DIRECT_S3": "the local Spark worker process only (NEBLINA_SPARK=emr implies it)",
}


# --- parsing --------------------------------------------------------------------------
def clean(value: Any) -> Any:
    """python-hcl2 8.x output without its quoting: '"x"' -> 'x', block markers dropped."""
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items() if k not in ("__is_block__",)}
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)  # a literal: HCL's escapes are JSON's
        except ValueError:
            return value[1:-1]  # a template such as "${aws_x.y["k"].arn}/index/z"
    return value


def parse(directory: Path) -> dict[str, Any]:
    """Every block of the directory's .tf files: resources/data by type and name, locals."""
    module: dict[str, Any] = {"resource": {}, "data": {}, "locals": {}, "variable": {}}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            document = clean(hcl2.load(handle))
        for kind in ("resource", "data"):
            for block in document.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        module[kind].setdefault(rtype, {})[name] = body
        for block in document.get("locals", []):
            module["locals"].update(block)
        for block in document.get("variable", []):
            module["variable"].update(block)
        for key in ("terraform", "module", "provider", "output"):
            module.setdefault(key, []).extend(document.get(key, []))
    return module


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    return parse(MODULE)


# --- what the code expects -------------------------------------------------------------
def code_models() -> dict[str, Any]:
    """{kind: PynamoDB model} as the code builds them, for a known table prefix."""
    from chalicelib.config import from_environ
    from chalicelib.storage.dynamo import build_models

    settings = from_environ()
    models = build_models(settings)
    out = {}
    for model in vars(models).values():
        name = model.Meta.table_name
        assert name.startswith(settings.table_prefix)
        out[name.removeprefix(settings.table_prefix)] = model
    return out


def code_table(model: Any) -> dict[str, Any]:
    """A model's key schema, key attribute types, indexes and billing mode (the schema the
    code's own ``create_schema`` sends to DynamoDB)."""
    schema = model._get_schema()
    keys = {k["KeyType"]: k["AttributeName"] for k in schema["key_schema"]}
    indexes = {}
    for index in schema.get("global_secondary_indexes", []):
        index_keys = {k["KeyType"]: k["AttributeName"] for k in index["key_schema"]}
        indexes[index["index_name"]] = {
            "hash_key": index_keys["HASH"],
            "range_key": index_keys.get("RANGE"),
            "projection": index["projection"]["ProjectionType"],
        }
    return {
        "hash_key": keys["HASH"],
        "range_key": keys.get("RANGE"),
        "attributes": {
            a["AttributeName"]: a["AttributeType"] for a in schema["attribute_definitions"]
        },
        "indexes": indexes,
        "billing_mode": model.Meta.billing_mode,
    }


def documented_ttl() -> dict[str, str]:
    """{kind: attribute} from the table in the storage module's docstring ("TTL attribute")."""
    from chalicelib.storage import dynamo

    found = {}
    for line in (dynamo.__doc__ or "").splitlines():
        match = re.match(r"^(\w+)\s+.*TTL attribute ``(\w+)``", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def env_reads(paths: list[Path]) -> dict[str, str]:
    """{variable: "file:line"} for every environment variable the code reads.

    Direct reads (``os.environ.get("X")``, ``os.environ["X"]``, ``os.getenv("X")``) and
    reads through a helper whose first parameter is passed to one (``_int("X", 3)``).
    """
    found: dict[str, str] = {}

    def is_environ(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
            isinstance(node, ast.Name) and node.id == "environ"
        )

    def read_name(node: ast.AST) -> ast.AST | None:
        """The key expression if ``node`` reads the environment, else None."""
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "get" and is_environ(func.value):
                return node.args[0]
            if isinstance(func, ast.Attribute) and func.attr == "getenv":
                return node.args[0]
        if isinstance(node, ast.Subscript) and is_environ(node.value):
            return node.slice
        return None

    for path in paths:
        tree = ast.parse(path.read_text())
        helpers = set()
        for func in ast.walk(tree):
            if isinstance(func, ast.FunctionDef) and func.args.args:
                first = func.args.args[0].arg
                for node in ast.walk(func):
                    key = read_name(node)
                    if isinstance(key, ast.Name) and key.id == first:
                        helpers.add(func.name)
        for node in ast.walk(tree):
            key = read_name(node)
            if (
                key is None
                and isinstance(node, ast.Call)
                and node.args
                and isinstance(node.func, ast.Name)
                and node.func.id in helpers
            ):
                key = node.args[0]
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                found.setdefault(key.value, f"{path.relative_to(ROOT)}:{node.lineno}")  # type: ignore[attr-defined]
    return found


def shipped_sources() -> list[Path]:
    return [ROOT / "app.py", *sorted((ROOT / "chalicelib").rglob("*.py"))]


# --- tables -----------------------------------------------------------------------------
def test_every_table_of_the_code_is_created_with_the_same_keys_and_indexes(tf: dict) -> None:
    declared = tf["locals"]["tables"]
    expected = {kind: code_table(model) for kind, model in code_models().items()}
    assert set(declared) == set(expected), "tables in Terraform differ from build_models()"
    for kind, code in expected.items():
        hcl = declared[kind]
        assert (hcl["hash_key"], hcl["range_key"]) == (code["hash_key"], code["range_key"]), kind
        assert hcl["attributes"] == code["attributes"], f"{kind}: key attribute types"
        hcl_indexes = {
            name: {**index, "projection": "ALL"} for name, index in hcl["indexes"].items()
        }
        assert hcl_indexes == code["indexes"], f"{kind}: global secondary indexes"


def test_tables_are_named_as_the_code_names_them(tf: dict) -> None:
    table = tf["resource"]["aws_dynamodb_table"]["neblina"]
    assert table["for_each"] == "${local.tables}"
    assert table["name"] == "${local.table_prefix}${each.key}"
    # The code's table_name(kind) is NEBLINA_TABLE_PREFIX + kind; the functions get the same.
    assert tf["locals"]["environment"]["NEBLINA_TABLE_PREFIX"] == "${local.table_prefix}"
    from chalicelib.config import from_environ

    settings = dataclasses.replace(from_environ(), table_prefix="P-")
    assert settings.table_name("users") == "P-users"


def test_tables_are_hardened_and_billed_as_the_code_expects(tf: dict) -> None:
    table = tf["resource"]["aws_dynamodb_table"]["neblina"]
    modes = {code_table(m)["billing_mode"] for m in code_models().values()}
    assert modes == {"PAY_PER_REQUEST"}
    assert table["billing_mode"] == "PAY_PER_REQUEST"
    assert table["point_in_time_recovery"] == [{"enabled": True}]
    assert table["server_side_encryption"][0]["enabled"] is True
    assert table["deletion_protection_enabled"] == "${var.deletion_protection}"
    assert tf["variable"]["deletion_protection"]["default"] is True
    gsi = next(d for d in table["dynamic"] if "global_secondary_index" in d)
    assert gsi["global_secondary_index"]["content"][0]["projection_type"] == "ALL"


def test_ttl_is_set_exactly_where_the_code_expires_records(tf: dict) -> None:
    declared = {k: v["ttl_attribute"] for k, v in tf["locals"]["tables"].items()}
    expected = documented_ttl()
    assert expected, "the storage docstring no longer documents a TTL attribute"
    assert {k: v for k, v in declared.items() if v} == expected
    models = code_models()
    for kind, attribute in expected.items():
        attr = models[kind].get_attributes().get(attribute)
        assert attr is not None and attr.attr_type == "N", f"{kind}.{attribute} must be a Number"


# --- environment ----------------------------------------------------------------------
def test_env_scan_finds_direct_and_helper_reads() -> None:
    reads = env_reads(shipped_sources())
    assert "NEBLINA_TABLE_PREFIX" in reads  # os.environ.get
    assert "NEBLINA_MAX_BODY_BYTES" in reads  # through the _int helper
    assert "AWS_ENDPOINT_URL" in reads


# Set on one kind of function only (on top of local.environment, which every function gets).
FRONT_ONLY_VARIABLES = {
    "NEBLINA_WORKERS": "the front invokes the workers by these names",
    # the EMR Serverless hand-off (infra/terraform/emr.tf local.spark_emr_environment)
    **dict.fromkeys(
        [
            "NEBLINA_SPARK",
            "NEBLINA_EMR_APPLICATION_ID",
            "NEBLINA_EMR_JOB_ROLE_ARN",
            "NEBLINA_EMR_ENTRY_POINT",
            "NEBLINA_EMR_PY_FILES",
            "NEBLINA_EMR_TIMEOUT_MINUTES",
            "NEBLINA_EMR_SPARK_PARAMETERS",
        ],
        "the front hands Spark jobs to EMR Serverless (chalicelib/emr.py)",
    ),
}
WORKER_ONLY_VARIABLES = {"NEBLINA_WORKER": "each worker's family (chalicelib.worker)"}


def test_every_variable_the_code_reads_is_set_on_the_functions(tf: dict) -> None:
    reads = env_reads(shipped_sources())
    environment = tf["locals"]["environment"]
    own = {**FRONT_ONLY_VARIABLES, **WORKER_ONLY_VARIABLES}
    needed = {name: where for name, where in reads.items() if name not in NOT_ON_LAMBDA}
    missing = {name: where for name, where in needed.items() if name not in {*environment, *own}}
    assert not missing, f"read by the code but not set on the Lambda functions: {missing}"
    unread = {*environment, *own} - set(reads)
    assert not unread, f"set on the Lambda functions but read nowhere in the code: {unread}"
    assert not [k for k in environment if k.startswith("AWS_")], "AWS_* must not be set"
    functions = tf["resource"]["aws_lambda_function"]

    def variables(function: str) -> str:
        (block,) = functions[function]["environment"]
        return str(block["variables"]).replace(" ", "")

    assert variables("authorizer") == "${local.environment}"
    assert variables("api") == (
        "${merge(local.environment,local.spark_emr_environment,"
        "{NEBLINA_WORKERS=local.workers_config})}"
    )
    emr_names = set(re.findall(r"(NEBLINA_\w+)\s*=", tf["locals"]["spark_emr_environment"]))
    assert emr_names == set(FRONT_ONLY_VARIABLES) - {"NEBLINA_WORKERS"}
    assert variables("worker") == "${merge(local.environment,{NEBLINA_WORKER=each.key})}"


def test_the_fronts_workers_map_names_each_worker_function(tf: dict) -> None:
    from chalicelib.hop import workers_config

    config = tf["locals"]["workers_config"]
    assert "aws_lambda_function.worker" in config and "function.function_name" in config
    # The shape chalicelib.hop reads: {"family": {"function": NAME}}
    assert workers_config(json.dumps({"sql": {"function": "n-worker-sql"}})) == {
        "sql": {"function": "n-worker-sql"}
    }


def test_one_worker_function_per_family_with_the_workers_handler(tf: dict) -> None:
    from chalicelib import worker
    from chalicelib.workers import families

    sys.path.insert(0, str(ROOT / "scripts"))
    from package_lambda import IMAGE_WORKERS

    # The zipped workers by default, and sql, whose image_uri the deployment must give (the
    # variable's validation); another image worker (polars, diffprivlib) is added with its image.
    declared = tf["variable"]["workers"]["default"]
    assert set(declared) == (families() - set(IMAGE_WORKERS)) | {"sql"}
    for family, settings in declared.items():
        assert settings["memory_mb"] >= 1769, f"{family}: at least one vCPU"
        assert settings["timeout_seconds"] <= 900, family
    function = tf["resource"]["aws_lambda_function"]["worker"]
    assert function["for_each"] == "${var.workers}"
    assert '"chalicelib.worker.lambda_handler"' in function["handler"]
    assert callable(worker.lambda_handler)
    invoke = tf["resource"]["aws_lambda_function_event_invoke_config"]["worker"]
    assert invoke["maximum_retry_attempts"] == 2
    destination = invoke["destination_config"][0]["on_failure"][0]["destination"]
    assert destination == "${aws_sqs_queue.worker_dlq.arn}"
    queue = tf["resource"]["aws_sqs_queue"]["worker_dlq"]
    assert queue["kms_master_key_id"] == "${local.kms_key_arn}"
    # A job's lease outlasts every delivery Lambda may make, and the run (a precondition).
    (lifecycle,) = invoke["lifecycle"]
    (rule,) = lifecycle["precondition"]
    assert "var.limits.job_lease_seconds >= var.worker_max_event_age_seconds" in rule["condition"]
    lease = re.search(
        r"job_lease_seconds\s*=\s*optional\(number,\s*(\d+)\)",
        str(tf["variable"]["limits"]["type"]),
    )
    assert lease, "limits.job_lease_seconds has no default"
    age = tf["variable"]["worker_max_event_age_seconds"]["default"]
    assert all(int(lease.group(1)) >= age + w["timeout_seconds"] for w in declared.values())


def test_store_is_dynamodb_and_limits_default_to_the_codes_defaults(tf: dict) -> None:
    environment = tf["locals"]["environment"]
    assert environment["NEBLINA_STORE"] == "dynamodb"
    # Each optional(type, default) of var.limits equals the code's default for its variable.
    source = (ROOT / "chalicelib" / "config.py").read_text()
    limits = tf["variable"]["limits"]["type"]
    for field, default in re.findall(r"(\w+)\s*=\s*optional\(\w+,\s*\"?([\w.]+)\"?\)", limits):
        variable = f"NEBLINA_{field.upper()}"
        assert environment[variable] in (
            f"${{tostring(var.limits.{field})}}",
            f"${{var.limits.{field}}}",
        )
        match = re.search(rf'"{variable}",\s*"?([\d_.* ]+?)"?\)', source)
        assert match, f"{variable}: no default found in chalicelib/config.py"
        assert eval(match.group(1).replace("_", "")) == float(default), variable  # noqa: S307


# --- API Gateway ------------------------------------------------------------------------
def test_routes_match_the_chalice_app(tf: dict) -> None:
    import app

    expected = {
        f"{method} {path}": entry.authorizer is not None
        for path, methods in app.app.routes.items()
        for method, entry in methods.items()
    }
    assert tf["locals"]["routes"] == expected
    paths = {route.split(" ", 1)[1] for route in expected}
    assert set(tf["locals"]["resource_ids"]) == paths


def test_authorizer_matches_the_apps(tf: dict) -> None:
    import app

    authorizer = tf["resource"]["aws_api_gateway_authorizer"]["token"]
    assert authorizer["type"] == "TOKEN"
    assert authorizer["identity_source"] == "method.request.header.Authorization"
    ttl = app.token_authorizer.config.ttl_seconds
    assert authorizer["authorizer_result_ttl_in_seconds"] == ttl
    functions = tf["resource"]["aws_lambda_function"]
    assert functions["authorizer"]["handler"] == "app.token_authorizer"
    assert callable(app.token_authorizer)
    assert '"app.app"' in functions["api"]["handler"]
    assert callable(app.app)


def test_gateway_responses_match_the_local_server(tf: dict) -> None:
    import apiserver

    responses = tf["locals"]["gateway_responses"]
    assert responses["UNAUTHORIZED"]["status"] == "401"
    assert json.loads(responses["UNAUTHORIZED"]["body"]) == apiserver.UNAUTHORIZED_BODY
    assert responses["MISSING_AUTHENTICATION_TOKEN"]["status"] == "404"
    assert json.loads(responses["MISSING_AUTHENTICATION_TOKEN"]["body"]) == apiserver.NOT_FOUND_BODY
    denied = responses["ACCESS_DENIED"]
    assert denied["status"] == "403"
    # The authorizer's Deny context keys (app.py) are the template's variables.
    source = (ROOT / "app.py").read_text()
    assert '"context": {"error": error.code, "message": error.message}' in source
    assert json.loads(denied["body"]) == {
        "error": "$context.authorizer.error",
        "message": "$context.authorizer.message",
    }
    for name, response in responses.items():
        if "$context.error.messageString" not in response["body"]:
            assert set(json.loads(response["body"])) == {"error", "message"}, name


def test_stage_has_throttling_and_access_logs(tf: dict) -> None:
    stage = tf["resource"]["aws_api_gateway_stage"]["neblina"]
    assert stage["access_log_settings"][0]["destination_arn"]
    settings = tf["resource"]["aws_api_gateway_method_settings"]["all"]["settings"][0]
    assert settings["throttling_rate_limit"] == "${var.throttling_rate_limit}"
    assert settings["throttling_burst_limit"] == "${var.throttling_burst_limit}"
    assert settings["data_trace_enabled"] is False


# --- IAM ----------------------------------------------------------------------------------
def statements(tf: dict, policy: str) -> list[dict[str, Any]]:
    """The policy's statements, with ``resources`` always a list (of literals/templates)."""
    out = []
    for statement in tf["data"]["aws_iam_policy_document"][policy]["statement"]:
        resources = statement["resources"]
        out.append(
            {**statement, "resources": [resources] if isinstance(resources, str) else resources}
        )
    return out


@pytest.mark.parametrize(
    "policy", ["api", "authorizer", "worker", "spark_job", "api_spark_handoff"]
)
def test_policies_name_their_resources(tf: dict, policy: str) -> None:
    for statement in statements(tf, policy):
        assert all("*" not in action for action in statement["actions"]), statement
        if "*" in statement["resources"]:
            assert all(a.startswith("xray:") for a in statement["actions"]), statement


def test_authorizer_reads_only_tokens_and_users(tf: dict) -> None:
    tables = set()
    for statement in statements(tf, "authorizer"):
        for resource in statement["resources"]:
            named = set(re.findall(r'aws_dynamodb_table\.neblina\["(\w+)"\]', resource))
            tables.update(named)
            if "dynamodb" in str(statement["actions"]):
                # reads, plus the last-use write on tokens (chalicelib.auth.record_use)
                writes = [["dynamodb:UpdateItem"]] if named == {"tokens"} else []
                assert statement["actions"] in [["dynamodb:GetItem"], *writes], statement
    assert tables == {"tokens", "users"}


@pytest.mark.parametrize("policy", ["api", "worker"])
def test_api_and_workers_cannot_touch_tokens_or_users(tf: dict, policy: str) -> None:
    text = json.dumps(statements(tf, policy))
    assert 'neblina[\\"tokens\\"]' not in text and 'neblina[\\"users\\"]' not in text
    assert "dynamodb:Scan" not in text and "dynamodb:DeleteItem" not in text


def table_actions(tf: dict, policy: str) -> dict[str, set[str]]:
    """{table kind: DynamoDB actions} a policy grants."""
    out: dict[str, set[str]] = {}
    for statement in statements(tf, policy):
        for resource in statement["resources"]:
            for kind in re.findall(r'aws_dynamodb_table\.neblina\["(\w+)"\]\.arn\}$', resource):
                out.setdefault(kind, set()).update(statement["actions"])
    return out


def test_workers_only_run_finish_and_refund_the_records_the_front_reserved(tf: dict) -> None:
    # No debit (PutItem), no table but queries and the refund's grants and caps.
    assert table_actions(tf, "worker") == {
        "queries": {"dynamodb:GetItem", "dynamodb:UpdateItem"},
        "grants": {"dynamodb:UpdateItem"},
        "caps": {"dynamodb:UpdateItem"},
    }
    actions = {a for statement in statements(tf, "worker") for a in statement["actions"]}
    assert "lambda:InvokeFunction" not in actions and "s3:DeleteObject" not in actions
    writes = [s for s in statements(tf, "worker") if "s3:PutObject" in s["actions"]]
    assert [w["resources"] for w in writes] == [
        ['${aws_s3_bucket.neblina["datasets"].arn}/archive/*']
    ]


def test_the_front_invokes_the_workers_and_reads_no_dataset_rows(tf: dict) -> None:
    api = statements(tf, "api")
    (invoke,) = [s for s in api if "lambda:InvokeFunction" in s["actions"]]
    assert invoke["actions"] == ["lambda:InvokeFunction"]
    (workers,) = invoke["resources"]
    assert workers.replace(" ", "") == "${[forfunctioninaws_lambda_function.worker:function.arn]}"
    objects = [
        r for s in api if any(a.startswith("s3:") for a in s["actions"]) for r in s["resources"]
    ]
    assert objects == ['${aws_s3_bucket.neblina["datasets"].arn}/archive/*']
    assert not [s for s in api if "s3:PutObject" in s["actions"]]


# --- the example root and the versions ----------------------------------------------------
def test_versions_and_example_root() -> None:
    module = parse(MODULE)
    terraform = module["terraform"][0]
    assert terraform["required_version"] == ">= 1.5"
    assert terraform["required_providers"][0]["aws"]["version"] == ">= 5.0"
    example = parse(EXAMPLE)
    call = example["module"][0]["neblina"]
    assert call["source"] == "../.."
    build = ROOT / "build" / "lambda"  # scripts/package_lambda.py DEFAULT_OUT
    script = (ROOT / "scripts" / "package_lambda.py").read_text()
    assert 'DEFAULT_OUT = ROOT / "build" / "lambda"' in script
    for name in ("api", "authorizer"):
        path = call[f"{name}_package"].replace("${path.root}", str(EXAMPLE))
        assert Path(os.path.normpath(path)) == build / f"{name}.zip"
    from chalicelib.workers import families

    sys.path.insert(0, str(ROOT / "scripts"))
    from package_lambda import IMAGE_WORKERS

    workers = call["worker_packages"]
    listed = re.search(r"for family in (\[[^\]]*\])", workers)
    assert listed and set(json.loads(listed.group(1))) == families() - set(IMAGE_WORKERS)
    assert "${path.root}/../../../../build/lambda/worker-${family}.zip" in workers
    assert "var.sql_worker_image_uri" in str(call["workers"])  # the SQL worker's image


def terraform_binary() -> str | None:
    return shutil.which("terraform")


@pytest.mark.skipif(terraform_binary() is None, reason="no terraform binary on PATH")
@pytest.mark.parametrize(
    ("workers", "plans"),
    [
        (None, False),  # the defaults: sql without its image
        ('{sql = {memory_mb = 2048, timeout_seconds = 120}, opendp = {memory_mb = 2048, timeout_seconds = 120}}', False),
        ('{sql = {memory_mb = 2048, timeout_seconds = 120, image_uri = "1.dkr.ecr/w:1"}}', True),
        ('{opendp = {memory_mb = 2048, timeout_seconds = 120}}', True),  # no SQL worker at all
    ],
)  # fmt: skip
def test_a_sql_worker_without_its_image_fails_the_plan_so_it_never_runs_sqlite(
    tmp_path: Path, workers: str | None, plans: bool
) -> None:
    # The module's workers variable alone (no provider, no init): its validation runs at plan.
    text = (MODULE / "variables.tf").read_text()
    block = re.search(r'^variable "workers" \{.*?^\}\n', text, re.DOTALL | re.MULTILINE)
    assert block
    (tmp_path / "main.tf").write_text(block.group(0))
    command = [str(terraform_binary()), "plan", "-input=false", "-no-color"]
    if workers is not None:
        command.append(f"-var=workers={workers}")
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, check=False, timeout=120
    )
    assert (result.returncode == 0) is plans, result.stdout + result.stderr
    if not plans:
        assert "workers.sql.image_uri is required" in result.stderr


@pytest.mark.skipif(terraform_binary() is None, reason="no terraform binary on PATH")
def test_terraform_fmt() -> None:
    emulator_root = ROOT / "infra" / "emulator"  # tests/deploy/test_terraform_apply.py applies it
    result = subprocess.run(
        [
            str(terraform_binary()),
            "fmt",
            "-check",
            "-recursive",
            "-diff",
            str(MODULE),
            str(emulator_root),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def initialised_example(tmp_path: Path) -> Iterator[Path]:
    """A copy of the module with the example root, initialised from the local provider
    mirror (no download)."""
    copy = tmp_path / "terraform"
    shutil.copytree(MODULE, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    root = copy / "examples" / "complete"
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    result = subprocess.run(
        [str(terraform_binary()), "init", "-backend=false", "-input=false", PLUGIN_DIR_ARG],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    yield root


@pytest.mark.skipif(
    terraform_binary() is None or not PROVIDER_MIRROR.is_dir(),
    reason="needs a terraform binary and a local AWS provider mirror (NEBLINA_TF_PLUGIN_DIR)",
)
def test_terraform_validate(initialised_example: Path) -> None:
    result = subprocess.run(
        [str(terraform_binary()), "validate", "-no-color"],
        cwd=initialised_example,
        capture_output=True,
        text=True,
        env={**os.environ, "CHECKPOINT_DISABLE": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Spark-backed datasets on EMR Serverless (emr.tf, docs/spark.md) ----------------------
def test_the_spark_job_role_reads_only_the_spark_prefixes_and_writes_only_what_a_job_writes(
    tf: dict,
) -> None:
    job = statements(tf, "spark_job")
    by_sid = {s["sid"]: s for s in job}
    assert all("*" not in a for s in job for a in s["actions"])
    assert all(r != "*" for s in job for r in s["resources"])
    # the rows: only under the Spark datasets' prefixes (never the whole datasets bucket)
    reads = by_sid["ReadSparkDatasets"]
    assert reads["actions"] == ["s3:GetObject"]
    (rows,) = reads["resources"]
    assert "local.spark_prefixes" in rows and rows.endswith('${p.prefix}*"]}')
    listing = by_sid["ListSparkDatasets"]
    assert (
        listing["actions"] == ["s3:ListBucket"] and listing["condition"][0]["test"] == "StringLike"
    )
    # writes: its own documents (delete), large results under archive/, the record
    writes = {
        r
        for s in job
        for r in s["resources"]
        if set(s["actions"]) & {"s3:PutObject", "s3:DeleteObject"}
    }
    assert writes == {
        '${aws_s3_bucket.neblina["datasets"].arn}/spark-jobs/*',
        '${aws_s3_bucket.neblina["datasets"].arn}/archive/*',
    }
    assert by_sid["ReadJobCode"]["resources"] == [
        '${aws_s3_bucket.neblina["artifacts"].arn}/spark/*'
    ]
    # the same DynamoDB rights as a worker: claim, progress, finish, refund; never a debit
    assert table_actions(tf, "spark_job") == table_actions(tf, "worker")
    assume = tf["data"]["aws_iam_policy_document"]["spark_job_assume"]["statement"][0]
    assert assume["principals"][0]["identifiers"] == ["emr-serverless.amazonaws.com"]


def test_the_front_may_only_stage_documents_start_runs_and_pass_the_job_role(tf: dict) -> None:
    handoff = statements(tf, "api_spark_handoff")
    assert {a for s in handoff for a in s["actions"]} == {
        "s3:PutObject",
        "emr-serverless:StartJobRun",
        "iam:PassRole",
    }
    by_action = {s["actions"][0]: s for s in handoff}
    assert by_action["s3:PutObject"]["resources"] == [
        '${aws_s3_bucket.neblina["datasets"].arn}/spark-jobs/*'
    ]
    assert by_action["emr-serverless:StartJobRun"]["resources"] == [
        '${aws_emrserverless_application.spark["on"].arn}'
    ]
    passing = by_action["iam:PassRole"]
    assert passing["resources"] == ['${aws_iam_role.spark_job["on"].arn}']
    assert passing["condition"][0]["values"] == ["emr-serverless.amazonaws.com"]


def test_the_emr_application_starts_and_stops_itself_and_is_bounded(tf: dict) -> None:
    (application,) = tf["resource"]["aws_emrserverless_application"].values()
    assert application["type"] == "SPARK"
    assert application["auto_start_configuration"][0]["enabled"] is True
    assert application["auto_stop_configuration"][0]["enabled"] is True
    assert "initial_capacity" not in application  # nothing billed while no job runs
    assert set(application["maximum_capacity"][0]) == {"cpu", "memory", "disk"}
    # the package script's outputs are what Terraform uploads
    script = (ROOT / "scripts" / "package_lambda.py").read_text()
    assert '"spark-job-main.py"' in script and 'Package(\n    "spark-job"' in script
    for name in ("spark_job_package", "spark_entry_point"):
        uploaded = tf["resource"]["aws_s3_object"][name]
        assert uploaded["bucket"] == '${aws_s3_bucket.neblina["artifacts"].id}'
        assert uploaded["key"].startswith("spark/")
