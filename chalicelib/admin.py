"""Administration operations (seeding and, later, the admin CLI). Uses the caller's AWS
credentials: IAM is the administrator's authentication, there is no admin HTTP surface."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from chalicelib import metadata as metadata_module
from chalicelib.auth import IssuedToken, issue_token
from chalicelib.config import Settings
from chalicelib.errors import InvalidRequest
from chalicelib.models import Dataset, Grant, PrivacyCost, User, utcnow
from chalicelib.storage import AlreadyExists, Store
from chalicelib.validation import DATASET_NAME, delta, epsilon


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for the configured endpoint."""
    import boto3

    return boto3.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region)


def ensure_bucket(settings: Settings, bucket: str) -> None:
    """Create the bucket if it does not exist (private, versioned)."""
    client = s3_client(settings)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket in existing:
        return
    if settings.region == "us-east-1":
        client.create_bucket(Bucket=bucket)
    else:
        client.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": settings.region}
        )
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    client.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )


def upload(settings: Settings, bucket: str, key: str, data: bytes) -> str:
    """Put an object and return its ``s3://`` URI."""
    s3_client(settings).put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def add_user(store: Store, user_id: str, description: str = "") -> tuple[User, bool]:
    """Create a user; returns (user, created). An existing user is returned unchanged."""
    if not user_id or len(user_id) > 128 or any(c.isspace() for c in user_id):
        raise InvalidRequest("user ids are 1-128 characters without spaces")
    user = User(user_id=user_id, created_at=utcnow(), description=description)
    try:
        store.put_user(user, create_only=True)
    except AlreadyExists:
        existing = store.get_user(user_id)
        assert existing is not None
        return existing, False
    return user, True


def add_token(store: Store, user_id: str, expires_in: timedelta | None = None) -> IssuedToken:
    """Issue a token for an existing user; the secret is in the result, only its hash is stored."""
    if store.get_user(user_id) is None:
        raise InvalidRequest(f"unknown user {user_id}")
    issued = issue_token(user_id, expires_in=expires_in)
    store.put_token(issued.record)
    return issued


def add_dataset(
    store: Store,
    name: str,
    source: str,
    metadata: object,
    *,
    description: str = "",
    source_format: str | None = None,
    replace: bool = False,
) -> tuple[Dataset, bool]:
    """Register a dataset after validating its metadata; returns (dataset, created)."""
    if not DATASET_NAME.match(name):
        raise InvalidRequest("dataset names are 1-64 characters of [A-Za-z0-9_.-]")
    validated = metadata_module.validate(metadata)
    from chalicelib.datasets import source_format as infer_format

    dataset = Dataset(
        name=name,
        source=source,
        metadata=validated,
        created_at=utcnow(),
        description=description or str(validated.get("description", "")),
        source_format=infer_format(source, source_format),
    )
    try:
        store.put_dataset(dataset, create_only=not replace)
    except AlreadyExists:
        existing = store.get_dataset(name)
        assert existing is not None
        return existing, False
    return dataset, True


def grant(store: Store, user_id: str, dataset: str, eps: object, dlt: object) -> tuple[Grant, bool]:
    """Give a user a budget on a dataset; returns (grant, created). Existing grants are kept."""
    initial = PrivacyCost(epsilon=epsilon(eps), delta=delta(dlt))
    if store.get_user(user_id) is None:
        raise InvalidRequest(f"unknown user {user_id}")
    if store.get_dataset(dataset) is None:
        raise InvalidRequest(f"unknown dataset {dataset}")
    try:
        return store.create_grant(user_id, dataset, initial), True
    except AlreadyExists:
        existing = store.get_grant(user_id, dataset)
        assert existing is not None
        return existing, False
