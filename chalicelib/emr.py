"""The hand-off of Spark jobs to EMR Serverless (``NEBLINA_SPARK=emr``; docs/spark.md).

On AWS a Spark-backed dataset's job runs as an EMR Serverless job run, not in a Lambda.
:class:`EmrServerlessWorkers` is the front's :class:`~chalicelib.hop.Workers` transport
when ``NEBLINA_SPARK=emr``: every family goes to its Lambda as before, except the
``spark`` family's jobs, which are handed to EMR Serverless in two calls:

1. the job's document (the ``run`` payload the front built after the debit, and the
   ``NEBLINA_*`` settings the job needs) is written to the datasets bucket under
   ``spark-jobs/<query id>.json`` (SSE-KMS, the bucket's default): a job's payload can be
   longer than StartJobRun's 10,280-character argument limit;
2. ``emr-serverless:StartJobRun`` on the application, with the job execution role, the
   entry point (``chalicelib/spark_job.py``'s ``main`` behind a small script) and the code
   zip (``--py-files``) from the artifacts bucket, and the document's location and the
   query id as its arguments. ``clientToken`` is the query id: a retried call starts no
   second job run.

Whatever runs how often, the job entry point claims the record first (``store.claim``):
one job run releases, at most once. A refusal before anything started (S3 or EMR answered
4xx, the endpoint could not be reached) is :class:`~chalicelib.hop.HopFailed` with
``delivered=False``: the front takes the job back and refunds it (503
``worker_unavailable``). Otherwise the job run may exist, and the claim decides.

Nothing here imports boto3 before the first hand-off.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib.hop import HopFailed, Workers
from chalicelib.workers import SPARK_WORKER

STAGING_PREFIX = "spark-jobs/"
# Settings of the front the job must not get: how the front reaches its workers and EMR.
NOT_FORWARDED = ("NEBLINA_WORKERS", "NEBLINA_EMR_")


@dataclass(frozen=True)
class EmrConfig:
    """Where and how the front starts job runs (the ``NEBLINA_EMR_*`` settings Terraform
    gives the front, docs/spark.md)."""

    application_id: str
    execution_role_arn: str
    entry_point: str  # s3://<artifacts>/spark/main-<sha>.py
    py_files: str  # s3://<artifacts>/spark/job-<sha>.zip
    bucket: str  # the datasets bucket: the documents go under spark-jobs/
    region: str
    timeout_minutes: int = 60
    spark_parameters: str = ""  # more spark-submit parameters (--conf ...)
    endpoint_url: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> EmrConfig | None:
        """The configuration when ``NEBLINA_SPARK=emr``, else None (local Spark worker)."""
        if environ.get("NEBLINA_SPARK") != "emr":
            return None
        needed = {  # read one by one (tests/deploy/test_infra_terraform.py scans for them)
            "application_id": environ.get("NEBLINA_EMR_APPLICATION_ID", ""),
            "execution_role_arn": environ.get("NEBLINA_EMR_JOB_ROLE_ARN", ""),
            "entry_point": environ.get("NEBLINA_EMR_ENTRY_POINT", ""),
            "py_files": environ.get("NEBLINA_EMR_PY_FILES", ""),
            "bucket": environ.get("NEBLINA_BUCKET", ""),
        }
        missing = [field for field, value in needed.items() if not value]
        if missing:
            raise ValueError(f"NEBLINA_SPARK=emr needs its settings: {', '.join(missing)} unset")
        return cls(
            **needed,
            region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            timeout_minutes=int(environ.get("NEBLINA_EMR_TIMEOUT_MINUTES") or 60),
            spark_parameters=environ.get("NEBLINA_EMR_SPARK_PARAMETERS", ""),
            endpoint_url=environ.get("AWS_ENDPOINT_URL") or None,
        )


def job_document(payload: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """What the job reads: the ``run`` payload and the settings it runs with (the
    front's ``NEBLINA_*`` minus how the front reaches its workers; Spark reads S3 itself)."""
    settings = {
        name: value
        for name, value in environ.items()
        if name.startswith("NEBLINA_") and not name.startswith(NOT_FORWARDED)
    }
    return {"payload": dict(payload), "environment": settings}


def start_job_run_request(config: EmrConfig, query_id: str, document_uri: str) -> dict[str, Any]:
    """The StartJobRun request of one job (tests/unit/test_emr.py checks its shape)."""
    parameters = (
        f"--py-files {config.py_files} --conf spark.sql.ansi.enabled=false"
        # the driver's region (its S3 and DynamoDB clients): the front's own
        f" --conf spark.emr-serverless.driverEnv.AWS_REGION={config.region}"
    )
    if config.spark_parameters:
        parameters = f"{parameters} {config.spark_parameters}"
    return {
        "applicationId": config.application_id,
        "clientToken": query_id,  # idempotent: a retried call starts no second run
        "executionRoleArn": config.execution_role_arn,
        "name": f"neblina-{query_id}",
        "jobDriver": {
            "sparkSubmit": {
                "entryPoint": config.entry_point,
                "entryPointArguments": [document_uri, query_id],
                "sparkSubmitParameters": parameters,
            }
        },
        "executionTimeoutMinutes": config.timeout_minutes,
    }


class EmrServerlessWorkers:
    """The ``spark`` family's jobs as EMR Serverless job runs; the rest to ``inner``."""

    def __init__(
        self,
        inner: Workers,
        config: EmrConfig,
        *,
        s3: Callable[[], Any] | None = None,
        emr: Callable[[], Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.inner = inner
        self.config = config
        self._s3 = s3
        self._emr = emr
        self._environ = environ
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def _client(self, service: str) -> Any:
        given = self._s3 if service == "s3" else self._emr
        if given is not None:
            return given()
        with self._lock:
            if service not in self._clients:
                import boto3
                from botocore.config import Config

                self._clients[service] = boto3.session.Session().client(
                    service,
                    region_name=self.config.region,
                    endpoint_url=self.config.endpoint_url,
                    config=Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard"}),
                )
            return self._clients[service]

    def call(self, worker: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self.inner.call(worker, payload)

    def submit(self, worker: str, payload: dict[str, Any]) -> None:
        if worker != SPARK_WORKER:
            self.inner.submit(worker, payload)
            return
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        query_id = str(payload["record"]["query_id"])
        key = f"{STAGING_PREFIX}{query_id}.json"
        document = job_document(payload, os.environ if self._environ is None else self._environ)
        try:
            self._client("s3").put_object(
                Bucket=self.config.bucket,
                Key=key,
                Body=json.dumps(document, separators=(",", ":")).encode(),
                ContentType="application/json",
            )
        except (BotoCoreError, ClientError) as exc:  # no job run can exist yet
            raise HopFailed(f"spark job {query_id}: not staged: {exc}", delivered=False) from exc
        request = start_job_run_request(self.config, query_id, f"s3://{self.config.bucket}/{key}")
        try:
            self._client("emr-serverless").start_job_run(**request)
        except EndpointConnectionError as exc:
            raise HopFailed(f"EMR Serverless unreachable: {exc}", delivered=False) from exc
        except ClientError as exc:  # 4xx: refused, no run; 5xx: a run may exist
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
            raise HopFailed(f"StartJobRun {query_id}: {exc}", delivered=status >= 500) from exc
        except BotoCoreError as exc:
            raise HopFailed(f"StartJobRun {query_id}: {exc}", delivered=True) from exc
