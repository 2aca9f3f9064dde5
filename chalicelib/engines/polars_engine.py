"""OpenDP's Polars API (``dp.Context`` queries), sent as data and rebuilt on the server.

Transport
    The request's ``plan`` is the closed JSON grammar of :mod:`chalicelib.engines.polars_plan`
    (a list of steps, each made of allowlisted expressions), checked there before anything
    else. The client writes it from the researcher's ``LazyFrameQuery`` (it walks Polars' own
    JSON plan on the researcher's machine); the server never sees Polars' serialisation, so
    nothing from the wire is unpickled, no shared library path or Python function is read,
    and every expression is built here from a static table (``pl.col``, ``pl.lit``, the
    allowlisted methods, OpenDP's ``.dp`` aggregates).

Input
    The dataset version is one Polars frame (read once per loaded version and kept), its
    schema taken from the metadata. The query runs over a placeholder ``LazyFrame`` of that
    schema inside ``make_private_lazyframe``; the domain carries one margin, the public bound
    ``max_length = 10 × rows`` of the metadata (OpenDP needs it for float sums and means).
    A ``group_by`` may only group by columns with public keys (``categories`` in the
    metadata, or a boolean): the server joins the aggregated frame to the product of those
    categories (OpenDP's ``with_keys``), so exactly the public keys are released, with a noisy
    statistic for every key (an empty group too), and no threshold is needed.
    On ``row_privacy: false`` each ``private_id`` keeps a uniformly random ``max_ids`` of its
    rows per release (fresh randomness), as the CSV engine's ``PersonLines`` does.

Price
    ``epsilon`` (pure DP, Laplace noise) or ``rho`` (zCDP, Gaussian noise, with
    ``fixed_delta``) in the request is the per-query loss the researcher asks for (the
    client's ``privacy_loss`` divided by ``split_evenly_over``). The server finds OpenDP's
    global noise scale so that ``map(max_ids)`` is at most that loss (what
    ``LazyFrameQuery.resolve`` does by binary search; :func:`_search` needs two or three
    builds), then charges exactly ``map(max_ids)`` of the measurement it will run: (ε, 0),
    or for zCDP (ε read off the curve at ``fixed_delta``, ``fixed_delta``). Before any debit
    the measurement is dry-run on no rows (Polars type-checks some plans only when they
    run). The scale, the measurement and OpenDP's accuracy summary are memoised per
    (canonical request, metadata digest), so a repeated query shape is priced and released
    without searching again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import secrets
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import opendp.combinators as combinators
import opendp.measurements as measurements
import opendp.measures as measures
import opendp.metrics as metrics
import pandas as pd
import polars as pl
from opendp.accuracy import summarize_polars_measurement
from opendp.domains import with_margin
from opendp.extras.polars import Margin, _lazyframe_domain_from_schema, dp_len
from opendp.mod import binary_search_param, enable_features

from chalicelib import accuracy as acc
from chalicelib import validation
from chalicelib.datasets import LoadedDataset
from chalicelib.engines import COMMON_FIELDS
from chalicelib.engines.polars_plan import canonical_text, check_plan
from chalicelib.errors import EngineRefused, InvalidQuery, InvalidRequest
from chalicelib.lru import LruCache
from chalicelib.models import (
    Dataset,
    PrivacyCost,
    exact_decimal,
    float_down,
    format_decimal,
    metadata_digest,
)

enable_features("contrib")  # as the CSV OpenDP engine; never honest-but-curious

NAME = "opendp_polars"
FIELDS = {"plan", "epsilon", "rho", "fixed_delta", "alpha"}  # besides COMMON_FIELDS
MAX_LENGTH_FACTOR = 10  # the margin's max_length is this many times the metadata's rows
MAX_KEYS_PRODUCT = 10_000  # public key combinations of one group_by
MAX_RESULT_ROWS = MAX_KEYS_PRODUCT
DEFAULT_ALPHA = 0.05

_DTYPES: dict[str, Any] = {
    "f64": pl.Float64,
    "f32": pl.Float32,
    "i64": pl.Int64,
    "i32": pl.Int32,
    "bool": pl.Boolean,
    "str": pl.String,
}


# --- metadata -> polars ---------------------------------------------------------------------
def schema_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """The Polars dtype of every metadata column, in metadata order."""
    schema: dict[str, Any] = {}
    for name, spec in metadata["columns"].items():
        kind, bits32 = spec["type"], spec.get("precision") == 32
        if kind == "int":
            schema[name] = pl.Int32 if bits32 else pl.Int64
        elif kind == "float":
            schema[name] = pl.Float32 if bits32 else pl.Float64
        elif kind == "boolean":
            schema[name] = pl.Boolean
        elif kind == "datetime":
            schema[name] = pl.Datetime("ns")
        else:
            schema[name] = pl.String
    return schema


def max_length(metadata: dict[str, Any]) -> int:
    """The public bound on the number of rows declared to OpenDP (its ``Margin.max_length``)."""
    return max(1, MAX_LENGTH_FACTOR * int(metadata["rows"]))


def public_keys(metadata: dict[str, Any], keys: list[str]) -> pl.LazyFrame:
    """Every combination of the public categories of ``keys`` (400 for a key without)."""
    columns, schema = metadata["columns"], schema_of(metadata)
    values: list[list[Any]] = []
    for key in keys:
        spec = columns.get(key)
        if spec is None:
            raise InvalidQuery(f"plan: group_by names {key!r}, which is not a dataset column")
        if spec["type"] == "boolean":
            values.append([False, True])
        elif "categories" in spec and not spec.get("private_id"):
            values.append(list(spec["categories"]))
        else:
            raise InvalidQuery(
                f"plan: group_by {key!r}: only columns with public keys can be grouped by "
                "(metadata categories, or a boolean); the keys released are those categories"
            )
    combinations = math.prod(len(v) for v in values)
    if combinations > MAX_KEYS_PRODUCT:
        raise InvalidQuery(
            f"plan: group_by has more than {MAX_KEYS_PRODUCT} public key combinations"
        )
    rows = list(itertools.product(*values))
    data = {key: [row[i] for row in rows] for i, key in enumerate(keys)}
    return pl.LazyFrame(data, schema={key: schema[key] for key in keys})


def frame_of(frame: pd.DataFrame, metadata: dict[str, Any]) -> pl.DataFrame:
    """The loaded (coerced) pandas frame as a Polars frame of :func:`schema_of`."""
    series = []
    for name, dtype in schema_of(metadata).items():
        column = frame[name]
        values = column.astype(object).where(column.notna(), None).tolist()
        series.append(pl.Series(name, values, dtype=dtype, strict=False))
    return pl.DataFrame(series)


# --- grammar -> polars ----------------------------------------------------------------------
def _expr(node: dict[str, Any]) -> Any:
    """The Polars expression of one checked grammar node (static table, no lookup by name)."""
    if "col" in node:
        return pl.col(node["col"])
    if "lit" in node:
        return pl.lit(node["lit"])
    function = node["fn"]
    args = [_expr(arg) for arg in node["args"]]
    if function == "fill_null":
        return args[0].fill_null(args[1])
    if function == "clip":
        return args[0].clip(args[1], args[2])
    if function == "cast":
        # never strict: a value that does not convert becomes null, so no row can make a
        # query fail after the debit ("conversion from str to i64 failed" would be one bit)
        return args[0].cast(_DTYPES[node["dtype"]], strict=False)
    if function == "alias":
        return args[0].alias(node["name"])
    if function == "is_null":
        return args[0].is_null()
    if function == "is_not_null":
        return args[0].is_not_null()
    if function == "not":
        return ~args[0]
    binary = {
        "and": lambda a, b: a & b,
        "or": lambda a, b: a | b,
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
    }
    if function in binary:
        return binary[function](args[0], args[1])
    if function == "dp.len":
        return dp_len()
    if function == "dp.count":
        return args[0].dp.count()
    if function in ("dp.sum", "dp.mean"):
        bounds = (_bound(node["args"][1], function), _bound(node["args"][2], function))
        return args[0].dp.sum(bounds) if function == "dp.sum" else args[0].dp.mean(bounds)
    if function == "dp.quantile":
        return args[0].dp.quantile(node["alpha"], node["candidates"])
    if function == "dp.median":
        return args[0].dp.median(node["candidates"])
    raise AssertionError(f"unchecked function {function}")  # pragma: no cover


def _bound(node: dict[str, Any], function: str) -> float | int:
    value = node.get("lit")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidQuery(f"plan: {function} bounds must be numbers")
    return value


def lazy_plan(steps: list[dict[str, Any]], metadata: dict[str, Any]) -> pl.LazyFrame:
    """The query over a placeholder LazyFrame of the dataset's schema."""
    plan = pl.LazyFrame(schema=schema_of(metadata))
    for step in steps:
        if "filter" in step:
            plan = plan.filter(_expr(step["filter"]))
        elif "with_columns" in step:
            plan = plan.with_columns([_expr(e) for e in step["with_columns"]])
        elif "select" in step:
            plan = plan.select([_expr(e) for e in step["select"]])
        else:
            keys = step["group_by"]
            grouped = plan.group_by(keys).agg([_expr(e) for e in step["agg"]])
            plan = public_keys(metadata, keys).join(grouped, how="left", on=keys, nulls_equal=True)
    return plan


