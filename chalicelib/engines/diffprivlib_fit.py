"""The fit of a checked DiffPrivLib request on loaded rows (worker side: imports sklearn).

See :mod:`chalicelib.engines.diffprivlib_engine` for the request, the bounds rule, the price
and the neighbouring argument; this module prepares the rows, fits the steps with one
``BudgetAccountant``, proves the spend equals the price and exports the fitted parameters as
JSON. Two diffprivlib classes are subclassed so that a classifier's classes are always the
metadata's: diffprivlib's ``LogisticRegression`` takes them from ``np.unique(y)`` and its
``GaussianNB`` fits only the classes present, so a class absent from the data would show
(no coefficients, a prior of exactly 0) in the release.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
from diffprivlib.accountant import BudgetAccountant
from diffprivlib.mechanisms import Geometric, GeometricTruncated
from diffprivlib.models import (
    PCA,
    DecisionTreeClassifier,
    GaussianNB,
    KMeans,
    LinearRegression,
    LogisticRegression,
    RandomForestClassifier,
    StandardScaler,
)
from diffprivlib.models.logistic_regression import _logistic_regression_path
from diffprivlib.utils import DiffprivlibCompatibilityWarning, PrivacyLeakWarning
from sklearn.utils.validation import validate_data
from threadpoolctl import threadpool_limits

from chalicelib.engines.diffprivlib_engine import DiffPrivLibRequest, steps_epsilon
from chalicelib.models import exact_decimal


class PublicClassesLogisticRegression(LogisticRegression):  # type: ignore[misc]
    """diffprivlib's LogisticRegression with ``classes_`` from the metadata, not the data.

    ``fit`` is diffprivlib 0.6.6's with two changes: the classes are ``public_classes``
    (integer codes 0..k-1), and the per-class fits run in this process (no ``n_jobs``).
    A class absent from the rows still gets its own noisy one-vs-rest fit.
    """

    def __init__(self, *, public_classes: int = 2, **params: Any) -> None:
        super().__init__(**params)
        self.public_classes = public_classes

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> PublicClassesLogisticRegression:
        self.accountant.check(self.epsilon, 0)  # parameters: checked by the engine's parse
        random_state = self.random_state
        X, y = validate_data(self, X, y, dtype=float, order="C")
        self.classes_ = np.arange(self.public_classes)
        n_features = X.shape[1]
        X = self._clip_to_norm(X, self.data_norm)
        classes = self.classes_[1:] if self.public_classes == 2 else self.classes_
        n_fits = len(classes)
        fits = [
            _logistic_regression_path(
                X, y, epsilon=self.epsilon / n_fits, data_norm=self.data_norm, pos_class=cls,
                Cs=[self.C], fit_intercept=self.fit_intercept, max_iter=self.max_iter,
                tol=self.tol, verbose=0, coef=None, random_state=random_state,
                check_input=False,
            )
            for cls in classes
        ]  # fmt: skip
        coefs = np.asarray([coef for coef, _, _ in fits])
        coefs = coefs.reshape(n_fits, n_features + int(self.fit_intercept))
        if self.fit_intercept:
            self.intercept_ = coefs[:, -1]
            self.coef_ = coefs[:, :-1]
        else:
            self.intercept_ = np.zeros(n_fits)
            self.coef_ = coefs
        self.accountant.spend(self.epsilon, 0)
        return self


class PublicClassesGaussianNB(GaussianNB):  # type: ignore[misc]
    """diffprivlib's GaussianNB fitting every class of the metadata, present or not.

    diffprivlib 0.6.6's ``_partial_fit`` loops over ``np.unique(y)``; here over all classes
    (codes 0..k-1), each with a noisy count of at least 1 (as diffprivlib's own counts),
    so an absent class gets noisy means and variances like the others.
    """

    def __init__(self, *, public_classes: int = 2, **params: Any) -> None:
        super().__init__(**params)
        self.public_classes = public_classes

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> PublicClassesGaussianNB:
        self.accountant.check(self.epsilon, 0)
        random_state = self.random_state
        X, y = validate_data(self, X, y)
        bounds = self._check_bounds(self.bounds, shape=X.shape[1])  # type: ignore[has-type]
        self.bounds = bounds
        X = self._clip_to_bounds(X, bounds)
        self.epsilon_ = self.var_smoothing
        self.classes_ = np.arange(self.public_classes)
        n_classes, n_features = self.public_classes, X.shape[1]
        self.theta_ = np.zeros((n_classes, n_features))
        self.var_ = np.zeros((n_classes, n_features))
        self.class_count_ = np.zeros(n_classes, dtype=np.float64)
        counts = self._public_class_counts(y, random_state)
        for code in range(n_classes):
            theta, var = self._update_mean_variance(
                0, self.theta_[code, :], self.var_[code, :], X[y == code, :],
                random_state=random_state, n_noisy=counts[code],
            )  # fmt: skip
            self.theta_[code, :] = theta
            self.var_[code, :] = var
            self.class_count_[code] = counts[code]
        self.var_[:, :] += self.epsilon_
        if self.priors is not None:
            self.class_prior_ = np.asarray(self.priors, dtype=np.float64)
        else:
            self.class_prior_ = self.class_count_ / self.class_count_.sum()
        self.accountant.spend(self.epsilon, 0)
        return self

    def _public_class_counts(self, y: Any, random_state: Any) -> Any:
        """diffprivlib's ``_noisy_class_counts`` over every class (ε/3, sum forced to n)."""
        n_total = y.shape[0]
        mech = GeometricTruncated(
            epsilon=self.epsilon / 3, sensitivity=1, lower=1, upper=n_total,
            random_state=random_state,
        )  # fmt: skip
        counts = np.array([mech.randomise(int((y == c).sum())) for c in range(self.public_classes)])
        order = np.argsort(counts)
        i = 0 if counts.sum() > n_total else len(counts) - 1
        while np.sum(counts) != n_total:
            j = order[i]
            sign = np.sign(n_total - counts.sum())
            counts[j] = np.clip(counts[j] + sign, 1, n_total)
            i = (i - sign) % len(counts)
        return counts


def _fresh_state() -> np.random.RandomState:
    """A generator for one fit, seeded with 128 bits from the OS's CSPRNG."""
    return np.random.RandomState(np.random.MT19937(np.random.SeedSequence(secrets.randbits(128))))


def _public_fill(spec: dict[str, Any]) -> float:
    """What a missing feature becomes: the centre of its declared range (never the data's)."""
    if spec["type"] == "boolean":
        return 0.0
    low = spec["lower"] if "lower" in spec else min(spec["categories"])
    high = spec["upper"] if "upper" in spec else max(spec["categories"])
    centre = (float(low) + float(high)) / 2
    return float(math.floor(centre)) if spec["type"] == "int" else centre


def prepare(
    frame: pd.DataFrame, metadata: dict[str, Any], request: DiffPrivLibRequest, rng: Any
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]:
    """Features (and target codes) of exactly ``rows`` rows, in a random order.

    Rows whose target is missing are dropped; missing features are dropped (``drop``) or
    filled with the centre of the column's declared range (every other strategy). Then a
    random ``rows`` of them are kept, or public filler rows are added up to ``rows``.
    """
    columns = metadata["columns"]
    features = list(request.feature_columns)
    data = frame[features].astype("float64")  # booleans become 0/1, missing NaN
    keep = np.ones(len(frame), dtype=bool)
    target = None
    if request.target_column is not None:
        raw = frame[request.target_column]
        keep &= raw.notna().to_numpy()
        if request.classes is not None:
            codes = {value: code for code, value in enumerate(request.classes)}
            target = raw.map(lambda v: codes.get(v, -1) if pd.notna(v) else -1).to_numpy()
            keep &= target >= 0
        else:
            target = raw.astype("float64").to_numpy()
    if request.imputer_strategy == "drop":
        keep &= data.notna().all(axis=1).to_numpy()
    else:
        data = data.fillna({name: _public_fill(columns[name]) for name in features})
    X = data.to_numpy()[keep]
    y = None if target is None else target[keep]
    size = int(metadata["rows"])
    if len(X) > size:
        chosen = rng.choice(len(X), size=size, replace=False)
        X, y = X[chosen], (None if y is None else y[chosen])
    elif len(X) < size:
        missing = size - len(X)
        low = np.array([_range(columns[name])[0] for name in features])
        high = np.array([_range(columns[name])[1] for name in features])
        X = np.vstack([X, rng.uniform(low, high, size=(missing, len(features)))])
        if y is not None:
            if request.classes is not None:
                filler = rng.integers(0, len(request.classes), size=missing)
            else:
                assert request.target_bounds is not None
                filler = rng.uniform(*request.target_bounds, size=missing)
            y = np.concatenate([y, filler])
    order = rng.permutation(size)
    X = X[order]
    if y is not None:
        y = y[order].astype("int64" if request.classes is not None else "float64")
    return X, y


def _range(spec: dict[str, Any]) -> tuple[float, float]:
    if spec["type"] == "boolean":
        return 0.0, 1.0
    if "lower" in spec:
        return float(spec["lower"]), float(spec["upper"])
    return float(min(spec["categories"])), float(max(spec["categories"]))


def build(
    name: str, params: dict[str, Any], classes: int, accountant: BudgetAccountant, state: Any
) -> Any:
    """The diffprivlib object of one step (bounds as (lower, upper) arrays)."""
    kwargs = dict(params)
    for key in ("bounds", "bounds_X", "bounds_y"):
        if key in kwargs:
            lower, upper = kwargs[key]
            kwargs[key] = (np.array(lower, dtype=float), np.array(upper, dtype=float))
    if "bounds_y" in kwargs:
        kwargs["bounds_y"] = (float(kwargs["bounds_y"][0][0]), float(kwargs["bounds_y"][1][0]))
    common = {"accountant": accountant, "random_state": state}
    if name == "StandardScaler":
        return StandardScaler(**kwargs, **common)
    if name == "PCA":
        return PCA(**kwargs, **common)
    if name == "LogisticRegression":
        return PublicClassesLogisticRegression(public_classes=classes, **kwargs, **common)
    if name == "LinearRegression":
        return LinearRegression(**kwargs, **common)
    if name == "GaussianNB":
        return PublicClassesGaussianNB(public_classes=classes, **kwargs, **common)
    if name == "DecisionTreeClassifier":
        return DecisionTreeClassifier(classes=np.arange(classes), **kwargs, **common)
    if name == "RandomForestClassifier":
        return RandomForestClassifier(classes=np.arange(classes), **kwargs, **common)
    if name == "KMeans":
        return KMeans(**kwargs, **common)
    raise ValueError(f"step {name} is not allowed")  # pragma: no cover - parse refuses it


def _floats(value: Any) -> Any:
    array = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(array)):
        raise ValueError("a fitted parameter is not finite")
    return array.tolist()


