"""Values returned by the client."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from typing import Any, TypeAlias

import pandas as pd

# Sums of privacy amounts must be exact: a wide context, and an error rather than rounding.
_EXACT = Context(prec=1000, traps=[Inexact, InvalidOperation, Overflow])


@dataclass(frozen=True)
class Cost:
    """A privacy amount (ε, δ) as exact decimals: the cost of a query or part of a grant.

    ``a <= b`` holds when both ε and δ of ``a`` are at most those of ``b`` (a partial order:
    neither ``a <= b`` nor ``b <= a`` may hold). Sum a list with
    ``sum(costs, Cost.zero())``.
    """

    epsilon: Decimal
    delta: Decimal
    # A price from the server (``sql.cost``, ``opendp.cost``, ...): the accuracy of each
    # output column at ``accuracy.attrs["level"]`` (docs/api.md, "Accuracy"); else None.
    # Not part of the amount: sums and comparisons ignore it.
    accuracy: pd.DataFrame | None = field(default=None, compare=False, repr=False)

    @classmethod
    def zero(cls) -> Cost:
        """The zero amount."""
        return cls(epsilon=Decimal(0), delta=Decimal(0))

    def __add__(self, other: object) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(
            epsilon=_EXACT.add(self.epsilon, other.epsilon),
            delta=_EXACT.add(self.delta, other.delta),
        )

    def __sub__(self, other: object) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(
            epsilon=_EXACT.subtract(self.epsilon, other.epsilon),
            delta=_EXACT.subtract(self.delta, other.delta),
        )

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Cost):
            return NotImplemented
        return self.epsilon <= other.epsilon and self.delta <= other.delta


@dataclass(frozen=True)
class Budget:
    """A grant on one dataset; ``remaining == initial - spent`` exactly.

    ``available`` is what can really be spent: ``remaining``, or less where the dataset's
    cap (shared by all its researchers; ``cap_limit``, ``cap_remaining``) has less left.
    ``limited_by`` says which binds for ``"epsilon"`` and ``"delta"``: ``"grant"`` or
    ``"cap"``. A server without these fields gives ``available == remaining``.
    """

    initial: Cost
    spent: Cost
    remaining: Cost
    available: Cost | None = None
    cap_limit: Cost | None = None
    cap_remaining: Cost | None = None
    limited_by: dict[str, str] = field(
        default_factory=lambda: {"epsilon": "grant", "delta": "grant"}
    )

    def __post_init__(self) -> None:
        if self.available is None:
            object.__setattr__(self, "available", self.remaining)


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset the caller holds a grant on."""

    name: str
    description: str
    rows: int | None


# What a query releases: a table (SmartNoise SQL, DataFrame) or a value (OpenDP: a number,
# or a list of numbers, possibly nested).
Release: TypeAlias = pd.DataFrame | float | int | bool | str | list[Any] | dict[str, Any] | None

# Classes holding a DataFrame compare by identity (eq=False): DataFrame equality is
# element-wise and has no truth value.


@dataclass(frozen=True, eq=False)
class QueryResult:
    """The answer to ``sql.query`` or ``opendp.query``: a DP release (or a dummy run) and
    what it cost. ``result`` is a DataFrame (SQL) or a number or list (OpenDP).

    ``replayed`` is true when the server returned the stored answer of an earlier request
    with the same ``query_id`` (nothing was charged again).
    """

    query_id: str
    dataset: str
    engine: str
    cost: Cost
    result: Release
    dummy: bool
    replayed: bool
    created_at: datetime
    # The accuracy of each output column (docs/api.md, "Accuracy"): one row per column
    # (column, aggregate, distribution, scale, accuracy = CI half-width at
    # ``accuracy.attrs["level"]``, reason, components), indexed by the column's name. OpenDP
    # Polars releases keep OpenDP's own summary at ``alpha`` (``attrs["alpha"]``).
    accuracy: pd.DataFrame | None = None
    # True when the server returned an earlier identical release of the caller's, free
    # (``reuse=True``; ``query_id`` and ``created_at`` are the earlier release's).
    reused: bool = False


@dataclass(frozen=True, eq=False)
class ArchivedQuery:
    """A query from the caller's archive.

    ``state`` is ``running``, ``done`` (``result`` set), ``failed`` (after the data was read:
    the cost stands, ``error`` set) or ``refunded`` (failed before: the cost was returned).
    """

    query_id: str
    dataset: str
    engine: str
    state: str
    request: dict[str, Any]
    cost: Cost
    created_at: datetime
    finished_at: datetime | None
    result: Release
    error: dict[str, Any] | None


@dataclass(frozen=True)
class JobStatus:
    """Where a query stands on the server (``Job.status()``).

    ``state`` is ``running``, ``done``, ``failed`` or ``refunded`` (as in
    :class:`ArchivedQuery`). While ``running``, ``phase`` is ``queued``, ``loading``,
    ``running`` or ``archiving`` (None from a server that does not say), and ``progress``
    the fraction of the engine's work done, from 0 to 1, or None where the engine does not
    know one. ``error`` is set once ``failed`` or ``refunded``.
    """

    query_id: str
    dataset: str
    engine: str
    state: str
    phase: str | None
    progress: float | None
    cost: Cost
    created_at: datetime
    finished_at: datetime | None
    error: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        """True once the query is settled: ``done``, ``failed`` or ``refunded``."""
        return self.state != "running"
