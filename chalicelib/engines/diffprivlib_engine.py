"""DiffPrivLib engine: scikit-learn pipelines of diffprivlib models, described in JSON.

Request (docs/diffprivlib.md)::

    {"engine": "diffprivlib",
     "feature_columns": ["bill_length_mm", "flipper_length_mm"],
     "target_column": "species",            # supervised final steps only
     "imputer_strategy": "drop",            # drop | mean | median | most_frequent
     "pipeline": [{"step": "StandardScaler", "params": {"epsilon": 0.5}},
                  {"step": "LogisticRegression", "params": {"epsilon": 1.0}}]}

Nothing is deserialised: each step names a class of :data:`STEPS` and its ``params`` are
checked one by one against that step's allowlist (numbers, booleans, bounds; no callables,
no pickles, no ``random_state``: a researcher who knew the seed could subtract the noise).
This module parses and prices with the standard library only; :mod:`diffprivlib_fit`
(scikit-learn, diffprivlib) is imported by :meth:`DiffPrivLibEngine.execute` alone.

Bounds come from the metadata, never from the data
    Every diffprivlib step clips its input to bounds (``bounds``, ``bounds_X``, ``bounds_y``)
    or to a norm (``data_norm``), and without them it would compute them from the data and
    warn ``PrivacyLeakWarning``. Here a missing bound is filled from the metadata when the
    step reads the feature columns as loaded (each column clamped to its declared
    ``lower``..``upper`` by the loader); after a step whose output range the metadata does
    not give (``StandardScaler``, ``PCA``) the request must state it, or it is refused with
    a 400 before anything is read. Bounds the request states are used as given: the step
    clips to them, so they cost privacy nothing whatever the data are.

Price
    Every allowlisted step spends exactly its ``epsilon`` (δ = 0) on the accountant, so the
    price is ``max_ids`` × the sum of the steps' ε, each at the exact binary value of the
    float the step is built with. ``execute`` checks after the fit that the accountant's
    spend equals that sum to the last digit (and fails the query otherwise); the tests do
    the same for each model.

Score
    None by default. With ``score_epsilon`` (a classifier only), ``test_size`` of the public
    rows are held out, the steps fit on the others, and the count of correct predictions on
    the held-out rows is released with geometric noise at that ε (sensitivity 1), charged on
    top (docs/diffprivlib.md, "Score").

Neighbouring
    diffprivlib's guarantees are for datasets that differ in one row replaced by another, at
    a known row count. Neblina's are for one individual added or removed. So the fit always
    sees exactly the metadata's public ``rows`` rows: a random subset of that many when
    there are more, the rows plus random public filler rows (uniform in the bounds, a
    random class) when there are fewer, in a random order. Adding or removing one row then
    changes at most one row of what the fit sees (docs/diffprivlib.md proves it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from chalicelib import validation
from chalicelib.engines import COMMON_FIELDS
from chalicelib.errors import EngineRefused, InvalidQuery, InvalidRequest
from chalicelib.models import Dataset, PrivacyCost, exact_decimal

if TYPE_CHECKING:
    from chalicelib.datasets import LoadedDataset

NAME = "diffprivlib"
FIELDS = {
    "pipeline",
    "feature_columns",
    "target_column",
    "imputer_strategy",
    "score_epsilon",
    "test_size",
}
DEFAULT_TEST_SIZE = 0.2
MIN_TEST_ROWS = 10  # fewer: the score's noise (scale 1/(rows · ε)) swamps any accuracy
IMPUTERS = ("drop", "mean", "median", "most_frequent")
MAX_STEPS = 8
MAX_FEATURES = 64


@dataclass(frozen=True)
class Param:
    """One allowlisted parameter: ``kind`` is number, integer, boolean, bounds or classes."""

    kind: str
    lower: float = -math.inf
    upper: float = math.inf
    include_lower: bool = True


EPS = Param("number", 0.0, math.inf, include_lower=False)


@dataclass(frozen=True)
class Step:
    """An allowlisted diffprivlib class: its parameters and its role in a pipeline."""

    params: dict[str, Param]
    role: str  # "transformer" | "classifier" | "regressor" | "clusterer"
    bounds: tuple[str, ...] = ()  # parameters that are per-feature bounds of the step's input
    norm: bool = False  # has data_norm (the L2 norm its input rows are clipped to)


STEPS: dict[str, Step] = {
    "StandardScaler": Step(
        {"epsilon": EPS, "bounds": Param("bounds"), "with_mean": Param("boolean"),
         "with_std": Param("boolean")},
        "transformer", bounds=("bounds",),
    ),
    "PCA": Step(
        {"epsilon": EPS, "n_components": Param("integer", 1, MAX_FEATURES),
         "data_norm": Param("number", 0.0, math.inf, include_lower=False),
         "centered": Param("boolean"), "bounds": Param("bounds")},
        "transformer", bounds=("bounds",), norm=True,
    ),
    "LogisticRegression": Step(
        {"epsilon": EPS, "data_norm": Param("number", 0.0, math.inf, include_lower=False),
         "tol": Param("number", 0.0, 1.0, include_lower=False),
         "C": Param("number", 0.0, 1e6, include_lower=False),
         "fit_intercept": Param("boolean"), "max_iter": Param("integer", 1, 1000)},
        "classifier", norm=True,
    ),
    "LinearRegression": Step(
        {"epsilon": EPS, "bounds_X": Param("bounds"), "bounds_y": Param("bounds"),
         "fit_intercept": Param("boolean")},
        "regressor", bounds=("bounds_X",),
    ),
    "GaussianNB": Step(
        {"epsilon": EPS, "bounds": Param("bounds"), "priors": Param("priors"),
         "var_smoothing": Param("number", 0.0, 1.0)},
        "classifier", bounds=("bounds",),
    ),
    "DecisionTreeClassifier": Step(
        {"epsilon": EPS, "bounds": Param("bounds"), "max_depth": Param("integer", 1, 12),
         "classes": Param("classes")},
        "classifier", bounds=("bounds",),
    ),
    "RandomForestClassifier": Step(
        {"epsilon": EPS, "bounds": Param("bounds"), "max_depth": Param("integer", 1, 12),
         "n_estimators": Param("integer", 1, 100), "classes": Param("classes")},
        "classifier", bounds=("bounds",),
    ),
    "KMeans": Step(
        {"epsilon": EPS, "bounds": Param("bounds"), "n_clusters": Param("integer", 1, 100)},
        "clusterer", bounds=("bounds",),
    ),
}  # fmt: skip
# diffprivlib's own defaults where a request leaves a parameter out (what the fit uses).
DEFAULTS: dict[str, dict[str, Any]] = {
    "StandardScaler": {"with_mean": True, "with_std": True},
    "PCA": {"centered": False},
    "LogisticRegression": {"tol": 1e-4, "C": 1.0, "fit_intercept": True, "max_iter": 100},
    "LinearRegression": {"fit_intercept": True},
    "GaussianNB": {"var_smoothing": 1e-9},
    "DecisionTreeClassifier": {"max_depth": 5},
    "RandomForestClassifier": {"max_depth": 5, "n_estimators": 10},
    "KMeans": {"n_clusters": 8},
}
LOMAS_NAMES = {"MinMaxScaler": "diffprivlib offers no MinMaxScaler"}


@dataclass(frozen=True)
class DiffPrivLibRequest:
    """A checked request: columns, imputation and the complete steps (bounds filled in)."""

    feature_columns: tuple[str, ...]
    target_column: str | None
    imputer_strategy: str
    steps_json: str  # [{"step": name, "params": {...complete...}}, ...], canonical JSON
    classes: tuple[Any, ...] | None  # the target's public categories (classifiers)
    target_bounds: tuple[float, float] | None  # regressors
    score_epsilon: float | None = None  # the DP score's ε (classifiers; None: no score)
    test_rows: int = 0  # the public size of the held-out part the score is computed on

    @property
    def steps(self) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = json.loads(self.steps_json)
        return steps

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.steps_json.encode()).hexdigest()

    def canonical(self) -> dict[str, Any]:
        return {
            "feature_columns": list(self.feature_columns),
            "target_column": self.target_column,
            "imputer_strategy": self.imputer_strategy,
            "pipeline": self.steps,
            "score_epsilon": self.score_epsilon,
            "test_rows": self.test_rows,
        }

    def epsilons(self) -> list[float]:
        """The ε each step is built with, in order, then the score's (what each spends)."""
        steps = [float(step["params"]["epsilon"]) for step in self.steps]
        return steps if self.score_epsilon is None else [*steps, self.score_epsilon]


