"""End to end: the real client over HTTP against the real API server and emulator."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from neblina_client import (
    AuthenticationError,
    BudgetExhaustedError,
    Client,
    Cost,
    DatasetUnavailableError,
    EngineError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    QueryConflictError,
)

ROOT = Path(__file__).resolve().parents[2]
COUNT = "SELECT COUNT(*) AS n FROM df"
GROUP = "SELECT species, COUNT(*) AS n, AVG(bill_length_mm) AS b FROM PENGUIN GROUP BY species"


@pytest.fixture
def researcher(make_researcher):  # type: ignore[no-untyped-def]
    return make_researcher({"PENGUIN": ("10", "0.001"), "SYNTHETIC": ("10", "0.001")})


@pytest.fixture
def client(stack, researcher):  # type: ignore[no-untyped-def]
    with Client(url=stack.api_url, token=researcher.token, dataset="PENGUIN", max_retries=0) as c:
        yield c


def raw(stack, token: str | None = None) -> httpx.Client:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=stack.api_url, headers=headers, timeout=60)


def test_a_researcher_session(client: Client) -> None:
    assert {d.name for d in client.datasets()} == {"PENGUIN", "SYNTHETIC"}
    metadata = client.metadata()
    assert metadata["rows"] == 344
    dummy = client.dummy(rows=20, seed=3)
    assert list(dummy.columns) == list(metadata["columns"]) and len(dummy) == 20
    assert client.dummy(rows=20, seed=3).equals(dummy)

    estimate = client.sql.cost(GROUP, 1.0, 1e-5)
    assert estimate.epsilon == Decimal(3)
    before = client.budget()
    first = client.sql.query(COUNT, 0.5, 1e-5)
    second = client.sql.query(GROUP, 1.0, 1e-5)
    assert second.cost == estimate
    assert list(second.result.columns) == ["species", "n", "b"]
    assert set(second.result["species"]) <= {"Adelie", "Chinstrap", "Gentoo"}
    after = client.budget()
    assert after.remaining == before.remaining - (first.cost + second.cost)
    assert after.spent + after.remaining == after.initial

    history = client.history()
    assert [h.query_id for h in history[:2]] == [second.query_id, first.query_id]
    archived = client.result(second.query_id)
    assert archived.state == "done"
    assert archived.result.equals(second.result)


def test_dummy_queries_are_free(client: Client) -> None:
    before = client.budget()
    answer = client.sql.query(GROUP, 1.0, 1e-5, dummy=True, dummy_rows=500)
    assert answer.dummy and answer.cost.epsilon == Decimal(3)
    assert client.budget() == before
    assert all(h.query_id != answer.query_id for h in client.history())


def test_retry_replays_and_conflict_refuses(client: Client) -> None:
    query_id = uuid.uuid4().hex
    first = client.sql.query(COUNT, 1.0, 1e-5, query_id=query_id)
    before = client.budget()
    again = client.sql.query(COUNT, 1.0, 1e-5, query_id=query_id)
    assert again.replayed and again.result.equals(first.result)
    assert client.budget() == before
    with pytest.raises(QueryConflictError) as raised:
        client.sql.query(COUNT, 2.0, 1e-5, query_id=query_id)
    assert raised.value.status_code == 409 and raised.value.code == "query_id_conflict"
    assert client.budget() == before


def test_bad_inputs_get_clear_4xx_and_debit_nothing(stack, client: Client, make_researcher) -> None:  # type: ignore[no-untyped-def]
    before = client.budget()
    token = client._token
    http = raw(stack, token)
    base = {
        "engine": "smartnoise_sql",
        "query": COUNT,
        "epsilon": 1,
        "delta": 1e-5,
        "query_id": uuid.uuid4().hex,
    }
    cases = [
        ("unknown dataset", "post", "/v1/datasets/NOPE/queries", base, 404, "dataset_not_found"),
        (
            "epsilon zero",
            "post",
            "/v1/datasets/PENGUIN/queries",
            {**base, "epsilon": 0},
            400,
            "invalid_request",
        ),
        (
            "epsilon negative",
            "post",
            "/v1/datasets/PENGUIN/queries",
            {**base, "epsilon": -1},
            400,
            "invalid_request",
        ),
        (
            "epsilon inf",
            "post",
            "/v1/datasets/PENGUIN/queries",
            {**base, "epsilon": "inf"},
            400,
            "invalid_request",
        ),
        (
            "epsilon nan string",
            "post",
            "/v1/datasets/PENGUIN/queries",
            {**base, "epsilon": "NaN"},
            400,
            "invalid_request",
        ),
        (
            "delta one",
            "post",
            "/v1/datasets/PENGUIN/queries",
            {**base, "delta": 1},
            400,
            "invalid_request",
        ),
        (
            "delta negative",
            "post",
            "/v1/datasets/PENGUIN/queries",
            {**base, "delta": -1e-9},
            400,
            "invalid_request",
        ),
        (
            "unknown column",
            "post",
            "/v1/datasets/PENGUIN/queries",
            {**base, "query": "SELECT AVG(wingspan) FROM df"},
            400,
            "invalid_query",
        ),
        (
            "engine refuses",
            "post",
            "/v1/datasets/PENGUIN/queries",
            {**base, "query": "SELECT VAR(body_mass_g) FROM df"},
            422,
            "engine_error",
        ),
        *[
            (
                f"unsupported SQL on {route}",
                "post",
                f"/v1/datasets/PENGUIN/{route}",
                body,
                400,
                "invalid_query",
            )
            for route in ("cost", "queries")
            for body in (
                {**base, "query": "SELECT MAX(body_mass_g) AS m FROM df"},
                {**base, "query": "SELECT MEDIAN(body_mass_g) AS m FROM df"},
                {
                    **base,
                    "query": "SELECT COUNT(*) AS n FROM df WHERE SUBSTRING(island FROM 1 FOR 2) = 'Bi'",
                },
            )
        ],  # docs/sql.md: refused before any read, on both routes
        (
            "too expensive",
            "post",
            "/v1/datasets/PENGUIN/queries",
            {**base, "epsilon": 11},
            409,
            "budget_exhausted",
        ),
        (
            "unknown engine",
            "post",
            "/v1/datasets/PENGUIN/queries",
            {**base, "engine": "pickle"},
            400,
            "invalid_request",
        ),
        (
            "bad query id",
            "post",
            "/v1/datasets/PENGUIN/queries",
            {**base, "query_id": "../x"},
            400,
            "invalid_request",
        ),
        ("not an object", "post", "/v1/datasets/PENGUIN/queries", [1, 2], 400, "invalid_request"),
        ("dummy rows", "get", "/v1/datasets/PENGUIN/dummy?rows=0", None, 400, "invalid_request"),
    ]
    for name, method, path, body, status, code in cases:
        response = http.post(path, json=body) if method == "post" else http.get(path)
        assert (response.status_code, response.json()["error"]) == (status, code), name
        assert response.json()["message"], name
    # literal NaN / Infinity in the JSON text, malformed JSON, oversize body
    for text, status, code in [
        (
            '{"engine": "smartnoise_sql", "query": "SELECT COUNT(*) FROM df", "epsilon": NaN, "delta": 0, "query_id": "nan-00001"}',
            400,
            "invalid_request",
        ),
        (
            '{"engine": "smartnoise_sql", "query": "SELECT COUNT(*) FROM df", "epsilon": Infinity, "delta": 0, "query_id": "inf-00001"}',
            400,
            "invalid_request",
        ),
        ('{"engine": "smartnoise_sql", ', 400, "invalid_request"),
        (
            json.dumps({**base, "query": "SELECT COUNT(*) FROM df " + " " * 70_000}),
            413,
            "payload_too_large",
        ),
    ]:
        response = http.post(
            "/v1/datasets/PENGUIN/queries",
            content=text,
            headers={"Content-Type": "application/json"},
        )
        assert (response.status_code, response.json()["error"]) == (status, code), text[:40]
    assert client.budget() == before
    assert client.history() == [] or all(h.state == "done" for h in client.history())

    other = make_researcher({"SYNTHETIC": ("1", "0.001")})
    with Client(url=stack.api_url, token=other.token, dataset="PENGUIN", max_retries=0) as stranger:
        with pytest.raises(PermissionDeniedError) as raised:
            stranger.sql.query(COUNT, 1.0, 1e-5)
        assert raised.value.code == "no_grant"
    with (
        Client(url=stack.api_url, token="nbl_" + "x" * 43, dataset="PENGUIN", max_retries=0) as bad,
        pytest.raises(AuthenticationError),
    ):
        bad.budget()
    with (
        Client(url=stack.api_url, token="not-a-token", dataset="PENGUIN", max_retries=0) as bad,
        pytest.raises(AuthenticationError),
    ):
        bad.budget()
    with pytest.raises(NotFoundError):
        Client(url=stack.api_url, token=token, dataset="NOPE", max_retries=0).budget()
    with pytest.raises(InvalidRequestError):
        client.sql.query(COUNT, 0, 0)
    with pytest.raises(EngineError):
        client.sql.cost("SELECT VAR(body_mass_g) FROM df", 1.0, 0.0)
    with pytest.raises(BudgetExhaustedError):
        client.sql.query(COUNT, 50.0, 1e-5)
    assert client.budget() == before


def test_missing_token_revoked_token_and_unknown_route(stack, store, researcher) -> None:  # type: ignore[no-untyped-def]
    from neblina_admin import operations as admin

    anonymous = raw(stack)
    response = anonymous.get("/v1/datasets")
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert anonymous.get("/health").json()["status"] == "ok"
    response = raw(stack, researcher.token).get("/v1/nothing/here")
    assert response.status_code == 404 and response.json()["error"] == "not_found"

    issued = admin.add_token(store, researcher.user_id)
    assert raw(stack, issued.secret).get("/v1/datasets").status_code == 200
    store.models.token(issued.record.token_hash).update(
        actions=[store.models.token.revoked.set(True)]
    )
    response = raw(stack, issued.secret).get("/v1/datasets")
    assert response.status_code == 403
    assert response.json() == {"error": "forbidden", "message": "API token revoked"}


def test_cost_estimates_never_read_the_private_data(stack, store, make_researcher) -> None:  # type: ignore[no-untyped-def]
    """A dataset whose private object does not exist can be priced, not queried."""
    import yaml

    from neblina_admin import operations as admin

    meta = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
    name = f"GHOST{uuid.uuid4().hex[:6]}"
    admin.add_dataset(store, name, "s3://neblina-datasets/ghost/missing.csv", meta)
    who = make_researcher({name: ("5", "0.001")})
    with Client(url=stack.api_url, token=who.token, dataset=name, max_retries=0) as c:
        assert c.sql.cost(GROUP.replace("PENGUIN", name), 1.0, 1e-5).epsilon == Decimal(3)
        assert c.sql.query(COUNT, 1.0, 1e-5, dummy=True).dummy
        before = c.budget()
        response = raw(stack, who.token).post(
            f"/v1/datasets/{name}/queries",
            json={
                "engine": "smartnoise_sql",
                "query": COUNT,
                "epsilon": 1,
                "delta": 1e-5,
                "query_id": "ghost-0001",
            },
        )
        assert response.status_code == 503
        assert response.json()["error"] == "dataset_unavailable"
        assert "the cost was refunded" in response.json()["message"]
        assert c.budget() == before  # refunded: no engine saw any row
        assert c.result("ghost-0001").state == "refunded"
    # the client, with its default retries, sends it once: it cannot succeed
    with Client(url=stack.api_url, token=who.token, dataset=name) as c:
        with pytest.raises(DatasetUnavailableError):
            c.sql.query(COUNT, 1.0, 1e-5)
        history = c.history(limit=100)
        assert [q.state for q in history] == ["refunded", "refunded"]  # no retries recorded
        assert c.budget() == before


def test_concurrent_queries_over_http_never_overspend(stack, make_researcher) -> None:  # type: ignore[no-untyped-def]
    """8 clients x 100 queries costing epsilon 1 against a grant of 500."""
    who = make_researcher({"PENGUIN": ("500", "0.001")})
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def worker() -> None:
        with Client(url=stack.api_url, token=who.token, dataset="PENGUIN", max_retries=5) as c:
            for _ in range(100):
                try:
                    c.sql.query(COUNT, 1.0, 1e-9)
                    outcome = "ok"
                except BudgetExhaustedError:
                    outcome = "409"
                with lock:
                    outcomes[outcome] += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Client(url=stack.api_url, token=who.token, dataset="PENGUIN") as c:
        budget = c.budget()
        history = c.history()
    assert outcomes == Counter({"ok": 500, "409": 300})
    assert budget.remaining.epsilon == 0
    assert len(history) == 500 and all(h.state == "done" for h in history)
    assert sum((h.cost for h in history), Cost.zero()) == budget.spent


def test_concurrent_requests_never_mix_identities(stack, make_researcher) -> None:  # type: ignore[no-untyped-def]
    """Two users hammer the server at once; each must always see only their own grant."""
    alice = make_researcher({"PENGUIN": ("7", "0.001")})
    bob = make_researcher({"PENGUIN": ("3", "0.001")})
    seen: dict[str, set[Decimal]] = {"alice": set(), "bob": set()}
    lock = threading.Lock()

    def worker(name: str, token: str) -> None:
        with Client(url=stack.api_url, token=token, dataset="PENGUIN", max_retries=0) as c:
            for _ in range(25):
                initial = c.budget().initial.epsilon
                with lock:
                    seen[name].add(initial)

    threads = [
        threading.Thread(target=worker, args=(name, who.token))
        for name, who in [("alice", alice), ("bob", bob)] * 4
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"alice": {Decimal(7)}, "bob": {Decimal(3)}}
