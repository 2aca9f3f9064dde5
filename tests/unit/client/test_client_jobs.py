"""Async jobs on the client: wait=False handles, polling, the progress bar, interrupts.

The server here is :class:`FakeServer`, an ``httpx.MockTransport`` that stands in for the
Neblina API (the unit tier opens no socket): it answers with scripted bodies shaped as the
API's 202 and ``GET .../queries/{id}`` records (docs/api.md, "Async queries"). The same
paths run against the real local stack in tests/stack/test_async_client.py.
"""

from __future__ import annotations

import io
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest
from opendp_pipelines import laplace_count

from neblina_client import (
    Backoff,
    DatasetUnavailableError,
    EngineError,
    Job,
    NeblinaError,
    NotFoundError,
    QueryConflictError,
    ServerError,
    WaitTimeoutError,
)
from neblina_client._jobs import POLL_CAP

if TYPE_CHECKING:
    from fake_server import FakeServer

SQL = "SELECT COUNT(*) AS n FROM df"
TABLE = {
    "type": "table",
    "columns": ["n"],
    "dtypes": {"n": "int64"},
    "records": [{"n": 344}],
}


def record(
    query_id: str,
    state: str = "running",
    *,
    phase: str | None = "queued",
    progress: float | None = None,
    result: Any = None,
    error: dict[str, str] | None = None,
    dataset: str = "PENGUIN",
) -> dict[str, Any]:
    """A query record as the API returns it (202 body and GET .../queries/{id})."""
    return {
        "query_id": query_id,
        "dataset": dataset,
        "engine": "smartnoise_sql",
        "state": state,
        "phase": phase if state == "running" else None,
        "progress": progress,
        "request": {"engine": "smartnoise_sql", "query": SQL},
        "cost": {"epsilon": "0.3", "delta": "0.00001"},
        "created_at": "2026-11-29T12:00:00+00:00",
        "finished_at": None if state == "running" else "2026-11-29T12:00:03+00:00",
        "result": result,
        "error": error,
    }


def accepted(server: FakeServer, query_id: str) -> FakeServer:
    location = f"/v1/datasets/PENGUIN/queries/{query_id}"
    return server.reply(202, record(query_id), headers={"Location": location})


def submit_detached(server: FakeServer, query_id: str = "job-0001", **kwargs: Any) -> Job:
    accepted(server, query_id)
    return server.client(**kwargs).sql.query(SQL, 0.3, 1e-5, query_id=query_id, wait=False)


def paths(server: FakeServer) -> list[str]:
    return [f"{r.method} {r.url.path}" for r in server.requests]