def _describe(exc: BaseException) -> str:
    variant, message = getattr(exc, "variant", None), getattr(exc, "message", None)
    text = f"{variant}: {message}" if variant else (str(exc).strip() or type(exc).__name__)
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# --- calibration (memoised) -----------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """The measurement to run, its global scale, its exact charge and OpenDP's summary."""

    measurement: Any
    scale: float
    cost: PrivacyCost
    accuracy: list[dict[str, Any]]


CALIBRATIONS: LruCache[str, Calibration] = LruCache(256)


def calibrate(metadata: dict[str, Any], request: PolarsRequest) -> Calibration:
    """The calibrated measurement of ``request`` on this metadata (memoised)."""
    key = f"{request.digest}:{metadata_digest(metadata)}"
    return CALIBRATIONS.get_or_build(key, lambda: _calibrate(metadata, request))


def _calibrate(metadata: dict[str, Any], request: PolarsRequest) -> Calibration:
    schema = schema_of(metadata)
    plan = lazy_plan(request.steps(), metadata)
    domain = with_margin(
        _lazyframe_domain_from_schema(pl.Schema(schema)),
        Margin(by=[], max_length=max_length(metadata)),
    )
    zcdp = request.rho is not None
    metric = metrics.symmetric_distance()
    measure = measures.zero_concentrated_divergence() if zcdp else measures.max_divergence()

    def make(scale: float) -> Any:
        return measurements.make_private_lazyframe(
            domain, metric, measure, plan, global_scale=scale
        )

    try:
        unit = make(1.0)
    except Exception as exc:  # a column, type or step OpenDP cannot make private
        raise InvalidQuery(f"plan: OpenDP refused it: {_describe(exc)}") from exc
    target = request.rho if request.rho is not None else request.epsilon
    assert target is not None  # parse() sets exactly one
    d_in, d_out = int(metadata["max_ids"]), float_down(target)
    try:
        measurement, scale = _search(make, unit, d_in, d_out, power=2 if zcdp else 1)
        summary = summarize_polars_measurement(measurement, request.alpha)
        if zcdp:  # the ledger is (ε, δ): ε read off the zCDP curve at the fixed δ
            curve = combinators.make_zCDP_to_approxDP(measurement)
            assert request.fixed_delta is not None
            fixed: Any = combinators.make_fix_delta(curve, float_down(request.fixed_delta))
            epsilon, delta = fixed.map(d_in)
        else:
            epsilon, delta = measurement.map(d_in), 0
    except Exception as exc:
        name = "rho" if zcdp else "epsilon"
        raise EngineRefused(
            f"no noise scale gives {name} {format_decimal(target)} at d_in={d_in}: {_describe(exc)}"
        ) from exc
    for loss in (epsilon, delta):
        if isinstance(loss, bool) or not isinstance(loss, int | float) or not math.isfinite(loss):
            raise EngineRefused(f"the privacy map gives no finite loss at d_in={d_in}")
    try:  # a dry run on no rows: Polars checks the expressions' types only when it runs
        measurement(pl.LazyFrame(schema=schema)).collect()
    except Exception as exc:
        raise InvalidQuery(f"plan: Polars refused it: {_describe(exc)}") from exc
    cost = PrivacyCost(epsilon=exact_decimal(float(epsilon)), delta=exact_decimal(float(delta)))
    if request.fixed_delta is not None and cost.delta <= request.fixed_delta:
        cost = replace(cost, delta=request.fixed_delta)  # the δ requested, never below the map's
    return Calibration(measurement, scale, cost, [_plain_row(r) for r in summary.to_dicts()])