def steps_epsilon(epsilons: list[float]) -> Decimal:
    """The exact sum of the steps' ε (each at its float's exact binary value)."""
    total = Decimal(0)
    for value in epsilons:
        total += exact_decimal(value)
    return total


def _number(value: object, where: str, spec: Param) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidQuery(f"{where} must be a number")
    number = float(value)
    low_ok = number >= spec.lower if spec.include_lower else number > spec.lower
    if not (math.isfinite(number) and low_ok and number <= spec.upper):
        bracket = "[" if spec.include_lower else "("
        raise InvalidQuery(
            f"{where} must be a finite number in {bracket}{spec.lower}, {spec.upper}]"
        )
    return number


def _bounds(value: object, where: str, width: int) -> list[list[float]]:
    """``[lower, upper]``: two numbers, or two lists of ``width`` numbers; lower < upper."""
    if not (isinstance(value, list) and len(value) == 2):
        raise InvalidQuery(f"{where} must be [lower, upper]")
    sides: list[list[float]] = []
    for side in value:
        items = side if isinstance(side, list) else [side] * width
        if len(items) != width:
            raise InvalidQuery(f"{where}: each side needs {width} numbers (one per feature)")
        sides.append([_number(item, where, Param("number")) for item in items])
    if any(low >= high for low, high in zip(*sides, strict=True)):
        raise InvalidQuery(f"{where}: each lower bound must be below its upper bound")
    return sides


