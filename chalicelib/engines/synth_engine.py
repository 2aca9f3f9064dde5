"""SmartNoise-Synth engine: DP synthetic rows from the marginal synthesizers MST, AIM, MWEM.

Request (docs/synth.md)::

    {"engine": "smartnoise_synth",
     "synth_name": "mst",                 # mst | aim | mwem
     "epsilon": 3.0, "delta": 1e-6,       # delta: mst and aim (default 1e-9), never mwem
     "select_cols": ["species", "island", "flipper_length_mm"],   # default: every column
     "synth_params": {"iters": 500},      # allowlisted per synthesizer (numbers only)
     "nb_samples": 200,                   # 1 .. MAX_SAMPLES rows released
     "condition": "island = 'Dream'"}     # optional: rejection sampling on the released rows

Nothing is deserialised: the synthesizer is a name, its parameters are checked one by one
against an allowlist of numbers (no callables, no pickles, no seeds). This module parses
and prices with the standard library only; :mod:`synth_fit` (numpy, pandas, mbi/jax,
snsynth) is imported by :meth:`SynthEngine.execute` alone.

Transformers come from the metadata, never from the data
    Every selected column becomes a discrete code whose domain the metadata gives:
    categories (string, int or boolean columns) are label-encoded in the metadata's order;
    ``int``/``float``/``datetime`` columns with ``lower``/``upper`` are cut into ``bins``
    equal-width bins of that range (an ``int`` range narrower than ``bins`` gets one code
    per integer); a nullable column has one more code for null. snsynth's own
    transformers would infer categories and bounds from the data (a leak, or a
    ``preprocessor_eps`` spent): they are never used. A column the metadata gives no
    domain for (a string without categories) is a 400 before anything is read.

Price
    The request's (ε, δ), each at the exact binary value of the float the synthesizer is
    built with (δ = 0 for MWEM). MST and AIM turn (ε, δ) into a zCDP budget ρ with
    snsynth's ``cdp_rho`` (OpenDP's binary search: the ρ found is at most what (ε, δ)
    allows) and spend exactly ρ (the fit records each measurement's ρ and checks the sum);
    MWEM spends ε through its accountant (checked after the fit). docs/synth.md proves it.

Neighbouring
    The synthesizers' analyses are for one row added or removed (every marginal has L2
    sensitivity 1; the exponential mechanisms' scores sensitivity 1). The fit sees the
    rows as loaded; the only public total it uses is the metadata's ``rows`` (snsynth's MST
    and MWEM would use the exact row count: replaced here), so the release is a function
    of noisy measurements and public metadata alone. Datasets with several rows per
    individual (``row_privacy: false``) are refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib import validation
from chalicelib.engines import COMMON_FIELDS
from chalicelib.errors import EngineRefused, InvalidQuery, InvalidRequest, UnsupportedSynthesizer
from chalicelib.models import Dataset, PrivacyCost, exact_decimal

if TYPE_CHECKING:
    from chalicelib.datasets import LoadedDataset

NAME = "smartnoise_synth"
FIELDS = {
    "synth_name",
    "epsilon",
    "delta",
    "select_cols",
    "synth_params",
    "nb_samples",
    "condition",
    "return_model",
}
MAX_SAMPLES = 100_000
DEFAULT_SAMPLES = 200  # Lomas's default
DEFAULT_DELTA = 1e-9  # snsynth's default for MST and AIM (what Lomas charges when δ is null)
MAX_COLUMNS = 32
MAX_CONDITION_CHARS = 500
DEFAULT_BINS = 10  # Lomas's cube-style BinTransformer
MAX_MWEM_CELLS = 10_000_000  # MWEM keeps the full histogram of each split in memory
# Work bounds (docs/synth.md, "Work bounds"): a fit that outlives the worker's timeout
# (Lambda: 900 s) fails after its debit, so what cannot finish with a wide margin is a 400
# before it, from public inputs alone (request, metadata domain sizes, declared rows).
# AIM: mirror-descent iterations, (rounds + 2) x iters (one fit per round, one before, one
# after); measured 13-21 ms each on PENGUIN under load (80 x 300: 308 s; 128 x 46: 109-134 s).
MAX_AIM_WORK = 20_000  # 260-430 s under load (13-21 ms each): within 900 s
DEFAULT_AIM_WORK = 4_000  # the default iters spread this over the rounds (about 90 s)
# MWEM: histogram cell updates, per split cells x iterations x (q_count + mult_weights
# x (iterations + 1) / 2); snsynth's defaults on PENGUIN's 8 columns (1.2 M cells) are
# 1.3e10 and took 44 s under load.
MAX_MWEM_WORK = 6e10  # about 200 s under load
# MST: its two estimations, iters + select_iters (measured 27-41 s for 1,000 on five columns).
MAX_MST_WORK = 12_000
# A dummy run is answered within the request (API Gateway: 29 s), so its work is bounded
# far lower: about 10-20 s under load, plus jax's compilation in a fresh worker.
DUMMY_WORK = {"aim": 1_000, "mst": 600, "mwem": 3e9}
# The GAN synthesizers of Lomas 0.4.1 (torch): refused, with the reason (docs/synth.md).
GANS = ("dpctgan", "patectgan", "pategan", "dpgan")
LOMAS_ONLY = {
    "pacsynth": "pac-synth panics in Rust on many inputs (Lomas refuses it too)",
    **{
        name: "a GAN synthesizer needs torch (several GB, minutes per fit on a Lambda's "
        "CPUs): not offered, see docs/synth.md"
        for name in GANS
    },
}


@dataclass(frozen=True)
class Param:
    """One allowlisted synthesizer parameter: an integer or a number within bounds."""

    kind: str  # "integer" | "number"
    lower: float
    upper: float


COMMON_PARAMS = {"bins": Param("integer", 2, 64)}
SYNTHS: dict[str, dict[str, Param]] = {
    "mst": {**COMMON_PARAMS, "iters": Param("integer", 10, 10_000),
            "select_iters": Param("integer", 10, 10_000)},
    "aim": {**COMMON_PARAMS, "iters": Param("integer", 10, 10_000),
            "rounds": Param("integer", 1, 1_000), "degree": Param("integer", 1, 3),
            "max_model_size": Param("number", 1, 1_000),
            "max_cells": Param("integer", 1, 1_000_000),
            "num_marginals": Param("integer", 1, 1_000)},
    "mwem": {**COMMON_PARAMS, "iterations": Param("integer", 1, 1_000),
             "q_count": Param("integer", 1, 10_000),
             "split_factor": Param("integer", 1, MAX_COLUMNS),
             "marginal_width": Param("integer", 1, 3),
             "mult_weights_iterations": Param("integer", 1, 200),
             "max_retries_exp_mechanism": Param("integer", 1, 100)},
}  # fmt: skip
# snsynth's defaults where a request leaves a parameter out (MWEM's that snsynth derives
# from the row count are derived from the metadata's ``rows`` instead: see ``check``).
DEFAULTS: dict[str, dict[str, Any]] = {
    "mst": {"bins": DEFAULT_BINS, "iters": 5000, "select_iters": 1000},
    "aim": {"bins": DEFAULT_BINS, "degree": 2, "max_model_size": 80.0, "max_cells": 10_000},
    "mwem": {"bins": DEFAULT_BINS, "mult_weights_iterations": 20,
             "max_retries_exp_mechanism": 10},
}  # fmt: skip


@dataclass(frozen=True)
class ColumnCode:
    """How one column becomes a discrete code (from the metadata alone).

    ``kind`` is ``categorical`` (``values`` in code order) or ``bins`` (``bins`` equal
    bins of ``lower``..``upper``; ``type`` int, float or datetime). ``nullable`` adds the
    last code, for null.
    """

    name: str
    kind: str
    type: str
    values: tuple[Any, ...] = ()
    lower: float = 0.0
    upper: float = 0.0
    bins: int = 0
    nullable: bool = False

    @property
    def size(self) -> int:
        base = len(self.values) if self.kind == "categorical" else self.bins
        return base + (1 if self.nullable else 0)


@dataclass(frozen=True)
class SynthRequest:
    """A checked request: the synthesizer, its budget, columns, parameters, samples."""

    synth_name: str
    epsilon: float
    delta: float
    columns: tuple[str, ...]
    params_json: str  # complete parameters, canonical JSON
    nb_samples: int
    condition: str | None

    @property
    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = json.loads(self.params_json)
        return params

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.params_json.encode()).hexdigest()

    def canonical(self) -> dict[str, Any]:
        return {
            "synth_name": self.synth_name,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "select_cols": list(self.columns),
            "synth_params": self.params,
            "nb_samples": self.nb_samples,
            "condition": self.condition,
        }

    def price(self) -> PrivacyCost:
        """Exactly the (ε, δ) the synthesizer is built with (exact binary values)."""
        return PrivacyCost(epsilon=exact_decimal(self.epsilon), delta=exact_decimal(self.delta))

    def codes(self, metadata: dict[str, Any]) -> list[ColumnCode]:
        """Each selected column's code, from the metadata (already checked by ``check``)."""
        bins = int(self.params["bins"])
        return [column_code(name, metadata["columns"][name], bins) for name in self.columns]


