"""Configuration, read once from the environment into a frozen object."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

AUTHORIZER_TTL_SECONDS = 60
"""API Gateway's authorizer result TTL (app.py's ``@app.authorizer``, Terraform's
``authorizer_result_ttl_in_seconds``; the local API server's default): the longest a revoked
or expired token, or a disabled user, is still let in (docs/threat-model.md)."""


@dataclass(frozen=True)
class Settings:
    """Everything the server reads from its environment."""

    region: str
    endpoint_url: str | None
    table_prefix: str
    bucket: str
    store: str
    max_body_bytes: int
    max_dummy_rows: int
    max_query_chars: int
    query_lease_seconds: int
    dataset_cache_entries: int
    max_epsilon_per_query: Decimal
    max_delta_per_query: Decimal
    rate_limit: int = 600  # query and cost requests per user per window; 0: no limit
    rate_window_seconds: int = 60
    token_default_days: int = 90  # lifetime of a token issued without --expires-in (admin)
    mongodb_uri: str | None = None  # NEBLINA_STORE=mongodb only
    mongodb_database: str = "neblina"
    # A released result whose JSON is larger than this is archived in S3 (the bucket's
    # archive/ prefix) and its record keeps a pointer: a DynamoDB item holds 400 KB at most.
    inline_result_bytes: int = 300_000
    # No result larger than this is released (the engine ran: the cost stands). 3 MB: the
    # API Gateway proxy escapes the body once more, at worst doubling it, and Lambda's
    # synchronous response limit is 6 MB (6,291,456 bytes).
    max_result_bytes: int = 3_000_000
    # The lease of a query run as a job ("wait": false): at least the longest the queue may
    # hold it (Lambda's async maximum event age we configure) plus the worker's timeout.
    job_lease_seconds: int = 3600
    # How long the front reuses a dataset record and the fact that a caller holds a grant,
    # and a worker a source's version (docs/threat-model.md, "Cached lookups"); 0: never.
    lookup_cache_seconds: float = 5.0

    def table_name(self, kind: str) -> str:
        """Physical name of one of the tables (users, tokens, datasets, grants, queries)."""
        return f"{self.table_prefix}{kind}"


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return default if raw in (None, "") else float(raw)


def from_environ() -> Settings:
    """Build settings from the current environment (no caching)."""
    return Settings(
        region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        table_prefix=os.environ.get("NEBLINA_TABLE_PREFIX", "neblina-"),
        bucket=os.environ.get("NEBLINA_BUCKET", "neblina-datasets"),
        store=os.environ.get("NEBLINA_STORE", "dynamodb"),
        max_body_bytes=_int("NEBLINA_MAX_BODY_BYTES", 64 * 1024),
        max_dummy_rows=_int("NEBLINA_MAX_DUMMY_ROWS", 100_000),
        max_query_chars=_int("NEBLINA_MAX_QUERY_CHARS", 10_000),
        query_lease_seconds=_int("NEBLINA_QUERY_LEASE_SECONDS", 900),
        dataset_cache_entries=_int("NEBLINA_DATASET_CACHE_ENTRIES", 4),
        max_epsilon_per_query=Decimal(os.environ.get("NEBLINA_MAX_EPSILON_PER_QUERY", "100")),
        max_delta_per_query=Decimal(os.environ.get("NEBLINA_MAX_DELTA_PER_QUERY", "0.5")),
        rate_limit=_int("NEBLINA_RATE_LIMIT", 600),
        rate_window_seconds=_int("NEBLINA_RATE_WINDOW_SECONDS", 60),
        token_default_days=_int("NEBLINA_TOKEN_DEFAULT_DAYS", 90),
        mongodb_uri=os.environ.get("MONGODB_URI") or None,
        mongodb_database=os.environ.get("NEBLINA_MONGODB_DATABASE", "neblina"),
        inline_result_bytes=_int("NEBLINA_INLINE_RESULT_BYTES", 300_000),
        max_result_bytes=_int("NEBLINA_MAX_RESULT_BYTES", 3_000_000),
        job_lease_seconds=_int("NEBLINA_JOB_LEASE_SECONDS", 3600),
        lookup_cache_seconds=_float("NEBLINA_LOOKUP_CACHE_SECONDS", 5.0),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return from_environ()
