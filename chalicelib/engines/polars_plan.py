"""The wire form of an OpenDP Polars query: a closed JSON grammar (data, never code).

The client reads the researcher's Polars plan (``LazyFrame.serialize(format="json")``, walked
on the researcher's machine) and writes it in this grammar; the server checks the grammar
here, with no Polars import, and only then (``polars_engine``) builds Polars expressions from
a static table. Nothing from the wire is unpickled, imported, looked up by name or executed:
a plan is a list of steps over the one dataset, each step made of the expressions below.

Plan (``"plan"``): a list of steps applied in order to the dataset::

    {"filter": EXPR}
    {"with_columns": [EXPR, ...]}
    {"select": [EXPR, ...]}                         (last step only)
    {"group_by": ["col", ...], "agg": [EXPR, ...]}  (last step only)

The last step is a ``select`` or a ``group_by``; every expression it releases ends in a DP
aggregate (``dp.*``), so nothing un-noised comes out but the public group keys.

Expressions (``EXPR``)::

    {"col": NAME}                         a column (of the metadata, or made by with_columns)
    {"lit": NUMBER | STRING | BOOL | null}
    {"fn": F, "args": [EXPR, ...]}        F below, with its arity
    {"fn": "cast", "args": [E], "dtype": "f64" | "f32" | "i64" | "i32" | "bool" | "str"}
    {"fn": "alias", "args": [E], "name": NAME}
    {"fn": "dp.quantile", "args": [E], "alpha": NUMBER, "candidates": [NUMBER, ...]}
    {"fn": "dp.median", "args": [E], "candidates": [NUMBER, ...]}

Anything else (another key, another function, a scan, a sink, a Python function) is refused
with a 400 that names it, before the data is read or the grant debited.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from chalicelib.errors import InvalidQuery

# name -> (arity, extra keys the node carries besides "fn" and "args")
FUNCTIONS: dict[str, tuple[int, frozenset[str]]] = {
    # row-wise preprocessing
    "fill_null": (2, frozenset()),
    "clip": (3, frozenset()),
    "cast": (1, frozenset({"dtype"})),
    "alias": (1, frozenset({"name"})),
    "is_null": (1, frozenset()),
    "is_not_null": (1, frozenset()),
    "not": (1, frozenset()),
    "and": (2, frozenset()),
    "or": (2, frozenset()),
    "eq": (2, frozenset()),
    "ne": (2, frozenset()),
    "lt": (2, frozenset()),
    "le": (2, frozenset()),
    "gt": (2, frozenset()),
    "ge": (2, frozenset()),
    # DP aggregates (OpenDP's .dp namespace); the noise scale is the server's to calibrate
    "dp.len": (0, frozenset()),
    "dp.count": (1, frozenset()),
    "dp.sum": (3, frozenset()),
    "dp.mean": (3, frozenset()),
    "dp.quantile": (1, frozenset({"alpha", "candidates"})),
    "dp.median": (1, frozenset({"candidates"})),
}
AGGREGATES = frozenset(name for name in FUNCTIONS if name.startswith("dp."))
DTYPES = ("f64", "f32", "i64", "i32", "bool", "str")
STEPS = ("filter", "with_columns", "select", "group_by")

MAX_STEPS = 16
MAX_EXPRESSIONS = 64  # per step
MAX_DEPTH = 16  # expressions nested in one another
MAX_NODES = 512  # expression nodes in the whole plan
MAX_CANDIDATES = 1_000
MAX_KEYS = 4  # group_by columns
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ .-]{0,63}")  # no regex or wildcard column names


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidQuery(
            f"plan: {where} must be a column name (letters, digits, '_', ' ', '.', '-'; "
            "at most 64 characters; no wildcard or regular expression)"
        )
    return value


def _number(value: object, where: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidQuery(f"plan: {where} must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidQuery(f"plan: {where} must be a finite number")
    if isinstance(value, int) and abs(value) > 2**53:
        raise InvalidQuery(f"plan: {where} is out of range")
    return value


class _Checker:
    """Walks one plan, checking every node; counts nodes against :data:`MAX_NODES`."""

    def __init__(self) -> None:
        self.nodes = 0

    def expr(self, node: object, depth: int, where: str) -> dict[str, Any]:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise InvalidQuery(f"plan: more than {MAX_NODES} expression nodes")
        if depth > MAX_DEPTH:
            raise InvalidQuery(f"plan: expressions nested more than {MAX_DEPTH} deep")
        if not isinstance(node, dict):
            raise InvalidQuery(f"plan: {where} must be an expression object")
        keys = set(node)
        if keys == {"col"}:
            return {"col": _name(node["col"], f"{where}.col")}
        if keys == {"lit"}:
            value = node["lit"]
            if value is None or isinstance(value, bool):
                return {"lit": value}
            if isinstance(value, str):
                if len(value) > 200:
                    raise InvalidQuery(f"plan: {where}.lit is longer than 200 characters")
                return {"lit": value}
            return {"lit": _number(value, f"{where}.lit")}
        function = node.get("fn")
        if not isinstance(function, str) or "fn" not in keys:
            shown = ", ".join(repr(str(key)[:40]) for key in sorted(keys, key=str)[:3])
            raise InvalidQuery(
                f"plan: unknown expression with key(s) {shown} in {where} (an expression is "
                "a col, a lit or an fn of the allowlist: docs/opendp.md)"
            )
        if function not in FUNCTIONS:
            raise InvalidQuery(
                f"plan: function {function[:60]!r} in {where} is not allowed (Python "
                "functions, map_elements/map_batches and anything off the allowlist in "
                "docs/opendp.md are refused)"
            )
        arity, extra = FUNCTIONS[function]
        unexpected = sorted(str(key) for key in keys - {"fn", "args"} - extra)
        if unexpected:
            raise InvalidQuery(f"plan: {function} has no field {unexpected[0][:60]!r}")
        args = node.get("args", [])
        if not isinstance(args, list) or len(args) != arity:
            raise InvalidQuery(f"plan: {function} takes {arity} argument(s) in args")
        out: dict[str, Any] = {
            "fn": function,
            "args": [
                self.expr(arg, depth + 1, f"{where}.{function}[{i}]") for i, arg in enumerate(args)
            ],
        }
        if function == "cast":
            if node.get("dtype") not in DTYPES:
                raise InvalidQuery(f"plan: cast dtype must be one of {', '.join(DTYPES)}")
            out["dtype"] = node["dtype"]
        if function == "alias":
            out["name"] = _name(node.get("name"), f"{where}.alias name")
        if function == "dp.quantile":
            alpha = _number(node.get("alpha"), "dp.quantile alpha")
            if not 0 <= alpha <= 1:
                raise InvalidQuery("plan: dp.quantile alpha must be in [0, 1]")
            out["alpha"] = alpha
        if function in ("dp.quantile", "dp.median"):
            candidates = node.get("candidates")
            if not isinstance(candidates, list) or not 0 < len(candidates) <= MAX_CANDIDATES:
                raise InvalidQuery(
                    f"plan: {function} candidates must be a list of 1 to {MAX_CANDIDATES} numbers"
                )
            out["candidates"] = [_number(c, f"{function} candidates") for c in candidates]
        for position, arg in enumerate(out["args"]):
            if function != "alias" and _has_aggregate(arg):
                raise InvalidQuery(
                    f"plan: {function} takes a DP aggregate as argument {position}: a DP "
                    "aggregate's release is final (post-process it on your side)"
                )
        return out

    def exprs(self, value: object, where: str, depth: int = 0) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not 0 < len(value) <= MAX_EXPRESSIONS:
            raise InvalidQuery(
                f"plan: {where} must be a list of 1 to {MAX_EXPRESSIONS} expressions"
            )
        return [self.expr(item, depth, f"{where}[{i}]") for i, item in enumerate(value)]


def _has_aggregate(expr: dict[str, Any]) -> bool:
    if expr.get("fn") in AGGREGATES:
        return True
    return any(_has_aggregate(arg) for arg in expr.get("args", []))


def _released(expr: dict[str, Any]) -> bool:
    """The expression's output is a DP aggregate (optionally renamed)."""
    if expr.get("fn") == "alias":
        return _released(expr["args"][0])
    return expr.get("fn") in AGGREGATES


def check_plan(plan: object) -> list[dict[str, Any]]:
    """The plan in canonical form (400 ``invalid_query`` naming anything amiss)."""
    if not isinstance(plan, list) or not 0 < len(plan) <= MAX_STEPS:
        raise InvalidQuery(f"plan must be a list of 1 to {MAX_STEPS} steps")
    checker = _Checker()
    steps: list[dict[str, Any]] = []
    for index, step in enumerate(plan):
        where = f"step {index}"
        if not isinstance(step, dict) or not step:
            raise InvalidQuery(f"plan: {where} must be an object")
        kind = next(iter(step))
        if kind not in STEPS:
            raise InvalidQuery(
                f"plan: {where} is {str(kind)[:60]!r}, which is not a step (allowed: "
                f"{', '.join(STEPS)}; scans, sinks, joins and Python functions are refused)"
            )
        last = index == len(plan) - 1
        if kind in ("select", "group_by") and not last:
            raise InvalidQuery(f"plan: {kind} must be the last step")
        if last and kind not in ("select", "group_by"):
            raise InvalidQuery("plan: the last step must be a select or a group_by/agg")
        allowed = {"group_by", "agg"} if kind == "group_by" else {kind}
        if set(step) != allowed:
            raise InvalidQuery(f"plan: {where} ({kind}) takes exactly {sorted(allowed)}")
        if kind == "filter":
            steps.append({"filter": checker.expr(step["filter"], 0, f"{where}.filter")})
            if _has_aggregate(steps[-1]["filter"]):
                raise InvalidQuery("plan: a filter cannot use a DP aggregate")
            continue
        if kind == "with_columns":
            exprs = checker.exprs(step["with_columns"], f"{where}.with_columns")
            if any(_has_aggregate(expr) for expr in exprs):
                raise InvalidQuery("plan: with_columns cannot use a DP aggregate")
            steps.append({"with_columns": exprs})
            continue
        if kind == "group_by":
            keys = step["group_by"]
            if not isinstance(keys, list) or not 0 < len(keys) <= MAX_KEYS:
                raise InvalidQuery(f"plan: group_by takes 1 to {MAX_KEYS} column names")
            names = [_name(key, f"{where}.group_by") for key in keys]
            if len(set(names)) != len(names):
                raise InvalidQuery("plan: group_by names a column twice")
            exprs = checker.exprs(step["agg"], f"{where}.agg")
            released: dict[str, Any] = {"group_by": names, "agg": exprs}
        else:
            exprs = checker.exprs(step["select"], f"{where}.select")
            released = {"select": exprs}
        for position, expr in enumerate(exprs):
            if not _released(expr):
                raise InvalidQuery(
                    f"plan: {kind} expression {position} is not a DP aggregate (dp.len, "
                    "dp.count, dp.sum, dp.mean, dp.quantile, dp.median): only noisy "
                    "statistics are released"
                )
        steps.append(released)
    return steps


def canonical_text(steps: list[dict[str, Any]]) -> str:
    """The canonical JSON text of a checked plan (what is archived and hashed)."""
    return json.dumps(steps, sort_keys=True, separators=(",", ":"))