def column_code(name: str, spec: dict[str, Any], bins: int) -> ColumnCode:
    """The code of one column from its metadata; 400 when the metadata gives no domain."""
    kind, nullable = spec["type"], bool(spec.get("nullable", False))
    if spec.get("private_id"):
        raise InvalidQuery(f"column {name!r} is the private_id column: it cannot be synthesized")
    if kind == "boolean":
        return ColumnCode(name, "categorical", kind, (False, True), nullable=nullable)
    if "categories" in spec:
        return ColumnCode(name, "categorical", kind, tuple(spec["categories"]), nullable=nullable)
    if kind == "string":
        raise InvalidQuery(
            f"column {name!r} is a string column that declares no categories: a "
            "synthesizer's domain comes from the metadata (never from the data); leave it "
            "out of select_cols"
        )
    if "lower" not in spec or "upper" not in spec:  # pragma: no cover - metadata requires them
        raise InvalidQuery(f"column {name!r} has no bounds in the metadata")
    if kind == "datetime":
        from chalicelib.metadata import parse_datetime_bound

        low_dt, high_dt = parse_datetime_bound(spec["lower"]), parse_datetime_bound(spec["upper"])
        if low_dt is None or high_dt is None:  # pragma: no cover - metadata checks them
            raise InvalidQuery(f"column {name!r}: bad datetime bounds in the metadata")
        low, high = low_dt.timestamp(), high_dt.timestamp()
    else:
        low, high = float(spec["lower"]), float(spec["upper"])
    if not low < high:
        raise InvalidQuery(f"column {name!r}: its metadata bounds are one value")
    if kind == "int" and high - low + 1 <= bins:
        values = tuple(range(math.ceil(low), math.floor(high) + 1))
        return ColumnCode(name, "categorical", kind, values, nullable=nullable)
    return ColumnCode(name, "bins", kind, lower=low, upper=high, bins=bins, nullable=nullable)


