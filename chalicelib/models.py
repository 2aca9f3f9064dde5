"""Domain values: privacy costs, users, tokens, datasets, grants and query records.

Everything here is a frozen dataclass and imports nothing heavy, so the authorizer can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

ZERO = Decimal(0)


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


def format_decimal(value: Decimal) -> str:
    """Plain (never scientific) notation without trailing zeros: ``"0.000015"``, ``"10"``."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text


@dataclass(frozen=True, order=False)
class PrivacyCost:
    """An (ε, δ) pair of exact decimals: the price of a query or an amount of budget."""

    epsilon: Decimal
    delta: Decimal

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", to_decimal(self.epsilon))
        object.__setattr__(self, "delta", to_decimal(self.delta))

    def __add__(self, other: PrivacyCost) -> PrivacyCost:
        return PrivacyCost(epsilon=self.epsilon + other.epsilon, delta=self.delta + other.delta)

    def __sub__(self, other: PrivacyCost) -> PrivacyCost:
        return PrivacyCost(epsilon=self.epsilon - other.epsilon, delta=self.delta - other.delta)

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


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: where its private rows live, its public metadata, its policy.

    ``per_query_cap``: the largest cost one query may have (None: only the deployment's
    ``NEBLINA_MAX_EPSILON_PER_QUERY`` / ``NEBLINA_MAX_DELTA_PER_QUERY``). ``hardened``: query
    and cost answers are released at multiples of ``latency_bucket_ms`` (default
    :data:`DEFAULT_LATENCY_BUCKET_MS`) and data-dependent failures get fixed bodies.
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

    @property
    def bucket_seconds(self) -> float:
        """The hardened-mode latency bucket, in seconds."""
        return (self.latency_bucket_ms or DEFAULT_LATENCY_BUCKET_MS) / 1000


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


@dataclass(frozen=True)
class QueryRecord:
    """One archived query: the request, its cost, and what was released."""

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
        return replace(self, state=QueryState.FAILED, error=dict(INTERRUPTED))

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
        }