def _column_range(name: str, spec: dict[str, Any]) -> tuple[float, float]:
    kind = spec["type"]
    if kind == "boolean":
        return 0.0, 1.0
    if kind not in ("int", "float"):
        raise InvalidQuery(
            f"feature column {name!r} is {kind}: features must be int, float or boolean columns"
        )
    if "lower" in spec and "upper" in spec:
        low, high = float(spec["lower"]), float(spec["upper"])
    elif "categories" in spec:
        low, high = float(min(spec["categories"])), float(max(spec["categories"]))
    else:  # pragma: no cover - the metadata validation requires bounds on int/float columns
        raise InvalidQuery(f"feature column {name!r} has no bounds in the metadata")
    if not low < high:
        raise InvalidQuery(f"feature column {name!r}: its metadata bounds are one value")
    return low, high


def _classes(name: str, spec: dict[str, Any]) -> tuple[Any, ...]:
    if spec["type"] == "boolean":
        return (False, True)
    if "categories" not in spec:
        raise InvalidQuery(
            f"target column {name!r} declares no categories: a classifier's classes come "
            "from the metadata (never from the data)"
        )
    classes = tuple(sorted(spec["categories"]))
    if len(classes) < 2:
        raise InvalidQuery(f"target column {name!r} declares fewer than two categories")
    return classes


def _strings(value: object, where: str) -> list[str]:
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise InvalidRequest(f"{where} must be a non-empty list of column names")
    if len(set(value)) != len(value):
        raise InvalidRequest(f"{where} names a column twice")
    return list(value)


def installed() -> bool:
    """True when diffprivlib and scikit-learn can be imported (found, not imported).

    Checked before anything is debited: a process without them (the API package until the
    diffprivlib worker runs the fits) refuses with 422 instead of failing after the read.
    """
    return all(importlib.util.find_spec(name) is not None for name in ("diffprivlib", "sklearn"))


