"""Large results take the same path on every backend: the service archives them in S3.

The overflow to S3 and the hard limit live in the service, not in the stores, so a
MongoDB record (16 MB per document) keeps the same pointer as a DynamoDB item (400 KB).
The S3 side is the session stack's emulator; thresholds are lowered so that a PENGUIN
query is "large".
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib import metadata, result_overflow
from chalicelib.config import get_settings
from chalicelib.datasets import DatasetLoader
from chalicelib.errors import ResultTooLarge
from chalicelib.models import Dataset, PrivacyCost, QueryState, User, utcnow
from chalicelib.service import Service

ROOT = Path(__file__).resolve().parents[2]
META = metadata.validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))
GROUPS = "SELECT species, island, sex, COUNT(*) AS n FROM df GROUP BY species, island, sex"


def body(query: str, query_id: str | None = None) -> dict[str, Any]:
    return {
        "engine": "smartnoise_sql",
        "query": query,
        "epsilon": 1.0,
        "delta": 1e-5,
        "query_id": query_id or uuid.uuid4().hex,
    }


@pytest.mark.stack
def test_archived_and_refused_results_behave_alike_on_every_backend(
    backend: Any, stack: Any
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    backend.put_user(User(user_id=user, created_at=utcnow()))
    if backend.get_dataset("PENGUIN") is None:
        source = "s3://neblina-datasets/PENGUIN/penguins.csv"
        backend.put_dataset(Dataset("PENGUIN", source, META, utcnow()))
    backend.create_grant(user, "PENGUIN", PrivacyCost(epsilon=10, delta="0.001"))
    settings = dataclasses.replace(get_settings(), inline_result_bytes=0)
    service = Service(backend, settings, DatasetLoader(settings))

    answer = service.query(user, "PENGUIN", body(GROUPS))
    record = backend.get_query(answer["query_id"])
    assert record is not None and record.state is QueryState.DONE
    assert result_overflow.is_pointer(record.result)
    assert record.result["key"] == f"archive/{answer['query_id']}.json"
    replay = service.query(user, "PENGUIN", body(GROUPS, answer["query_id"]))
    assert replay["replayed"] is True and replay["result"] == answer["result"]
    assert service.get_query(user, "PENGUIN", answer["query_id"])["result"] == answer["result"]

    strict = Service(
        backend, dataclasses.replace(settings, max_result_bytes=200), DatasetLoader(settings)
    )
    refused = uuid.uuid4().hex
    with pytest.raises(ResultTooLarge):
        strict.query(user, "PENGUIN", body(GROUPS, refused))
    failed = backend.get_query(refused)
    assert failed is not None and failed.state is QueryState.FAILED and failed.result is None
    assert failed.error is not None and failed.error["error"] == "result_too_large"
    grant = backend.get_grant(user, "PENGUIN")
    assert grant is not None and grant.spent == record.cost + failed.cost
