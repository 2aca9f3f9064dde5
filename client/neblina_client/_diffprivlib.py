"""DiffPrivLib pipelines on the wire, and the fitted models rebuilt from the server's JSON.

Needs the ``diffprivlib`` extra (``pip install "neblina-client[diffprivlib]"``: diffprivlib
0.6.6 with scikit-learn < 1.8 and SciPy < 1.18, the versions its LogisticRegression runs
with). diffprivlib and scikit-learn are imported inside the functions only.

:func:`pipeline_steps` writes a scikit-learn ``Pipeline`` of diffprivlib objects (or one
object, or a list) as the server's allowlisted JSON: each step's class name and its
non-default parameters among the ones the server accepts. :func:`rebuild` turns the
server's release (parameters only) back into a fitted ``Pipeline`` of the same diffprivlib
classes: ``predict``, ``predict_proba``, ``transform`` and ``score`` work on your own rows.
No model object crosses the wire either way.
"""

from __future__ import annotations

from typing import Any

# The parameters the server accepts per class (chalicelib/engines/diffprivlib_engine.py).
ALLOWED: dict[str, tuple[str, ...]] = {
    "StandardScaler": ("epsilon", "bounds", "with_mean", "with_std"),
    "PCA": ("epsilon", "n_components", "data_norm", "centered", "bounds"),
    "LogisticRegression": ("epsilon", "data_norm", "tol", "C", "fit_intercept", "max_iter"),
    "LinearRegression": ("epsilon", "bounds_X", "bounds_y", "fit_intercept"),
    "GaussianNB": ("epsilon", "bounds", "priors", "var_smoothing"),
    "DecisionTreeClassifier": ("epsilon", "bounds", "max_depth", "classes"),
    "RandomForestClassifier": ("epsilon", "bounds", "max_depth", "n_estimators", "classes"),
    "KMeans": ("epsilon", "bounds", "n_clusters"),
}
# Parameters that never go to the server (the server keeps its own accountant; it copies).
IGNORED = frozenset({"accountant", "copy", "copy_X", "verbose", "n_jobs", "warm_start"})


def _plain(value: Any) -> Any:
    """A parameter value as JSON: arrays and tuples become lists, numpy numbers Python ones."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _steps_of(pipeline: Any) -> list[tuple[str, Any]]:
    if hasattr(pipeline, "steps"):
        return [(str(name), step) for name, step in pipeline.steps]
    items = pipeline if isinstance(pipeline, (list, tuple)) else [pipeline]
    return [(type(step).__name__.lower(), step) for step in items]


def pipeline_steps(pipeline: Any) -> list[dict[str, Any]]:
    """The server's JSON for ``pipeline`` (a Pipeline, one diffprivlib object, or a list)."""
    steps: list[dict[str, Any]] = []
    for name, step in _steps_of(pipeline):
        kind = type(step).__name__
        module = type(step).__module__
        if not module.startswith("diffprivlib.") or kind not in ALLOWED:
            raise TypeError(
                f"step {name!r} is a {module}.{kind}: the server fits only these diffprivlib "
                f"classes: {', '.join(ALLOWED)}"
            )
        defaults = type(step)().get_params(deep=False)
        params: dict[str, Any] = {}
        for key, value in step.get_params(deep=False).items():
            if key == "random_state":
                if value is not None:
                    raise ValueError(
                        f"step {name!r}: random_state must be None (the server draws the noise "
                        "from the operating system's randomness)"
                    )
            elif key in ALLOWED[kind]:
                if value is not None:
                    params[key] = _plain(value)
            elif key not in IGNORED and _plain(value) != _plain(defaults.get(key)):
                raise ValueError(f"step {name!r}: the server does not accept {kind}.{key}")
        steps.append({"step": kind, "params": params})
    return steps


# The allowlisted classes whose fit takes no target (a target column is refused for them).
UNSUPERVISED = frozenset({"StandardScaler", "PCA", "KMeans"})


def step_classes(pipeline: Any) -> list[str]:
    """The class names of the pipeline's steps, in order."""
    return [type(step).__name__ for _, step in _steps_of(pipeline)]


