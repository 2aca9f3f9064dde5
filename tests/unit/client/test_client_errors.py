"""Error responses become typed exceptions: by the error code, else by the status."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

import neblina_client
from neblina_client import (
    AuthenticationError,
    BudgetExhaustedError,
    DatasetUnavailableError,
    EngineError,
    InvalidRequestError,
    NeblinaConnectionError,
    NeblinaError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QueryConflictError,
    QueryInProgressError,
    RateLimitedError,
    ServerError,
)

if TYPE_CHECKING:
    from fake_server import FakeServer

API_DOC = Path(__file__).resolve().parents[3] / "docs" / "api.md"

# Every error code of docs/api.md: its status and the exception it becomes.
EXPECTED: dict[str, tuple[int, type[NeblinaError]]] = {
    "invalid_request": (400, InvalidRequestError),
    "invalid_query": (400, InvalidRequestError),
    "unsupported_synthesizer": (400, InvalidRequestError),
    "unauthorized": (401, AuthenticationError),
    "forbidden": (403, PermissionDeniedError),
    "no_grant": (403, PermissionDeniedError),
    "query_cap_exceeded": (403, PermissionDeniedError),
    "dataset_not_found": (404, NotFoundError),
    "query_not_found": (404, NotFoundError),
    "not_found": (404, NotFoundError),
    "budget_exhausted": (409, BudgetExhaustedError),
    "query_id_conflict": (409, QueryConflictError),
    "query_in_progress": (409, QueryInProgressError),
    "query_failed": (409, QueryConflictError),
    "payload_too_large": (413, PayloadTooLargeError),
    "engine_error": (422, EngineError),
    "result_too_large": (422, EngineError),
    "rate_limited": (429, RateLimitedError),
    "internal_error": (500, ServerError),
    "dataset_unavailable": (503, DatasetUnavailableError),
    "worker_unavailable": (503, ServerError),
}


def documented_codes() -> dict[str, int]:
    """The error table of docs/api.md: code -> status."""
    codes: dict[str, int] = {}
    for line in API_DOC.read_text().splitlines():
        row = re.match(r"\|\s*(\d{3})\s*\|([^|]*)\|", line)
        if row:
            for code in re.findall(r"`([a-z_]+)`", row.group(2)):
                codes[code] = int(row.group(1))
    return codes


def test_every_documented_code_is_covered() -> None:
    documented = documented_codes()
    assert len(documented) >= 16  # the table was found and read
    assert documented == {code: status for code, (status, _) in EXPECTED.items()}


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_error_code_maps_to_its_exception(server: FakeServer, code: str) -> None:
    status, expected = EXPECTED[code]
    server.error(status, code, "the server's words")
    with pytest.raises(NeblinaError) as caught:
        server.client(max_retries=0).budget()
    error = caught.value
    assert type(error) is expected
    assert (error.status_code, error.code, error.message) == (status, code, "the server's words")
    assert code in str(error) and str(status) in str(error)


def test_code_wins_over_status(server: FakeServer) -> None:
    server.error(400, "budget_exhausted")
    with pytest.raises(BudgetExhaustedError):
        server.client().budget()


@pytest.mark.parametrize(
    ("response", "expected", "code", "message"),
    [
        # API Gateway's own answers: no code, a "message" (or "Message").
        (httpx.Response(401, json={"message": "Unauthorized"}), AuthenticationError,
         "unauthorized", "Unauthorized"),
        (httpx.Response(403, json={"Message": "User is not authorized"}), PermissionDeniedError,
         "forbidden", "User is not authorized"),
        (httpx.Response(413, json={"message": "Request Too Long"}), PayloadTooLargeError,
         "payload_too_large", "Request Too Long"),
        # A proxy's HTML page, a plain-text error, an empty body.
        (httpx.Response(502, text="<html><h1>502 Bad Gateway</h1></html>"), ServerError,
         "internal_error", "<html><h1>502 Bad Gateway</h1></html>"),
        (httpx.Response(404, text="no such thing"), NotFoundError, "not_found", "no such thing"),
        (httpx.Response(400, content=b""), InvalidRequestError, "invalid_request", "Bad Request"),
        (httpx.Response(422, json=["not", "an", "object"]), EngineError, "engine_error",
         '["not","an","object"]'),
        # Unknown statuses and codes: the base class, with what is known.
        (httpx.Response(418, text="teapot"), NeblinaError, "http_418", "teapot"),
        (httpx.Response(409, json={"error": "brand_new", "message": "m"}), NeblinaError,
         "brand_new", "m"),
        (httpx.Response(503, json={"error": "brand_new", "message": "m"}), ServerError,
         "brand_new", "m"),
    ],
)  # fmt: skip
def test_bodies_without_a_known_code_fall_back_on_status(
    server: FakeServer,
    response: httpx.Response,
    expected: type[NeblinaError],
    code: str,
    message: str,
) -> None:
    server.replies.append(response)
    with pytest.raises(NeblinaError) as caught:
        server.client(max_retries=0).datasets()
    error = caught.value
    assert type(error) is expected
    assert (error.status_code, error.code, error.message) == (response.status_code, code, message)


def test_long_non_json_bodies_are_shortened(server: FakeServer) -> None:
    server.reply(500, content=b"x" * 10_000)
    with pytest.raises(ServerError) as caught:
        server.client(max_retries=0).datasets()
    assert len(caught.value.message) < 300


def test_rate_limited_error_carries_retry_after(server: FakeServer) -> None:
    server.error(429, "rate_limited", **{"Retry-After": "7"})
    with pytest.raises(RateLimitedError) as caught:
        server.client(max_retries=0).datasets()
    assert caught.value.retry_after == 7.0


def test_every_error_is_a_neblina_error() -> None:
    classes = [
        getattr(neblina_client, name)
        for name in neblina_client.__all__
        if name.endswith("Error") and name != "NeblinaError"
    ]
    assert len(classes) == 15
    for cls in classes:
        assert issubclass(cls, NeblinaError), cls


def test_query_errors_carry_the_query_id(server: FakeServer) -> None:
    server.error(409, "budget_exhausted")
    with pytest.raises(BudgetExhaustedError) as caught:
        server.client().sql.query("SELECT 1", 1.0, 0, query_id="my-query-1")
    assert caught.value.query_id == "my-query-1"
    assert "my-query-1" in str(caught.value)


def test_token_never_appears_in_error_text(server: FakeServer) -> None:
    token = server.token
    # A misbehaving proxy echoing the request headers, in JSON and in plain text.
    server.reply(400, {"error": "invalid_request", "message": f"bad header Bearer {token}"})
    server.reply(502, content=f"upstream said: Authorization: Bearer {token}".encode())
    server.fail(httpx.ConnectError(f"cannot connect with {token}"))
    client = server.client(max_retries=0)
    for call in (client.datasets, client.budget, client.metadata):
        with pytest.raises(NeblinaError) as caught:
            call()
        error = caught.value
        for text in (str(error), repr(error), error.message, repr(error.args)):
            assert token not in text
    assert isinstance(error, NeblinaConnectionError)
