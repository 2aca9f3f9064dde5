"""Domain values: privacy costs, users, tokens, datasets, grants and query records.

Everything here is a frozen dataclass and imports nothing heavy, so the authorizer can use it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import (
    ROUND_CEILING,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    Underflow,
)
from enum import StrEnum
from typing import Any

ZERO = Decimal(0)

# The ledger's grid (docs/ledger.md, "Amounts"): every amount charged, granted or capped is a
# multiple of AMOUNT_QUANTUM and at most MAX_AMOUNT, so it has at most 30 significant digits
# and every sum and difference of them (remaining = initial - the costs) is exact in every
# backend: DynamoDB Numbers (38 digits, 1e-130..1e125) and MongoDB Decimal128 (34 digits).
AMOUNT_QUANTUM = Decimal("1e-20")
MAX_AMOUNT = Decimal("1e9")
# A charge is rounded up to 17 significant digits (enough to tell any two doubles apart), and
# never finer than the quantum: what users read is short, and never below the true charge.
CHARGE_DIGITS = 17
# Arithmetic on amounts is exact or fails: never rounded by Python's 28-digit default context.
EXACT = Context(
    prec=200,
    Emin=-999_999,
    Emax=999_999,
    traps=[Inexact, Rounded, InvalidOperation, Overflow, Underflow, DivisionByZero],
)
_WIDE = Context(prec=2_000, Emin=-999_999, Emax=999_999)


class AmountOutOfRange(ValueError):
    """An amount the ledger cannot hold exactly (above :data:`MAX_AMOUNT`, negative, NaN)."""


def to_decimal(value: object) -> Decimal:
    """Convert a number to an exact ``Decimal`` (floats through their shortest repr).

    ``0.1`` becomes ``Decimal("0.1")``, not the binary expansion of the double. NaN and
    infinities are refused with ``ValueError``.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a privacy amount")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation as exc:
            raise ValueError(f"not a decimal number: {value!r}") from exc
    else:
        try:
            as_float = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a number: {value!r}") from exc
        if not math.isfinite(as_float):
            raise ValueError("not a finite number")
        result = Decimal(repr(as_float))
    if not result.is_finite():
        raise ValueError("not a finite number")
    return result


def exact_decimal(value: float) -> Decimal:
    """The exact binary value of a float, as a ``Decimal`` (never rounded either way).

    ``Decimal(repr(x))`` can be half an ulp *below* ``x``: an engine's charge goes through
    this, then :func:`charge` rounds it up.
    """
    if not math.isfinite(value):
        raise AmountOutOfRange("not a finite number")
    return Decimal(value)


def float_down(value: Decimal) -> float:
    """The largest float that is not above ``value`` (a mechanism is calibrated with it).

    ``float(Decimal("0.1"))`` is 0.1000000000000000055...: an ε above the one requested.
    """
    result = float(value)
    if Decimal(result) > value:
        result = math.nextafter(result, -math.inf)
    return result


def charge(value: Decimal) -> Decimal:
    """An amount rounded **up** to the ledger's grid (see :data:`AMOUNT_QUANTUM`).

    Up to :data:`CHARGE_DIGITS` significant digits, never finer than the quantum: 1e-39
    becomes 1e-20, 0.1000000000000000055511 becomes 0.10000000000000001, 0.3 stays 0.3.
    :class:`AmountOutOfRange` above :data:`MAX_AMOUNT` or below zero.
    """
    if not value.is_finite() or value < 0:
        raise AmountOutOfRange(f"not an amount the ledger can hold: {value}")
    if value == 0:
        return ZERO
    step = max(AMOUNT_QUANTUM, Decimal(1).scaleb(value.adjusted() - CHARGE_DIGITS + 1))
    result = value.quantize(step, rounding=ROUND_CEILING, context=_WIDE)
    if result > MAX_AMOUNT:
        raise AmountOutOfRange(
            f"{format_decimal(result)} is above the largest amount the ledger holds "
            f"({format_decimal(MAX_AMOUNT)})"
        )
    return result.normalize(context=_WIDE)


def on_grid(value: Decimal) -> bool:
    """True when the ledger holds ``value`` as it is: a multiple of the quantum, in range."""
    if not value.is_finite() or abs(value) > MAX_AMOUNT:
        return False
    return value.quantize(AMOUNT_QUANTUM, context=_WIDE) == value


