"""OpenDP's Polars API against a remote dataset (``client.opendp.context(...)``).

The researcher writes ordinary OpenDP Polars queries on a ``dp.Context`` whose LazyFrame is
empty and has the dataset's schema (from its metadata). Nothing about the data is local, so
``summarize()`` is free. ``cost()`` and ``release()`` send the query in Neblina's plan
grammar (docs/opendp.md): this module walks Polars' JSON plan of the query on this machine
and writes the grammar; what cannot be written (a Python function, a join, a scan of
anything but the dataset, an expression off the allowlist) is refused here, and the server
refuses it again. Polars' own serialisation (which can carry pickled Python) never leaves
this machine.
"""

from __future__ import annotations

import io
import itertools
import json
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ._client import Client
    from ._jobs import Job
    from ._types import Cost, QueryResult

OPENDP_POLARS = "opendp_polars"
MAX_LENGTH_FACTOR = 10  # the server's margin: max_length = 10 x the metadata's rows

_BINARY = {
    "Eq": "eq",
    "NotEq": "ne",
    "Lt": "lt",
    "LtEq": "le",
    "Gt": "gt",
    "GtEq": "ge",
    "And": "and",
    "LogicalAnd": "and",
    "Or": "or",
    "LogicalOr": "or",
}
_BOOLEAN = {"IsNull": "is_null", "IsNotNull": "is_not_null", "Not": "not"}
_DTYPES = {
    "Float64": "f64",
    "Float32": "f32",
    "Int64": "i64",
    "Int32": "i32",
    "Boolean": "bool",
    "String": "str",
}


class UnsupportedQuery(ValueError):
    """The query uses something the plan grammar cannot carry."""


def _polars_dtypes() -> dict[str, Any]:
    import polars as pl

    return {
        "string": pl.String,
        "int": pl.Int64,
        "float": pl.Float64,
        "boolean": pl.Boolean,
        "datetime": pl.Datetime("ns"),
    }


def schema_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """The Polars schema the server gives the dataset (docs/opendp.md)."""
    import polars as pl

    dtypes = _polars_dtypes()
    schema: dict[str, Any] = {}
    for name, spec in metadata["columns"].items():
        dtype = dtypes.get(spec["type"], pl.String)
        if spec.get("precision") == 32 and spec["type"] in ("int", "float"):
            dtype = pl.Int32 if spec["type"] == "int" else pl.Float32
        schema[str(name)] = dtype
    return schema


