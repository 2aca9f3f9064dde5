"""SLOW INFRA TIER: `terraform apply` of the whole module on the embedded emulator, a query, `destroy`.

What runs (about 3-4 minutes, most of it the AWS provider, see infra/README.md "Apply to
the embedded emulator"): the emulator (localstack/emulator.py) on a free 127.0.0.1 port;
``terraform init`` from the local provider mirror and ``apply`` of infra/emulator (a root
that calls infra/terraform unchanged, every provider endpoint pointed at the emulator,
stand-in Lambda zips); seeding with localstack/seed.py through the tables and the bucket
named by the module's outputs; one local worker process per engine family
(localstack/workerserver.py) started with exactly the environment Terraform gave that
worker's function and answering to its function name, and the local API server
(localstack/apiserver.py) started with exactly the environment Terraform gave the API
function (its ``NEBLINA_WORKERS`` gains each worker process's endpoint), answering DP
queries from the client through the workers; then ``terraform destroy``, after which
nothing of the deployment is left.

EMR Serverless (infra/terraform/emr.tf, docs/spark.md) is on, with the real Spark job
artefacts (``scripts/package_lambda.py --spark-job``): the emulator (moto 5.2.5) creates the
application (auto-start/stop, maximum capacity), the job role and its policy, the front's
hand-off policy, and stores the uploaded code; a query on the Spark-backed dataset is
debited, its job document staged in S3 (KMS) and StartJobRun called on the application
with the job role, entry point, arguments and code the module configured. What the
emulator cannot do: run the job (moto records the run and never starts Spark, so the
record stays queued; the job itself runs under spark-submit in tests/stack/test_spark.py),
check IAM (moto does not enforce policies: their content is checked here and in
test_infra_terraform.py), nor pull an image (image_configuration is off here).

Skipped only when terraform or the provider mirror (``/opt/tf-plugins`` or
``NEBLINA_TF_PLUGIN_DIR``) is missing. Deselect it with ``-m "not slow_infra"``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
from test_infra_terraform import MODULE, PLUGIN_DIR_ARG, PROVIDER_MIRROR, terraform_binary

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # package_lambda.IMAGE_WORKERS
EMULATOR_ROOT = ROOT / "infra" / "emulator"
NAME = "nbapply"  # not the code's default prefix: the API must get its names from Terraform
COUNT = "SELECT COUNT(*) AS n FROM PENGUIN"

pytestmark = [
    pytest.mark.slow_infra,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        terraform_binary() is None or not PROVIDER_MIRROR.is_dir(),
        reason=(
            "needs a terraform binary on PATH and a local AWS provider mirror "
            f"({PROVIDER_MIRROR}; set NEBLINA_TF_PLUGIN_DIR)"
        ),
    ),
]


def terraform(args: list[str], cwd: Path, timeout: float = 600) -> str:
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_INPUT": "0"}
    result = subprocess.run(
        [str(terraform_binary()), *args, "-no-color"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"terraform {args[0]}:\n{result.stdout[-6000:]}{result.stderr}"
    return result.stdout


def aws(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def stand_in_package(path: Path, text: str) -> Path:
    """A Lambda zip the emulator stores and never runs (local processes run the code)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("app.py", f"# stand-in: {text}\n")
    return path


def deployed(endpoint: str) -> dict[str, set[str]]:
    """What exists on the emulator, by kind."""
    roles = aws("iam", endpoint).list_roles()["Roles"]
    applications = aws("emr-serverless", endpoint).list_applications()["applications"]
    return {
        "emr_applications": {a["name"] for a in applications if a["state"] != "TERMINATED"},
        "tables": set(aws("dynamodb", endpoint).list_tables()["TableNames"]),
        "buckets": {b["Name"] for b in aws("s3", endpoint).list_buckets().get("Buckets", [])},
        "functions": {
            f["FunctionName"] for f in aws("lambda", endpoint).list_functions()["Functions"]
        },
        "roles": {r["RoleName"] for r in roles if r["RoleName"].startswith(NAME)},
        "apis": {a["name"] for a in aws("apigateway", endpoint).get_rest_apis()["items"]},
        "queues": set(aws("sqs", endpoint).list_queues().get("QueueUrls", [])),
        "log_groups": {
            g["logGroupName"]
            for g in aws("logs", endpoint).describe_log_groups()["logGroups"]
            if NAME in g["logGroupName"]
        },
    }


