"""The real hop: the API server reaches worker processes through boto3's Lambda invoke.

The session stack runs one worker process per engine family (localstack/workerserver.py)
and hands the API server their endpoints in ``NEBLINA_WORKERS``; every stack test's query
goes through them.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from api_process import api_server
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
COUNT = {
    "engine": "smartnoise_sql",
    "query": "SELECT COUNT(*) AS n FROM df",
    "epsilon": 0.5,
    "delta": 0,
}


def lambda_client(url: str) -> Any:
    return boto3.client(
        "lambda",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": 1}),
    )


def budget(api_url: str, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    answer = httpx.get(f"{api_url}/v1/datasets/PENGUIN/budget", headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_the_stack_runs_one_worker_process_per_family_behind_the_invoke_api(
    stack: Any,
) -> None:
    from chalicelib.workers import local_families

    assert set(stack.workers) == local_families() and {"sql", "opendp"} <= local_families()
    assert json.loads(stack.env()["NEBLINA_WORKERS"])["sql"] == {
        "function": "neblina-worker-sql",
        "endpoint": stack.workers["sql"],
    }
    client = lambda_client(stack.workers["sql"])
    answer = client.invoke(
        FunctionName="neblina-worker-sql", Payload=json.dumps({"op": "nope"}).encode()
    )
    assert answer["StatusCode"] == 200 and "FunctionError" not in answer
    assert json.loads(answer["Payload"].read())["error"]["code"] == "invalid_request"
    queued = client.invoke(
        FunctionName="neblina-worker-sql", InvocationType="Event", Payload=b'{"op": "nope"}'
    )
    assert queued["StatusCode"] == 202
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="neblina-worker-other", Payload=b"{}")


def test_a_query_through_the_worker_process_debits_its_exact_cost_once(
    stack: Any, make_researcher: Any
) -> None:
    researcher = make_researcher()
    headers = {"Authorization": f"Bearer {researcher.token}"}
    before = budget(stack.api_url, researcher.token)
    query_id = f"hop-{uuid.uuid4().hex[:12]}"
    url = f"{stack.api_url}/v1/datasets/PENGUIN/queries"
    with httpx.Client(headers=headers, timeout=120) as http:
        first = http.post(url, json={**COUNT, "query_id": query_id})
        again = http.post(url, json={**COUNT, "query_id": query_id})
    assert first.status_code == 200, first.text
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["result"] == first.json()["result"]
    after = budget(stack.api_url, researcher.token)
    spent = Decimal(after["spent"]["epsilon"]) - Decimal(before["spent"]["epsilon"])
    assert spent == Decimal("0.5")


def test_a_worker_that_cannot_be_reached_answers_503_and_charges_nothing(
    stack: Any, make_researcher: Any, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = {f: {"function": f"neblina-worker-{f}", "endpoint": dead} for f in ("sql", "opendp")}
    researcher = make_researcher()
    before = budget(stack.api_url, researcher.token)
    query_id = f"dead-{uuid.uuid4().hex[:12]}"
    with api_server(stack, {"NEBLINA_WORKERS": json.dumps(config)}, tmp_path) as api:
        headers = {"Authorization": f"Bearer {researcher.token}"}
        url = f"{api.url}/v1/datasets/PENGUIN/queries"
        answer = httpx.post(url, json={**COUNT, "query_id": query_id}, headers=headers, timeout=60)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "worker_unavailable"
        assert budget(api.url, researcher.token) == before


def poll_done(http: httpx.Client, url: str, deadline_seconds: float = 120) -> dict[str, Any]:
    """The record at ``url`` once settled (polled with a deadline); the phases seen."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        record: dict[str, Any] = http.get(url).json()
        if record["state"] != "running":
            return record
        assert record["phase"] in {"queued", "loading", "running", "archiving"}
        time.sleep(0.05)
    raise AssertionError(f"{url} still running after {deadline_seconds} s")


def test_an_async_query_is_accepted_then_done_through_the_worker_with_its_exact_debit(
    stack: Any, make_researcher: Any
) -> None:
    """The 202 travels front -> boto3 Event invoke -> worker process; many at once:
    tests/stack/test_jobs_concurrency.py."""
    user = make_researcher()
    before = budget(stack.api_url, user.token)
    query_id = f"job-{uuid.uuid4().hex[:12]}"
    headers = {"Authorization": f"Bearer {user.token}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=120) as http:
        answer = http.post(
            "/v1/datasets/PENGUIN/queries", json={**COUNT, "query_id": query_id, "wait": False}
        )
        assert answer.status_code == 202, answer.text
        assert answer.headers["Location"] == f"/v1/datasets/PENGUIN/queries/{query_id}"
        assert (answer.json()["state"], answer.json()["phase"]) == ("running", "queued")
        record = poll_done(http, answer.headers["Location"])
    assert record["state"] == "done", record
    assert record["result"]["type"] == "table" and record["phase"] is None
    after = budget(stack.api_url, user.token)
    spent = Decimal(after["spent"]["epsilon"]) - Decimal(before["spent"]["epsilon"])
    assert spent == Decimal("0.5")