def _tree(tree: Any) -> dict[str, Any]:
    """A fitted tree: its (data-independent) splits and each leaf's noisy class."""
    state = tree.tree_.__getstate__()
    nodes, values = state["nodes"], state["values"]
    leaf = nodes["left_child"] == -1
    return {
        "max_depth": int(state["max_depth"]),
        "left": nodes["left_child"].astype(int).tolist(),
        "right": nodes["right_child"].astype(int).tolist(),
        "feature": nodes["feature"].astype(int).tolist(),
        "threshold": _floats(nodes["threshold"]),
        "leaf_class": np.where(leaf, values[:, 0, :].argmax(axis=1), -1).astype(int).tolist(),
    }


def export(name: str, model: Any, rows: int) -> dict[str, Any]:
    """The released parameters of a fitted step (each a DP output, or public)."""
    if name == "StandardScaler":
        return {
            "mean_": None if model.mean_ is None else _floats(model.mean_),
            "var_": None if model.var_ is None else _floats(model.var_),
            "scale_": None if model.scale_ is None else _floats(model.scale_),
            "n_samples_seen_": rows,
        }
    if name == "PCA":
        return {
            "components_": _floats(model.components_),
            "mean_": _floats(model.mean_),
            "explained_variance_": _floats(model.explained_variance_),
            "singular_values_": _floats(model.singular_values_),
            "noise_variance_": float(model.noise_variance_),
            "n_samples_": rows,
        }
    if name in ("LogisticRegression", "LinearRegression"):
        return {"coef_": _floats(model.coef_), "intercept_": _floats(model.intercept_)}
    if name == "GaussianNB":
        return {
            "theta_": _floats(model.theta_),
            "var_": _floats(model.var_),
            "class_prior_": _floats(model.class_prior_),
            "class_count_": _floats(model.class_count_),
        }
    if name == "DecisionTreeClassifier":
        return {"tree": _tree(model)}
    if name == "RandomForestClassifier":
        return {"trees": [_tree(tree) for tree in model.estimators_]}
    if name == "KMeans":
        return {"cluster_centers_": _floats(model.cluster_centers_)}
    raise ValueError(f"step {name} is not allowed")  # pragma: no cover