class DiffPrivLibEngine:
    """The DiffPrivLib engine (see the module docstring)."""

    name = NAME
    # A job's fit reports the fraction of its steps fitted (chalicelib/worker.py writes it).
    reports_progress = True

    def parse(self, body: dict[str, Any]) -> DiffPrivLibBody:
        if not installed():
            raise EngineRefused(
                "the diffprivlib engine's libraries (diffprivlib, scikit-learn) are not "
                "installed in this deployment"
            )
        validation.refuse_unknown(body, FIELDS | COMMON_FIELDS)
        features = _strings(body.get("feature_columns"), "feature_columns")
        if len(features) > MAX_FEATURES:
            raise InvalidRequest(f"feature_columns: at most {MAX_FEATURES} columns")
        target = body.get("target_column")
        if target is not None and not isinstance(target, str):
            raise InvalidRequest("target_column must be a column name or null")
        if target is not None and target in features:
            raise InvalidRequest("target_column is also a feature column")
        imputer = body.get("imputer_strategy", "drop")
        if imputer not in IMPUTERS:
            raise InvalidRequest(
                f"imputer_strategy {str(imputer)[:40]!r} is not supported "
                f"(expected one of: {', '.join(IMPUTERS)})"
            )
        score_epsilon: float | None = None
        if body.get("score_epsilon") is not None:
            validation.epsilon(body["score_epsilon"], "score_epsilon")
            score_epsilon = float(body["score_epsilon"])
        test_size = body.get("test_size")
        if test_size is not None and score_epsilon is None:
            raise InvalidRequest("test_size is only for a scored fit (give score_epsilon)")
        if test_size is None:
            test_size = DEFAULT_TEST_SIZE
        if isinstance(test_size, bool) or not isinstance(test_size, int | float):
            raise InvalidRequest("test_size must be a number")
        if not (math.isfinite(test_size) and 0 < test_size < 1):
            raise InvalidRequest("test_size must be a fraction of the rows in (0, 1)")
        pipeline = body.get("pipeline")
        if not (isinstance(pipeline, list) and 1 <= len(pipeline) <= MAX_STEPS):
            raise InvalidRequest(f"pipeline must be a list of 1 to {MAX_STEPS} steps")
        steps: list[tuple[str, dict[str, Any]]] = []
        for index, raw in enumerate(pipeline):
            where = f"pipeline[{index}]"
            if not isinstance(raw, dict) or set(raw) - {"step", "params"} or "step" not in raw:
                raise InvalidQuery(f'{where} must be {{"step": NAME, "params": {{...}}}}')
            name, params = raw["step"], raw.get("params", {})
            if not isinstance(name, str) or name not in STEPS:
                hint = f" ({LOMAS_NAMES[name]})" if name in LOMAS_NAMES else ""
                raise InvalidQuery(
                    f"{where}: step {str(name)[:60]!r} is not allowed{hint} "
                    f"(expected one of: {', '.join(STEPS)})"
                )
            if not isinstance(params, dict):
                raise InvalidQuery(f"{where}.params must be an object")
            unknown = sorted(set(params) - set(STEPS[name].params))
            if unknown:
                raise InvalidQuery(
                    f"{where} ({name}): parameters not allowed: {', '.join(unknown)} "
                    f"(allowed: {', '.join(STEPS[name].params)})"
                )
            if "epsilon" not in params:
                raise InvalidQuery(f"{where} ({name}): epsilon is required")
            validation.epsilon(params["epsilon"], f"{where}.params.epsilon")
            steps.append((name, dict(params)))
        for index, (name, _) in enumerate(steps[:-1]):
            if STEPS[name].role != "transformer":
                raise InvalidQuery(f"pipeline[{index}]: {name} can only be the last step")
        return DiffPrivLibBody(features, target, imputer, steps, score_epsilon, float(test_size))

    def cost(self, dataset: Dataset, request: DiffPrivLibBody) -> PrivacyCost:
        checked = request.check(dataset.metadata)
        return PrivacyCost(
            epsilon=int(dataset.metadata["max_ids"]) * steps_epsilon(checked.epsilons()),
            delta=Decimal(0),
        )

    def execute(
        self,
        loaded: LoadedDataset,
        request: DiffPrivLibBody,
        progress: Callable[[float], None] | None = None,
    ) -> dict[str, Any]:
        from chalicelib.engines.diffprivlib_fit import fit

        checked = request.check(loaded.metadata)
        return fit(loaded.frame, loaded.metadata, checked, progress=progress)