def format_decimal(value: Decimal) -> str:
    """Plain (never scientific) notation without trailing zeros: ``"0.000015"``, ``"10"``."""
    if value == 0:
        return "0"
    text = format(value.normalize(context=_WIDE), "f")
    return text


@dataclass(frozen=True, order=False, kw_only=True)
class PrivacyCost:
    """An (ε, δ) pair of exact decimals: the price of a query or an amount of budget."""

    epsilon: Decimal
    delta: Decimal

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", to_decimal(self.epsilon))
        object.__setattr__(self, "delta", to_decimal(self.delta))

    def __add__(self, other: PrivacyCost) -> PrivacyCost:
        return PrivacyCost(
            epsilon=EXACT.add(self.epsilon, other.epsilon),
            delta=EXACT.add(self.delta, other.delta),
        )

    def __sub__(self, other: PrivacyCost) -> PrivacyCost:
        return PrivacyCost(
            epsilon=EXACT.subtract(self.epsilon, other.epsilon),
            delta=EXACT.subtract(self.delta, other.delta),
        )

    def charged(self) -> PrivacyCost:
        """Both amounts rounded up to the ledger's grid (:func:`charge`)."""
        return PrivacyCost(epsilon=charge(self.epsilon), delta=charge(self.delta))

    def __le__(self, other: PrivacyCost) -> bool:
        """Partial order: both ε and δ fit."""
        return self.epsilon <= other.epsilon and self.delta <= other.delta

    def is_negative(self) -> bool:
        """True when either component is below zero."""
        return self.epsilon < 0 or self.delta < 0

    def to_json(self) -> dict[str, str]:
        """Exact decimal strings."""
        return {"epsilon": format_decimal(self.epsilon), "delta": format_decimal(self.delta)}

    @classmethod
    def zero(cls) -> PrivacyCost:
        """No cost."""
        return cls(epsilon=ZERO, delta=ZERO)


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class User:
    """A researcher known to the platform."""

    user_id: str
    created_at: datetime
    disabled: bool = False
    description: str = ""


@dataclass(frozen=True)
class Token:
    """An API token as stored: only the SHA-256 of the secret, never the secret itself."""

    token_hash: str
    token_id: str
    user_id: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked: bool = False
    last_used_at: datetime | None = None

    def is_expired(self, now: datetime) -> bool:
        """True once the expiry time has passed."""
        return self.expires_at is not None and now >= self.expires_at


DEFAULT_LATENCY_BUCKET_MS = 500


def metadata_digest(metadata: dict[str, Any]) -> str:
    """SHA-256 of a dataset's metadata (canonical JSON): what a loaded frame was made with."""
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: where its private rows live, its public metadata, its policy.

    ``per_query_cap``: the largest cost one query may have (None: only the deployment's
    ``NEBLINA_MAX_EPSILON_PER_QUERY`` / ``NEBLINA_MAX_DELTA_PER_QUERY``). ``hardened``: query
    and cost answers are released at multiples of ``latency_bucket_ms`` (default
    :data:`DEFAULT_LATENCY_BUCKET_MS`) and data-dependent failures get fixed bodies.
    ``columnar``: the Parquet copy written at registration (:data:`COLUMNAR_FIELDS`), or
    None (the workers read the source itself).
    """

    name: str
    source: str
    metadata: dict[str, Any]
    created_at: datetime
    description: str = ""
    source_format: str = "csv"
    per_query_cap: PrivacyCost | None = None
    hardened: bool = False
    latency_bucket_ms: int | None = None
    columnar: dict[str, str] | None = None

    @property
    def bucket_seconds(self) -> float:
        """The hardened-mode latency bucket, in seconds."""
        return (self.latency_bucket_ms or DEFAULT_LATENCY_BUCKET_MS) / 1000


# A dataset's Parquet copy (docs/admin.md, "Columnar copy"): ``uri`` (s3://, beside the
# source), ``etag`` (of the copy as written), ``source_version`` (the source's version,
# :meth:`chalicelib.datasets.DatasetLoader.version`, the copy was converted from) and
# ``metadata_digest`` (of the metadata that typed it). A worker reads the copy only while the
# source still has that version, the metadata that digest and the copy that ETag.
COLUMNAR_FIELDS = ("uri", "etag", "source_version", "metadata_digest")


@dataclass(frozen=True)
class Grant:
    """A user's budget on one dataset. Invariant: ``spent + remaining == initial``."""

    user_id: str
    dataset: str
    initial: PrivacyCost
    spent: PrivacyCost
    remaining: PrivacyCost
    capped: bool = False  # the dataset has a cap: every debit also goes to the DatasetCap