def _search(make: Any, unit: Any, d_in: int, d_out: float, power: int = 1) -> tuple[Any, float]:
    """The measurement (and its global scale) whose loss at ``d_in`` is at most ``d_out``.

    Every mechanism the grammar allows has a loss proportional to 1/scale^power: pure DP
    (Laplace noise on counts, sums and means, the exponential mechanism of quantiles),
    power 1; zCDP (Gaussian noise), ρ ∝ 1/scale², power 2. So the scale
    ``(loss(1) / d_out)^(1/power)`` is tried first and, if rounding puts it a hair above
    ``d_out``, nudged up a few ulps: two or three builds instead of OpenDP's ~100-step
    binary search (``LazyFrameQuery.resolve``), which remains the fallback. Whatever the
    route, the map of the measurement returned is checked to be at most ``d_out``.
    """
    at_one = float(unit.map(d_in))
    if math.isfinite(at_one) and at_one > 0:
        scale = (at_one / d_out) ** (1 / power)
        for _ in range(4):
            candidate = make(scale)
            if candidate.map(d_in) <= d_out:
                return candidate, scale
            scale = math.nextafter(scale, math.inf) * (1 + 1e-12)
    scale = float(binary_search_param(make, d_in=d_in, d_out=d_out, T=float))
    return make(scale), scale


