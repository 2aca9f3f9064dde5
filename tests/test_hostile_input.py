"""Hostile bodies and hostile privacy amounts over HTTP: a clear 4xx, nothing debited.

Every body-reading route (``POST .../cost`` and ``POST .../queries``) gets each hostile body;
the answer must be a 400 with a stable code, the grant must be untouched, nothing archived,
and the server must answer the next request.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

ROUTES = ("cost", "queries")
COUNT = "SELECT COUNT(*) AS n FROM df"


def sql(**fields: Any) -> dict[str, Any]:
    body = {"engine": "smartnoise_sql", "query": COUNT, "epsilon": 1.0, "delta": 1e-5}
    return {**body, **fields, "query_id": uuid.uuid4().hex}


def deep_object(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


# (name, raw body) pairs: each is malformed or hostile JSON, never a valid request.
HOSTILE_BODIES = [
    ("10,000 nested arrays", b"[" * 10_000 + b"]" * 10_000),
    (
        "a 5,000-deep object in pipeline",
        (
            '{"engine": "opendp", "query_id": "q-deep-pipeline", "pipeline": '
            + deep_object(5_000)
            + "}"
        ).encode(),
    ),
    (
        "a 5,000-deep array in mechanisms",
        ('{"engine": "smartnoise_sql", "mechanisms": ' + "[" * 5000 + "]" * 5000 + "}").encode(),
    ),
    (
        "300 nested objects (over the depth limit, under the recursion limit)",
        deep_object(300).encode(),
    ),
    ("epsilon 1e400 (a float overflow)", json.dumps(sql()).replace("1.0", "1e400").encode()),
    ("epsilon NaN", json.dumps(sql()).replace("1.0", "NaN").encode()),
    ("delta -Infinity", json.dumps(sql()).replace("1e-05", "-Infinity").encode()),
    ("a 5,000-digit integer", json.dumps(sql()).replace("1.0", "9" * 5000).encode()),
    ("invalid UTF-8", b'{"engine": "\xff\xfe"}'),
]


@pytest.fixture
def researcher(make_researcher):  # type: ignore[no-untyped-def]
    return make_researcher({"PENGUIN": ("10", "0.001")})


@pytest.fixture
def http(stack, researcher):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {researcher.token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as client:
        yield client


def untouched(http: httpx.Client) -> None:
    """The grant is whole and the archive empty."""
    budget = http.get("/v1/datasets/PENGUIN/budget").json()
    assert budget["spent"] == {"epsilon": "0", "delta": "0"}, budget
    assert http.get("/v1/datasets/PENGUIN/queries").json()["queries"] == []


@pytest.mark.parametrize(("name", "raw"), HOSTILE_BODIES, ids=[n for n, _ in HOSTILE_BODIES])
def test_hostile_json_bodies_get_a_400_on_every_body_reading_route(
    http: httpx.Client, name: str, raw: bytes
) -> None:
    for route in ROUTES:
        response = http.post(f"/v1/datasets/PENGUIN/{route}", content=raw)
        assert response.status_code == 400, (name, route, response.text[:300])
        assert response.json()["error"] == "invalid_request", (name, route, response.text)
        assert http.get("/health").status_code == 200  # the server answers the next request
    untouched(http)