# --- Polars' JSON plan -> the grammar -------------------------------------------------------
def plan_of(lazyframe: Any) -> list[dict[str, Any]]:
    """The grammar of a query's Polars plan (raises :class:`UnsupportedQuery`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Polars marks the JSON format unstable
        tree = json.loads(lazyframe.serialize(format="json"))
    steps: list[dict[str, Any]] = []
    node = tree
    while True:
        if not isinstance(node, dict) or len(node) != 1:
            raise UnsupportedQuery("unexpected plan node")
        ((kind, body),) = node.items()
        if kind == "DataFrameScan":
            break  # the context's own (empty) frame: the dataset placeholder
        if kind == "Select":
            steps.append({"select": [_expr(e) for e in body["expr"]]})
        elif kind == "HStack":
            steps.append({"with_columns": [_expr(e) for e in body["exprs"]]})
        elif kind == "Filter":
            steps.append({"filter": _expr(body["predicate"])})
        elif kind == "GroupBy":
            keys = []
            for key in body["keys"]:
                if not (isinstance(key, dict) and set(key) == {"Column"}):
                    raise UnsupportedQuery("group_by takes column names only")
                keys.append(key["Column"])
            steps.append({"group_by": keys, "agg": [_expr(e) for e in body["aggs"]]})
        else:
            raise UnsupportedQuery(
                f"{kind} is not supported (the grammar has filter, with_columns, select and "
                "group_by/agg over the dataset; the server joins the public keys itself)"
            )
        node = body["input"]
    steps.reverse()
    return steps


def _literal(body: dict[str, Any]) -> dict[str, Any]:
    ((kind, value),) = body.items()
    if kind == "Dyn":
        ((_, number),) = value.items()
        return {"lit": number}
    if kind == "Scalar":
        ((scalar_kind, scalar),) = value.items()
        if scalar_kind == "Null":
            return {"lit": None}
        if isinstance(scalar, (bool, int, float, str)):
            return {"lit": scalar}
    raise UnsupportedQuery(f"literal {kind} is not supported")


def _series(expr: Any) -> list[Any]:
    import polars as pl

    data = expr["Literal"]["Series"]
    values: list[Any] = pl.read_ipc_stream(io.BytesIO(bytes(data))).to_series().to_list()
    return values


def _no_scale(expr: Any, symbol: str) -> None:
    if _literal(expr["Literal"]) != {"lit": None}:
        raise UnsupportedQuery(
            f"{symbol}: leave scale unset; the server calibrates the noise from epsilon"
        )


def _expr(node: Any) -> dict[str, Any]:
    if node == "Len":
        raise UnsupportedQuery("pl.len() is not released as is: use dp.len()")
    if not isinstance(node, dict) or len(node) != 1:
        raise UnsupportedQuery("unexpected expression")
    ((kind, body),) = node.items()
    if kind == "Column":
        return {"col": body}
    if kind == "Literal":
        return _literal(body)
    if kind == "Alias":
        return {"fn": "alias", "args": [_expr(body[0])], "name": body[1]}
    if kind == "Cast":
        dtype = body["dtype"].get("Literal") if isinstance(body["dtype"], dict) else None
        if dtype not in _DTYPES:
            raise UnsupportedQuery(f"cast to {dtype} is not supported")
        inner = _expr(body["expr"])
        if "lit" in inner:
            return inner  # a typed literal: the server types it from the column
        return {"fn": "cast", "args": [inner], "dtype": _DTYPES[dtype]}
    if kind == "BinaryExpr":
        op = _BINARY.get(body["op"])
        if op is None:
            raise UnsupportedQuery(f"operator {body['op']} is not supported")
        return {"fn": op, "args": [_expr(body["left"]), _expr(body["right"])]}
    if kind == "Function":
        return _function(body["input"], body["function"])
    raise UnsupportedQuery(f"{kind} is not supported (e.g. Python functions, map_batches)")


def _function(inputs: list[Any], function: Any) -> dict[str, Any]:
    if function == "FillNull":
        return {"fn": "fill_null", "args": [_expr(e) for e in inputs]}
    if isinstance(function, dict) and len(function) == 1:
        ((kind, body),) = function.items()
        if kind == "Clip" and body == {"has_min": True, "has_max": True}:
            return {"fn": "clip", "args": [_expr(e) for e in inputs]}
        if kind == "Boolean" and body in _BOOLEAN:
            return {"fn": _BOOLEAN[body], "args": [_expr(e) for e in inputs]}
        if kind == "FfiPlugin":
            return _plugin(str(body.get("symbol")), inputs)
        raise UnsupportedQuery(f"{kind} is not supported")
    raise UnsupportedQuery(f"{function} is not supported")


def _plugin(symbol: str, inputs: list[Any]) -> dict[str, Any]:
    """OpenDP's .dp expressions (plugins of its own library; the library path is ignored)."""
    _no_scale(inputs[-1], symbol)
    if symbol == "dp_frame_len":
        return {"fn": "dp.len", "args": []}
    if symbol == "dp_count":
        return {"fn": "dp.count", "args": [_expr(inputs[0])]}
    if symbol in ("dp_sum", "dp_mean"):
        name = "dp.sum" if symbol == "dp_sum" else "dp.mean"
        return {"fn": name, "args": [_expr(e) for e in inputs[:3]]}
    if symbol == "dp_quantile":
        alpha = _expr(inputs[1]).get("lit")
        return {
            "fn": "dp.quantile",
            "args": [_expr(inputs[0])],
            "alpha": alpha,
            "candidates": _series(inputs[2]),
        }
    if symbol == "dp_median":
        return {"fn": "dp.median", "args": [_expr(inputs[0])], "candidates": _series(inputs[1])}
    raise UnsupportedQuery(f"OpenDP expression {symbol} is not supported")


