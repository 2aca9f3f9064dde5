"""The routes through chalice.test.Client: status codes, error bodies, the 400/413 edges.

No server and no emulator: the app runs in this process (as ``chalice local`` and the Lambda
run it, authorizer included) over an in-memory store and the penguin CSV. What is tested here
is what ``app.py`` adds to the service: the authorizer, the body and parameter edges, the
one error mapping (``{"error", "message"}`` with the error's status, a bare 500 for anything
unexpected) and that a refused request debits nothing. The gateway's own bodies for 401/403
(Terraform's gateway responses, ``localstack/apiserver.py``) are tested over HTTP in
``tests/stack/test_e2e_http.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from chalice.test import Client as ChaliceClient

import app
from chalicelib import auth, metadata, storage
from chalicelib.config import from_environ, get_settings
from chalicelib.datasets import DatasetLoader
from chalicelib.models import Dataset, PrivacyCost, User, utcnow
from chalicelib.service import Service
from chalicelib.storage.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
META = metadata.validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))
COUNT = {
    "engine": "smartnoise_sql",
    "query": "SELECT COUNT(*) AS n FROM df",
    "epsilon": "1",
    "delta": "0",
}


@dataclass
class Api:
    """The app in-process, with alice's token on an in-memory store."""

    http: Any
    store: MemoryStore
    token: str

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
        if raw is not None:
            headers["Content-Type"] = "application/json"
        return self.http.request(method, path, headers=headers, body=raw or b"")

    def remaining(self, dataset: str = "PENGUIN") -> PrivacyCost:
        grant = self.store.get_grant("alice", dataset)
        assert grant is not None
        return grant.remaining


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    store = MemoryStore()
    for user_id in ("alice", "bob"):
        store.put_user(User(user_id=user_id, created_at=utcnow()))
    source = str(ROOT / "localstack/data/penguins.csv")
    for name in ("PENGUIN", "OTHER"):
        store.put_dataset(Dataset(name, source, META, utcnow()))
    store.create_grant("alice", "PENGUIN", PrivacyCost(epsilon=Decimal("2.5"), delta="0.001"))
    issued = auth.issue_token("alice")
    store.put_token(issued.record)
    settings = from_environ()
    # The app's two caches, filled as the first request would fill them.
    monkeypatch.setattr(app, "_SERVICE", [Service(store, settings, DatasetLoader(settings))])
    monkeypatch.setattr(storage, "_STORE", [store])
    get_settings.cache_clear()
    with ChaliceClient(app.app) as client:
        yield Api(client.http, store, issued.secret)
    get_settings.cache_clear()


def error_of(response: Any) -> tuple[int, str]:
    """The status and error code of an error answer, checking its shape on the way."""
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    assert set(body) == {"error", "message"}
    assert isinstance(body["message"], str) and body["message"]
    return response.status_code, body["error"]


def test_health_and_the_openapi_document_need_no_token() -> None:
    with ChaliceClient(app.app) as client:
        health = client.http.get("/health")
        document = client.http.get("/v1/openapi.json")
    assert health.status_code == 200
    assert json.loads(health.body) == {"status": "ok", "version": app.VERSION}
    assert document.status_code == 200
    assert json.loads(document.body)["openapi"].startswith("3.")


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer nbl_short", "Basic dXNlcjpwYXNz", "Bearer nbl_" + "x" * 43],
    ids=["empty", "no-token", "malformed", "basic", "unknown"],
)
def test_a_malformed_or_unknown_token_is_api_gateways_401(api: Api, header: str) -> None:
    # A TOKEN authorizer signals 401 by raising exactly Exception("Unauthorized"): API
    # Gateway (and localstack/apiserver.py) turn it into the 401; chalice's test gateway
    # passes it through.
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        api.http.get("/v1/datasets/PENGUIN/budget", headers={"Authorization": header})


def test_a_request_without_a_token_is_401(api: Api) -> None:
    assert api.http.get("/v1/datasets/PENGUIN/budget").status_code == 401


def test_a_revoked_token_is_403(api: Api) -> None:
    token = api.store.get_token(auth.hash_token(api.token))
    assert token is not None
    api.store.tokens[token.token_hash] = token.__class__(**{**vars(token), "revoked": True})
    assert api.call("GET", "/v1/datasets/PENGUIN/budget").status_code == 403


