"""The error hierarchy of the server: each error has an HTTP status and a stable code.

Errors are mapped to HTTP in exactly one place (``app.py``). Messages of errors raised after
private data has been read must be fixed strings (see :class:`EngineFailed`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chalicelib.models import QueryRecord


class NeblinaError(Exception):
    """Base class: an error the API reports as ``{"error": code, "message": message}``."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers for this error."""
        return {}


class InvalidRequest(NeblinaError):
    """The request is malformed (body, field, parameter)."""

    status_code = 400
    code = "invalid_request"


class InvalidQuery(NeblinaError):
    """The query was rejected from the query text and the metadata alone."""

    status_code = 400
    code = "invalid_query"


class UnsupportedSynthesizer(InvalidQuery):
    """A synthesizer the smartnoise_synth engine does not run (the message names those it
    does: docs/synth.md)."""

    code = "unsupported_synthesizer"


class Unauthorized(NeblinaError):
    """No token, or a token that does not exist."""

    status_code = 401
    code = "unauthorized"


class Forbidden(NeblinaError):
    """The token is revoked or expired, or its user is disabled."""

    status_code = 403
    code = "forbidden"


class NoGrant(NeblinaError):
    """The caller holds no grant on the dataset."""

    status_code = 403
    code = "no_grant"


class QueryCapExceeded(NeblinaError):
    """The query costs more than one query may cost on this dataset (or deployment)."""

    status_code = 403
    code = "query_cap_exceeded"


class NotFound(NeblinaError):
    """Unknown route."""

    status_code = 404
    code = "not_found"


class DatasetNotFound(NotFound):
    """Unknown dataset."""

    code = "dataset_not_found"


class QueryNotFound(NotFound):
    """Unknown query id, or one owned by another user."""

    code = "query_not_found"


class Conflict(NeblinaError):
    """Base for 409 answers."""

    status_code = 409
    code = "conflict"


class BudgetExhausted(Conflict):
    """The query costs more than what remains of the grant."""

    code = "budget_exhausted"


class QueryIdConflict(Conflict):
    """The query id is already used by a different payload (or another user)."""

    code = "query_id_conflict"


class QueryInProgress(Conflict):
    """The same query id is still running; the client may retry later."""

    code = "query_in_progress"


class QueryFailed(Conflict):
    """The same query id failed after the data was read; its cost stands."""

    code = "query_failed"


class PayloadTooLarge(NeblinaError):
    """The request body is over the configured limit."""

    status_code = 413
    code = "payload_too_large"


class EngineRefused(NeblinaError):
    """The DP engine refused the query before any private data was read.

    The message may come from the engine: it was computed from the query and the metadata
    only, so it cannot reveal anything about the data.
    """

    status_code = 422
    code = "engine_error"


class EngineFailed(EngineRefused):
    """The engine failed after private data was read: the message is fixed."""

    FIXED_MESSAGE = (
        "the engine failed while running the query on the private data; "
        "the cost of the query stands (details are logged under its query_id)"
    )

    def __init__(self) -> None:
        super().__init__(self.FIXED_MESSAGE)


class ResultTooLarge(NeblinaError):
    """The released result is over ``NEBLINA_MAX_RESULT_BYTES``: nothing is released.

    The message is fixed apart from the limit, which is public configuration. That the
    result is large is the only thing it says about the data (see ``docs/ledger.md``).
    """

    status_code = 422
    code = "result_too_large"

    def __init__(self, limit: int, *, spent: bool) -> None:
        outcome = "the cost of the query stands" if spent else "a query on dummy data costs nothing"
        super().__init__(
            f"the result is larger than {limit} bytes, so it was not released; {outcome}. "
            "Ask for fewer rows (fewer or coarser GROUP BY columns)."
        )


class RateLimited(NeblinaError):
    """Too many requests."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class InternalError(NeblinaError):
    """Anything unexpected; reported without detail."""


class DatasetUnavailableError(NeblinaError):
    """The dataset's source could not be read or parsed; nothing was released, cost refunded.

    The message is fixed: the cause (a missing file, a column that no longer parses) is only
    logged. Sending the query again cannot succeed until an administrator fixes the source,
    so clients do not retry it.
    """

    status_code = 503
    code = "dataset_unavailable"
    FIXED_MESSAGE = (
        "the dataset's source cannot be read right now; no data was used and the cost was "
        "refunded. Tell the dataset's administrator (neblina-admin datasets check)"
    )

    def __init__(self) -> None:
        super().__init__(self.FIXED_MESSAGE)


class WorkerUnavailable(NeblinaError):
    """The engine's worker could not be reached; nothing read, nothing debited (or refunded).

    The message is fixed. Sending the same request again is safe (a query's debit was
    given back).
    """

    status_code = 503
    code = "worker_unavailable"
    FIXED_MESSAGE = (
        "the engine's worker could not be reached; no data was used and nothing was "
        "charged (any debit was refunded). Retry shortly"
    )

    def __init__(self) -> None:
        super().__init__(self.FIXED_MESSAGE)


# --- storage -------------------------------------------------------------------------------
# What a store refuses. The admin tools report these by code; the HTTP API never answers one
# (``api_models.error_codes`` leaves them out of the documented codes).


class StorageError(NeblinaError):
    """Base class: a store refused an administrative write (create, change, delete)."""


class AlreadyExists(StorageError):
    """A create-only write found the item already there."""

    status_code = 409
    code = "conflict"


class ItemNotFound(StorageError, NotFound):
    """An update or delete named an item that does not exist."""

    status_code = 404
    code = "not_found"


class BelowSpent(StorageError, Conflict):
    """A grant or cap change would put the limit below what has already been spent."""

    status_code = 409
    code = "below_spent"


class ConcurrentChange(StorageError, Conflict):
    """The item changed between the read and the conditional write; try again."""

    status_code = 409
    code = "concurrent_change"


class QueryIdTaken(Exception):
    """``reserve`` found a record with this query id (not a retry of the caller's own write).

    Not an HTTP error: the service decides what it means (a replay of the same payload, or
    :class:`QueryIdConflict`), from ``existing``, as Powertools'
    ``IdempotencyItemAlreadyExistsError`` carries the old record.
    """

    def __init__(self, existing: QueryRecord) -> None:
        super().__init__(f"query id {existing.query_id} already has a record")
        self.existing = existing
