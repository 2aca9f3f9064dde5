"""Python client for Neblina: differentially private queries over a REST API.

Quickstart (URL and token from ``NEBLINA_URL``/``NEBLINA_TOKEN`` or ``.neblina/local.env``)::

    from neblina_client import Client

    with Client(dataset="PENGUIN") as client:
        sql = "SELECT COUNT(*) AS n FROM df"
        print(client.sql.cost(sql, epsilon=1.0, delta=1e-5))
        print(client.sql.query(sql, epsilon=1.0, delta=1e-5).result)
        print(client.budget().remaining)

        job = client.sql.query(sql, epsilon=1.0, delta=1e-5, wait=False)  # runs detached
        print(job.wait().result)  # a progress bar on a terminal
"""

from ._client import SQL, Client, DiffPrivLib, FitJob, FittedModel, OpenDP
from ._exceptions import (
    AuthenticationError,
    BudgetExhaustedError,
    ConfigurationError,
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
    WaitTimeoutError,
)
from ._jobs import Job
from ._retry import Backoff
from ._synth import Synth, SynthJob
from ._tables import decode_table, encode_table
from ._types import ArchivedQuery, Budget, Cost, DatasetInfo, History, JobStatus, QueryResult
from ._version import __version__

__all__ = [
    "SQL",
    "ArchivedQuery",
    "AuthenticationError",
    "Backoff",
    "Budget",
    "BudgetExhaustedError",
    "Client",
    "ConfigurationError",
    "Cost",
    "DatasetInfo",
    "DatasetUnavailableError",
    "DiffPrivLib",
    "EngineError",
    "FitJob",
    "FittedModel",
    "History",
    "InvalidRequestError",
    "Job",
    "JobStatus",
    "NeblinaConnectionError",
    "NeblinaError",
    "NotFoundError",
    "OpenDP",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "QueryConflictError",
    "QueryInProgressError",
    "QueryResult",
    "RateLimitedError",
    "ServerError",
    "Synth",
    "SynthJob",
    "WaitTimeoutError",
    "__version__",
    "decode_table",
    "encode_table",
]
