"""Values returned by the client."""

from __future__ import annotations

from collections.abc import Sequence
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

    def plot(self, ax: Any = None) -> Any:
        """A bar of the grant's ε (spent, remaining) and the dataset cap as a line; returns
        the matplotlib axes (needs ``neblina-client[plot]``)."""
        return _plot_budget(self, ax)


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

    def plot(self, ax: Any = None) -> Any:
        """Bars of a table release per group, with the accuracy's intervals as error bars
        when the release has them; returns the matplotlib axes (``neblina-client[plot]``)."""
        return _plot_release(self, ax)


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
    # The accuracy stated when the query was reserved (as ``QueryResult.accuracy``);
    # None on records from before it existed.
    accuracy: pd.DataFrame | None = None


class History(list[ArchivedQuery]):
    """The caller's archived queries (a list, newest first), with a burn-down plot."""

    def plot(self, budget: Budget | None = None, ax: Any = None) -> Any:
        """Cumulative ε spent over time (refunded queries excluded), against the grant and
        the dataset cap when ``budget`` is given (``client.budget()``); returns the
        matplotlib axes (needs ``neblina-client[plot]``)."""
        return _plot_history(self, budget, ax)


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


# --- plots (the [plot] extra) ------------------------------------------------------------
# matplotlib is imported only when a plot is drawn; without it, a plot raises ImportError
# naming the extra. Each draws on ``ax`` (or a new figure's axes) and returns the axes.
_PLOT_MISSING = "plots need matplotlib: pip install 'neblina-client[plot]'"


def _plot_axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(_PLOT_MISSING) from error
    _, created = plt.subplots()
    return created


def _plot_budget(budget: Budget, ax: Any = None) -> Any:
    """One bar for the grant's ε: spent, then what is left of it; the cap as a line."""
    axes = _plot_axes(ax)
    spent = float(budget.spent.epsilon)
    remaining = float(budget.remaining.epsilon)
    axes.barh(["ε"], [spent], color="tab:blue", label=f"spent ({budget.spent.epsilon})")
    axes.barh(
        ["ε"], [remaining], left=[spent], color="tab:gray", alpha=0.4,
        label=f"remaining ({budget.remaining.epsilon})",
    )  # fmt: skip
    if budget.cap_limit is not None:
        axes.axvline(
            float(budget.cap_limit.epsilon), color="tab:red", linestyle=":",
            label=f"dataset cap ({budget.cap_limit.epsilon})",
        )  # fmt: skip
    axes.set_xlabel("ε")
    axes.set_title(f"grant ε {budget.initial.epsilon}, δ {budget.initial.delta}")
    axes.legend()
    return axes


def _plot_history(
    records: Sequence[ArchivedQuery], budget: Budget | None = None, ax: Any = None
) -> Any:
    """Burn-down: cumulative ε spent over time (refunded queries excluded), against the
    grant and the dataset cap when ``budget`` is given."""
    axes = _plot_axes(ax)
    standing = sorted(
        (r for r in records if r.state != "refunded"), key=lambda record: record.created_at
    )
    times = [record.created_at for record in standing]
    totals = pd.Series([float(r.cost.epsilon) for r in standing], dtype="float64").cumsum()
    if times:
        axes.step(
            [times[0], *times], [0.0, *totals.tolist()], where="post", color="tab:blue",
            label="ε spent",
        )  # fmt: skip
    if budget is not None:
        axes.axhline(
            float(budget.initial.epsilon), color="tab:green", linestyle="--",
            label=f"grant ({budget.initial.epsilon})",
        )  # fmt: skip
        if budget.cap_limit is not None:
            axes.axhline(
                float(budget.cap_limit.epsilon), color="tab:red", linestyle=":",
                label=f"dataset cap ({budget.cap_limit.epsilon})",
            )  # fmt: skip
    axes.set_ylabel("ε spent")
    axes.set_xlabel("time")
    axes.tick_params(axis="x", labelrotation=30)
    axes.legend()
    return axes


def _plot_half_widths(result: pd.DataFrame, accuracy: Any, column: str) -> list[float] | None:
    """The CI half-width of each row of ``column``, from the release's accuracy, or None.

    Two shapes are read: the stated accuracy (docs/api.md, "Accuracy": one row per released
    column, with ``column`` and ``accuracy``; the same half-width for every row of the
    result, or one per row when there is a row for each), or a DataFrame aligned with the
    result (same length, a column of the same name holding each row's half-width). A
    column without an analytic half-width (a key, an AVG: ``accuracy`` null) gets none.
    """
    if not isinstance(accuracy, pd.DataFrame) or accuracy.empty:
        return None
    if {"column", "accuracy"} <= set(accuracy.columns):
        found = accuracy[accuracy["column"] == column]["accuracy"].tolist()
        values = found * len(result) if len(found) == 1 else found
    elif column in accuracy.columns:
        values = accuracy[column].tolist()
    else:
        return None
    if len(values) != len(result) or any(v is None or pd.isna(v) for v in values):
        return None
    return [float(v) for v in values]


def _plot_release(result: QueryResult, ax: Any = None) -> Any:
    """Bars of each numeric column per group (the GROUP BY keys), with the intervals of the
    release's accuracy as error bars where it has them."""
    table = result.result
    if not isinstance(table, pd.DataFrame):
        raise ValueError("plot() draws a table release (SQL, or a Polars group_by)")
    numeric = [
        c for c in table.columns
        if pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
    ]  # fmt: skip
    keys = [c for c in table.columns if c not in numeric]
    values = numeric if keys else numeric[1:] or numeric
    if not values:
        raise ValueError("the release has no numeric column to plot")
    labels = (
        table[keys].astype(str).agg(" / ".join, axis=1).tolist()
        if keys
        else [str(i) for i in range(len(table))]
    )
    axes = _plot_axes(ax)
    width = 0.8 / len(values)
    for position, column in enumerate(values):
        xs = [i + position * width for i in range(len(table))]
        errors = _plot_half_widths(table, result.accuracy, str(column))
        axes.bar(
            xs, table[column].astype("float64").fillna(0.0).tolist(), width=width,
            yerr=errors, capsize=4 if errors else 0, label=str(column),
        )  # fmt: skip
    axes.set_xticks([i + width * (len(values) - 1) / 2 for i in range(len(table))])
    axes.set_xticklabels(labels)
    if keys:
        axes.set_xlabel(" / ".join(map(str, keys)))
    axes.legend()
    return axes