# --- release --------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    return {str(key): _plain(value) for key, value in row.items()}


_PANDAS_DTYPES: dict[Any, str] = {
    pl.Float64: "float64",
    pl.Float32: "float32",
    pl.Int64: "int64",
    pl.Int32: "int32",
    pl.UInt32: "int64",
    pl.UInt64: "int64",
    pl.Boolean: "bool",
}


def table_of(frame: pl.DataFrame) -> dict[str, Any]:
    """A released Polars frame in the wire's table form (chalicelib/wire_tables.py)."""
    dtypes = {}
    for name, dtype in frame.schema.items():
        kind = _PANDAS_DTYPES.get(dtype, "object")
        if kind.startswith("int") and frame[name].null_count():
            kind = "Int64"
        dtypes[name] = kind
    return {
        "type": "table",
        "columns": list(frame.columns),
        "dtypes": dtypes,
        "records": [_plain_row(row) for row in frame.to_dicts()],
    }


def bound_persons(frame: pl.DataFrame, id_column: str, max_ids: int) -> pl.DataFrame:
    """At most ``max_ids`` rows per person, a uniformly random choice for each release."""
    rank = pl.int_range(pl.len()).shuffle(seed=secrets.randbits(63)).over(id_column)
    return frame.filter(rank < max_ids)


# --- the engine -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PolarsRequest:
    """A checked Polars request: the canonical plan (JSON text), the loss per query, α.

    Exactly one of ``epsilon`` (pure DP, Laplace) and ``rho`` (zCDP, Gaussian; charged at
    ``fixed_delta``) is set.
    """

    plan_json: str
    epsilon: Decimal | None
    alpha: float
    rho: Decimal | None = None
    fixed_delta: Decimal | None = None

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()

    def steps(self) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = json.loads(self.plan_json)
        return steps

    def canonical(self) -> dict[str, Any]:
        def text(value: Decimal | None) -> str | None:
            return None if value is None else format_decimal(value)

        return {
            "plan": self.steps(),
            "epsilon": text(self.epsilon),
            "rho": text(self.rho),
            "fixed_delta": text(self.fixed_delta),
            "alpha": self.alpha,
        }


