"""Administration operations, shared by the ``neblina-admin`` CLI, ``apply`` and seeding.

Uses the caller's AWS credentials: IAM is the administrator's authentication, there is no
admin HTTP surface. Every function validates its inputs first and raises a
:class:`~chalicelib.errors.NeblinaError` (``InvalidRequest``, ``ItemNotFound``, a
``Conflict``) before writing anything.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from chalicelib import metadata as metadata_module
from chalicelib.auth import IssuedToken, issue_token
from chalicelib.aws import s3_client
from chalicelib.config import Settings, get_settings
from chalicelib.errors import Conflict, InvalidRequest
from chalicelib.models import (
    Dataset,
    DatasetCap,
    Grant,
    PrivacyCost,
    QueryRecord,
    QueryState,
    Token,
    User,
    metadata_digest,
    on_grid,
    to_decimal,
    utcnow,
)
from chalicelib.storage import AlreadyExists, ItemNotFound, Store
from chalicelib.validation import DATASET_NAME

USER_ID = re.compile(r"^[A-Za-z0-9_.@+-]{1,128}$")
_DURATION = re.compile(r"^\s*([0-9]{1,6})\s*([smhdw])\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# inputs --------------------------------------------------------------------------------
def user_id(value: str) -> str:
    """A user id: 1-128 characters of letters, digits and ``_ . @ + -``."""
    if not isinstance(value, str) or not USER_ID.match(value):
        raise InvalidRequest(
            f"invalid user id {value!r}: use 1-128 characters of letters, digits and _.@+-"
        )
    return value


def dataset_name(value: str) -> str:
    """A dataset name: 1-64 characters of ``[A-Za-z0-9_.-]``."""
    if not isinstance(value, str) or not DATASET_NAME.match(value):
        raise InvalidRequest(f"invalid dataset name {value!r}: use 1-64 characters of A-Za-z0-9_.-")
    return value


def amount(value: object, field: str) -> Decimal:
    """A budget amount: an exact, finite decimal >= 0 (strings keep every digit)."""
    try:
        result = to_decimal(value)
    except ValueError:
        raise InvalidRequest(f"{field} must be a finite number >= 0 (got {value!r})") from None
    if result < 0:
        raise InvalidRequest(f"{field} must be a finite number >= 0 (got {value!r})")
    if not on_grid(result):  # docs/ledger.md, "Amounts"
        raise InvalidRequest(
            f"{field} must be at most 1000000000 with no digit below 1e-20 (got {value!r})"
        )
    return abs(result) if result == 0 else result  # -0 is 0


def budget(*, epsilon: object, delta: object) -> PrivacyCost:
    """An (ε, δ) budget: ε >= 0 and 0 <= δ < 1."""
    result = PrivacyCost(epsilon=amount(epsilon, "epsilon"), delta=amount(delta, "delta"))
    if result.delta >= 1:
        raise InvalidRequest(f"delta must be below 1 (got {delta!r})")
    return result


def duration(value: str) -> timedelta:
    """``90m``, ``12h``, ``30d``, ``2w`` as a timedelta (> 0)."""
    match = _DURATION.match(value or "")
    if not match or int(match.group(1)) == 0:
        raise InvalidRequest(f"invalid duration {value!r}: use e.g. 90m, 12h, 30d or 2w")
    return timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])


def read_metadata(path: Path) -> dict[str, Any]:
    """Load and validate a metadata YAML file (``yaml.safe_load`` only)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidRequest(f"cannot read metadata file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"metadata file {path} is not valid YAML: {exc}") from exc
    try:
        return metadata_module.validate(raw)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{path}: {exc.message}") from exc


def normalise_source(source: str, base: Path | None = None) -> str:
    """An ``s3://`` URI, an ``http(s)://`` URL, or a local path made absolute."""
    parsed = urlparse(source)
    if parsed.scheme == "s3":
        if not parsed.netloc or not parsed.path.strip("/"):
            raise InvalidRequest(f"invalid S3 URI {source!r}: expected s3://bucket/key")
        return source
    if parsed.scheme in ("http", "https"):
        if not parsed.netloc:
            raise InvalidRequest(f"invalid URL {source!r}")
        return source
    if parsed.scheme not in ("", "file"):
        raise InvalidRequest(
            f"unsupported source {source!r}: use an s3:// URI, an http(s) URL or a local path"
        )
    path = Path(parsed.path if parsed.scheme == "file" else source).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return str(path.resolve())


def check_source(settings: Settings, source: str) -> None:
    """Refuse a source that plainly does not exist (S3 object or local file)."""
    parsed = urlparse(source)
    if parsed.scheme == "s3":
        from botocore.exceptions import ClientError

        try:
            s3_client(settings).head_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        except ClientError as exc:
            raise InvalidRequest(f"source {source} cannot be read: {exc}") from exc
    elif parsed.scheme not in ("http", "https") and not os.path.isfile(source):
        raise InvalidRequest(f"source {source} is not a readable file")


def check_data(
    settings: Settings, name: str, source: str, metadata: dict[str, Any], fmt: str | None = None
) -> None:
    """Read the source as the engines do and refuse it unless it matches the metadata.

    Raises ``InvalidRequest`` naming every problem (see :mod:`neblina_admin.sourcecheck`).
    """
    from chalicelib.datasets import DatasetLoader, source_format
    from neblina_admin import sourcecheck

    resolved = source_format(source, fmt)
    dataset = Dataset(
        name=name, source=source, metadata=metadata, created_at=utcnow(), source_format=resolved
    )
    try:
        frame = DatasetLoader(settings).read_source(dataset)
    except Exception as exc:
        raise InvalidRequest(f"source {source} cannot be read as {resolved}: {exc}") from exc
    found = sourcecheck.problems(frame, metadata, resolved)
    if found:
        raise InvalidRequest(f"source {source} does not match its metadata: " + "; ".join(found))


def columnar_copy(settings: Settings, dataset: Dataset) -> dict[str, str] | None:
    """Convert a CSV source in S3 to its Parquet copy, beside it; the record to store.

    The copy (``<source key>.parquet``) holds the source's rows typed from the metadata
    (:func:`chalicelib.datasets.to_parquet`: nothing clamped or dropped, NULLs kept). The
    record names the copy, its ETag and the source version it was converted from, read
    *before* the source: if the source is replaced meanwhile, the record names the older
    version and workers read the source instead of a copy of other rows. None (workers
    read the source) for other sources: a local path or http(s) URL, or a Parquet source.
    """
    from chalicelib.datasets import DatasetLoader, split_s3_uri, to_parquet

    if dataset.source_format != "csv" or urlparse(dataset.source).scheme != "s3":
        return None
    loader = DatasetLoader(settings)
    version = loader.version(dataset)
    data = to_parquet(loader.read_source(dataset), dataset.metadata)
    bucket, key = split_s3_uri(dataset.source)
    written = s3_client(settings).put_object(Bucket=bucket, Key=f"{key}.parquet", Body=data)
    return {
        "uri": f"s3://{bucket}/{key}.parquet",
        "etag": str(written["ETag"]),
        "source_version": version,
        "metadata_digest": metadata_digest(dataset.metadata),
    }


# S3 -------------------------------------------------------------------------------------
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


# users ----------------------------------------------------------------------------------
def require_user(store: Store, uid: str) -> User:
    """The user, or :class:`ItemNotFound`."""
    user = store.get_user(user_id(uid))
    if user is None:
        raise ItemNotFound(f"unknown user {uid}")
    return user


def add_user(store: Store, uid: str, description: str = "") -> tuple[User, bool]:
    """Create a user; returns (user, created). An existing user is returned unchanged."""
    user = User(user_id=user_id(uid), created_at=utcnow(), description=description)
    try:
        store.put_user(user, create_only=True)
    except AlreadyExists:
        existing = store.get_user(uid)
        assert existing is not None
        return existing, False
    return user, True


def update_user(
    store: Store, uid: str, *, disabled: bool | None = None, description: str | None = None
) -> User:
    """Disable/enable a user or change the description."""
    user = require_user(store, uid)
    changed = replace(
        user,
        disabled=user.disabled if disabled is None else disabled,
        description=user.description if description is None else description,
    )
    store.put_user(changed, create_only=False)
    return changed


def live_tokens(store: Store, uid: str) -> list[Token]:
    """The user's tokens that still authenticate (not revoked, not expired)."""
    now = utcnow()
    return [t for t in store.list_tokens(uid) if not t.revoked and not t.is_expired(now)]


@dataclass(frozen=True)
class Removal:
    """What removing a user or a dataset did."""

    revoked_tokens: int
    removed_grants: int
    archived_queries: int


def remove_user(store: Store, uid: str, *, force: bool = False) -> Removal:
    """Remove a user and their grants; revoke their tokens. The archive is never deleted.

    Refused while the user holds a token that still works, unless ``force``.
    """
    require_user(store, uid)
    tokens = live_tokens(store, uid)
    if tokens and not force:
        raise Conflict(
            f"user {uid} has {len(tokens)} unexpired token(s) "
            f"({', '.join(t.token_id for t in tokens)}); revoke them or use --force"
        )
    for token in tokens:
        store.revoke_token(token.token_hash)
    grants = list(store.list_grants(uid))
    for grant in grants:
        store.delete_grant(uid, grant.dataset)
    store.delete_user(uid)
    archived = sum(1 for _ in store.iter_queries(user_id=uid))
    return Removal(len(tokens), len(grants), archived)


# tokens ---------------------------------------------------------------------------------
def token_lifetime(expires_in: timedelta | None, never_expires: bool) -> timedelta | None:
    """The lifetime of a new token: as asked, else ``NEBLINA_TOKEN_DEFAULT_DAYS``.

    A token that never expires is only ever issued on explicit request (``never_expires``).
    """
    if never_expires:
        if expires_in is not None:
            raise InvalidRequest("give a lifetime or ask for no expiry, not both")
        return None
    if expires_in is not None:
        return expires_in
    days = get_settings().token_default_days
    if days <= 0:
        raise InvalidRequest("NEBLINA_TOKEN_DEFAULT_DAYS must be a number of days above 0")
    return timedelta(days=days)


def add_token(
    store: Store,
    uid: str,
    expires_in: timedelta | None = None,
    *,
    never_expires: bool = False,
) -> IssuedToken:
    """Issue a token for an existing user; the secret is in the result, only its hash is stored.

    Without ``expires_in`` it expires after the default lifetime (``token_lifetime``).
    """
    require_user(store, uid)
    issued = issue_token(uid, expires_in=token_lifetime(expires_in, never_expires))
    store.put_token(issued.record)
    return issued


@dataclass(frozen=True)
class Rotation:
    """A rotated token: the new secret, and the old token as it now stands."""

    issued: IssuedToken
    old: Token


def rotate_token(
    store: Store,
    token_id: str,
    *,
    grace: timedelta | None = None,
    expires_in: timedelta | None = None,
    never_expires: bool = False,
) -> Rotation:
    """Issue a new token for the same user, then retire the old one.

    Without ``grace`` the old token is revoked at once; with it, the old token expires
    ``grace`` from now (never later than it would have anyway), so clients can switch. The
    new token is stored first: if the rotation is interrupted, the old one still works and
    the rotation can be run again.
    """
    old = find_token(store, token_id)
    now = utcnow()
    if old.revoked or old.is_expired(now):
        state = "revoked" if old.revoked else "expired"
        raise Conflict(f"token {token_id} is {state}; issue a new one with tokens issue")
    issued = add_token(store, old.user_id, expires_in, never_expires=never_expires)
    if grace is None:
        store.revoke_token(old.token_hash)
    else:
        store.expire_token(old.token_hash, now + grace)
    current = store.get_token(old.token_hash)
    assert current is not None
    return Rotation(issued=issued, old=current)


def find_token(store: Store, token_id: str) -> Token:
    """A token by its public id (the first 12 hex characters of its hash)."""
    if not re.fullmatch(r"[0-9a-f]{12}", token_id or ""):
        raise InvalidRequest(f"invalid token id {token_id!r}: 12 hex characters, see tokens list")
    matches = [t for t in store.list_tokens() if t.token_id == token_id]
    if not matches:
        raise ItemNotFound(f"unknown token {token_id}")
    if len(matches) > 1:  # pragma: no cover - 48-bit prefixes: practically never
        raise Conflict(f"token id {token_id} is ambiguous")
    return matches[0]


def revoke_token(store: Store, token_id: str) -> Token:
    """Revoke a token by its id; it stops authenticating at once."""
    token = find_token(store, token_id)
    store.revoke_token(token.token_hash)
    return replace(token, revoked=True)


# datasets -------------------------------------------------------------------------------
def require_dataset(store: Store, name: str) -> Dataset:
    """The dataset, or :class:`ItemNotFound`."""
    dataset = store.get_dataset(dataset_name(name))
    if dataset is None:
        raise ItemNotFound(f"unknown dataset {name}")
    return dataset


def add_dataset(
    store: Store,
    name: str,
    source: str,
    metadata: object,
    *,
    description: str = "",
    source_format: str | None = None,
    replace: bool = False,
    columnar: dict[str, str] | None = None,
) -> tuple[Dataset, bool]:
    """Register a dataset after validating its metadata; returns (dataset, created)."""
    dataset_name(name)
    validated = metadata_module.validate(metadata)
    from chalicelib.datasets import source_format as infer_format

    if source_format not in (None, "csv", "parquet"):
        raise InvalidRequest(f"unknown format {source_format!r}: csv or parquet")
    dataset = Dataset(
        name=name,
        source=source,
        metadata=validated,
        created_at=utcnow(),
        description=description or str(validated.get("description", "")),
        source_format=infer_format(source, source_format),
        columnar=columnar,
    )
    try:
        store.put_dataset(dataset, create_only=not replace)
    except AlreadyExists:
        existing = store.get_dataset(name)
        assert existing is not None
        return existing, False
    return dataset, True


def per_query_cap(*, epsilon: object, delta: object) -> PrivacyCost:
    """The largest cost one query may have: ε > 0 and 0 <= δ < 1."""
    cap = budget(epsilon=epsilon, delta=delta)
    if cap.epsilon <= 0:
        raise InvalidRequest(f"a per-query cap needs epsilon above 0 (got {epsilon!r})")
    return cap


def latency_bucket_ms(value: object) -> int:
    """A hardened-mode latency bucket: whole milliseconds in 10..60000."""
    if isinstance(value, bool) or not isinstance(value, int) or not 10 <= value <= 60_000:
        raise InvalidRequest(f"latency_bucket_ms must be an integer in 10..60000 (got {value!r})")
    return value


_KEEP: Any = object()


def update_dataset(
    store: Store,
    name: str,
    *,
    metadata: object | None = None,
    source: str | None = None,
    source_format: str | None = None,
    description: str | None = None,
    query_cap: PrivacyCost | None = _KEEP,
    hardened: bool | None = None,
    bucket_ms: int | None = _KEEP,
    columnar: dict[str, str] | None = _KEEP,
) -> Dataset:
    """Change a dataset's metadata, source, description or policy (validated first).

    ``query_cap`` and ``bucket_ms`` are left as they are unless given (None removes them).
    ``columnar`` (the Parquet copy, :func:`columnar_copy`) is kept unless the source or the
    metadata changes, which drops it unless a new one is given.
    """
    current = require_dataset(store, name)
    if query_cap is _KEEP:
        query_cap = current.per_query_cap
    if bucket_ms is _KEEP:
        bucket_ms = current.latency_bucket_ms
    elif bucket_ms is not None:
        bucket_ms = latency_bucket_ms(bucket_ms)
    validated = current.metadata if metadata is None else metadata_module.validate(metadata)
    from chalicelib.datasets import source_format as infer_format

    new_source = current.source if source is None else source
    fmt = source_format or (current.source_format if source is None else None)
    changed = replace(
        current,
        metadata=validated,
        source=new_source,
        source_format=infer_format(new_source, fmt),
        description=current.description if description is None else description,
        per_query_cap=query_cap,
        hardened=current.hardened if hardened is None else hardened,
        latency_bucket_ms=bucket_ms,
    )
    if columnar is _KEEP:
        same_data = (changed.source, changed.metadata, changed.source_format) == (
            current.source,
            current.metadata,
            current.source_format,
        )
        columnar = current.columnar if same_data else None
    changed = replace(changed, columnar=columnar)
    store.put_dataset(changed, create_only=False)
    return changed


def remove_dataset(store: Store, name: str, *, force: bool = False) -> Removal:
    """Remove a dataset (and its cap). Refused while grants exist, unless ``force``."""
    require_dataset(store, name)
    grants = list(store.list_grants(dataset=name))
    if grants and not force:
        raise Conflict(
            f"dataset {name} still has {len(grants)} grant(s) "
            f"({', '.join(g.user_id for g in grants)}); revoke them or use --force"
        )
    for grant in grants:
        store.delete_grant(grant.user_id, name)
    store.delete_dataset(name)
    archived = sum(1 for _ in store.iter_queries(dataset=name))
    return Removal(0, len(grants), archived)


# grants ---------------------------------------------------------------------------------
def require_grant(store: Store, uid: str, dataset: str) -> Grant:
    """The grant, or :class:`ItemNotFound` naming what is missing."""
    require_user(store, uid)
    require_dataset(store, dataset)
    grant = store.get_grant(uid, dataset)
    if grant is None:
        raise ItemNotFound(f"{uid} holds no grant on {dataset}")
    return grant


def grant(
    store: Store, user_id: str, dataset: str, *, epsilon: object, delta: object
) -> tuple[Grant, bool]:
    """Give a user a budget on a dataset; returns (grant, created). Existing grants are kept."""
    initial = budget(epsilon=epsilon, delta=delta)
    require_user(store, user_id)
    require_dataset(store, dataset)
    try:
        return store.create_grant(user_id, dataset, initial), True
    except AlreadyExists:
        existing = store.get_grant(user_id, dataset)
        assert existing is not None
        return existing, False


def top_up(store: Store, user_id: str, dataset: str, *, epsilon: object, delta: object) -> Grant:
    """Add to a grant's initial (and so remaining) budget."""
    change = budget(epsilon=epsilon, delta=delta)
    if change == PrivacyCost.zero():
        raise InvalidRequest("a top-up needs epsilon or delta above 0")
    current = require_grant(store, user_id, dataset)
    if current.initial.delta + change.delta >= 1:
        raise InvalidRequest("delta of a grant must stay below 1")
    if not on_grid((current.initial + change).epsilon):  # docs/ledger.md, "Amounts"
        raise InvalidRequest("epsilon of a grant must stay at most 1000000000")
    return store.change_grant(user_id, dataset, change)


def set_grant(store: Store, user_id: str, dataset: str, *, epsilon: object, delta: object) -> Grant:
    """Set a grant's initial budget; never below what was spent (``BelowSpent``)."""
    target = budget(epsilon=epsilon, delta=delta)
    for _ in range(5):
        current = require_grant(store, user_id, dataset)
        if current.initial == target:
            return current
        try:
            return store.change_grant(
                user_id, dataset, target - current.initial, expected_initial=current.initial
            )
        except Conflict as exc:
            if exc.code != "concurrent_change":
                raise
    raise Conflict("the grant keeps changing; try again")


def revoke_grant(store: Store, uid: str, dataset: str) -> Grant:
    """Remove a grant. Its spend stays in the archive and in the dataset's cap."""
    current = require_grant(store, uid, dataset)
    store.delete_grant(uid, dataset)
    return current


def reconcile(store: Store) -> int:
    """Settle the ledger entries a crash left pending; returns how many.

    Only the MongoDB store keeps pending entries (it writes a reservation in steps); a
    DynamoDB reservation is one transaction, so there it is always 0.
    """
    return store.reconcile()


def set_cap(store: Store, dataset: str, limit: PrivacyCost | None) -> DatasetCap:
    """Set (or lift, with None) a dataset-wide cap across all users."""
    require_dataset(store, dataset)
    return store.set_cap(dataset, limit)


# archive --------------------------------------------------------------------------------
EXPORT_FIELDS = (
    "query_id",
    "user_id",
    "dataset",
    "engine",
    "state",
    "created_at",
    "finished_at",
    "cost_epsilon",
    "cost_delta",
    "request",
    "result",
    "error",
)


def export_row(record: QueryRecord, now: datetime | None = None) -> dict[str, Any]:
    """One archived query as a flat JSON-able row (exact decimal strings).

    The lease rule applies as in the API: a record whose request died shows ``failed``.
    """
    record = record.as_seen(now or utcnow())
    document = record.to_json()
    return {
        "query_id": record.query_id,
        "user_id": record.user_id,
        "dataset": record.dataset,
        "engine": record.engine,
        "state": record.state.value,
        "created_at": document["created_at"],
        "finished_at": document["finished_at"],
        "cost_epsilon": document["cost"]["epsilon"],
        "cost_delta": document["cost"]["delta"],
        "request": record.request,
        "result": record.result,
        "error": record.error,
    }


def archive(
    store: Store, *, uid: str | None = None, dataset: str | None = None
) -> Iterator[QueryRecord]:
    """The archived queries of a user and/or a dataset, oldest first."""
    if uid is None and dataset is None:
        raise InvalidRequest("name a user (--user) or a dataset (--dataset)")
    if uid is not None:
        user_id(uid)
    if dataset is not None:
        dataset_name(dataset)
    return store.iter_queries(user_id=uid, dataset=dataset)


def write_export(records: Iterable[QueryRecord], out: TextIO, fmt: str) -> int:
    """Write records as JSON lines or CSV (nested fields as JSON); returns the count."""
    count = 0
    if fmt == "jsonl":
        for record in records:
            out.write(json.dumps(export_row(record), sort_keys=True) + "\n")
            count += 1
        return count
    if fmt != "csv":
        raise InvalidRequest(f"unknown format {fmt!r}: jsonl or csv")
    writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    for record in records:
        row = export_row(record)
        for key in ("request", "result", "error"):
            row[key] = "" if row[key] is None else json.dumps(row[key], sort_keys=True)
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
        count += 1
    return count


def iso(value: datetime | None) -> str | None:
    """An ISO timestamp or None."""
    return value.isoformat() if value is not None else None


# opening balances (imports) -------------------------------------------------------------
IMPORTED = "imported"
"""The ``payload_hash`` of every imported record. Real records carry a hex digest of their
request, which never equals this, so a request reusing an imported ``query_id`` is refused
(409): an imported record is never replayed, and nothing ever runs it."""


def book(store: Store, record: QueryRecord) -> None:
    """Write an already finished query (imported history) through the ledger's own debit.

    ``record`` must be ``running`` with its lease already over (``lease_expires_at`` is its
    ``created_at``): ``reserve`` debits its cost from the grant and creates it in one
    conditional write, then ``finish`` marks it ``done`` with no result. Should the second
    write be lost, the lease rule shows the record ``failed``: the spend stands either way.
    With no job phase and its lease over, no worker can ever claim it (``Store.claim``).
    """
    if record.payload_hash != IMPORTED or record.state is not QueryState.RUNNING:
        raise InvalidRequest("only imported records are booked")
    store.reserve(record)
    store.finish(record.query_id, QueryState.DONE, record.finished_at or record.created_at)


def opening_record(
    uid: str, dataset: str, amount: PrivacyCost, note: str, now: datetime | None = None
) -> QueryRecord:
    """The record carrying what a grant had spent before Neblina (``engine`` ``import``)."""
    import hashlib

    now = now or utcnow()
    digest = hashlib.sha256(f"{uid}\0{dataset}\0{now.isoformat()}".encode()).hexdigest()
    return QueryRecord(
        query_id=f"opening-{digest[:32]}",
        user_id=uid,
        dataset=dataset,
        engine="import",
        payload_hash=IMPORTED,
        request={"import": {"note": note}},
        cost=amount,
        state=QueryState.RUNNING,
        created_at=now,
        lease_expires_at=now,
        finished_at=now,
    )


def open_grant(
    store: Store,
    uid: str,
    dataset: str,
    initial: PrivacyCost,
    spent: PrivacyCost,
    history: Iterable[QueryRecord] = (),
    *,
    note: str = "spent before the grant came to Neblina",
) -> Grant:
    """Create a grant that has already spent ``spent`` (an import), audited in the ledger.

    The only way an administrator sets ``spent``, and only on a new grant: each record of
    ``history`` (imported queries, :func:`book`) is debited with its cost, then one opening
    record (``engine`` ``import``) debits what the history does not account for. So the
    grant's spend is the sum of its records' costs, as for any grant. Refused
    (``InvalidRequest``) when ``spent`` is above ``initial`` or below the history's total.
    """
    records = list(history)
    booked = sum((r.cost for r in records), PrivacyCost.zero())
    if not spent <= initial:
        raise InvalidRequest(f"grant {uid} on {dataset}: spent is above the initial budget")
    if not booked <= spent:
        raise InvalidRequest(f"grant {uid} on {dataset}: the history costs more than spent")
    store.create_grant(uid, dataset, initial)
    for record in records:
        book(store, record)
    rest = spent - booked
    if rest != PrivacyCost.zero():
        book(store, opening_record(uid, dataset, rest, note))
    current = store.get_grant(uid, dataset)
    assert current is not None
    return current
