"""Retries: what is retried, how long the client waits, and that a query is paid once."""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from neblina_client import (
    Backoff,
    BudgetExhaustedError,
    Client,
    DatasetUnavailableError,
    InvalidRequestError,
    NeblinaConnectionError,
    NeblinaError,
    QueryInProgressError,
    RateLimitedError,
    ServerError,
)
from neblina_client._retry import parse_retry_after

if TYPE_CHECKING:
    from fake_server import FakeServer

SQL = "SELECT COUNT(*) AS n FROM df"
ANSWER = {
    "query_id": "ignored-here",
    "dataset": "PENGUIN",
    "engine": "smartnoise_sql",
    "dummy": False,
    "replayed": True,
    "cost": {"epsilon": "1", "delta": "0"},
    "created_at": "2026-11-25T12:00:00+00:00",
    "result": None,
}


def sent_bodies(server: FakeServer) -> list[Any]:
    return [server.body(i) for i in range(len(server.requests))]


def test_503_is_retried_with_the_same_query_id(server: FakeServer) -> None:
    server.error(503, "internal_error").reply(200, ANSWER)
    answer = server.client().sql.query(SQL, 1.0, 0)
    first, second = sent_bodies(server)
    assert first == second  # same payload, same query_id: the server replays, never re-charges
    assert len(first["query_id"]) == 32
    assert answer.replayed is True
    assert len(server.sleeps) == 1


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
    ids=type,
)
def test_transport_errors_are_retried_with_the_same_query_id(
    server: FakeServer, failure: Exception
) -> None:
    server.fail(failure).fail(failure).reply(200, ANSWER)
    server.client().sql.query(SQL, 1.0, 0, query_id="chosen-by-me")
    assert [body["query_id"] for body in sent_bodies(server)] == ["chosen-by-me"] * 3
    assert len(server.sleeps) == 2


def test_connection_errors_give_up_after_max_retries(server: FakeServer) -> None:
    for _ in range(3):
        server.fail(httpx.ConnectTimeout("slow"))
    with pytest.raises(NeblinaConnectionError) as caught:
        server.client(max_retries=2).sql.query(SQL, 1.0, 0)
    assert len(server.requests) == 3
    assert len({body["query_id"] for body in sent_bodies(server)}) == 1
    error = caught.value
    assert error.query_id == server.body()["query_id"]  # so the caller can retry safely
    assert isinstance(error.__cause__, httpx.ConnectTimeout)
    assert error.status_code is None and error.code == "connection_error"


def test_5xx_gives_up_after_max_retries(server: FakeServer) -> None:
    for _ in range(4):
        server.error(500, "internal_error")
    with pytest.raises(ServerError):
        server.client(max_retries=3).budget()
    assert len(server.requests) == 4
    assert len(server.sleeps) == 3
    assert not server.replies


def test_max_retries_zero_sends_once(server: FakeServer) -> None:
    server.error(503, "internal_error")
    with pytest.raises(ServerError):
        server.client(max_retries=0).budget()
    assert len(server.requests) == 1
    assert server.sleeps == []


def test_backoff_grows_and_stays_jittered(server: FakeServer) -> None:
    for _ in range(7):
        server.error(502, "internal_error")
    with pytest.raises(ServerError):
        server.client(max_retries=6).datasets()
    ceilings = [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]  # base 0.2 s doubling, capped at 5 s
    assert len(server.sleeps) == len(ceilings)
    for slept, ceiling in zip(server.sleeps, ceilings, strict=True):
        assert ceiling / 2 <= slept <= ceiling


def test_backoff_and_sleep_are_constructor_parameters(server: FakeServer) -> None:
    slept: list[float] = []
    for _ in range(3):
        server.error(503, "internal_error")
    server.reply(200, {"datasets": []})
    client = server.client(backoff=Backoff(base=1.0, cap=3.0), sleep=slept.append)
    assert client.datasets() == []
    ceilings = [1.0, 2.0, 3.0]  # base 1 s doubling, capped at 3 s
    assert len(slept) == len(ceilings)
    for seconds, ceiling in zip(slept, ceilings, strict=True):
        assert ceiling / 2 <= seconds <= ceiling
    assert server.sleeps == []  # the injected sleep replaced the fake server's recorder