def test_the_read_routes_answer_200_with_their_documents(api: Api) -> None:
    datasets = json.loads(api.call("GET", "/v1/datasets").body)
    assert [d["name"] for d in datasets["datasets"]] == ["PENGUIN"]  # only granted ones
    described = json.loads(api.call("GET", "/v1/datasets/PENGUIN/metadata").body)
    assert described["metadata"]["columns"].keys() == META["columns"].keys()
    budget = json.loads(api.call("GET", "/v1/datasets/PENGUIN/budget").body)
    assert budget["initial"] == budget["remaining"] == {"epsilon": "2.5", "delta": "0.001"}
    dummy = json.loads(api.call("GET", "/v1/datasets/PENGUIN/dummy?rows=7&seed=3").body)
    assert (dummy["rows"], dummy["seed"]) == (7, 3)
    history = json.loads(api.call("GET", "/v1/datasets/PENGUIN/queries").body)
    assert history == {"queries": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/datasets/NOPE/metadata", 404, "dataset_not_found"),
        ("GET", "/v1/datasets/OTHER/metadata", 403, "no_grant"),
        ("GET", "/v1/datasets/OTHER/budget", 403, "no_grant"),
        ("GET", "/v1/datasets/PENGUIN/dummy?rows=0", 400, "invalid_request"),
        ("GET", "/v1/datasets/PENGUIN/dummy?rows=many", 400, "invalid_request"),
        ("GET", "/v1/datasets/PENGUIN/dummy?rows=100001", 400, "invalid_request"),
        ("GET", "/v1/datasets/PENGUIN/dummy?seed=-1", 400, "invalid_request"),
        ("GET", "/v1/datasets/PENGUIN/queries?limit=101", 400, "invalid_request"),
        ("GET", "/v1/datasets/PENGUIN/queries?cursor=not-a-cursor", 400, "invalid_request"),
        ("GET", "/v1/datasets/PENGUIN/queries/q-00000001", 404, "query_not_found"),
        ("GET", "/v1/datasets/PENGUIN/queries/..%2F..", 404, "query_not_found"),
    ],
)
def test_read_routes_refuse_with_a_stable_code(
    api: Api, method: str, path: str, status: int, code: str
) -> None:
    assert error_of(api.call(method, path)) == (status, code)


@pytest.mark.parametrize("route", ["cost", "queries"])
@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"", 400, "invalid_request"),  # no body
        (b"{", 400, "invalid_request"),
        (b"[]", 400, "invalid_request"),
        (b'{"engine": "smartnoise_sql", "epsilon": NaN}', 400, "invalid_request"),
        (b'{"epsilon": 1e400}', 400, "invalid_request"),
        (b"[" * 300 + b"]" * 300, 400, "invalid_request"),  # deeper than the decoder's limit
        ("\u00e9".encode("latin-1"), 400, "invalid_request"),  # not UTF-8
        (b'{"engine": "duckdb", "query_id": "q-00000001"}', 400, "invalid_request"),
        (b'{"engine": "smartnoise_sql", "query": "SELECT", "epsilon": 1, "delta": 0}', 400, None),
        (b" " * (64 * 1024 + 1), 413, "payload_too_large"),
    ],
    ids=[
        "empty",
        "truncated",
        "array",
        "nan",
        "overflow",
        "deep",
        "latin-1",
        "unknown-engine",
        "bad-sql",
        "over-64KiB",
    ],
)
def test_bad_bodies_are_refused_at_the_edge_and_debit_nothing(
    api: Api, route: str, raw: bytes, status: int, code: str | None
) -> None:
    before = api.remaining()
    got_status, got_code = error_of(api.call("POST", f"/v1/datasets/PENGUIN/{route}", raw=raw))
    assert got_status == status
    assert got_code == code or (code is None and got_code in {"invalid_query", "invalid_request"})
    assert api.remaining() == before
    assert api.store.queries == {}


def test_a_body_of_exactly_the_limit_is_read(api: Api) -> None:
    body = json.dumps(COUNT).encode()
    padded = body[:-1] + b" " * (64 * 1024 - len(body)) + b"}"
    assert len(padded) == get_settings().max_body_bytes
    response = api.call("POST", "/v1/datasets/PENGUIN/cost", raw=padded)
    assert response.status_code == 200