# --- the context ----------------------------------------------------------------------------
class PolarsContext:
    """A ``dp.Context`` over the remote dataset's schema (see :meth:`OpenDP.context`)."""

    def __init__(
        self,
        client: Client,
        metadata: dict[str, Any],
        privacy_loss: Any,
        split_evenly_over: int,
        fixed_delta: float | None = None,
    ) -> None:
        import opendp.prelude as dp
        import polars as pl
        from opendp.extras.polars import Margin

        if split_evenly_over < 1:
            raise ValueError("split_evenly_over must be at least 1")
        dp.enable_features("contrib")
        self._client = client
        self.metadata = metadata
        # ε (a number, or dp.loss_of(epsilon=...)) or ρ (dp.loss_of(rho=...)): pure DP or zCDP
        if isinstance(privacy_loss, tuple):
            measure, value = privacy_loss
            if measure == dp.zero_concentrated_divergence():
                self.loss_field, total = "rho", float(value)
            elif measure == dp.max_divergence():
                self.loss_field, total = "epsilon", float(value)
            else:
                raise ValueError(
                    f"{measure}: use dp.loss_of(epsilon=...) (pure DP) or dp.loss_of(rho=...) "
                    "(zCDP); with public group keys no δ is needed for thresholds"
                )
        else:
            self.loss_field, total = "epsilon", float(privacy_loss)
        if (self.loss_field == "rho") != (fixed_delta is not None):
            raise ValueError("fixed_delta is required with rho (zCDP), and only then")
        self.fixed_delta = fixed_delta
        self.loss_per_query = total / split_evenly_over
        self.queries_left = split_evenly_over
        self.lazyframe = pl.LazyFrame(schema=schema_of(metadata))
        margin = Margin(by=[], max_length=MAX_LENGTH_FACTOR * int(metadata["rows"]))
        self.context = dp.Context.compositor(
            data=self.lazyframe,
            privacy_unit=dp.unit_of(contributions=int(metadata["max_ids"])),
            privacy_loss=dp.loss_of(**{self.loss_field: total}),
            split_evenly_over=split_evenly_over,
            margins=[margin],
        )

    def query(self) -> PolarsQuery:
        """A query to build with Polars methods (``select``, ``group_by(...).agg``, ...)."""
        return PolarsQuery(self, self.context.query())


class PolarsQuery:
    """OpenDP's ``LazyFrameQuery``, plus ``cost()`` and ``release()`` against the server."""

    def __init__(self, context: PolarsContext, query: Any) -> None:
        self._context = context
        self._query = query

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._query, name)
        if not callable(attribute):
            return attribute

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            if hasattr(result, "agg") or hasattr(result, "polars_plan"):
                return PolarsQuery(self._context, result)
            return result

        return wrapped

    def plan(self) -> list[dict[str, Any]]:
        """The query in the grammar the server accepts."""
        return plan_of(object.__getattribute__(self._query, "polars_plan"))

    def body(self, alpha: float = 0.05) -> dict[str, Any]:
        """The request body (engine ``opendp_polars``)."""
        body: dict[str, Any] = {
            "engine": OPENDP_POLARS,
            "plan": self.plan(),
            self._context.loss_field: self._context.loss_per_query,
            "alpha": alpha,
        }
        if self._context.fixed_delta is not None:
            body["fixed_delta"] = self._context.fixed_delta
        return body

    def _with_public_keys(self) -> Any:
        """The query as the server runs it: a group_by joined to its public keys."""
        import polars as pl

        plan, columns = self.plan(), self._context.metadata["columns"]
        if "group_by" not in plan[-1]:
            return self._query
        keys = plan[-1]["group_by"]
        values = []
        for key in keys:
            spec = columns.get(key, {})
            if spec.get("type") == "boolean":
                values.append([False, True])
            elif "categories" in spec:
                values.append(list(spec["categories"]))
            else:
                raise UnsupportedQuery(f"group_by {key!r}: the column has no public categories")
        rows = list(itertools.product(*values))
        schema = schema_of(self._context.metadata)
        frame = pl.LazyFrame(
            {key: [row[i] for row in rows] for i, key in enumerate(keys)},
            schema={key: schema[key] for key in keys},
        )
        return self._query.with_keys(frame)

    def summarize(self, alpha: float | None = None) -> Any:
        """OpenDP's accuracy summary, computed here from the metadata alone (free)."""
        return self._with_public_keys().summarize(alpha=alpha)

    def cost(self) -> Cost:
        """The server's price for this query (free): its privacy map at ``max_ids``."""
        return self._context._client._price(self.body())

    def release(
        self,
        dummy: bool = False,
        query_id: str | None = None,
        alpha: float = 0.05,
        *,
        dummy_rows: int = 100,
        dummy_seed: int = 42,
        wait: bool = True,
    ) -> QueryResult | Job:
        """Run the query on the server (debited; free with ``dummy=True``).

        ``result`` is a DataFrame; ``accuracy`` is OpenDP's summary of each released
        statistic at ``alpha``. ``wait=False`` returns a :class:`Job` (as ``opendp.query``).
        """
        if not dummy and self._context.queries_left < 1:
            raise ValueError("this context's privacy_loss is spent (split_evenly_over queries)")
        result = self._context._client._submit(
            self.body(alpha),
            query_id=query_id,
            dummy=dummy,
            dummy_rows=dummy_rows,
            dummy_seed=dummy_seed,
            wait=wait,
        )
        if not dummy:
            self._context.queries_left -= 1
        return result
