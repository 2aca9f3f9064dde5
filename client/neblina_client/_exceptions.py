"""Errors raised by the client, one class per family of server error codes."""

from __future__ import annotations


class NeblinaError(Exception):
    """Base class of every error raised by the client.

    ``code`` is the server's stable ``error`` code (or a client-side one such as
    ``connection_error``); branch on it or on the class, never on ``message``.
    ``query_id`` is set on errors raised by ``sql.query``: retrying with the same id never
    pays twice.
    """

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        query_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code or self.default_code
        self.query_id = query_id

    def __str__(self) -> str:
        text = f"{self.code}: {self.message}"
        if self.status_code is not None:
            text = f"[HTTP {self.status_code}] {text}"
        if self.query_id is not None:
            text += f" (query_id={self.query_id})"
        return text


class ConfigurationError(NeblinaError):
    """The client is missing its URL or token, or they are malformed."""

    default_code = "configuration_error"


class NeblinaConnectionError(NeblinaError):
    """The server could not be reached (connection error or timeout), even after retries."""

    default_code = "connection_error"


class InvalidRequestError(NeblinaError):
    """400: malformed request, bad parameter, or SQL rejected from the metadata."""

    default_code = "invalid_request"


class AuthenticationError(NeblinaError):
    """401: no token, or a malformed or unknown one."""

    default_code = "unauthorized"


class PermissionDeniedError(NeblinaError):
    """403: token revoked or expired, user disabled, no grant on the dataset, or
    (``query_cap_exceeded``) the query costs more than one query may on this dataset."""

    default_code = "forbidden"


class NotFoundError(NeblinaError):
    """404: unknown dataset, query id or route."""

    default_code = "not_found"


class BudgetExhaustedError(NeblinaError):
    """409 ``budget_exhausted``: the query costs more than the remaining grant."""

    default_code = "budget_exhausted"


class QueryConflictError(NeblinaError):
    """409 ``query_id_conflict`` (id reused with another payload) or ``query_failed``; or a
    job that died on the server (``interrupted``: its lease expired).

    After ``query_failed`` or ``interrupted`` the cost stands; run the query again under a
    new id.
    """

    default_code = "query_id_conflict"


class QueryInProgressError(NeblinaError):
    """409 ``query_in_progress``: the query is still running after all retries.

    Call again later with the same ``query_id`` to collect the result without paying again.
    """

    default_code = "query_in_progress"


class WaitTimeoutError(NeblinaError, TimeoutError):
    """``Job.wait(timeout=...)`` gave up: the query is still running on the server.

    Nothing is lost: wait again on the same handle, or reattach with ``client.job(query_id)``.
    """

    default_code = "wait_timeout"


class PayloadTooLargeError(NeblinaError):
    """413: the request body is over the server's limit."""

    default_code = "payload_too_large"


class EngineError(NeblinaError):
    """422: the DP engine refused the query, or (``result_too_large``) its result was too
    large to release."""

    default_code = "engine_error"


class RateLimitedError(NeblinaError):
    """429: too many requests, even after retries; ``retry_after`` is in seconds."""

    default_code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        query_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, code=code, query_id=query_id)
        self.retry_after = retry_after


class ServerError(NeblinaError):
    """5xx: the server failed; it gives no detail."""

    default_code = "internal_error"


class DatasetUnavailableError(ServerError):
    """503 ``dataset_unavailable``: the dataset's source cannot be read; the cost was
    refunded. Not retried: it cannot succeed until an administrator fixes the source."""

    default_code = "dataset_unavailable"


_BY_CODE: dict[str, type[NeblinaError]] = {
    "invalid_request": InvalidRequestError,
    "invalid_query": InvalidRequestError,
    "unsupported_synthesizer": InvalidRequestError,
    "unauthorized": AuthenticationError,
    "forbidden": PermissionDeniedError,
    "no_grant": PermissionDeniedError,
    "query_cap_exceeded": PermissionDeniedError,
    "dataset_not_found": NotFoundError,
    "query_not_found": NotFoundError,
    "not_found": NotFoundError,
    "budget_exhausted": BudgetExhaustedError,
    "query_id_conflict": QueryConflictError,
    "query_failed": QueryConflictError,
    "interrupted": QueryConflictError,
    "query_in_progress": QueryInProgressError,
    "payload_too_large": PayloadTooLargeError,
    "engine_error": EngineError,
    "result_too_large": EngineError,
    "rate_limited": RateLimitedError,
    "internal_error": ServerError,
    "dataset_unavailable": DatasetUnavailableError,
    "worker_unavailable": ServerError,  # nothing charged: retried like any 5xx
}

# For bodies without a known code (a proxy's HTML page, API Gateway's {"message": ...}).
_BY_STATUS: dict[int, type[NeblinaError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: EngineError,
    429: RateLimitedError,
}


def error_for_status(
    status_code: int, code: str | None, message: str, *, retry_after: float | None = None
) -> NeblinaError:
    """The exception for an HTTP error: chosen by ``code`` if known, else by status."""
    cls = _BY_CODE.get(code or "")
    if cls is None:
        cls = ServerError if status_code >= 500 else _BY_STATUS.get(status_code, NeblinaError)
        if code is None:
            code = cls.default_code if cls is not NeblinaError else f"http_{status_code}"
    if issubclass(cls, RateLimitedError):
        return cls(message, status_code=status_code, code=code, retry_after=retry_after)
    return cls(message, status_code=status_code, code=code)


# The status a blocking query answers with for each error a failed or refunded record holds
# (an ``interrupted`` record: what its retry answers, 409 ``query_failed``).
_JOB_ERROR_STATUS: dict[str, int] = {
    "engine_error": 422,
    "result_too_large": 422,
    "internal_error": 500,
    "dataset_unavailable": 503,
    "worker_unavailable": 503,
    "interrupted": 409,
}


def error_for_job(state: str, error: object, query_id: str) -> NeblinaError:
    """The exception for a job that ended ``failed`` or ``refunded``: the one the blocking
    query would have raised (same class, code and status), carrying the ``query_id``."""
    code: str | None = None
    message = ""
    if isinstance(error, dict):
        if isinstance(error.get("error"), str):
            code = error["error"]
        if isinstance(error.get("message"), str):
            message = error["message"]
    status = _JOB_ERROR_STATUS.get(code or "", 500)
    exc = error_for_status(status, code, message or f"the query ended {state}")
    exc.query_id = query_id
    return exc
