"""The one factory of AWS clients (boto3 is imported on first use, never at cold start).

The composition root (:mod:`chalicelib.deps`) hands ``functools.partial(s3_client,
settings)`` to the dataset loader and the result overflow; nothing else builds a boto3
client. DynamoDB goes through PynamoDB, which keeps its own connection
(:mod:`chalicelib.storage.dynamo`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from chalicelib.config import Settings


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for the configured endpoint and region (one per pair, shared)."""
    return _s3_client(settings.endpoint_url, settings.region)


@lru_cache(maxsize=4)
def _s3_client(endpoint_url: str | None, region: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