def cost_of(api: Api, body: dict[str, Any]) -> PrivacyCost:
    response = api.call("POST", "/v1/datasets/PENGUIN/cost", body)
    assert response.status_code == 200
    return PrivacyCost(**json.loads(response.body)["cost"])


def test_cost_is_free(api: Api) -> None:
    before = api.remaining()
    cost = cost_of(api, COUNT)
    assert cost.epsilon == 1  # a count at epsilon 1 is charged exactly 1 (and a tiny delta)
    assert api.remaining() == before


def test_a_query_debits_exactly_its_cost_once_and_replays_for_free(api: Api) -> None:
    cost = cost_of(api, COUNT)
    before = api.remaining()
    body = {**COUNT, "query_id": "q-route-0001"}
    first = api.call("POST", "/v1/datasets/PENGUIN/queries", body)
    again = api.call("POST", "/v1/datasets/PENGUIN/queries", body)
    assert (first.status_code, again.status_code) == (200, 200)
    answer, replay = json.loads(first.body), json.loads(again.body)
    assert PrivacyCost(**answer["cost"]) == cost
    assert (answer["replayed"], replay["replayed"]) == (False, True)
    assert replay["result"] == answer["result"]  # the stored release, not a new draw
    assert api.remaining() == before - cost
    archived = api.call("GET", "/v1/datasets/PENGUIN/queries/q-route-0001")
    assert json.loads(archived.body)["result"] == answer["result"]


def test_a_reused_query_id_with_another_query_is_409_and_debits_nothing(api: Api) -> None:
    api.call("POST", "/v1/datasets/PENGUIN/queries", {**COUNT, "query_id": "q-route-0002"})
    before = api.remaining()
    other = {**COUNT, "epsilon": "0.5", "query_id": "q-route-0002"}
    response = api.call("POST", "/v1/datasets/PENGUIN/queries", other)
    assert error_of(response) == (409, "query_id_conflict")
    assert api.remaining() == before


def test_a_query_over_the_remaining_budget_is_409_and_debits_nothing(api: Api) -> None:
    costly = {**COUNT, "epsilon": "3", "query_id": "q-route-0003"}
    response = api.call("POST", "/v1/datasets/PENGUIN/queries", costly)
    assert error_of(response) == (409, "budget_exhausted")
    assert api.remaining() == PrivacyCost(epsilon=Decimal("2.5"), delta="0.001")
    assert api.store.queries == {}


def test_a_query_without_a_grant_is_403_and_records_nothing(api: Api) -> None:
    response = api.call("POST", "/v1/datasets/OTHER/queries", {**COUNT, "query_id": "q-x-0004"})
    assert error_of(response) == (403, "no_grant")
    assert api.store.queries == {}


def test_an_unexpected_exception_is_a_bare_500_that_names_nothing(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: Any) -> Any:
        raise ZeroDivisionError("secret row 17 has value 42")

    monkeypatch.setattr(app.get_service(), "budget", explode)
    response = api.call("GET", "/v1/datasets/PENGUIN/budget")
    assert error_of(response) == (500, "internal_error")
    assert b"secret" not in response.body and b"17" not in response.body


@pytest.mark.parametrize("route", ["cost", "queries"])
def test_a_gaussian_sum_smartnoise_cannot_calibrate_is_a_quick_422_that_debits_nothing(
    api: Api, route: str
) -> None:
    """SmartNoise's own search took ~2 minutes to refuse it (BENCHMARKS.md, docs/api.md)."""
    body = {
        "engine": "smartnoise_sql",
        "query": "SELECT SUM(body_mass_g) AS s FROM df",  # bounds [2000, 7000]
        "epsilon": "0.8",
        "delta": "0.00001",
        "mechanisms": {"sum_float": "gaussian"},
    }
    if route == "queries":
        body["query_id"] = "q-route-gauss"
    before = api.remaining()
    started = time.monotonic()
    response = api.call("POST", f"/v1/datasets/PENGUIN/{route}", body)
    assert time.monotonic() - started < 10
    assert error_of(response) == (422, "engine_error")
    assert "Unable to find appropriate noise scale" in json.loads(response.body)["message"]
    assert api.remaining() == before
    assert api.store.queries == {}