def spent(accountant: BudgetAccountant) -> tuple[Decimal, Decimal]:
    """The accountant's spend: the exact sums of the (ε, δ) each step recorded."""
    epsilon = sum((exact_decimal(float(e)) for e, _ in accountant.spent_budget), Decimal(0))
    delta = sum((exact_decimal(float(d)) for _, d in accountant.spent_budget), Decimal(0))
    return epsilon, delta


def fit(
    frame: pd.DataFrame,
    metadata: dict[str, Any],
    request: DiffPrivLibRequest,
    accountant: BudgetAccountant | None = None,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Fit the pipeline once on ``frame``; the release (parameters only, no score).

    ``progress`` (a job's) is told the fraction of the steps fitted after each step: a
    public number (it counts steps of the request, whatever the rows).
    """
    rng = np.random.default_rng(secrets.randbits(128))
    X, y = prepare(frame, metadata, request, rng)
    X_test: np.ndarray[Any, Any] | None = None
    y_test: np.ndarray[Any, Any] | None = None
    if request.test_rows:  # the rows are in a random order: the last ones are held out
        assert y is not None
        X, X_test = X[: -request.test_rows], X[-request.test_rows :]
        y, y_test = y[: -request.test_rows], y[-request.test_rows :]
    accountant = accountant if accountant is not None else BudgetAccountant()
    classes = len(request.classes) if request.classes is not None else 0
    rows = len(X)  # the public rows (less the public test rows of a scored fit)
    released: list[dict[str, Any]] = []
    fitted: list[Any] = []
    # One BLAS thread: L-BFGS on a few features is 10x slower with a thread pool on 2 cores.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # a leak diffprivlib would only warn about is an error here (parse prevents them)
        warnings.simplefilter("error", PrivacyLeakWarning)
        warnings.simplefilter("error", DiffprivlibCompatibilityWarning)
        steps = request.steps
        for index, step in enumerate(steps):
            name, params = step["step"], step["params"]
            model = build(name, params, classes, accountant, _fresh_state())
            fitted.append(model)
            if index < len(steps) - 1 or name in ("StandardScaler", "PCA"):
                X = model.fit_transform(X)
            elif y is not None:
                model.fit(X, y)
            else:
                model.fit(X)
            released.append({"step": name, "params": params, "fitted": export(name, model, rows)})
            if progress is not None:
                progress((index + 1) / len(steps))
        score = None
        if X_test is not None and y_test is not None and request.score_epsilon is not None:
            score = dp_accuracy(fitted, X_test, y_test, request.score_epsilon, accountant)
    epsilon, delta = spent(accountant)
    if epsilon != steps_epsilon(request.epsilons()) or delta != 0:
        raise RuntimeError(f"the fit spent ({epsilon}, {delta}), not its price")
    release: dict[str, Any] = {
        "type": "model",
        "library": "diffprivlib",
        "feature_columns": list(request.feature_columns),
        "target_column": request.target_column,
        "classes": None if request.classes is None else list(request.classes),
        "steps": released,
    }
    if score is not None:
        release["score"] = score
    return release


def noisy_count(count: int, total: int, epsilon: float) -> int:
    """``count`` (sensitivity 1) plus two-sided geometric noise at ``epsilon``, then clamped to
    0..``total`` (post-processing)."""
    mechanism = Geometric(epsilon=epsilon, sensitivity=1, random_state=_fresh_state())
    return int(min(max(mechanism.randomise(int(count)), 0), total))


def dp_accuracy(
    models: list[Any],
    X_test: np.ndarray[Any, Any],
    y_test: np.ndarray[Any, Any],
    epsilon: float,
    accountant: BudgetAccountant,
) -> dict[str, Any]:
    """The fitted pipeline's accuracy on the held-out rows, as a DP release.

    The number of correct predictions changes by at most 1 when one held-out row is replaced
    (the model does not depend on the held-out rows), so it gets geometric noise at
    ``epsilon`` (sensitivity 1); divided by the public number of held-out rows.
    """
    X = X_test
    for model in models[:-1]:
        X = model.transform(X)
    correct = int((models[-1].predict(X) == y_test).sum())
    total = len(y_test)
    released = noisy_count(correct, total, epsilon)
    accountant.spend(epsilon, 0)
    return {
        "accuracy": released / total,
        "test_rows": total,
        "epsilon": epsilon,
        "mechanism": "geometric noise of scale 1/epsilon on the count of correct predictions",
    }