class TtyStream(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


# --- submission -----------------------------------------------------------------------------


def test_wait_false_sends_wait_false_and_returns_a_handle_without_polling(
    server: FakeServer,
) -> None:
    job = submit_detached(server, "job-0001")
    assert isinstance(job, Job)
    assert (job.query_id, job.dataset) == ("job-0001", "PENGUIN")
    assert server.body()["wait"] is False
    assert paths(server) == ["POST /v1/datasets/PENGUIN/queries"]


def test_the_blocking_call_sends_no_wait_field(server: FakeServer) -> None:
    server.reply(200, record("q-000001", "done", result=TABLE) | {"replayed": False})
    server.client().sql.query(SQL, 0.3, 1e-5, query_id="q-000001")
    assert "wait" not in server.body()


def test_opendp_query_with_wait_false_returns_a_handle_too(server: FakeServer) -> None:
    accepted(server, "job-0002")
    job = server.client().opendp.query(laplace_count(), query_id="job-0002", wait=False)
    assert isinstance(job, Job) and job.query_id == "job-0002"
    sent = server.body()
    assert sent["wait"] is False and sent["engine"] == "opendp"


def test_a_blocking_call_answered_202_waits_on_the_job_and_returns_its_result(
    server: FakeServer,
) -> None:
    accepted(server, "job-0003")
    server.reply(200, record("job-0003", phase="loading"))
    server.reply(200, record("job-0003", phase="running", progress=0.5))
    server.reply(200, record("job-0003", "done", result=TABLE))
    answer = server.client().sql.query(SQL, 0.3, 1e-5, query_id="job-0003")
    assert isinstance(answer.result, pd.DataFrame)
    assert answer.result["n"].tolist() == [344]
    assert answer.cost.epsilon == Decimal("0.3") and answer.cost.delta == Decimal("0.00001")
    assert answer.query_id == "job-0003" and answer.replayed is False
    assert paths(server)[1:] == ["GET /v1/datasets/PENGUIN/queries/job-0003"] * 3
    assert len(server.sleeps) == 2  # between the three polls, none after the last


def test_a_resent_detached_submission_attaches_to_the_running_query_without_retrying(
    server: FakeServer,
) -> None:
    # The first POST's answer was lost; the resend finds the same id running: that is the job.
    server.error(409, "query_in_progress", "this query_id is still running; retry later")
    job = server.client().sql.query(SQL, 0.3, 1e-5, query_id="job-0004", wait=False)
    assert isinstance(job, Job) and job.query_id == "job-0004"
    assert server.sleeps == [] and len(server.requests) == 1


def test_a_detached_submission_answered_at_once_holds_its_answer(server: FakeServer) -> None:
    # A dummy run (no record on the server) or a replay: answered 200, nothing to poll.
    answer = record("job-0005", "done", result=TABLE) | {"dummy": True}
    server.reply(200, answer)
    job = server.client().sql.query(SQL, 0.3, 1e-5, query_id="job-0005", dummy=True, wait=False)
    assert job.status().state == "done" and job.status().finished
    assert job.wait().dummy is True
    assert len(server.requests) == 1


def test_a_refused_detached_submission_raises_with_its_query_id(server: FakeServer) -> None:
    server.error(409, "budget_exhausted", "not enough budget")
    with pytest.raises(NeblinaError) as caught:
        server.client().sql.query(SQL, 0.3, 1e-5, query_id="job-0006", wait=False)
    assert caught.value.code == "budget_exhausted" and caught.value.query_id == "job-0006"


# --- status and results ---------------------------------------------------------------------


def test_status_reads_state_phase_and_progress(server: FakeServer) -> None:
    job = submit_detached(server, "job-0007")
    server.reply(200, record("job-0007", phase="running", progress=0.25))
    status = job.status()
    assert (status.state, status.phase, status.progress) == ("running", "running", 0.25)
    assert status.finished is False
    assert status.cost.epsilon == Decimal("0.3")


def test_status_from_a_server_without_phase_or_progress_reads_none(server: FakeServer) -> None:
    job = submit_detached(server, "job-0008")
    old = record("job-0008")
    del old["phase"], old["progress"]
    server.reply(200, old)
    status = job.status()
    assert status.phase is None and status.progress is None


def test_a_progress_outside_zero_one_is_clamped_and_a_non_number_is_refused(
    server: FakeServer,
) -> None:
    job = submit_detached(server, "job-0009")
    server.reply(200, record("job-0009", phase="running", progress=1.5))
    assert job.status().progress == 1.0
    server.reply(200, record("job-0009", phase="running") | {"progress": "half"})
    with pytest.raises(NeblinaError) as caught:
        job.status()
    assert caught.value.code == "invalid_response" and caught.value.query_id == "job-0009"


def test_an_unknown_state_is_an_invalid_response_not_an_endless_wait(server: FakeServer) -> None:
    job = submit_detached(server, "job-0010")
    server.reply(200, record("job-0010") | {"state": "paused"})
    with pytest.raises(NeblinaError) as caught:
        job.wait(progress=False)
    assert caught.value.code == "invalid_response"


@pytest.mark.parametrize(
    ("state", "code", "cls", "status"),
    [
        ("failed", "engine_error", EngineError, 422),
        ("failed", "result_too_large", EngineError, 422),
        ("failed", "internal_error", ServerError, 500),
        ("failed", "interrupted", QueryConflictError, 409),
        ("refunded", "dataset_unavailable", DatasetUnavailableError, 503),
        ("refunded", "internal_error", ServerError, 500),
    ],
)
def test_a_job_that_ends_badly_raises_what_the_blocking_query_raises(
    server: FakeServer, state: str, code: str, cls: type[NeblinaError], status: int
) -> None:
    job = submit_detached(server, "job-0011")
    server.reply(200, record("job-0011", state, error={"error": code, "message": "it broke"}))
    with pytest.raises(cls) as caught:
        job.wait(progress=False)
    error = caught.value
    assert (error.code, error.status_code, error.query_id) == (code, status, "job-0011")
    assert error.message == "it broke"


def test_an_error_while_polling_carries_the_query_id(server: FakeServer) -> None:
    job = submit_detached(server, "job-0012")
    server.error(404, "query_not_found", "no such query")
    with pytest.raises(NotFoundError) as caught:
        job.wait(progress=False)
    assert caught.value.query_id == "job-0012"


# --- polling --------------------------------------------------------------------------------


def test_polls_back_off_and_never_pause_longer_than_the_cap(server: FakeServer) -> None:
    # A Backoff tuned for long retries (up to 60 s) still polls at most POLL_CAP apart.
    job = submit_detached(server, "job-0013", backoff=Backoff(base=1.0, cap=60.0))
    for _ in range(8):
        server.reply(200, record("job-0013", phase="running"))
    server.reply(200, record("job-0013", "done", result=TABLE))
    job.wait(progress=False)
    assert len(server.sleeps) == 8
    assert all(0.5 <= pause <= POLL_CAP for pause in server.sleeps)
    assert server.sleeps[-3:] == [POLL_CAP] * 3  # 1 * 2**5 > 60 > POLL_CAP: the cap holds
    assert server.sleeps[0] <= 1.0  # the first pause is short: quick jobs return quickly


def test_wait_with_a_timeout_gives_up_at_the_deadline_and_leaves_the_job(
    server: FakeServer,
) -> None:
    slept = server.sleeps
    job = submit_detached(server, "job-0014", clock=lambda: sum(slept))
    for _ in range(20):
        server.reply(200, record("job-0014", phase="running", progress=0.1))
    with pytest.raises(WaitTimeoutError) as caught:
        job.wait(timeout=2.0, progress=False)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.query_id == "job-0014"
    assert sum(slept) == pytest.approx(2.0)  # the last pause is cut to the deadline
    assert 'client.job("job-0014", dataset="PENGUIN")' in str(caught.value)
    assert all(r.method == "GET" for r in server.requests[1:])  # nothing cancels the job


def test_a_zero_timeout_checks_once(server: FakeServer) -> None:
    job = submit_detached(server, "job-0015", clock=lambda: 0.0)
    server.reply(200, record("job-0015"))
    with pytest.raises(WaitTimeoutError):
        job.wait(timeout=0, progress=False)
    assert len(server.requests) == 2 and server.sleeps == []


def test_keyboard_interrupt_leaves_the_job_running_and_says_how_to_reattach(
    server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    job = submit_detached(server, "job-0016", sleep=interrupted)
    server.reply(200, record("job-0016", phase="running", progress=0.4))
    with pytest.raises(KeyboardInterrupt):
        job.wait(progress=False)
    err = capsys.readouterr().err
    assert "job-0016 keeps running" in err
    assert 'client.job("job-0016", dataset="PENGUIN").wait()' in err
    assert [r.method for r in server.requests] == ["POST", "GET"]  # no cancel, no resend


def test_reattaching_by_id_polls_the_datasets_query(server: FakeServer) -> None:
    client = server.client()
    job = client.job("job-0017", dataset="OTHER DATA")
    assert server.requests == []  # a handle sends nothing until asked
    server.reply(200, record("job-0017", "done", result=TABLE, dataset="OTHER DATA"))
    answer = job.wait(progress=False)
    assert answer.dataset == "OTHER DATA"
    assert [r.url.raw_path for r in server.requests] == [
        b"/v1/datasets/OTHER%20DATA/queries/job-0017"
    ]
    assert client.job("job-0017").dataset == "PENGUIN"  # the client's dataset by default
    with pytest.raises(ValueError):
        client.job("")


# --- the progress bar -----------------------------------------------------------------------


def run_with_phases(server: FakeServer, query_id: str) -> Job:
    job = submit_detached(server, query_id)
    server.reply(200, record(query_id, phase="queued"))
    server.reply(200, record(query_id, phase="loading"))
    server.reply(200, record(query_id, phase="running", progress=0.5))
    server.reply(200, record(query_id, phase="running"))  # no fraction now: the bar stays
    server.reply(200, record(query_id, phase="archiving"))
    server.reply(200, record(query_id, "done", result=TABLE))
    return job


FRAME = re.compile(
    r"PENGUIN job-0018 (?P<stage>\w+) +(?P<percent>\d+)%\|[\u2588-\u258f ]{24}\| \d\d:\d\d"
)


def bar_frames(text: str) -> list[str]:
    return [frame.strip() for frame in text.replace("\n", "\r").split("\r") if frame.strip()]


def test_the_progress_bar_shows_each_phase_and_the_fraction_on_stderr(
    server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    run_with_phases(server, "job-0018").wait(progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    frames = bar_frames(captured.err)
    shown = [FRAME.fullmatch(frame) for frame in frames]
    assert all(shown), frames  # every frame: label, phase, percentage, bar, elapsed
    stages = [(m.group("stage"), int(m.group("percent"))) for m in shown if m]
    assert stages == [
        ("queued", 0),  # the first poll: one frame, not an empty one before it
        ("loading", 0),
        ("running", 50),
        ("running", 50),  # no fraction given: the bar keeps what it showed
        ("archiving", 50),
        ("done", 100),
        ("done", 100),  # the final frame, left on screen
    ]


def test_no_bar_when_stderr_is_not_a_terminal(
    server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    run_with_phases(server, "job-0019").wait()  # progress=None: pytest's stderr is no TTY
    assert capsys.readouterr().err == ""


def test_a_bar_by_default_when_stderr_is_a_terminal(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = TtyStream()
    monkeypatch.setattr("sys.stderr", terminal)
    run_with_phases(server, "job-0020").wait()
    assert "100%|" in terminal.getvalue() and "archiving" in terminal.getvalue()


def test_progress_false_silences_the_bar_on_a_terminal(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = TtyStream()
    monkeypatch.setattr("sys.stderr", terminal)
    run_with_phases(server, "job-0021").wait(progress=False)
    assert terminal.getvalue() == ""