HANDOFF = ("NEBLINA_SPARK", "NEBLINA_EMR_")


def check_emr_serverless(endpoint: str, spark: dict[str, str], built: Path) -> None:
    """The application, the job role's policy and the code, as the emulator holds them."""
    emr = aws("emr-serverless", endpoint)
    application = emr.get_application(applicationId=spark["application_id"])["application"]
    assert application["name"] == f"{NAME}-spark" and application["type"].upper() == "SPARK"
    assert application["state"] == "CREATED"  # nothing runs (nor is billed) before a job
    assert application["autoStartConfiguration"] == {"enabled": True}
    assert application["autoStopConfiguration"] == {"enabled": True, "idleTimeoutMinutes": 15}
    assert application["maximumCapacity"] == {
        "cpu": "32 vCPU", "memory": "128 GB", "disk": "1000 GB"
    }  # fmt: skip
    assert "initialCapacity" not in application or not application["initialCapacity"]
    iam = aws("iam", endpoint)
    role = f"{NAME}-spark-job"
    trust = iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "emr-serverless.amazonaws.com"}
    document = iam.get_role_policy(RoleName=role, PolicyName=role)["PolicyDocument"]
    statements = {s["Sid"]: s for s in document["Statement"]}
    datasets = f"arn:aws:s3:::{NAME}-datasets-123456789012"
    assert statements["ReadSparkDatasets"]["Resource"] == f"{datasets}/SYNTHETIC/*"
    assert statements["ListSparkDatasets"]["Condition"] == {
        "StringLike": {"s3:prefix": "SYNTHETIC/*"}
    }
    written = {
        resource
        for s in document["Statement"]
        if {"s3:PutObject", "s3:DeleteObject"} & set(np.atleast_1d(s["Action"]))
        for resource in np.atleast_1d(s["Resource"])
    }
    assert written == {f"{datasets}/spark-jobs/*", f"{datasets}/archive/*"}
    handoff = iam.get_role_policy(RoleName=f"{NAME}-api", PolicyName=f"{NAME}-api-spark-handoff")
    actions = {
        action
        for s in handoff["PolicyDocument"]["Statement"]
        for action in np.atleast_1d(s["Action"])
    }
    assert actions == {"s3:PutObject", "emr-serverless:StartJobRun", "iam:PassRole"}
    s3 = aws("s3", endpoint)
    for uri, local in (
        (spark["py_files"], built / "spark-job.zip"),
        (spark["entry_point"], built / "spark-job-main.py"),
    ):
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        assert bucket.startswith(f"{NAME}-artifacts-") and key.startswith("spark/")
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == local.read_bytes()


def check_spark_handoff(
    endpoint: str, outputs: dict[str, Any], response: httpx.Response, query: dict[str, Any]
) -> None:
    """A Spark query: 202, debited, its document staged, one job run started as configured."""
    assert response.status_code == 202, response.text
    query_id = query["query_id"]
    spark = outputs["spark_emr"]
    emr = aws("emr-serverless", endpoint)
    (run,) = emr.list_job_runs(applicationId=spark["application_id"])["jobRuns"]
    job = emr.get_job_run(applicationId=spark["application_id"], jobRunId=run["id"])["jobRun"]
    assert job["executionRole"] == spark["job_role_arn"] and job["name"] == f"neblina-{query_id}"
    document = f"s3://{outputs['datasets_bucket']}/spark-jobs/{query_id}.json"
    submit = job["jobDriver"]["sparkSubmit"]
    assert submit["entryPoint"] == spark["entry_point"]
    assert submit["entryPointArguments"] == [document, query_id]
    assert submit["sparkSubmitParameters"].startswith(f"--py-files {spark['py_files']} ")
    staged = aws("s3", endpoint).get_object(
        Bucket=outputs["datasets_bucket"], Key=f"spark-jobs/{query_id}.json"
    )
    assert staged["ServerSideEncryption"] == "aws:kms"
    payload = json.loads(staged["Body"].read())["payload"]
    assert payload["record"]["query_id"] == query_id and payload["mode"] == "job"
    assert payload["dataset"]["name"] == "SYNTHETIC_SPARK"