@dataclass(frozen=True)
class DiffPrivLibBody:
    """A request checked for shape; :meth:`check` completes it against the metadata."""

    features: list[str]
    target: str | None
    imputer: str
    steps: list[tuple[str, dict[str, Any]]]
    score_epsilon: float | None = None
    test_size: float = DEFAULT_TEST_SIZE

    def canonical(self) -> dict[str, Any]:
        scored = {} if self.score_epsilon is None else {
            "score_epsilon": self.score_epsilon, "test_size": self.test_size
        }  # fmt: skip
        return {
            "feature_columns": self.features,
            "target_column": self.target,
            "imputer_strategy": self.imputer,
            "pipeline": [{"step": name, "params": params} for name, params in self.steps],
            **scored,
        }

    def check(self, metadata: dict[str, Any]) -> DiffPrivLibRequest:
        """The complete request for this metadata; 400 for anything that would leak."""
        columns = metadata["columns"]
        if not metadata["row_privacy"]:
            raise InvalidQuery(
                "diffprivlib runs only on datasets with row_privacy: true (one row per "
                "individual); this dataset has a private_id column"
            )
        for name in [*self.features, *([self.target] if self.target else [])]:
            if name not in columns:
                raise InvalidQuery(f"no column {name!r} in this dataset")
        ranges: list[tuple[float, float]] | None = [
            _column_range(name, columns[name]) for name in self.features
        ]
        width = len(self.features)
        final = STEPS[self.steps[-1][0]].role
        classes: tuple[Any, ...] | None = None
        target_bounds: tuple[float, float] | None = None
        if final in ("classifier", "regressor"):
            if self.target is None:
                raise InvalidQuery(f"{self.steps[-1][0]} needs a target_column")
            spec = columns[self.target]
            if final == "classifier":
                classes = _classes(self.target, spec)
            else:
                target_bounds = _column_range(self.target, spec)
        elif self.target is not None:
            raise InvalidQuery("target_column is only for a supervised last step")
        complete: list[dict[str, Any]] = []
        rows = int(metadata["rows"])
        test_rows = 0
        if self.score_epsilon is not None:
            if final != "classifier":
                raise InvalidQuery(
                    "score_epsilon: a DP score (accuracy) is computed for a classifier as the "
                    f"last step only, not {self.steps[-1][0]}"
                )
            test_rows = round(self.test_size * rows)
            if test_rows < MIN_TEST_ROWS or rows - test_rows < MIN_TEST_ROWS:
                raise InvalidQuery(
                    f"test_size {self.test_size:g} of rows = {rows} leaves {test_rows} test "
                    f"and {rows - test_rows} training rows: each needs at least {MIN_TEST_ROWS}"
                )
            if self.score_epsilon * test_rows < 1:
                raise InvalidQuery(
                    f"score_epsilon must be at least 1/test rows = {1 / test_rows:.3g} here "
                    "(below that the noise exceeds the whole range of the accuracy)"
                )
            rows -= test_rows  # the steps are fitted on the training part
        for index, (name, given) in enumerate(self.steps):
            where, step = f"pipeline[{index}] ({name})", STEPS[name]
            if float(given["epsilon"]) * rows < 1:
                raise InvalidQuery(
                    f"{where}: epsilon must be at least 1/rows = {1 / rows:.3g} on this dataset "
                    "(below that the noise exceeds the range of what the step estimates, and "
                    "diffprivlib's bounded samplers take minutes)"
                )
            params = {**DEFAULTS.get(name, {})}
            for key, value in given.items():
                spec_ = step.params[key]
                at = f"{where}.{key}"
                if spec_.kind == "number":
                    params[key] = _number(value, at, spec_)
                elif spec_.kind == "integer":
                    if isinstance(value, bool) or not isinstance(value, int):
                        raise InvalidQuery(f"{at} must be an integer")
                    if not spec_.lower <= value <= spec_.upper:
                        raise InvalidQuery(f"{at} must be from {spec_.lower:g} to {spec_.upper:g}")
                    params[key] = value
                elif spec_.kind == "boolean":
                    if not isinstance(value, bool):
                        raise InvalidQuery(f"{at} must be true or false")
                    params[key] = value
                elif spec_.kind == "bounds":
                    params[key] = _bounds(value, at, 1 if key == "bounds_y" else width)
                elif spec_.kind == "priors":
                    params[key] = self._priors(value, at, classes)
                elif spec_.kind == "classes" and (classes is None or value != list(classes)):
                    raise InvalidQuery(
                        f"{at} must be the target's categories from the metadata, in "
                        f"sorted order: {list(classes or [])}"
                    )
            params.pop("classes", None)  # always the metadata's (filled in by the fit)
            for key in step.bounds:
                if key in params:
                    continue
                if ranges is None:
                    raise InvalidQuery(
                        f"{where}: {key} is required here: the input of this step is the "
                        "output of an earlier step whose range the metadata does not give "
                        "(diffprivlib would compute it from the data: PrivacyLeakWarning)"
                    )
                params[key] = [[r[0] for r in ranges], [r[1] for r in ranges]]
            if name == "LinearRegression" and "bounds_y" not in params:
                assert target_bounds is not None
                params["bounds_y"] = [[target_bounds[0]], [target_bounds[1]]]
            if step.norm and "data_norm" not in params:
                if ranges is None:
                    raise InvalidQuery(
                        f"{where}: data_norm is required here: the input of this step is the "
                        "output of an earlier step whose range the metadata does not give "
                        "(diffprivlib would compute it from the data: PrivacyLeakWarning)"
                    )
                params["data_norm"] = math.sqrt(sum(max(abs(a), abs(b)) ** 2 for a, b in ranges))
            if name == "KMeans" and params["n_clusters"] > rows:
                raise InvalidQuery(f"{where}.n_clusters must be at most rows = {rows}")
            if name == "PCA":
                if params.get("n_components", width) > min(width, rows):
                    raise InvalidQuery(
                        f"{where}.n_components must be at most {min(width, rows)} "
                        "(the number of features, and rows)"
                    )
                width = int(params.get("n_components", width))
                params["n_components"] = width
            if step.role == "transformer":
                ranges = None  # StandardScaler and PCA outputs: not bounded by the metadata
            params["epsilon"] = float(given["epsilon"])
            complete.append({"step": name, "params": params})
        text = json.dumps(complete, sort_keys=True, separators=(",", ":"))
        return DiffPrivLibRequest(
            feature_columns=tuple(self.features),
            target_column=self.target,
            imputer_strategy=self.imputer,
            steps_json=text,
            classes=classes,
            target_bounds=target_bounds,
            score_epsilon=self.score_epsilon,
            test_rows=test_rows,
        )

    @staticmethod
    def _priors(value: object, where: str, classes: tuple[Any, ...] | None) -> list[float]:
        if classes is None:  # pragma: no cover - GaussianNB is a classifier
            raise InvalidQuery(f"{where}: priors need a target_column")
        if not (isinstance(value, list) and len(value) == len(classes)):
            raise InvalidQuery(f"{where} must list one prior per class {list(classes)}")
        priors = [_number(v, where, Param("number", 0.0, 1.0)) for v in value]
        if not math.isclose(sum(priors), 1.0):
            raise InvalidQuery(f"{where} must sum to 1")
        return priors


ENGINE = DiffPrivLibEngine()
