"""Handles on queries that run detached on the server (async jobs)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from ._decode import parse_job_status, parse_query_result
from ._exceptions import NeblinaError, WaitTimeoutError, error_for_job
from ._progress import ProgressBar, wants_bar
from ._types import JobStatus, QueryResult

if TYPE_CHECKING:
    from ._client import Client

# The longest pause between two polls, whatever the client's Backoff allows for retries: a
# job that finished is noticed within this many seconds.
POLL_CAP = 5.0


class Job:
    """A query submitted to the server, which runs it whether or not anyone waits.

    Its cost was debited at submission. :meth:`status` asks where it stands; :meth:`wait`
    polls until it ends and returns what the blocking query returns (a
    :class:`QueryResult`), or raises what it raises. A lost handle is rebuilt from the id:
    ``client.job(query_id, dataset=...)``.
    """

    def __init__(
        self,
        client: Client,
        query_id: str,
        dataset: str,
        *,
        answer: QueryResult | None = None,
    ) -> None:
        self.query_id = query_id
        self.dataset = dataset
        self._client = client
        self._answer = answer

    def __repr__(self) -> str:
        return f"Job(query_id={self.query_id!r}, dataset={self.dataset!r})"

    def status(self) -> JobStatus:
        """Where the query stands now (one request)."""
        if self._answer is not None:
            return _answered(self._answer)
        return self._poll()[0]

    def wait(self, timeout: float | None = None, progress: bool | None = None) -> QueryResult:
        """Poll until the query ends; its result, or the error the blocking query raises.

        Polls back off (the client's :class:`Backoff`, at most :data:`POLL_CAP` seconds
        apart). ``timeout`` (seconds) raises :class:`WaitTimeoutError` and leaves the query
        running. ``progress`` draws a bar on stderr with the phase and the fraction done
        (default: only when stderr is a terminal). On ``KeyboardInterrupt`` the query keeps
        running on the server (it is paid for): how to reattach is printed on stderr and
        the interrupt is raised again.
        """
        if self._answer is not None:
            return self._answer
        client = self._client
        deadline = None if timeout is None else client._clock() + timeout
        bar = ProgressBar(
            f"{self.dataset} {self.query_id[:8]}", enabled=wants_bar(progress, sys.stderr)
        )
        polls = 0
        try:
            while True:
                status, body = self._poll()
                bar.update(status)
                if status.finished:
                    break
                pause = min(client._backoff.delay(polls), POLL_CAP)
                if deadline is not None:
                    left = deadline - client._clock()
                    if left <= 0:
                        raise WaitTimeoutError(
                            f"still {status.phase or status.state} after {timeout} s; "
                            "it keeps running: wait again or reattach with "
                            f"{self._reattach_hint()}",
                            query_id=self.query_id,
                        )
                    pause = min(pause, left)
                client._sleep(pause)
                polls += 1
        except KeyboardInterrupt:
            bar.close()
            print(
                f"\nneblina: query {self.query_id} keeps running on the server (its cost is "
                f"already debited). Collect it later with: {self._reattach_hint()}.wait()",
                file=sys.stderr,
                flush=True,
            )
            raise
        finally:
            bar.close()
        if status.state == "done":
            result: QueryResult = client._parse_response(parse_query_result, body)
            return result
        raise error_for_job(status.state, status.error, self.query_id)

    def _poll(self) -> tuple[JobStatus, Any]:
        """The query's record: its status and the raw body (which holds the result)."""
        try:
            body = self._client._query_record(self.dataset, self.query_id)
            status: JobStatus = self._client._parse_response(parse_job_status, body)
        except NeblinaError as error:
            error.query_id = self.query_id
            raise
        if status.state not in {"running", "done", "failed", "refunded"}:
            raise NeblinaError(
                f"unknown query state {status.state!r}",
                code="invalid_response",
                query_id=self.query_id,
            )
        return status, body

    def _reattach_hint(self) -> str:
        return f"client.job({json.dumps(self.query_id)}, dataset={json.dumps(self.dataset)})"


def _answered(answer: QueryResult) -> JobStatus:
    """The status of a query the server answered at once (a dummy run, or a replay)."""
    return JobStatus(
        query_id=answer.query_id,
        dataset=answer.dataset,
        engine=answer.engine,
        state="done",
        phase=None,
        progress=1.0,
        cost=answer.cost,
        created_at=answer.created_at,
        finished_at=None,
        error=None,
    )


class JobHandle:
    """What a detached DiffPrivLib fit and a synthesis have in common around their
    :class:`Job`: its id, dataset and :meth:`status`; each subclass decodes :meth:`wait`'s
    answer into its own result."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def __repr__(self) -> str:
        return f"{type(self).__name__}(query_id={self.query_id!r}, dataset={self.dataset!r})"

    @property
    def query_id(self) -> str:
        return self.job.query_id

    @property
    def dataset(self) -> str:
        return self.job.dataset

    def status(self) -> JobStatus:
        """Where the job stands now (one request): phase and fraction done."""
        return self.job.status()