def installed() -> bool:
    """True when snsynth and mbi (jax) can be imported (found, not imported)."""
    return all(importlib.util.find_spec(name) is not None for name in ("snsynth", "mbi", "jax"))


def _integer(value: object, where: str, spec: Param) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidQuery(f"{where} must be a number")
    if spec.kind == "integer" and not (isinstance(value, int) or float(value).is_integer()):
        raise InvalidQuery(f"{where} must be an integer")
    if not (math.isfinite(value) and spec.lower <= value <= spec.upper):
        raise InvalidQuery(f"{where} must be from {spec.lower:g} to {spec.upper:g}")
    return int(value) if spec.kind == "integer" else float(value)


@dataclass(frozen=True)
class SynthBody:
    """A request checked for shape; :meth:`check` completes it against the metadata."""

    synth_name: str
    epsilon: float
    delta: float
    columns: list[str] | None
    params: dict[str, Any]
    nb_samples: int
    condition: str | None
    dummy: bool = False  # a dummy run: answered within the request, so DUMMY_WORK bounds it

    def canonical(self) -> dict[str, Any]:
        return {
            "synth_name": self.synth_name,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "select_cols": self.columns,
            "synth_params": self.params,
            "nb_samples": self.nb_samples,
            "condition": self.condition,
        }

    def check(self, metadata: dict[str, Any]) -> SynthRequest:
        """The complete request for this metadata; 400 for anything that would leak."""
        if not metadata["row_privacy"]:
            raise InvalidQuery(
                "smartnoise_synth runs only on datasets with row_privacy: true (one row per "
                "individual); this dataset has a private_id column"
            )
        columns = metadata["columns"]
        names = self.columns if self.columns is not None else list(columns)
        for name in names:
            if name not in columns:
                raise InvalidQuery(f"select_cols: no column {name!r} in this dataset")
        if len(names) > MAX_COLUMNS:
            raise InvalidQuery(f"select_cols: at most {MAX_COLUMNS} columns")
        if self.synth_name in ("mst", "aim") and len(names) < 2:
            raise InvalidQuery(f"{self.synth_name} needs at least two columns")
        rows = int(metadata["rows"])
        params = {**DEFAULTS[self.synth_name], **self.params}
        if self.synth_name == "mwem":
            # snsynth derives these from the exact row count; here from the public one.
            params.setdefault("iterations", max(1, math.ceil(math.log10(max(rows, 2)))) * 10)
            params.setdefault("marginal_width", 3 if rows > 10_000 else 2)
            params.setdefault("q_count", 2 * params["iterations"])
        if self.synth_name == "aim" and "rounds" in params and params["rounds"] < len(names):
            raise InvalidQuery(
                f"aim: synth_params.rounds must be at least the number of columns "
                f"({len(names)}): its one-way measurements take one round each"
            )
        codes = [column_code(name, columns[name], int(params["bins"])) for name in names]
        if self.synth_name == "aim":
            _bound_aim(params, len(names), self.dummy)
        if self.synth_name == "mst":
            _refuse_work("mst", int(params["iters"]) + int(params["select_iters"]), self.dummy,
                         "iters + select_iters", "iters or select_iters")  # fmt: skip
        if self.synth_name == "mwem":
            params.setdefault("split_factor", len(names))  # snsynth's: one split
            factor = int(params["split_factor"])
            for start in range(0, len(codes), factor):
                cells = math.prod(code.size for code in codes[start : start + factor])
                if cells > MAX_MWEM_CELLS:
                    raise InvalidQuery(
                        f"mwem: a split of {factor} columns has {cells:,} cells (at most "
                        f"{MAX_MWEM_CELLS:,}): lower synth_params.split_factor or bins"
                    )
            _bound_mwem(params, codes, self.dummy)
        if self.condition is not None:
            _check_condition(self.condition, names)
        text = json.dumps(params, sort_keys=True, separators=(",", ":"))
        return SynthRequest(
            synth_name=self.synth_name,
            epsilon=self.epsilon,
            delta=self.delta,
            columns=tuple(names),
            params_json=text,
            nb_samples=self.nb_samples,
            condition=self.condition,
        )