def test_the_module_applies_to_the_emulator_serves_a_query_and_destroys(tmp_path: Path) -> None:
    import opendp.prelude as dp
    from package_lambda import IMAGE_WORKERS
    from stack import LocalStack, _stop_process, _wait_for_health

    from chalicelib.workers import families
    from neblina_client import Client

    timings: dict[str, float] = {}

    def lap(step: str, started: float) -> None:
        timings[step] = round(time.perf_counter() - started, 1)

    # A copy of the module and the emulator root: .terraform/ and the state stay in tmp.
    shutil.copytree(
        MODULE,
        tmp_path / "infra" / "terraform",
        ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"),
    )
    root = tmp_path / "infra" / "emulator"
    root.mkdir()
    shutil.copy(EMULATOR_ROOT / "main.tf", root / "main.tf")
    stack = LocalStack(synthetic_rows=2_000, quiet=True, log_dir=tmp_path / "logs")
    applied = False
    try:
        started = time.perf_counter()
        endpoint = stack.emulator_url = stack._spawn("emulator", "emulator.py", 0, dict(os.environ))
        # The zipped workers from stand-in zips, each image worker (polars) from an image URI
        # (the emulator stores it, as it stores the zips; the local process runs the code).
        zipped = families() - set(IMAGE_WORKERS)
        worker_packages = {
            family: str(stand_in_package(tmp_path / f"worker-{family}.zip", family))
            for family in sorted(zipped)
        }
        images = {
            family: f"123456789012.dkr.ecr.us-east-1.amazonaws.com/neblina-worker-{family}:test"
            for family in sorted(IMAGE_WORKERS)
        }
        worker_settings = {
            **{family: {"memory_mb": 2048, "timeout_seconds": 120} for family in zipped},
            **{
                family: {"memory_mb": 3008, "timeout_seconds": 300, "image_uri": uri}
                for family, uri in images.items()
            },
        }
        from package_lambda import build_spark_job

        spark_job = build_spark_job(tmp_path / "spark")
        spark_emr = {
            "job_package": str(tmp_path / "spark" / "spark-job.zip"),
            "entry_point": spark_job["entry_point"],
            "dataset_prefixes": [f"s3://{NAME}-datasets-123456789012/SYNTHETIC/"],
        }
        variables = [
            f"-var=spark_emr={json.dumps(spark_emr)}",
            f"-var=endpoint={endpoint}",
            f"-var=name={NAME}",
            f"-var=api_package={stand_in_package(tmp_path / 'api.zip', 'api')}",
            f"-var=authorizer_package={stand_in_package(tmp_path / 'auth.zip', 'authorizer')}",
            f"-var=worker_packages={json.dumps(worker_packages)}",
            f"-var=workers={json.dumps(worker_settings)}",
        ]
        terraform(["init", "-input=false", PLUGIN_DIR_ARG], root)
        lap("emulator + init", started)

        started = time.perf_counter()
        applied = True  # from here on, destroy whatever part of it exists
        summary = terraform(["apply", "-auto-approve", "-input=false", *variables], root)
        lap("apply", started)
        created = re.search(
            r"Apply complete! Resources: (\d+) added, 0 changed, 0 destroyed", summary
        )
        assert created, summary[-3000:]
        managed = terraform(["state", "list"], root).splitlines()
        assert int(created.group(1)) == len([r for r in managed if ".data." not in r]) > 100
        outputs = {
            k: v["value"] for k, v in json.loads(terraform(["output", "-json"], root)).items()
        }
        before_seed = deployed(endpoint)
        assert before_seed["tables"] == set(outputs["table_names"].values())
        assert outputs["datasets_bucket"] in before_seed["buckets"]
        workers = outputs["worker_function_names"]
        assert set(workers) == families()
        assert before_seed["functions"] == set(outputs["function_names"].values())
        assert before_seed["functions"] == {
            f"{NAME}-api",
            f"{NAME}-authorizer",
            *(f"{NAME}-worker-{family}" for family in families()),
        }
        assert before_seed["roles"] == {
            f"{NAME}-api",
            f"{NAME}-authorizer",
            f"{NAME}-apigateway-logs",
            f"{NAME}-spark-job",
            *(f"{NAME}-worker-{family}" for family in families()),
        }
        assert before_seed["emr_applications"] == {f"{NAME}-spark"}
        assert before_seed["apis"] == {NAME}
        assert len(before_seed["log_groups"]) == 3 + len(workers)
        assert before_seed["queues"] == {outputs["worker_dead_letter_queue_url"]}

        # Every function's environment is what Terraform gave it (the module sets no AWS_*
        # variable; the emulator's endpoint and dummy credentials are added for the
        # processes that stand in for the functions).
        functions = aws("lambda", endpoint)

        def environment(function: str) -> dict[str, str]:
            configuration = functions.get_function_configuration(FunctionName=function)
            return dict(configuration["Environment"]["Variables"])

        lambda_env = environment(outputs["function_names"]["api"])
        authorizer_env = environment(outputs["function_names"]["authorizer"])
        front_workers = json.loads(lambda_env.pop("NEBLINA_WORKERS"))
        emr_env = {k: lambda_env.pop(k) for k in list(lambda_env) if k.startswith(HANDOFF)}
        assert authorizer_env == lambda_env
        spark = outputs["spark_emr"]
        assert emr_env == {
            "NEBLINA_SPARK": "emr",
            "NEBLINA_EMR_APPLICATION_ID": spark["application_id"],
            "NEBLINA_EMR_JOB_ROLE_ARN": spark["job_role_arn"],
            "NEBLINA_EMR_ENTRY_POINT": spark["entry_point"],
            "NEBLINA_EMR_PY_FILES": spark["py_files"],
            "NEBLINA_EMR_TIMEOUT_MINUTES": "45",
            "NEBLINA_EMR_SPARK_PARAMETERS": "",
        }
        check_emr_serverless(endpoint, spark, tmp_path / "spark")
        assert front_workers == {family: {"function": name} for family, name in workers.items()}
        assert lambda_env["NEBLINA_TABLE_PREFIX"] == outputs["table_prefix"] == f"{NAME}-"
        assert lambda_env["NEBLINA_BUCKET"] == outputs["datasets_bucket"]
        assert lambda_env["NEBLINA_STORE"] == "dynamodb"
        # A failed job (after Lambda's two retries) goes to the KMS-encrypted dead-letter queue.
        queue_arn = aws("sqs", endpoint).get_queue_attributes(
            QueueUrl=outputs["worker_dead_letter_queue_url"], AttributeNames=["All"]
        )["Attributes"]
        assert queue_arn["KmsMasterKeyId"] == outputs["kms_key_arn"]
        worker_envs = {}
        for family, name in workers.items():
            configuration = functions.get_function(FunctionName=name)
            if family in images:
                assert configuration["Configuration"]["PackageType"] == "Image"
                assert configuration["Code"]["ImageUri"] == images[family]
            else:
                assert configuration["Configuration"]["PackageType"] == "Zip"
                assert (
                    configuration["Configuration"]["Handler"] == "chalicelib.worker.lambda_handler"
                )
            worker_envs[family] = environment(name)
            assert worker_envs[family] == {**lambda_env, "NEBLINA_WORKER": family}
            invoke = functions.get_function_event_invoke_config(FunctionName=name)
            assert invoke["MaximumRetryAttempts"] == 2
            assert invoke["DestinationConfig"]["OnFailure"]["Destination"] == queue_arn["QueueArn"]
        base = {k: v for k, v in os.environ.items() if not k.startswith("NEBLINA_")}
        base.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_DEFAULT_REGION="us-east-1",
            PYTHONUNBUFFERED="1",
        )
        env = {**base, **lambda_env}

        # Seeding goes through Terraform's tables and bucket and creates none of its own.
        started = time.perf_counter()
        stack.seed(env)
        lap("seed", started)
        after_seed = deployed(endpoint)
        assert after_seed == before_seed, "seeding created tables or buckets of its own"
        head = aws("s3", endpoint).head_object(
            Bucket=outputs["datasets_bucket"], Key="PENGUIN/penguins.csv"
        )
        assert head["ServerSideEncryption"] == "aws:kms"  # the bucket's default, from the module
        assert outputs["kms_key_arn"].endswith(head["SSEKMSKeyId"].split("/")[-1])

        # One worker process per function, with that function's environment and name; the
        # API server with the front's, its NEBLINA_WORKERS pointing each name at its process.
        started = time.perf_counter()
        for family, name in sorted(workers.items()):
            url = stack._spawn(
                f"worker-{family}", "workerserver.py", 0, {**base, **worker_envs[family]},
                "--worker", family, "--function-name", name,
            )  # fmt: skip
            front_workers[family]["endpoint"] = url
        stack.api_url = stack._spawn(
            "api",
            "apiserver.py",
            0,
            {**env, **emr_env, "NEBLINA_WORKERS": json.dumps(front_workers)},
        )
        _wait_for_health(stack.api_url, timeout=60)
        with Client(url=stack.api_url, token=stack.token, dataset="PENGUIN", max_retries=0) as c:
            estimate = c.sql.cost(COUNT, 1.0, 0)
            before = c.budget()
            answer = c.sql.query(COUNT, 1.0, 0)
            # the same query again, as a job: a new release (reuse=False: not the first one's)
            job = c.sql.query(COUNT, 1.0, 0, wait=False, reuse=False)
            detached = job.wait(timeout=120)
            # An OpenDP Polars count through the worker deployed from an image, sent as the
            # client builds it (the answer read as JSON: the server's side is under test).
            body = c.opendp.context(privacy_loss=1.0).query().select(dp.len()).body()
            response = httpx.post(
                f"{stack.api_url}/v1/datasets/PENGUIN/queries",
                json={**body, "query_id": f"polars-{uuid.uuid4().hex}"},
                headers={"Authorization": f"Bearer {stack.token}"},
                timeout=120,
            )
            # A query on the Spark-backed dataset: debited, then handed to EMR Serverless.
            spark_query = {
                "engine": "smartnoise_sql",
                "query": "SELECT COUNT(*) AS n FROM df",
                "epsilon": 0.5,
                "delta": "1e-6",
                "query_id": f"emr-{uuid.uuid4().hex}",
            }
            with Client(url=stack.api_url, token=stack.token, dataset="SYNTHETIC_SPARK") as sc:
                spark_before = sc.budget().remaining
            spark_response = httpx.post(
                f"{stack.api_url}/v1/datasets/SYNTHETIC_SPARK/queries",
                json=spark_query,
                headers={"Authorization": f"Bearer {stack.token}"},
                timeout=120,
            )
            with Client(url=stack.api_url, token=stack.token, dataset="SYNTHETIC_SPARK") as sc:
                spark_after = sc.budget().remaining
            after = c.budget()
            archived = c.result(answer.query_id)
        lap("workers + API start + queries", started)
        assert response.status_code == 200, response.text
        polars = response.json()
        assert polars["engine"] == "opendp_polars" and polars["result"]
        polars_cost = Decimal(polars["cost"]["epsilon"])
        assert Decimal(0) < polars_cost <= Decimal(1) and Decimal(polars["cost"]["delta"]) == 0
        assert answer.cost == estimate and estimate.epsilon == Decimal(1)
        for release in (answer, detached):
            assert list(release.result.columns) == ["n"] and len(release.result) == 1
            # The seeded PENGUIN (344 rows) was read from Terraform's bucket by the sql
            # worker: a COUNT at epsilon 1 has Laplace noise of scale about 1, and
            # P(|noise| > 30) < 1e-12.
            assert abs(int(release.result["n"].iloc[0]) - 344) <= 30
        spent = answer.cost + detached.cost
        assert after.remaining.delta == before.remaining.delta - spent.delta
        assert after.remaining.epsilon == before.remaining.epsilon - spent.epsilon - polars_cost
        assert archived.state == "done" and archived.result.equals(answer.result)
        check_spark_handoff(endpoint, outputs, spark_response, spark_query)
        spark_cost = Decimal(spark_response.json()["cost"]["epsilon"])
        assert spark_cost > 0 and spark_after.epsilon == spark_before.epsilon - spark_cost
        for name in ["api", *(f"worker-{family}" for family in workers)]:
            process = stack.processes.pop(name)
            _stop_process(process.pid)
            process.wait(timeout=10)

        started = time.perf_counter()
        # No refresh: apply already read every resource back after creating it, and the
        # refresh of 91 resources costs ~15 s on a loaded 2-core machine.
        summary = terraform(
            ["destroy", "-auto-approve", "-input=false", "-refresh=false", *variables], root
        )
        lap("destroy", started)
        applied = False
        assert f"Destroy complete! Resources: {created.group(1)} destroyed." in summary
        assert deployed(endpoint) == {kind: set() for kind in before_seed}
        key = aws("kms", endpoint).describe_key(KeyId=outputs["kms_key_arn"])["KeyMetadata"]
        assert key["KeyState"] == "PendingDeletion"  # AWS keeps a key 7-30 days; so does moto
    finally:
        if applied and "emulator" in stack.processes:  # a step failed: clean up, quietly
            subprocess.run(
                [str(terraform_binary()), "destroy", "-auto-approve", "-input=false", *variables],
                cwd=root,
                capture_output=True,
                timeout=600,
                check=False,
            )
        stack.stop()
        print(f"\nterraform apply test, seconds per step: {timings}")