def step_names(pipeline: Any) -> list[str]:
    """The names of the pipeline's steps (kept when the fitted pipeline is rebuilt)."""
    return [name for name, _ in _steps_of(pipeline)]


def _tree(classifier: Any, data: dict[str, Any], n_features: int, n_classes: int) -> None:
    import numpy as np
    from sklearn.tree._tree import NODE_DTYPE, Tree

    count = len(data["left"])
    nodes = np.zeros(count, dtype=NODE_DTYPE)
    nodes["left_child"] = data["left"]
    nodes["right_child"] = data["right"]
    nodes["feature"] = data["feature"]
    nodes["threshold"] = data["threshold"]
    values = np.zeros((count, 1, n_classes))
    for node, cls in enumerate(data["leaf_class"]):
        if cls >= 0:
            values[node, 0, cls] = 1
    tree = Tree(n_features, np.array([n_classes], dtype=np.intp), 1)
    tree.__setstate__(
        {"max_depth": data["max_depth"], "node_count": count, "nodes": nodes, "values": values}
    )
    classifier.tree_ = tree
    classifier.n_outputs_ = 1
    classifier.n_features_in_ = n_features
    classifier.n_classes_ = n_classes


def rebuild(release: dict[str, Any], names: list[str] | None = None) -> Any:
    """A fitted scikit-learn ``Pipeline`` of diffprivlib objects from the server's release."""
    import diffprivlib.models as models
    import numpy as np
    from sklearn.pipeline import Pipeline

    classes = None if release.get("classes") is None else np.array(release["classes"])
    n_features = len(release["feature_columns"])
    fitted_steps = []
    for index, step in enumerate(release["steps"]):
        kind, params, fitted = step["step"], dict(step["params"]), step["fitted"]
        for key in ("bounds", "bounds_X"):
            if key in params:
                params[key] = (np.array(params[key][0]), np.array(params[key][1]))
        if "bounds_y" in params:
            params["bounds_y"] = (params["bounds_y"][0][0], params["bounds_y"][1][0])
        if kind in ("DecisionTreeClassifier", "RandomForestClassifier"):
            params["classes"] = classes
        model = getattr(models, kind)(**params)
        model.n_features_in_ = n_features
        if kind in ("DecisionTreeClassifier", "RandomForestClassifier"):
            assert classes is not None
            trees = [fitted["tree"]] if kind == "DecisionTreeClassifier" else fitted["trees"]
            estimators = []
            for data in trees:
                tree = (
                    model if kind == "DecisionTreeClassifier" else models.DecisionTreeClassifier()
                )
                _tree(tree, data, n_features, len(classes))
                tree.classes_ = classes
                estimators.append(tree)
            if kind == "RandomForestClassifier":
                model.estimators_ = estimators
                model.n_outputs_ = 1
                model.n_classes_ = len(classes)
                model.estimator_ = models.DecisionTreeClassifier()
        else:
            for key, value in fitted.items():
                setattr(model, key, None if value is None else np.asarray(value, dtype=float))
            if "n_samples_seen_" in fitted:
                model.n_samples_seen_ = int(fitted["n_samples_seen_"])
            if "n_samples_" in fitted:
                model.n_samples_ = int(fitted["n_samples_"])
                model.n_components_ = len(fitted["components_"])
                model.noise_variance_ = float(fitted["noise_variance_"])
            if kind == "KMeans":
                model._n_threads = 1
                model.n_clusters = len(fitted["cluster_centers_"])
            if kind == "LinearRegression":
                model.intercept_ = float(np.ravel(model.intercept_)[0])
        if classes is not None and kind in (
            "LogisticRegression",
            "GaussianNB",
            "RandomForestClassifier",
            "DecisionTreeClassifier",
        ):
            model.classes_ = classes
        if kind == "GaussianNB":
            model.epsilon_ = float(params.get("var_smoothing", 1e-9))
        if kind == "PCA":
            n_features = model.n_components_
        name = names[index] if names and index < len(names) else kind.lower()
        fitted_steps.append((name, model))
    return Pipeline(fitted_steps)