def _refuse_work(synth: str, work: float, dummy: bool, what: str, lower: str) -> None:
    """400 when a fit's work (public inputs only) exceeds its bound."""
    limits = {"aim": MAX_AIM_WORK, "mst": MAX_MST_WORK, "mwem": MAX_MWEM_WORK}

    def text(number: float) -> str:
        return f"{number:,.0f}" if number < 1e7 else f"{number:.2g}"

    if dummy and work > DUMMY_WORK[synth]:
        raise InvalidQuery(
            f"{synth}: {what} = {text(work)}, more than {text(DUMMY_WORK[synth])} for a dummy run "
            f"(answered within the request, which must finish in seconds): lower "
            f"synth_params.{lower} for the trial"
        )
    if work > limits[synth]:
        raise InvalidQuery(
            f"{synth}: {what} = {text(work)}, more than {text(limits[synth])} (a fit that long "
            f"could outlive the worker): lower synth_params.{lower}"
        )


def _bound_aim(params: dict[str, Any], columns: int, dummy: bool = False) -> None:
    """Fix AIM's rounds and iters (defaults spread DEFAULT_AIM_WORK); 400 above the bound."""
    params.setdefault("rounds", 16 * columns)  # snsynth's default
    rounds = int(params["rounds"])
    params.setdefault("iters", max(10, min(1000, DEFAULT_AIM_WORK // (rounds + 2))))
    work = (rounds + 2) * int(params["iters"])
    _refuse_work("aim", work, dummy, "(rounds + 2) x iters", "rounds or iters")


def _bound_mwem(params: dict[str, Any], codes: list[ColumnCode], dummy: bool = False) -> None:
    """400 when MWEM's histogram updates exceed MAX_MWEM_WORK (public inputs only)."""
    factor, iterations = int(params["split_factor"]), int(params["iterations"])
    per_cell = iterations * (
        int(params["q_count"]) + int(params["mult_weights_iterations"]) * (iterations + 1) / 2
    )
    cells = sum(
        math.prod(code.size for code in codes[start : start + factor])
        for start in range(0, len(codes), factor)
    )
    _refuse_work("mwem", cells * per_cell, dummy, "histogram cell updates",
                 "iterations, q_count, mult_weights_iterations, split_factor or bins")  # fmt: skip


def parse_condition(condition: str) -> Any:
    """The condition as snsynth's ``sample_conditional`` reads it: the WHERE clause of
    ``SELECT * FROM DUMMY WHERE <condition>`` (SmartNoise SQL's parser; nothing evaluated)."""
    from snsql.sql.parse import QueryParser

    try:
        query = QueryParser().query(f"SELECT * FROM DUMMY WHERE {condition}")  # noqa: S608
    except Exception:
        query = None
    if query is None or query.where is None or str(query.where.condition).strip() == "":
        raise InvalidQuery(
            "condition must be a SQL WHERE clause over the selected columns, "
            "e.g. \"island = 'Dream' AND body_mass_g > 4000\""
        )
    return query.where.condition


def _check_condition(condition: str, names: list[str]) -> None:
    """The condition parses as a WHERE clause naming only selected columns."""
    from snsql._ast.tokens import Column

    expression = parse_condition(condition)
    used = {str(node.name) for node in expression.find_nodes(Column)}
    unknown = sorted(used - set(names))
    if unknown:
        raise InvalidQuery(f"condition names columns that are not selected: {', '.join(unknown)}")


class SynthEngine:
    """The SmartNoise-Synth engine (see the module docstring)."""

    name = NAME
    reports_progress = True

    def parse(self, body: dict[str, Any]) -> SynthBody:
        validation.refuse_unknown(body, FIELDS | COMMON_FIELDS)
        synth = body.get("synth_name")
        if not isinstance(synth, str):
            raise InvalidRequest("synth_name is required: one of " + ", ".join(SYNTHS))
        synth = synth.lower()
        if synth not in SYNTHS:
            reason = f" ({LOMAS_ONLY[synth]})" if synth in LOMAS_ONLY else ""
            raise UnsupportedSynthesizer(
                f"synthesizer {str(body.get('synth_name'))[:40]!r} is not supported{reason}; "
                f"supported: {', '.join(SYNTHS)}"
            )
        if body.get("return_model") not in (None, False):
            raise InvalidQuery(
                "return_model: no model object crosses the wire; the release is nb_samples "
                "sampled rows (ask for more rows instead)"
            )
        epsilon = float(validation.epsilon(body.get("epsilon")))
        if synth == "mwem":
            raw_delta = body.get("delta")
            if raw_delta is not None and validation.delta(raw_delta) != 0:
                raise InvalidQuery("mwem is ε-DP: delta must be null or 0")
            delta = 0.0
        else:
            raw = body.get("delta")
            delta = DEFAULT_DELTA if raw is None else float(validation.delta(raw, positive=True))
        raw_cols = body.get("select_cols")
        columns: list[str] | None = None
        if raw_cols is not None and raw_cols != []:  # Lomas: [] means every column
            if not (isinstance(raw_cols, list) and all(isinstance(c, str) for c in raw_cols)):
                raise InvalidRequest("select_cols must be a list of column names")
            if len(set(raw_cols)) != len(raw_cols):
                raise InvalidRequest("select_cols names a column twice")
            columns = list(raw_cols)
        params_in = body.get("synth_params") or {}
        if not isinstance(params_in, dict):
            raise InvalidQuery("synth_params must be an object")
        allowed = SYNTHS[synth]
        unknown = sorted(set(params_in) - set(allowed))
        if unknown:
            raise InvalidQuery(
                f"synth_params ({synth}): parameters not allowed: {', '.join(unknown)[:200]} "
                f"(allowed: {', '.join(allowed)})"
            )
        params = {
            key: _integer(value, f"synth_params.{key}", allowed[key])
            for key, value in params_in.items()
        }
        raw_n = body.get("nb_samples", DEFAULT_SAMPLES)
        if isinstance(raw_n, bool) or not isinstance(raw_n, int) or not 1 <= raw_n <= MAX_SAMPLES:
            raise InvalidQuery(f"nb_samples must be an integer from 1 to {MAX_SAMPLES}")
        condition = body.get("condition")
        if condition == "":
            condition = None
        if condition is not None and not (
            isinstance(condition, str) and len(condition) <= MAX_CONDITION_CHARS
        ):
            raise InvalidQuery(f"condition must be a string of at most {MAX_CONDITION_CHARS} chars")
        if not installed():
            raise EngineRefused(
                "the smartnoise_synth engine's libraries (smartnoise-synth, mbi, jax) are not "
                "installed in this deployment"
            )
        dummy = body.get("dummy") is True  # the service checks the field's type
        return SynthBody(synth, epsilon, delta, columns, params, int(raw_n), condition, dummy)

    def cost(self, dataset: Dataset, request: SynthBody) -> PrivacyCost:
        return request.check(dataset.metadata).price()

    def execute(
        self,
        loaded: LoadedDataset,
        request: SynthBody,
        progress: Callable[[float], None] | None = None,
    ) -> dict[str, Any]:
        from chalicelib.engines.synth_fit import synthesize

        checked = request.check(loaded.metadata)
        return synthesize(loaded.frame, loaded.metadata, checked, progress)


def price_of(epsilon: float, delta: float) -> PrivacyCost:
    """What a request of (ε, δ) is charged before rounding up (exact binary values)."""
    return PrivacyCost(epsilon=exact_decimal(epsilon), delta=exact_decimal(delta))


ENGINE = SynthEngine()
