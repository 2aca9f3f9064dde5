"""The hand-off of Spark jobs to EMR Serverless (chalicelib/emr.py, docs/spark.md).

EMR Serverless cannot run here (no AWS account, and the emulator stores a job run without
running it): these tests check, with botocore's Stubber, the exact requests the front
sends (the staged job document, then StartJobRun), and what the front does when EMR
refuses. The job itself runs under spark-submit in tests/stack/test_spark.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import ANY, Stubber

from chalicelib import metadata
from chalicelib.config import from_environ
from chalicelib.datasets import DatasetLoader
from chalicelib.emr import EmrConfig, EmrServerlessWorkers, job_document
from chalicelib.errors import WorkerUnavailable
from chalicelib.hop import InProcessWorkers
from chalicelib.models import Dataset, PrivacyCost, QueryState, User, utcnow
from chalicelib.service import Accepted, Service
from chalicelib.storage.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
META = {**yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()), "executor": "spark"}
QUERY = {
    "engine": "smartnoise_sql",
    "query": "SELECT COUNT(*) AS n FROM df",
    "epsilon": 1,
    "delta": 0,
}
JOB_ARN = "arn:aws:emr-serverless:eu-central-1:123456789012:/applications/00fabcd1234/jobruns/00job"
ENVIRON = {
    "NEBLINA_SPARK": "emr",
    "NEBLINA_EMR_APPLICATION_ID": "00fabcd1234",
    "NEBLINA_EMR_JOB_ROLE_ARN": "arn:aws:iam::123456789012:role/neblina-spark-job",
    "NEBLINA_EMR_ENTRY_POINT": "s3://neblina-artifacts/spark/main-ab12.py",
    "NEBLINA_EMR_PY_FILES": "s3://neblina-artifacts/spark/job-cd34.zip",
    "NEBLINA_EMR_TIMEOUT_MINUTES": "30",
    "NEBLINA_BUCKET": "neblina-datasets",
    "NEBLINA_TABLE_PREFIX": "neblina-",
    "NEBLINA_STORE": "dynamodb",
    "NEBLINA_WORKERS": '{"sql": {"function": "neblina-worker-sql"}}',
    "AWS_REGION": "eu-central-1",
}


def client(service: str) -> Any:
    """A real botocore client (the Stubber answers; nothing leaves the process)."""
    return boto3.client(
        service,
        region_name="eu-central-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.put_user(User(user_id="alice", created_at=utcnow()))
    dataset = Dataset(
        "BIG", "s3://neblina-datasets/big/people.parquet", metadata.validate(META), utcnow(), "",
        "parquet",
    )  # fmt: skip
    s.put_dataset(dataset)
    s.create_grant("alice", "BIG", PrivacyCost(epsilon=5, delta="0.001"))
    return s


def front(store: MemoryStore) -> tuple[Service, Any, Any, EmrServerlessWorkers]:
    service = Service(store, from_environ(), DatasetLoader(from_environ()))
    assert service.local is not None
    config = EmrConfig.from_environ(ENVIRON)
    assert config is not None
    s3, emr = client("s3"), client("emr-serverless")
    workers = EmrServerlessWorkers(
        InProcessWorkers(service.local), config, s3=lambda: s3, emr=lambda: emr, environ=ENVIRON
    )
    service.workers = workers
    return service, s3, emr, workers


def test_a_spark_job_is_staged_then_started_as_one_idempotent_emr_serverless_job_run(
    store: MemoryStore,
) -> None:
    service, s3, emr, _ = front(store)
    query_id = "emr-job-0001"
    staged: list[bytes] = []
    with Stubber(s3) as s3_stub, Stubber(emr) as emr_stub:
        s3_stub.add_response(
            "put_object",
            {"ETag": '"e"'},
            {
                "Bucket": "neblina-datasets",
                "Key": f"spark-jobs/{query_id}.json",
                "Body": ANY,
                "ContentType": "application/json",
            },
        )
        emr_stub.add_response(
            "start_job_run",
            {"applicationId": "00fabcd1234", "jobRunId": "00job", "arn": JOB_ARN},
            {
                "applicationId": "00fabcd1234",
                "clientToken": query_id,  # a retried StartJobRun starts no second run
                "executionRoleArn": "arn:aws:iam::123456789012:role/neblina-spark-job",
                "name": f"neblina-{query_id}",
                "jobDriver": {
                    "sparkSubmit": {
                        "entryPoint": "s3://neblina-artifacts/spark/main-ab12.py",
                        "entryPointArguments": [
                            f"s3://neblina-datasets/spark-jobs/{query_id}.json",
                            query_id,
                        ],
                        "sparkSubmitParameters": (
                            "--py-files s3://neblina-artifacts/spark/job-cd34.zip "
                            "--conf spark.sql.ansi.enabled=false "
                            "--conf spark.emr-serverless.driverEnv.AWS_REGION=eu-central-1"
                        ),
                    }
                },
                "executionTimeoutMinutes": 30,
            },
        )
        s3.meta.events.register(
            "before-parameter-build.s3.PutObject", lambda params, **_: staged.append(params["Body"])
        )
        before = store.get_grant("alice", "BIG")
        answer = service.query("alice", "BIG", {**QUERY, "query_id": query_id})
        s3_stub.assert_no_pending_responses()
        emr_stub.assert_no_pending_responses()
    assert isinstance(answer, Accepted)
    record = store.get_query(query_id)
    assert record is not None and record.state is QueryState.RUNNING and record.phase == "queued"
    after = store.get_grant("alice", "BIG")
    assert before is not None and after is not None
    assert after.remaining == before.remaining - record.cost  # debited once, at submission
    (body,) = staged
    document = json.loads(body)
    assert document["payload"]["op"] == "run" and document["payload"]["mode"] == "job"
    assert document["payload"]["record"]["query_id"] == query_id
    assert document["payload"]["dataset"]["name"] == "BIG"
    # the job gets the front's settings, not how the front reaches its workers or EMR
    assert document["environment"] == {
        k: v for k, v in ENVIRON.items() if k.startswith("NEBLINA_") and "WORKERS" not in k
        and not k.startswith("NEBLINA_EMR_")
    }  # fmt: skip


def test_a_job_run_emr_refuses_is_refunded_and_answered_worker_unavailable(
    store: MemoryStore,
) -> None:
    service, s3, emr, _ = front(store)
    with Stubber(s3) as s3_stub, Stubber(emr) as emr_stub:
        s3_stub.add_response("put_object", {"ETag": '"e"'})
        emr_stub.add_client_error(
            "start_job_run",
            service_error_code="ValidationException",
            service_message="Application is terminated",
            http_status_code=400,
        )
        before = store.get_grant("alice", "BIG")
        with pytest.raises(WorkerUnavailable):
            service.query("alice", "BIG", {**QUERY, "query_id": "emr-refused-1"})
    record = store.get_query("emr-refused-1")
    assert record is not None and record.state is QueryState.REFUNDED
    assert store.get_grant("alice", "BIG") == before


def test_other_families_still_go_to_their_lambda(store: MemoryStore) -> None:
    calls: list[tuple[str, str]] = []

    class Inner(InProcessWorkers):
        def submit(self, worker: str, payload: dict[str, Any]) -> None:
            calls.append(("submit", worker))

        def call(self, worker: str, payload: dict[str, Any]) -> dict[str, Any]:
            calls.append(("call", worker))
            return {"ok": True}

    config = EmrConfig.from_environ(ENVIRON)
    assert config is not None
    workers = EmrServerlessWorkers(Inner(None), config, s3=lambda: None, emr=lambda: None)  # type: ignore[arg-type]
    workers.submit("sql", {"op": "run"})
    workers.call("sql", {"op": "price"})
    assert calls == [("submit", "sql"), ("call", "sql")]


def test_emr_is_used_only_when_neblina_spark_says_emr_and_then_needs_every_setting() -> None:
    assert EmrConfig.from_environ({**ENVIRON, "NEBLINA_SPARK": ""}) is None
    incomplete = {k: v for k, v in ENVIRON.items() if k != "NEBLINA_EMR_JOB_ROLE_ARN"}
    with pytest.raises(ValueError, match="execution_role_arn"):
        EmrConfig.from_environ(incomplete)
    assert job_document({"op": "run"}, {"NEBLINA_EMR_X": "1", "HOME": "/root"}) == {
        "payload": {"op": "run"},
        "environment": {},
    }


def test_a_job_whose_document_cannot_be_read_claims_its_record_and_refunds_it(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import chalicelib.storage
    from chalicelib import spark_job

    service, s3, emr, _ = front(store)
    with Stubber(s3) as s3_stub, Stubber(emr) as emr_stub:
        s3_stub.add_response("put_object", {"ETag": '"e"'})
        emr_stub.add_response(
            "start_job_run", {"applicationId": "a", "jobRunId": "j", "arn": JOB_ARN}
        )
        service.query("alice", "BIG", {**QUERY, "query_id": "emr-unread-1"})
    before = store.get_grant("alice", "BIG")
    monkeypatch.setattr(chalicelib.storage, "get_store", lambda: store)
    answer = spark_job.run(str(tmp_path / "missing.json"), "emr-unread-1")
    assert answer["ok"] is False
    record = store.get_query("emr-unread-1")
    assert record is not None and record.state is QueryState.REFUNDED
    after = store.get_grant("alice", "BIG")
    assert before is not None and after is not None
    assert after.remaining == before.remaining + record.cost
    # a second run of the same job finds nothing to claim and leaves the record as it is
    assert spark_job.run(str(tmp_path / "missing.json"), "emr-unread-1")["ok"] is False
    assert store.get_grant("alice", "BIG") == after