def test_a_client_really_sleeps_by_default_between_tries() -> None:
    defaults = inspect.signature(Client).parameters
    assert defaults["sleep"].default is time.sleep
    assert defaults["backoff"].default is None  # Backoff(): 0.2 s doubling, at most 5 s


def test_429_honours_retry_after(server: FakeServer) -> None:
    server.error(429, "rate_limited", **{"Retry-After": "2"}).reply(200, {"datasets": []})
    assert server.client().datasets() == []
    assert server.sleeps == [2.0]


def test_retry_after_is_capped(server: FakeServer) -> None:
    server.error(429, "rate_limited", **{"Retry-After": "3600"}).reply(200, {"datasets": []})
    server.client().datasets()
    assert server.sleeps == [Backoff().retry_after_cap]
    assert Backoff().retry_after_cap <= 60


def test_429_without_retry_after_backs_off(server: FakeServer) -> None:
    server.error(429, "rate_limited").reply(200, {"datasets": []})
    server.client().datasets()
    assert len(server.sleeps) == 1 and 0.1 <= server.sleeps[0] <= 0.2


def test_429_gives_up_with_rate_limited_error(server: FakeServer) -> None:
    server.error(429, "rate_limited", **{"Retry-After": "1"})
    server.error(429, "rate_limited", **{"Retry-After": "1"})
    with pytest.raises(RateLimitedError) as caught:
        server.client(max_retries=1).datasets()
    assert caught.value.retry_after == 1.0
    assert len(server.requests) == 2


def test_query_in_progress_is_waited_for(server: FakeServer) -> None:
    server.error(409, "query_in_progress").error(409, "query_in_progress").reply(200, ANSWER)
    answer = server.client().sql.query(SQL, 1.0, 0)
    bodies = sent_bodies(server)
    assert bodies[0] == bodies[1] == bodies[2]
    assert answer.replayed is True


def test_query_in_progress_after_retries_raises_with_the_id(server: FakeServer) -> None:
    for _ in range(2):
        server.error(409, "query_in_progress")
    with pytest.raises(QueryInProgressError) as caught:
        server.client(max_retries=1).sql.query(SQL, 1.0, 0, query_id="still-running")
    assert caught.value.query_id == "still-running"
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "invalid_query", InvalidRequestError),
        (401, "unauthorized", NeblinaError),
        (403, "no_grant", NeblinaError),
        (404, "dataset_not_found", NeblinaError),
        (409, "budget_exhausted", BudgetExhaustedError),
        (409, "query_id_conflict", NeblinaError),
        (409, "query_failed", NeblinaError),
        (413, "payload_too_large", NeblinaError),
        (422, "engine_error", NeblinaError),
        (503, "dataset_unavailable", DatasetUnavailableError),
    ],
)
def test_client_errors_are_not_retried(
    server: FakeServer, status: int, code: str, expected: type[NeblinaError]
) -> None:
    server.error(status, code)
    with pytest.raises(expected):
        server.client(max_retries=3).sql.query(SQL, 1.0, 0)
    assert len(server.requests) == 1
    assert server.sleeps == []


def test_backoff_delays() -> None:
    backoff = Backoff()
    assert [backoff.delay(n, uniform=lambda: 1.0) for n in range(7)] == [
        0.2,
        0.4,
        0.8,
        1.6,
        3.2,
        5.0,
        5.0,
    ]
    assert backoff.delay(0, uniform=lambda: 0.0) == 0.1
    assert backoff.delay(3, retry_after=1.5, uniform=lambda: 0.0) == 1.5


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-4", 0.0),
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds
