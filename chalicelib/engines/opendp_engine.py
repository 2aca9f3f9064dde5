"""OpenDP engine: researchers' own pipelines, checked, priced by their privacy map, and run.

Transport
    The client builds a ``dp.Measurement`` and serializes it with OpenDP's own
    ``dp.serialize``. That JSON repeats the whole prefix of a chain about three times per
    ``then_`` step (each step names the previous one as its input *and* in the
    ``transformation_output_domain``/``_metric`` of its input), so its size grows as 3^steps:
    the 8-step mean of a column is 630 KB (10x the 64 KiB body limit) and takes 0.34 s to
    deserialize. The request therefore carries ``pipeline`` in one of two forms:

    - ``{"nodes": [...]}``: the same JSON with every repeated subtree written once. Each node
      is a ``dp.serialize`` object (``__function__``, ``__module__``, ``__kwargs__``,
      ``__version__``); inside ``__kwargs__`` a value ``{"__ref__": i}`` stands for node
      ``i`` (only earlier nodes). The last node is the pipeline. The 8-step mean: 27 nodes,
      4.6 KB. The client writes this form, from OpenDP's own encoding of each object (its
      ``__opendp_dict__``, what ``dp.serialize`` writes) without building the tree.
    - a string: ``dp.serialize``'s output verbatim (fine for short pipelines).

    Both are walked in full before anything is built and reduced to one canonical node list
    (what the archive stores and what the idempotency hash covers). Refused with a 400 that
    names the culprit: modules other than OpenDP's constructor modules, constructors outside
    :data:`ALLOWED`, arguments the constructor does not have, unknown keys in a node, any
    other object (polars ``__lazyframe__``/``__expr__``, plain dicts), non-finite numbers,
    another OpenDP minor version, too many nodes, too deep, too long.

    Building is ``dp.deserialize``'s own rule (``function(**kwargs)``, tuples from
    ``__tuple__``) with two differences: the function comes from a static table of
    allowlisted functions (no ``importlib``/``getattr`` on request text), and each distinct
    node is built once. ``tests/unit/test_opendp_engine.py`` checks that ``dp.serialize`` of what
    is built reproduces the JSON the client sent, byte for byte.

Input form
    The server feeds the dataset as one **CSV string without header**, the columns in
    metadata order, ``,`` between fields and ``\\n`` after each row (missing values empty,
    booleans ``true``/``false``). A pipeline must therefore start with
    ``make_split_dataframe(separator=",", col_names=<metadata column order>)`` (the client's
    ``opendp.space()`` builds exactly that), so its input domain is ``AtomDomain<String>``
    with ``SymmetricDistance``. Commas and line breaks inside string values are replaced by
    spaces, so that every row is exactly one line: a value can never split one individual's
    row into two (which would break ``d_in``).

    On a dataset with ``row_privacy: false`` nothing in the rows limits how many belong to
    one ``private_id``, while the price assumes at most ``max_ids``. So before each release
    the server keeps, for every ``private_id`` with more rows than that, a uniformly random
    ``max_ids`` of them (as SmartNoise's reservoir does; fresh randomness per release, from
    a generator seeded by the OS's CSPRNG) and feeds only those (:class:`PersonLines`). One
    individual then changes at most ``max_ids`` lines of the input, which is the ``d_in``
    the release is priced at.

Cost
    ``d_in`` is the metadata's ``max_ids`` (rows one individual may add or remove). The
    output measure decides the charge: ``max_divergence`` → (ε, 0) with ε = ``map(d_in)``;
    ``approximate(max_divergence)`` → ``map(d_in)`` as (ε, δ); ``smoothed_max_divergence``
    and ``zero_concentrated_divergence`` need ``fixed_delta`` from the request and are
    converted with ``make_fix_delta`` (after ``make_zCDP_to_approxDP`` for ρ) at the largest
    float not above ``fixed_delta``, and δ is charged as the ``fixed_delta`` requested. Anything
    else → 400 naming the measure. Floats become decimals at their exact binary value; the
    service rounds the price up to the ledger's grid (docs/ledger.md, "Amounts").

Features
    ``contrib`` is enabled here, once, at import: the allowlisted transformations,
    measurements and combinators need it. ``honest-but-curious`` is never enabled, and no
    constructor that asserts it is allowed (those trust their arguments, e.g. a population
    size or a Python callable).
    ``floating-point`` is not enabled: in OpenDP 0.14.2 no constructor consults it (the only
    features its Python layer asserts are ``contrib`` and ``honest-but-curious``; the float
    mechanisms and sums account for rounding themselves), so it is not needed. SmartNoise
    enables it process-wide whenever it builds a mechanism, so a process that served a SQL
    query has it on: nothing here depends on it either way, and a test asserts that no
    allowlisted constructor asserts it (should a later OpenDP gate one, that test fails and
    the constructor must be reviewed before the version is bumped).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import opendp.accuracy as opendp_accuracy
import opendp.combinators as combinators
import opendp.core as core
import opendp.domains as domains
import opendp.measurements as measurements
import opendp.measures as measures
import opendp.metrics as metrics
import opendp.transformations as transformations
import pandas as pd
from opendp._convert import c_to_py, py_to_c
from opendp._lib import AnyObjectPtr, FfiResult, lib, unwrap
from opendp.mod import Measurement, Transformation, enable_features
from opendp.mod import __version__ as OPENDP_VERSION

from chalicelib import accuracy as acc
from chalicelib import validation
from chalicelib.datasets import LoadedDataset
from chalicelib.engines import COMMON_FIELDS
from chalicelib.errors import EngineRefused, InvalidQuery, InvalidRequest
from chalicelib.lru import LruCache
from chalicelib.models import Dataset, PrivacyCost, exact_decimal, float_down, format_decimal

enable_features("contrib")  # the only feature this engine enables (see the module docstring)
# make_split_dataframe and make_select_column warn "deprecated, use Polars" on every call:
# they are the input form here (no polars in the Lambda), so the warning says nothing.
warnings.filterwarnings(
    "ignore",
    message=r"Call to deprecated function .*Use Polars instead",
    category=DeprecationWarning,
)

NAME = "opendp"
FIELDS = {"pipeline", "fixed_delta"}  # besides the engines' COMMON_FIELDS

# What may be built. Tabular, non-polars constructors whose output is a number or a vector:
# the input form (split_dataframe), column access and casts, imputation, clamping and
# resizing, the aggregates, the noise mechanisms, quantiles and noisy max, composition and
# measure casts. Left out on purpose: anything asserting "honest-but-curious"
# (make_user_*, make_population_amplification, new_function), interactive or stateful
# objects (adaptive/sequential/fully adaptive composition, privacy filters, ALP queryables),
# Python-side postprocessors (make_chain_pm and the Functions it takes), constructors with
# map-shaped outputs (count_by, *_threshold), polars plans (make_private_lazyframe ...),
# other input forms (split_lines, split_records, create_dataframe) and opendp.mod itself.
ALLOWED: dict[str, tuple[str, ...]] = {
    "transformations": (
        "make_split_dataframe",
        "make_select_column",
        "make_subset_by",
        "make_df_cast_default",
        "make_df_is_equal",
        "make_cast",
        "make_cast_default",
        "make_cast_inherent",
        "make_is_equal",
        "make_is_null",
        "make_drop_null",
        "make_impute_constant",
        "make_impute_uniform_float",
        "make_clamp",
        "make_resize",
        "make_metric_bounded",
        "make_metric_unbounded",
        "make_lipschitz_float_mul",
        "make_find",
        "make_find_bin",
        "make_index",
        "make_count",
        "make_count_distinct",
        "make_count_by_categories",
        "make_sum",
        "make_mean",
        "make_variance",
        "make_sum_of_squared_deviations",
        "make_quantile_score_candidates",
    ),
    "measurements": (
        "make_laplace",
        "make_gaussian",
        "make_geometric",
        "make_canonical_noise",
        "make_private_quantile",
        "make_report_noisy_max_gumbel",
        "make_noisy_max",
        "make_noisy_top_k",
    ),
    "combinators": (
        "make_chain_tt",
        "make_chain_mt",
        "make_composition",
        "make_basic_composition",
        "make_approximate",
        "make_fix_delta",
        "make_zCDP_to_approxDP",
        "make_pureDP_to_zCDP",
        "make_fixed_approxDP_to_approxDP",
    ),
    "domains": ("atom_domain", "vector_domain", "option_domain"),
    "metrics": (
        "symmetric_distance",
        "insert_delete_distance",
        "change_one_distance",
        "hamming_distance",
        "absolute_distance",
        "l1_distance",
        "l2_distance",
    ),
    "measures": (
        "max_divergence",
        "approximate",
        "fixed_smoothed_max_divergence",
        "smoothed_max_divergence",
        "zero_concentrated_divergence",
    ),
    "core": ("transformation_output_domain", "transformation_output_metric"),
}
_MODULES: dict[str, Any] = {
    "transformations": transformations,
    "measurements": measurements,
    "combinators": combinators,
    "domains": domains,
    "metrics": metrics,
    "measures": measures,
    "core": core,
}
CONSTRUCTORS: dict[tuple[str, str], Callable[..., Any]] = {
    (module, name): getattr(_MODULES[module], name)
    for module, names in ALLOWED.items()
    for name in names
}
PARAMETERS: dict[tuple[str, str], frozenset[str]] = {
    key: frozenset(inspect.signature(function).parameters) for key, function in CONSTRUCTORS.items()
}

# Limits on the untrusted JSON (the body is at most 64 KiB as well).
MAX_NODES = 512  # distinct constructor calls
MAX_DEPTH = 64  # constructor calls nested in one another (an 8-step mean: 20)
MAX_VALUE_DEPTH = 8  # lists nested in one argument
MAX_LIST = 10_000
MAX_STRING = 1_000
MAX_INT = 2**64
MAX_SIZE = 10_000_000  # "size" arguments added up (rows the server would allocate)
MAX_RESULT_CHARS = 100_000  # a release is a number or a small vector, and is archived
_UNSAFE = re.compile(r"[,\r\n]")  # would split a field or a row of the CSV input
# The version a node names is a label: the server builds every node with its own OpenDP.
# Same minor version, same constructor names and arguments.
_MINOR = OPENDP_VERSION.split(".")[:2]
_NODE_KEYS = {"__function__", "__module__", "__kwargs__", "__version__"}

FUNCTION, MODULE, KWARGS, VERSION, TUPLE, REF = (
    "__function__",
    "__module__",
    "__kwargs__",
    "__version__",
    "__tuple__",
    "__ref__",
)

SEPARATOR = ","
INPUT_DOMAIN = domains.atom_domain(T="String")
INPUT_METRIC = metrics.symmetric_distance()
MAX_DIVERGENCE = measures.max_divergence()
APPROX_MAX_DIVERGENCE = measures.approximate(measures.max_divergence())
SMOOTHED_MAX_DIVERGENCE = measures.smoothed_max_divergence()
ZCDP = measures.zero_concentrated_divergence()


# --- walking the untrusted JSON --------------------------------------------------------------
class _Canonicalizer:
    """Checks pipeline JSON and interns its constructor calls into one canonical node list.

    Calls are numbered in post-order from the root (arguments in sorted name order before the
    call that takes them), identical calls share one number: the string form and the node
    form of one pipeline give the same list. In the node form, ``{"__ref__": i}`` is walked
    as node ``i`` (each node once), and ``i`` must be smaller than the referring node's
    position, so there can be no cycle.
    """

    def __init__(self, raw_nodes: list[Any] | None) -> None:
        self.nodes: list[dict[str, Any]] = []
        self._raw = raw_nodes
        self._index: dict[str, int] = {}
        self._walked: dict[int, int] = {}  # position in raw_nodes -> canonical number
        self._sizes = 0  # rows that make_resize & co. would allocate, over distinct calls

    def root(self) -> None:
        """Walk the whole pipeline: the tree, or the last node and what it refers to."""
        if self._raw is None:
            raise AssertionError("root() is for the node form")  # pragma: no cover
        last = len(self._raw) - 1
        self._walked[last] = self.call(self._raw[last], 0, last)
        if len(self._walked) != len(self._raw):
            unused = min(set(range(len(self._raw))) - set(self._walked))
            raise InvalidQuery(f"pipeline: node {unused} is not used by the last node")

    def call(self, node: object, depth: int, position: int | None) -> int:
        """Check one constructor call; its canonical number."""
        if depth > MAX_DEPTH:
            raise InvalidQuery(f"pipeline: more than {MAX_DEPTH} nested constructor calls")
        if not isinstance(node, dict):
            raise InvalidQuery("pipeline: a node must be a dp.serialize object")
        unexpected = sorted(str(key) for key in set(node) - _NODE_KEYS)
        if unexpected:
            raise InvalidQuery(f"pipeline: unexpected key {unexpected[0][:80]!r} in a node")
        module, function = node.get(MODULE), node.get(FUNCTION)
        if not isinstance(module, str) or not isinstance(function, str):
            raise InvalidQuery("pipeline: a node needs a string __module__ and __function__")
        if module not in ALLOWED:
            raise InvalidQuery(
                f"pipeline: module {module[:80]!r} is not one of OpenDP's constructor modules "
                f"({', '.join(sorted(ALLOWED))})"
            )
        if function not in ALLOWED[module]:
            raise InvalidQuery(
                f"pipeline: constructor {module}.{function[:80]} is not allowed "
                "(the allowlist is in docs/opendp.md)"
            )
        version = node.get(VERSION)
        if not isinstance(version, str) or version.split(".")[:2] != _MINOR:
            raise InvalidQuery(
                f"pipeline: {function} was serialized by OpenDP {str(version)[:20]}; this "
                f"server runs OpenDP {OPENDP_VERSION} (install opendp {'.'.join(_MINOR)}.x)"
            )
        raw_kwargs = node.get(KWARGS, {})
        if not isinstance(raw_kwargs, dict):
            raise InvalidQuery(f"pipeline: __kwargs__ of {function} must be an object")
        parameters = PARAMETERS[(module, function)]
        kwargs: dict[str, Any] = {}
        for name in sorted(raw_kwargs, key=str):
            if not isinstance(name, str) or name not in parameters:
                raise InvalidQuery(f"pipeline: {function} has no argument {str(name)[:80]!r}")
            where = f"{function}.{name}"
            kwargs[name] = self.value(raw_kwargs[name], depth, 0, position, where)
        canonical = {FUNCTION: function, MODULE: module, KWARGS: kwargs, VERSION: OPENDP_VERSION}
        key = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        if key not in self._index:
            if len(self.nodes) >= MAX_NODES:
                raise InvalidQuery(f"pipeline: more than {MAX_NODES} distinct constructor calls")
            size = kwargs.get("size")
            if isinstance(size, int) and not isinstance(size, bool):
                self._sizes += size
                if self._sizes > MAX_SIZE:
                    raise InvalidQuery(f"pipeline: sizes add up to more than {MAX_SIZE} rows")
            self._index[key] = len(self.nodes)
            self.nodes.append(canonical)
        return self._index[key]

    def value(
        self, value: object, depth: int, nesting: int, position: int | None, where: str
    ) -> Any:
        """Check one argument (recursively); its canonical form."""
        if nesting > MAX_VALUE_DEPTH:
            raise InvalidQuery(f"pipeline: {where} is nested too deeply")
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            if abs(value) > MAX_INT:
                raise InvalidQuery(f"pipeline: {where} is out of range")
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidQuery(f"pipeline: {where} is not a finite number")
            return value
        if isinstance(value, str):
            if len(value) > MAX_STRING:
                raise InvalidQuery(f"pipeline: {where} is longer than {MAX_STRING} characters")
            return value
        if isinstance(value, list):
            if len(value) > MAX_LIST:
                raise InvalidQuery(f"pipeline: {where} has more than {MAX_LIST} items")
            return [self.value(item, depth, nesting + 1, position, where) for item in value]
        if isinstance(value, dict):
            if FUNCTION in value:
                return {REF: self.call(value, depth + 1, position)}
            if set(value) == {TUPLE} and isinstance(value[TUPLE], list):
                return {TUPLE: self.value(value[TUPLE], depth, nesting, position, where)}
            if set(value) == {REF} and position is not None and self._raw is not None:
                return {REF: self._ref(value[REF], depth, position, where)}
            keys = ", ".join(repr(str(key)[:40]) for key in sorted(value, key=str)[:3])
            raise InvalidQuery(f"pipeline: unexpected object with key(s) {keys} in {where}")
        raise InvalidQuery(f"pipeline: unsupported value in {where}")

    def _ref(self, index: object, depth: int, position: int, where: str) -> int:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < position:
            raise InvalidQuery(f"pipeline: {where} must refer to an earlier node")
        assert self._raw is not None
        if index not in self._walked:
            self._walked[index] = self.call(self._raw[index], depth + 1, index)
        return self._walked[index]


def _refuse_constant(name: str) -> Any:
    raise InvalidQuery(f"pipeline: {name} is not a finite number")


def canonical_nodes(pipeline: object) -> list[dict[str, Any]]:
    """The canonical node list of a pipeline in either wire form (400 on anything amiss)."""
    try:
        return _canonical_nodes(pipeline)
    except RecursionError:  # the limits keep the walk far from it; this is the backstop
        raise InvalidQuery("pipeline: nested too deeply") from None


def _canonical_nodes(pipeline: object) -> list[dict[str, Any]]:
    if isinstance(pipeline, str):
        try:
            tree = json.loads(pipeline, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise InvalidQuery(f"pipeline: not valid JSON ({str(exc)[:200]})") from None
        walker = _Canonicalizer(None)
        walker.call(tree, 0, None)
        return walker.nodes
    if isinstance(pipeline, dict):
        nodes = pipeline.get("nodes")
        if set(pipeline) != {"nodes"} or not isinstance(nodes, list) or not nodes:
            raise InvalidQuery('pipeline: expected {"nodes": [...]} or a dp.serialize string')
        if len(nodes) > MAX_NODES:
            raise InvalidQuery(f"pipeline: more than {MAX_NODES} nodes")
        walker = _Canonicalizer(nodes)
        walker.root()
        return walker.nodes
    raise InvalidQuery('pipeline must be a dp.serialize string or {"nodes": [...]}')


# --- building -------------------------------------------------------------------------------
def build(nodes: list[dict[str, Any]], same_as: dict[int, int] | None = None) -> Any:
    """The OpenDP object of a canonical node list (its last node).

    ``dp.deserialize``'s rule, ``function(**kwargs)`` with ``__tuple__`` as tuples, applied
    once per node, with functions from :data:`CONSTRUCTORS` only. ``same_as`` maps a node
    to an earlier one that stands in its place (:func:`column_prefix`).
    """
    built: list[Any] = []
    same_as = same_as or {}

    def resolve(value: Any) -> Any:
        if isinstance(value, list):
            return [resolve(item) for item in value]
        if isinstance(value, dict):
            if REF in value:
                return built[value[REF]]
            return tuple(resolve(item) for item in value[TUPLE])
        return value

    for index, node in enumerate(nodes):
        if index in same_as:
            built.append(built[same_as[index]])
            continue
        function = CONSTRUCTORS[(node[MODULE], node[FUNCTION])]
        kwargs = {name: resolve(value) for name, value in node[KWARGS].items()}
        try:
            built.append(function(**kwargs))
        except Exception as exc:
            raise InvalidQuery(
                f"pipeline: {node[FUNCTION]} could not be built: {_describe(exc)}"
            ) from exc
    return built[-1]


def _describe(exc: BaseException) -> str:
    """A one-line description of an OpenDP (or argument) error."""
    variant, message = getattr(exc, "variant", None), getattr(exc, "message", None)
    if variant:
        text = f"{variant}: {message}" if message else str(variant)
    else:
        text = str(exc).strip() or type(exc).__name__
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# Measurements already built, by pipeline digest (building is pure: same JSON, same object).
BUILT: LruCache[str, Any] = LruCache(64)


# --- checks and price -----------------------------------------------------------------------
# Constructors that name a column of the dataframe, and the argument that names it.
_COLUMN_ARGUMENTS = {
    "make_select_column": ("key",),
    "make_df_cast_default": ("column_name",),
    "make_df_is_equal": ("column_name",),
    "make_subset_by": ("indicator_column",),
}


def check_input_form(nodes: list[dict[str, Any]], columns: list[str]) -> None:
    """The pipeline can run on the server's CSV input: checked before anything is charged.

    Every ``make_split_dataframe`` reads ``,`` and the metadata's columns; every column a
    step names exists; a column is read as ``String`` (every field of the CSV is text) or as
    a type some ``make_df_cast_default`` casts it to (``bool`` after ``make_df_is_equal``).
    A ``make_select_column(key=..., TOA=int)`` could never run: 400, nothing debited.
    """
    types: dict[str, set[str]] = {name: {"String"} for name in columns}
    for node in nodes:
        kwargs = node[KWARGS]
        if node[FUNCTION] == "make_split_dataframe":
            if kwargs.get("separator") != SEPARATOR or kwargs.get("col_names") != columns:
                raise InvalidQuery(
                    "pipeline: the data arrives as CSV text read by "
                    f"make_split_dataframe(separator={SEPARATOR!r}, col_names={columns}) "
                    "(the client's opendp.space() builds it)"
                )
            if kwargs.get("K") not in (None, "String"):
                raise InvalidQuery("pipeline: make_split_dataframe column names must be strings")
        column = kwargs.get("column_name")
        if column in types and node[FUNCTION] == "make_df_cast_default":
            types[column].add(str(kwargs.get("TOA")))
        if column in types and node[FUNCTION] == "make_df_is_equal":
            types[column].add("bool")
    for node in nodes:
        function, kwargs = node[FUNCTION], node[KWARGS]
        names = [kwargs.get(argument) for argument in _COLUMN_ARGUMENTS.get(function, ())]
        if function == "make_subset_by" and isinstance(kwargs.get("keep_columns"), list):
            names += kwargs["keep_columns"]
        for name in names:
            if not isinstance(name, str) or name not in types:
                raise InvalidQuery(
                    f"pipeline: {function} names the column {str(name)[:80]!r}, which the "
                    f"data does not have (its columns: {', '.join(columns)})"
                )
        declared = kwargs.get("TOA" if function == "make_select_column" else "TIA")
        typed = names and function != "make_subset_by" and declared is not None
        if typed and declared not in types[names[0]]:
            raise InvalidQuery(
                f"pipeline: {function} reads the column {names[0]!r} as {declared}, but it "
                f"can only be {' or '.join(sorted(types[names[0]]))} here: every column of "
                "the CSV input arrives as String (select it as String, then cast it, e.g. "
                ">> dp.t.then_cast_default(int)); this pipeline could never run"
            )


def check_measurement(measurement: Any) -> None:
    """A Measurement whose input is the CSV string under the symmetric distance."""
    if isinstance(measurement, Transformation):
        raise InvalidQuery(
            "pipeline: this is a Transformation, not a Measurement: end it with a mechanism "
            "(e.g. >> dp.m.then_laplace(scale=...)) so that what it releases is private"
        )
    if not isinstance(measurement, Measurement):
        raise InvalidQuery(f"pipeline: this is a {type(measurement).__name__}, not a Measurement")
    if measurement.input_domain != INPUT_DOMAIN or measurement.input_metric != INPUT_METRIC:
        raise InvalidQuery(
            f"pipeline: its input is {measurement.input_domain} with "
            f"{measurement.input_metric}, but the server feeds {INPUT_DOMAIN} (CSV text) with "
            f"{INPUT_METRIC}: start it with the client's opendp.space()"
        )


def price(measurement: Any, d_in: int, fixed_delta: Decimal | None) -> PrivacyCost:
    """The (ε, δ) charged for ``measurement`` at ``d_in`` (see the module docstring)."""
    measure = measurement.output_measure
    try:
        if measure in (MAX_DIVERGENCE, APPROX_MAX_DIVERGENCE):
            if fixed_delta is not None:
                raise InvalidRequest(
                    f"fixed_delta applies only to smoothed or zCDP measurements; this one "
                    f"outputs {measure}"
                )
            loss = measurement.map(d_in)
            epsilon, delta = (loss, 0) if measure == MAX_DIVERGENCE else loss
        elif measure in (SMOOTHED_MAX_DIVERGENCE, ZCDP):
            if fixed_delta is None:
                raise InvalidRequest(
                    f"fixed_delta is required for a measurement whose output measure is "
                    f"{measure} (the δ at which ε is read off its privacy curve)"
                )
            curve = measurement
            if measure == ZCDP:
                curve = combinators.make_zCDP_to_approxDP(measurement)
            # the largest float not above the δ requested: the ε read there holds at it
            fixed: Any = combinators.make_fix_delta(curve, float_down(fixed_delta))
            epsilon, delta = fixed.map(d_in)
        else:
            raise InvalidQuery(
                f"pipeline: output measure {measure} is not supported (use max_divergence, "
                "approximate(max_divergence), smoothed_max_divergence or "
                "zero_concentrated_divergence)"
            )
    except (InvalidRequest, InvalidQuery):
        raise
    except Exception as exc:
        raise EngineRefused(f"the privacy map failed at d_in={d_in}: {_describe(exc)}") from exc
    try:
        exact = PrivacyCost(epsilon=_exact(epsilon), delta=_exact(delta))
    except (TypeError, ValueError, OverflowError) as exc:
        raise EngineRefused(
            f"the privacy map gives no finite loss at d_in={d_in} (ε={epsilon}, δ={delta})"
        ) from exc
    if fixed_delta is not None and exact.delta <= fixed_delta:
        exact = replace(exact, delta=fixed_delta)  # the δ requested, never below the map's
    return exact


def _exact(value: Any) -> Decimal:
    """A loss from a privacy map as an exact decimal (floats at their exact binary value)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a number: {value!r}")
    return Decimal(value) if isinstance(value, int) else exact_decimal(value)


# --- data in, release out -------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return repr(float(value)) if math.isfinite(value) else ""
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat()
    return _UNSAFE.sub(" ", str(value))


def csv_text(frame: pd.DataFrame) -> str:
    """The dataset as the server feeds it: one line per row, fields in metadata order.

    Missing values are empty, booleans ``true``/``false``, floats their shortest repr; commas
    and line breaks inside values become spaces, so a row is always exactly one line.
    """
    return "".join(csv_lines(frame))


def csv_lines(frame: pd.DataFrame) -> list[str]:
    """The lines of :func:`csv_text`, one per row, each ending with ``\\n``."""
    columns = [_cells(frame[name]) for name in frame.columns]
    return [SEPARATOR.join(row) + "\n" for row in zip(*columns, strict=True)]


def _cells(series: pd.Series) -> list[str]:
    """``[_cell(v) for v in series]``, without pandas' per-value dispatch (1M rows: ~10x).

    Floats and ints take their direct form; other values (text, booleans, datetimes) go
    through :func:`_cell` once per distinct (type, value) (categories repeat).
    """
    if pd.api.types.is_float_dtype(series.dtype):
        return [repr(v) if math.isfinite(v) else "" for v in series.astype("float64").tolist()]
    if pd.api.types.is_integer_dtype(series.dtype) and not series.hasnans:
        return [str(v) for v in series.astype("int64").tolist()]
    seen: dict[tuple[type, Any], str] = {}  # by type too: 1, 1.0 and True are equal keys
    out = []
    for value in series.astype(object).tolist():
        key = (type(value), value)
        try:
            cell = seen.get(key)
        except TypeError:  # pragma: no cover - unhashable: never a loaded cell
            cell = _cell(value)
        if cell is None:
            cell = seen[key] = _cell(value)
        out.append(cell)
    return out


class PersonLines:
    """A ``row_privacy: false`` dataset as CSV lines, bounded per person for each release.

    The lines and the person of each are computed once per loaded dataset;
    :meth:`sample` then keeps, for each person, a uniformly random ``max_ids`` of their
    lines (all of them when they have no more), in the original row order.
    """

    def __init__(self, frame: pd.DataFrame, id_column: str) -> None:
        self.lines = np.array(csv_lines(frame), dtype=object)
        # one code per distinct id (a missing id, possible only in dummy rows, is one code)
        codes, _ = pd.factorize(frame[id_column], use_na_sentinel=False)
        self.codes = codes.astype(np.int64)
        self.largest = int(np.bincount(self.codes).max()) if len(self.codes) else 0
        self._whole = "".join(self.lines)

    def sample(self, max_ids: int, rng: np.random.Generator) -> str:
        """The CSV text with at most ``max_ids`` lines per person, chosen at random."""
        if self.largest <= max_ids:
            return self._whole
        order = np.lexsort((rng.random(len(self.codes)), self.codes))  # by person, shuffled
        grouped = self.codes[order]
        rank = np.arange(len(grouped)) - np.searchsorted(grouped, grouped, side="left")
        kept = np.sort(order[rank < max_ids])
        return "".join(self.lines[kept])


def _fresh_rng() -> np.random.Generator:
    """A generator for one release, seeded with 128 bits from the OS's CSPRNG."""
    return np.random.default_rng(secrets.randbits(128))


def release_json(value: Any, nesting: int = 0) -> Any:
    """A release as JSON: numbers, booleans, strings and (nested) lists of them."""
    if nesting > MAX_VALUE_DEPTH:
        raise TypeError("the release is nested too deeply")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [release_json(item, nesting + 1) for item in value]
    raise TypeError(f"a release of type {type(value).__name__} cannot be returned")


# --- the input prepared once per dataset version ---------------------------------------------
# Most pipelines start with the client's standard prefix, make_split_dataframe >>
# make_select_column(key=c, TOA=String), and read the data through it alone. Splitting a 1M-row
# CSV text is most of such a release's time, and its output is the same for every query on the
# same dataset version: it is computed once (kept inside OpenDP, as an AnyObject), and each
# release runs only the rest of the chain on it. chain(rest, prefix)(x) = rest(prefix(x)), so
# the release has the same distribution; the charge is still the whole measurement's map.


@dataclass(frozen=True)
class ColumnPrefix:
    """Where a pipeline's standard prefix is: its column and the pipeline built without it."""

    column: str
    rest: Any  # Measurement from Vec<String> (the column) under the symmetric distance


def _refs(value: Any) -> list[int]:
    if isinstance(value, list):
        return [ref for item in value for ref in _refs(item)]
    if isinstance(value, dict):
        if REF in value:
            return [int(value[REF])]
        return _refs(value.get(TUPLE, []))
    return []


def column_prefix(nodes: list[dict[str, Any]]) -> tuple[str, dict[int, int]] | None:
    """``(column, same_as)`` when the pipeline reads its input through the prefix only.

    The prefix is ``p = make_chain_tt(transformation0=split, transformation1=select)`` with a
    ``String`` select; ``split`` and ``select`` are used by ``p`` alone, and ``p`` by one
    chain ``q`` (as its first step) besides ``transformation_output_domain``/``_metric``
    (which only read its types). Building with ``q`` standing for its second step gives the
    rest of the chain; None for any other shape (the whole pipeline then runs on the text).
    """
    users: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        for ref in _refs(list(node[KWARGS].values())):
            users.setdefault(ref, []).append(index)
    splits = [i for i, n in enumerate(nodes) if n[FUNCTION] == "make_split_dataframe"]
    if len(splits) != 1 or users.get(splits[0], []) == []:
        return None
    (split,) = splits
    (prefix,) = users[split] if len(users[split]) == 1 else (None,)
    if prefix is None or nodes[prefix][FUNCTION] != "make_chain_tt":
        return None
    kwargs = nodes[prefix][KWARGS]
    if _refs([kwargs.get("transformation0")]) != [split]:
        return None
    (select,) = _refs([kwargs.get("transformation1")]) or (None,)
    if select is None or users.get(select) != [prefix]:
        return None
    chosen = nodes[select]
    if chosen[FUNCTION] != "make_select_column" or chosen[KWARGS].get("TOA") != "String":
        return None
    readers = [i for i in users.get(prefix, []) if nodes[i][FUNCTION] not in _TYPE_READERS]
    if len(readers) != 1:
        return None
    (chain,) = readers
    step = nodes[chain][KWARGS]
    if nodes[chain][FUNCTION] == "make_chain_tt":
        rest = step.get("transformation1")
    elif nodes[chain][FUNCTION] == "make_chain_mt":
        rest = step.get("measurement1")
    else:
        return None
    if _refs([step.get("transformation0")]) != [prefix] or len(_refs([rest])) != 1:
        return None
    return str(chosen[KWARGS].get("key")), {chain: _refs([rest])[0]}


_TYPE_READERS = frozenset({"transformation_output_domain", "transformation_output_metric"})
COLUMN_DOMAIN = domains.vector_domain(domains.atom_domain(T="String"))


def prepared(request: OpenDPRequest) -> ColumnPrefix | None:
    """The request's pipeline split at its standard prefix, or None (cached per pipeline)."""

    def split() -> ColumnPrefix | None:
        nodes = request.nodes()
        found = column_prefix(nodes)
        if found is None:
            return None
        column, same_as = found
        try:
            rest = build(nodes, same_as)
        except InvalidQuery:  # pragma: no cover - the whole pipeline was built already
            return None
        if (
            not isinstance(rest, Measurement)
            or rest.input_domain != COLUMN_DOMAIN
            or rest.input_metric != INPUT_METRIC
        ):
            return None
        return ColumnPrefix(column, rest)

    return PREPARED.get_or_build(request.digest, lambda: _Maybe(split())).value


@dataclass(frozen=True)
class _Maybe:
    value: ColumnPrefix | None


PREPARED: LruCache[str, _Maybe] = LruCache(64)


def _invoke_raw(transformation: Any, argument: Any) -> Any:
    """``transformation(argument)`` kept inside OpenDP (an AnyObject), not converted back."""
    c_this = py_to_c(transformation, c_type=Transformation, type_name=None)
    c_arg = py_to_c(
        argument,
        c_type=AnyObjectPtr,
        type_name=core.transformation_input_carrier_type(transformation),
    )
    function = lib.opendp_core__transformation_invoke
    function.argtypes = [Transformation, AnyObjectPtr]
    function.restype = FfiResult
    return unwrap(function(c_this, c_arg), AnyObjectPtr)


def _measure_raw(measurement: Any, prepared_input: Any) -> Any:
    """``measurement`` on an input already inside OpenDP (:func:`_invoke_raw`)."""
    c_this = py_to_c(measurement, c_type=Measurement, type_name=None)
    function = lib.opendp_core__measurement_invoke
    function.argtypes = [Measurement, AnyObjectPtr]
    function.restype = FfiResult
    return c_to_py(unwrap(function(c_this, prepared_input), AnyObjectPtr))


class PreparedColumn:
    """One column of a dataset version as the standard prefix outputs it, kept in OpenDP.

    The prefix runs on the CSV text of that column alone: each line of :func:`csv_text` is
    the row's cells joined by ``,`` and no cell holds a ``,`` or a line break, so field
    ``i`` of the whole text is the one field of the column's text, line for line (empty
    cells included): the same ``Vec<String>``, without the other columns' text or split.
    """

    def __init__(self, column_frame: pd.DataFrame, column: str) -> None:
        prefix = transformations.make_split_dataframe(
            separator=SEPARATOR, col_names=[column]
        ) >> transformations.make_select_column(key=column, TOA="String")
        self.value = _invoke_raw(prefix, csv_text(column_frame[[column]]))


# --- accuracy -------------------------------------------------------------------------------
# The noise measurements whose output accuracy OpenDP gives in closed form, and the
# combinators that pass a measurement's output through unchanged (measure casts; a chain
# whose measurement runs last).
NOISE = {"make_laplace": "Laplace", "make_gaussian": "Gaussian", "make_geometric": "Laplace"}
PASS_THROUGH = {
    "make_chain_mt": "measurement1",
    "make_fix_delta": "measurement",
    "make_zCDP_to_approxDP": "measurement",
    "make_approximate": "measurement",
    "make_pureDP_to_zCDP": "measurement",
    "make_fixed_approxDP_to_approxDP": "measurement",
}
COMPOSITIONS = ("make_composition", "make_basic_composition")
_INTEGER = re.compile(r"\b[iu](8|16|32|64|128|size)\b")


def _noise_accuracy(nodes: list[dict[str, Any]], index: int, name: str, alpha: float) -> Any:
    """The entry of the noise node ``index``: OpenDP's scale-to-accuracy of its distribution
    (the discrete one when the noise is added to integers)."""
    node = nodes[index]
    kind = NOISE[node[FUNCTION]]
    scale = float(node[KWARGS]["scale"])
    noise = build(nodes[: index + 1])
    integer = bool(_INTEGER.search(str(noise.input_domain.carrier_type)))
    vector = str(noise.input_domain.carrier_type).startswith("Vec<")
    if kind == "Laplace":
        helper = (
            opendp_accuracy.discrete_laplacian_scale_to_accuracy
            if integer
            else opendp_accuracy.laplacian_scale_to_accuracy
        )
    else:
        helper = (
            opendp_accuracy.discrete_gaussian_scale_to_accuracy
            if integer
            else opendp_accuracy.gaussian_scale_to_accuracy
        )
    distribution = f"Integer {kind}" if integer else kind
    aggregate = f"{node[FUNCTION]} (each element)" if vector else node[FUNCTION]
    half = float(helper(scale, alpha))
    return acc.column(name, aggregate, distribution=distribution, scale=scale, accuracy=half)


def pipeline_accuracy(nodes: list[dict[str, Any]], level: float) -> dict[str, Any]:
    """The release's accuracy, from the pipeline alone.

    The release is ``value``: one noise measurement (Laplace, Gaussian, geometric) at the
    end of the chain, behind measure casts only, gives OpenDP's ``*_scale_to_accuracy``
    (discrete forms on integers) for the value or for each element of a vector; a
    composition gives one entry per component (``value[i]``). Anything else (a quantile, a
    noisy max, canonical noise) has no closed form here: ``columns`` null with a reason.
    """
    alpha = acc.alpha(level)

    def noise_of(index: int) -> int | None:
        node = nodes[index]
        while node[FUNCTION] in PASS_THROUGH:
            index = int(node[KWARGS][PASS_THROUGH[node[FUNCTION]]][REF])
            node = nodes[index]
        return index if node[FUNCTION] in NOISE else None

    root = nodes[-1]
    last = len(nodes) - 1
    while root[FUNCTION] in PASS_THROUGH and root[FUNCTION] != "make_chain_mt":
        last = int(root[KWARGS][PASS_THROUGH[root[FUNCTION]]][REF])
        root = nodes[last]
    reason = (
        "the pipeline's last measurement is not Laplace, Gaussian or geometric noise:"
        " no analytic accuracy (estimate it on dummy data)"
    )
    if root[FUNCTION] in COMPOSITIONS:
        parts = root[KWARGS]["measurements"]
        found = [noise_of(int(part[REF])) for part in parts]
        if any(index is None for index in found):
            return acc.unavailable(level, reason)
        columns = [
            _noise_accuracy(nodes, index, f"value[{i}]", alpha)
            for i, index in enumerate(found)
            if index is not None
        ]
        return acc.answer(level, columns)
    index = noise_of(last)
    if index is None:
        return acc.unavailable(level, reason)
    return acc.answer(level, [_noise_accuracy(nodes, index, "value", alpha)])


# --- the engine -----------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenDPRequest:
    """A checked OpenDP request: the canonical pipeline (JSON text) and the fixed δ."""

    pipeline_json: str
    fixed_delta: Decimal | None

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical pipeline."""
        return hashlib.sha256(self.pipeline_json.encode()).hexdigest()

    def nodes(self) -> list[dict[str, Any]]:
        """The canonical node list (a fresh copy)."""
        nodes: list[dict[str, Any]] = json.loads(self.pipeline_json)["nodes"]
        return nodes

    def canonical(self) -> dict[str, Any]:
        return {
            "pipeline": json.loads(self.pipeline_json),
            "fixed_delta": None if self.fixed_delta is None else format_decimal(self.fixed_delta),
        }

    def measurement(self) -> Any:
        """The built measurement (cached), checked to take the server's CSV input."""
        nodes = self.nodes()
        measurement = BUILT.get_or_build(self.digest, lambda: build(nodes))
        check_measurement(measurement)
        return measurement


class OpenDPEngine:
    """The OpenDP engine (see the module docstring)."""

    name = NAME

    def parse(self, body: dict[str, Any]) -> OpenDPRequest:
        validation.refuse_unknown(body, FIELDS | COMMON_FIELDS)
        if "pipeline" not in body:
            raise InvalidRequest("pipeline is required (the client's opendp.query sends it)")
        nodes = canonical_nodes(body["pipeline"])
        fixed_delta = None
        if body.get("fixed_delta") is not None:
            fixed_delta = validation.delta(body["fixed_delta"], "fixed_delta", positive=True)
        text = json.dumps({"nodes": nodes}, sort_keys=True, separators=(",", ":"))
        return OpenDPRequest(pipeline_json=text, fixed_delta=fixed_delta)

    @staticmethod
    def _measurement(metadata: dict[str, Any], request: OpenDPRequest) -> Any:
        """The built measurement, checked against the input the server feeds (400 if not)."""
        check_input_form(request.nodes(), list(metadata["columns"]))
        return request.measurement()

    def cost(self, dataset: Dataset, request: OpenDPRequest) -> PrivacyCost:
        measurement = self._measurement(dataset.metadata, request)
        return price(measurement, int(dataset.metadata["max_ids"]), request.fixed_delta)

    def accuracy(self, dataset: Dataset, request: OpenDPRequest, level: float) -> dict[str, Any]:
        """The release's accuracy at ``level`` (:func:`pipeline_accuracy`)."""
        return pipeline_accuracy(request.nodes(), level)

    def execute(self, loaded: LoadedDataset, request: OpenDPRequest) -> dict[str, Any]:
        metadata = loaded.metadata
        measurement = self._measurement(metadata, request)
        split = prepared(request) if metadata["row_privacy"] else None
        if split is not None:  # only this column is read (from a Parquet copy: alone)
            column = loaded.derived(
                f"{NAME}:column:{split.column}",
                lambda ld: PreparedColumn(ld.column(split.column), split.column),
            )
            try:
                released = _measure_raw(split.rest, column.value)
            except Exception as exc:
                raise ValueError(f"the pipeline failed: {_describe(exc)}") from exc
            return self._release(released)
        if metadata["row_privacy"]:
            text = loaded.derived(NAME, lambda ld: csv_text(ld.frame))
        else:  # bound each person's rows to max_ids, afresh for every release
            (id_column,) = [n for n, spec in metadata["columns"].items() if spec["private_id"]]
            lines = loaded.derived(f"{NAME}:persons", lambda ld: PersonLines(ld.frame, id_column))
            text = lines.sample(int(metadata["max_ids"]), _fresh_rng())
        try:
            released = measurement(text)
        except Exception as exc:
            # OpenDP's errors read "\n  Variant(...)": name the reason. On private data the
            # service replaces any engine message with a fixed one; on dummy data it is shown.
            raise ValueError(f"the pipeline failed: {_describe(exc)}") from exc
        return self._release(released)

    @staticmethod
    def _release(released: Any) -> dict[str, Any]:
        value = release_json(released)
        if len(json.dumps(value)) > MAX_RESULT_CHARS:
            raise ValueError(f"the release is larger than {MAX_RESULT_CHARS} characters of JSON")
        return {"type": "value", "value": value}


ENGINE = OpenDPEngine()