class PolarsEngine:
    """The OpenDP Polars engine (see the module docstring)."""

    name = NAME

    def parse(self, body: dict[str, Any]) -> PolarsRequest:
        validation.refuse_unknown(body, FIELDS | COMMON_FIELDS)
        if "plan" not in body:
            raise InvalidRequest("plan is required (the client's opendp.context sends it)")
        steps = check_plan(body["plan"])
        epsilon = rho = fixed_delta = None
        if (body.get("epsilon") is None) == (body.get("rho") is None):
            raise InvalidRequest(
                "give exactly one of epsilon (pure DP, Laplace noise) and rho (zCDP, "
                "Gaussian noise, with fixed_delta): this query's privacy loss"
            )
        if body.get("epsilon") is not None:
            epsilon = validation.epsilon(body["epsilon"])
            if body.get("fixed_delta") is not None:
                raise InvalidRequest("fixed_delta applies only to a rho (zCDP) query")
        else:
            rho = validation.epsilon(body["rho"], "rho")
            if body.get("fixed_delta") is None:
                raise InvalidRequest(
                    "fixed_delta is required with rho: the δ at which the ε charged is read "
                    "off the zCDP curve"
                )
            fixed_delta = validation.delta(body["fixed_delta"], "fixed_delta", positive=True)
        alpha = body.get("alpha", DEFAULT_ALPHA)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
            raise InvalidRequest("alpha must be a number in (0, 1) (the accuracy's level)")
        return PolarsRequest(canonical_text(steps), epsilon, float(alpha), rho, fixed_delta)

    def cost(self, dataset: Dataset, request: PolarsRequest) -> PrivacyCost:
        return calibrate(dataset.metadata, request).cost

    def accuracy(self, dataset: Dataset, request: PolarsRequest, level: float) -> dict[str, Any]:
        """OpenDP's summary of the calibrated measurement at ``alpha = 1 - level``, in the
        shape every engine answers (docs/api.md, "Accuracy")."""
        calibration = calibrate(dataset.metadata, request)
        summary = summarize_polars_measurement(calibration.measurement, acc.alpha(level))
        columns = []
        for row in (_plain_row(r) for r in summary.to_dicts()):
            half = row.get("accuracy")
            columns.append(
                acc.column(
                    str(row.get("column")),
                    row.get("aggregate"),
                    distribution=row.get("distribution"),
                    scale=row.get("scale"),
                    accuracy=None if half is None else float(half),
                    reason="OpenDP's summary gives no closed form for this statistic",
                )
            )
        return acc.answer(level, columns)

    def execute(self, loaded: LoadedDataset, request: PolarsRequest) -> dict[str, Any]:
        metadata = loaded.metadata
        calibration = calibrate(metadata, request)
        frame = loaded.derived(NAME, lambda ld: frame_of(ld.frame, metadata))
        if not metadata["row_privacy"]:
            (id_column,) = [n for n, spec in metadata["columns"].items() if spec["private_id"]]
            frame = bound_persons(frame, id_column, int(metadata["max_ids"]))
        try:
            released = calibration.measurement(frame.lazy()).collect()
        except Exception as exc:
            # on private data the service replaces the message with a fixed one
            raise ValueError(f"the query failed: {_describe(exc)}") from exc
        last = request.steps()[-1]
        if "group_by" in last:  # public keys in a fixed order (Polars' join order is not)
            released = released.sort(last["group_by"])
        if released.height > MAX_RESULT_ROWS:  # pragma: no cover (public keys bound it)
            raise ValueError(f"the release has more than {MAX_RESULT_ROWS} rows")
        table = table_of(released)
        table["accuracy"] = {"alpha": request.alpha, "columns": calibration.accuracy}
        return table


ENGINE = PolarsEngine()