@dataclass(frozen=True)
class DatasetCap:
    """A dataset-wide budget across all users, debited in the same write as each grant.

    ``limit`` None means no limit: the dataset-wide spend is still counted (so a limit set
    later is exact). ``complete`` is False while existing grants are still being brought
    under the cap (``Store.set_cap`` resumes that work when run again).
    """

    dataset: str
    limit: PrivacyCost | None
    spent: PrivacyCost
    complete: bool = True

    @property
    def remaining(self) -> PrivacyCost | None:
        """What the limit still allows, or None without a limit."""
        return None if self.limit is None else self.limit - self.spent


INTERRUPTED = {
    "error": "interrupted",
    "message": "the request stopped before completing; the cost stands",
}


class QueryState(StrEnum):
    """Life of a query record (see ``docs/ledger.md``).

    running  -> done      the result was released and archived
    running  -> failed    the engine failed after the data was read: the spend stands
    running  -> refunded  the request failed before any data was read: budget returned
    running  -> (lease expired) treated as failed: the spend stands
    """

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    REFUNDED = "refunded"


class QueryPhase(StrEnum):
    """Where a ``running`` record's work is, in order (see ``docs/ledger.md``, "Phases").

    queued     reserved as a job; no worker has claimed it (``Store.claim`` is the only way out)
    loading    claimed: the rows are being read
    running    the mechanism runs (sync runs are created here: nothing retries them)
    archiving  the result is being written
    """

    QUEUED = "queued"
    LOADING = "loading"
    RUNNING = "running"
    ARCHIVING = "archiving"


PROGRESS_PHASES = frozenset({QueryPhase.LOADING, QueryPhase.RUNNING, QueryPhase.ARCHIVING})
"""The phases ``Store.set_progress`` may write: never ``queued``, so only a claim leaves it."""


def check_progress(phase: str, progress: float | None) -> None:
    """Refuse (``ValueError``) a phase ``set_progress`` may not write or a fraction not in 0..1."""
    if phase not in PROGRESS_PHASES:
        raise ValueError(f"not a phase set_progress may write: {phase!r}")
    if progress is not None and (
        isinstance(progress, bool) or not math.isfinite(progress) or not 0 <= progress <= 1
    ):
        raise ValueError(f"progress is a fraction in 0..1, not {progress!r}")


def reuse_digest(payload_hash: str, source_version: str, metadata: str) -> str:
    """The key of identical-query reuse: the payload's hash (engine, canonical request,
    dataset name), the source's version and the metadata's digest. A one-way digest, kept
    in a record's ``extra`` and never returned (the version may be an S3 ETag, an MD5 of
    the rows)."""
    document = json.dumps([payload_hash, source_version, metadata])
    return hashlib.sha256(document.encode()).hexdigest()


@dataclass(frozen=True)
class QueryRecord:
    """One archived query: the request, its cost, and what was released.

    ``phase`` (a :class:`QueryPhase` value) and ``progress`` (a fraction in 0..1 where the
    engine knows one) say where a ``running`` record's work is; both are None once the
    record is settled, and on records written before they existed.
    """

    query_id: str
    user_id: str
    dataset: str
    engine: str
    payload_hash: str
    request: dict[str, Any]
    cost: PrivacyCost
    state: QueryState
    created_at: datetime
    lease_expires_at: datetime
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    phase: str | None = None
    progress: float | None = None

    def lease_expired(self, now: datetime) -> bool:
        """True for a record still ``running`` after its lease: its request died."""
        return self.state is QueryState.RUNNING and now >= self.lease_expires_at

    def as_seen(self, now: datetime) -> QueryRecord:
        """The record with the lease rule applied (see ``chalicelib.service.effective_state``).

        A record still ``running`` after its lease reads as ``failed`` with the error
        :data:`INTERRUPTED`, whether or not that has been written back yet.
        """
        if not self.lease_expired(now):
            return self
        return replace(
            self, state=QueryState.FAILED, error=dict(INTERRUPTED), phase=None, progress=None
        )

    def to_json(self) -> dict[str, Any]:
        """The record as the API returns it."""
        return {
            "query_id": self.query_id,
            "dataset": self.dataset,
            "engine": self.engine,
            "state": self.state.value,
            "request": self.request,
            "cost": self.cost.to_json(),
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "result": self.result,
            "error": self.error,
            "phase": self.phase,
            "progress": self.progress,
        }
