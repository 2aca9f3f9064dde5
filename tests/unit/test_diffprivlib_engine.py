"""DiffPrivLib models: priced exactly from the request and metadata, fitted once, rebuilt.

Each allowlisted model is fitted through the service on PENGUIN, charged exactly the sum of
its steps' ε, and the accountant of a real fit spends that price to the last digit; the
client rebuilds the released parameters into a working scikit-learn pipeline. Refusals
(leaks diffprivlib would only warn about, parameters outside the allowlist, bad imputation)
are 400s before any row is read, with nothing debited.
"""

from __future__ import annotations

import math
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from diffprivlib.accountant import BudgetAccountant

from chalicelib.config import from_environ
from chalicelib.datasets import DatasetLoader, coerce_types
from chalicelib.engines.diffprivlib_engine import ENGINE, steps_epsilon
from chalicelib.engines.diffprivlib_fit import fit, prepare, spent
from chalicelib.errors import InvalidQuery, InvalidRequest, NeblinaError, NoGrant
from chalicelib.metadata import validate
from chalicelib.models import Dataset, PrivacyCost, QueryState, User, exact_decimal, utcnow
from chalicelib.service import Service
from chalicelib.storage.memory import MemoryStore
from neblina_client._diffprivlib import pipeline_steps, rebuild

ROOT = Path(__file__).resolve().parents[2]
META = validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))
CSV = ROOT / "localstack/data/penguins.csv"
FRAME = coerce_types(pd.read_csv(CSV), META)
FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
GRANT = PrivacyCost(epsilon=50, delta=0)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

# One pipeline per allowlisted model (target column or None, steps).
MODELS: dict[str, tuple[str | None, list[dict[str, Any]]]] = {
    "StandardScaler": (None, [{"step": "StandardScaler", "params": {"epsilon": 0.7}}]),
    "PCA": (None, [{"step": "PCA", "params": {"epsilon": 0.3, "n_components": 2}}]),
    "LogisticRegression": (
        "species",
        [
            {"step": "StandardScaler", "params": {"epsilon": 0.5}},
            {"step": "LogisticRegression", "params": {"epsilon": 1.0, "data_norm": 2.0}},
        ],
    ),
    "LinearRegression": (
        "body_mass_g",
        [{"step": "LinearRegression", "params": {"epsilon": 0.1}}],
    ),
    "GaussianNB": (
        "species",
        [{"step": "GaussianNB", "params": {"epsilon": 0.2, "priors": [0.4, 0.2, 0.4]}}],
    ),
    "DecisionTreeClassifier": (
        "species",
        [{"step": "DecisionTreeClassifier", "params": {"epsilon": 0.1, "max_depth": 4}}],
    ),
    "RandomForestClassifier": (
        "species",
        [{"step": "RandomForestClassifier", "params": {"epsilon": 0.3, "n_estimators": 5}}],
    ),
    "KMeans": (None, [{"step": "KMeans", "params": {"epsilon": 0.1, "n_clusters": 3}}]),
}


def body(
    steps: list[dict[str, Any]],
    target: str | None = None,
    features: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    features = features or (FEATURES[:3] if target == "body_mass_g" else FEATURES)
    return {
        "engine": "diffprivlib",
        "feature_columns": features,
        "target_column": target,
        "pipeline": steps,
        **extra,
    }


class CountingLoader(DatasetLoader):
    """The real loader, counting reads of private rows."""

    reads = 0

    def load(self, dataset: Dataset) -> Any:
        CountingLoader.reads += 1
        return super().load(dataset)


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    for user in ("alice", "mallory"):
        s.put_user(User(user_id=user, created_at=utcnow()))
    s.put_dataset(Dataset("PENGUIN", str(CSV), META, utcnow()))
    s.put_dataset(Dataset("GHOST", str(ROOT / "no/such/penguins.csv"), META, utcnow()))
    for name in ("PENGUIN", "GHOST"):
        s.create_grant("alice", name, GRANT)
    return s


@pytest.fixture
def service(store: MemoryStore) -> Service:
    settings = from_environ()
    CountingLoader.reads = 0
    return Service(store, settings, CountingLoader(settings))


def remaining(store: MemoryStore, dataset: str = "PENGUIN") -> PrivacyCost:
    grant = store.get_grant("alice", dataset)
    assert grant is not None
    return grant.remaining


@pytest.mark.parametrize("model", sorted(MODELS))
def test_each_model_is_charged_its_steps_epsilon_and_rebuilt_by_the_client(
    service: Service, store: MemoryStore, model: str
) -> None:
    target, steps = MODELS[model]
    price = sum((exact_decimal(float(s["params"]["epsilon"])) for s in steps), Decimal(0))
    quoted = service.cost("alice", "PENGUIN", body(steps, target))
    answer = service.query("alice", "PENGUIN", body(steps, target, query_id=f"q-dpl-{model}"))
    charged = PrivacyCost(epsilon=price, delta=0).charged()  # rounded up: docs/ledger.md
    assert quoted["cost"] == answer["cost"] == charged.to_json()
    assert remaining(store) == GRANT - charged
    record = store.get_query(f"q-dpl-{model}")
    assert record is not None and record.state is QueryState.DONE
    release = answer["result"]
    assert release["type"] == "model" and [s["step"] for s in release["steps"]] == [
        s["step"] for s in steps
    ]
    # the client's rebuilt pipeline works on real rows
    pipeline = rebuild(release)
    rows = FRAME.dropna(subset=FEATURES)
    X = rows[release["feature_columns"]].to_numpy(float)
    last = pipeline.steps[-1][1]
    if hasattr(last, "predict"):
        predicted = pipeline.predict(X)
        assert len(predicted) == len(X)
        if target == "species":
            assert set(predicted) <= set(META["columns"]["species"]["categories"])
            probabilities = pipeline.predict_proba(X)
            assert probabilities.shape == (len(X), 3)
            assert np.allclose(probabilities.sum(axis=1), 1)
            assert 0 <= pipeline.score(X, rows["species"]) <= 1
        elif model == "KMeans":
            assert set(predicted) <= {0, 1, 2}
        else:
            assert np.all(np.isfinite(predicted))
    else:
        transformed = pipeline.transform(X)
        assert transformed.shape == (len(X), 2 if model == "PCA" else 4)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_accountant_of_a_real_fit_spends_exactly_the_price(model: str) -> None:
    target, steps = MODELS[model]
    dataset = Dataset("PENGUIN", str(CSV), META, utcnow())
    request = ENGINE.parse(body(steps, target))
    price = ENGINE.cost(dataset, request)
    accountant = BudgetAccountant()
    fit(FRAME, META, request.check(META), accountant)
    epsilon, delta = spent(accountant)
    assert len(accountant.spent_budget) == len(steps)
    assert PrivacyCost(epsilon=epsilon, delta=delta) == price  # to the last digit


def test_the_lomas_example_costs_one_and_a_half(service: Service) -> None:
    steps = [
        {"step": "StandardScaler", "params": {"epsilon": 0.5, "bounds": [30.0, 7000.0]}},
        {"step": "LogisticRegression", "params": {"epsilon": 1.0, "data_norm": 83.0}},
    ]
    assert service.cost("alice", "PENGUIN", body(steps, "species"))["cost"] == {
        "epsilon": "1.5",
        "delta": "0",
    }


def test_a_price_of_floats_is_their_exact_sum_rounded_up() -> None:
    steps = [
        {"step": "StandardScaler", "params": {"epsilon": 0.1}},
        {"step": "LogisticRegression", "params": {"epsilon": 0.2, "data_norm": 3.0}},
    ]
    dataset = Dataset("PENGUIN", str(CSV), META, utcnow())
    price = ENGINE.cost(dataset, ENGINE.parse(body(steps, "species")))
    assert price.epsilon == exact_decimal(0.1) + exact_decimal(0.2) == steps_epsilon([0.1, 0.2])
    assert price.charged().epsilon >= price.epsilon > Decimal("0.3")


def test_a_dummy_fit_is_free_and_returns_a_model(service: Service, store: MemoryStore) -> None:
    target, steps = MODELS["LogisticRegression"]
    answer = service.query(
        "alice", "PENGUIN", body(steps, target, dummy=True, dummy_rows=50, query_id="q-dpl-dummy")
    )
    assert answer["dummy"] is True and answer["result"]["type"] == "model"
    assert remaining(store) == GRANT
    assert CountingLoader.reads == 0


def test_a_user_without_a_grant_is_refused_before_any_read(
    service: Service, store: MemoryStore
) -> None:
    target, steps = MODELS["GaussianNB"]
    for call in (service.cost, service.query):
        with pytest.raises(NoGrant):
            call("mallory", "PENGUIN", body(steps, target, query_id="q-mallory-1"))
    assert CountingLoader.reads == 0 and remaining(store) == GRANT


LEAKS = {
    # StandardScaler's output is not bounded by the metadata: the norm must be given
    "data_norm after a scaler": (
        "species",
        [
            {"step": "StandardScaler", "params": {"epsilon": 0.5}},
            {"step": "LogisticRegression", "params": {"epsilon": 1.0}},
        ],
        "data_norm is required here",
    ),
    "bounds after PCA": (
        "species",
        [
            {"step": "PCA", "params": {"epsilon": 0.5, "n_components": 2}},
            {"step": "GaussianNB", "params": {"epsilon": 1.0}},
        ],
        "bounds is required here",
    ),
    "classes from the data": (
        "island",
        [{"step": "DecisionTreeClassifier", "params": {"epsilon": 1.0, "classes": ["Dream"]}}],
        "must be the target's categories",
    ),
    "a seed chosen by the researcher": (
        "species",
        [{"step": "GaussianNB", "params": {"epsilon": 1.0, "random_state": 0}}],
        "parameters not allowed: random_state",
    ),
    "a target without categories": (
        "study_year",
        [{"step": "GaussianNB", "params": {"epsilon": 1.0}}],
        "declares no categories",
    ),
    "a string feature": (
        None,
        [{"step": "KMeans", "params": {"epsilon": 1.0}}],
        "features must be int, float or boolean",
    ),
    "MinMaxScaler": (None, [{"step": "MinMaxScaler", "params": {"epsilon": 1.0}}], "no MinMax"),
    "a callable": (
        "species",
        [{"step": "LogisticRegression", "params": {"epsilon": 1.0, "C": "lambda: 1"}}],
        "must be a number",
    ),
    "no epsilon": (None, [{"step": "KMeans", "params": {"n_clusters": 2}}], "epsilon is required"),
    "a classifier in the middle": (
        "species",
        [
            {"step": "GaussianNB", "params": {"epsilon": 1.0}},
            {"step": "GaussianNB", "params": {"epsilon": 1.0}},
        ],
        "can only be the last step",
    ),
}


@pytest.mark.parametrize("case", sorted(LEAKS))
def test_a_step_that_would_leak_is_refused_before_any_read(
    service: Service, store: MemoryStore, case: str
) -> None:
    target, steps, message = LEAKS[case]
    features = [*FEATURES, "sex"] if case == "a string feature" else None
    # GHOST's rows do not exist: a read would be a 503, a refusal is a 400
    request = body(steps, target, features, query_id="q-leak-0001")
    for call in (service.cost, service.query):
        with pytest.raises((InvalidQuery, InvalidRequest)) as refused:
            call("alice", "GHOST", request)
        assert refused.value.status_code == 400 and message in refused.value.message
    assert CountingLoader.reads == 0 and remaining(store, "GHOST") == GRANT


def test_every_imputation_strategy_runs_and_any_other_is_a_400(service: Service) -> None:
    target, steps = MODELS["GaussianNB"]
    for strategy in ("drop", "mean", "median", "most_frequent"):
        request = body(steps, target, imputer_strategy=strategy, query_id=f"q-impute-{strategy}")
        answer = service.query("alice", "PENGUIN", request)
        assert answer["result"]["type"] == "model"
    with pytest.raises(InvalidRequest, match="imputer_strategy 'mode' is not supported"):
        service.cost("alice", "PENGUIN", body(steps, target, imputer_strategy="mode"))


def test_imputation_fills_the_centre_of_the_declared_range_never_a_statistic_of_the_data() -> None:
    metadata = dict(META, rows=4)
    frame = FRAME.iloc[[0, 1, 2, 4]].copy()  # row 3 has no measurements at all
    frame.loc[frame.index[0], "bill_length_mm"] = None  # declared range 30..65
    request = ENGINE.parse(
        body([{"step": "StandardScaler", "params": {"epsilon": 1.0}}], imputer_strategy="mean")
    ).check(metadata)
    X, _ = prepare(frame, metadata, request, np.random.default_rng(1))
    assert (X[:, 0] == 47.5).sum() == 1 and len(X) == 4


def test_the_fit_sees_exactly_the_public_row_count() -> None:
    request = ENGINE.parse(body([{"step": "GaussianNB", "params": {"epsilon": 1.0}}], "species"))
    rng = np.random.default_rng(2)
    for rows in (10, 342, 500):  # fewer rows (a subset), as many, more (filler rows)
        metadata = dict(META, rows=rows)
        X, y = prepare(FRAME, metadata, request.check(metadata), rng)
        assert X.shape == (rows, 4) and y is not None and set(y) <= {0, 1, 2}
        low = [META["columns"][c]["lower"] for c in FEATURES]
        high = [META["columns"][c]["upper"] for c in FEATURES]
        assert np.all((np.array(low) <= X) & (np.array(high) >= X))


def test_a_pipeline_of_diffprivlib_objects_is_written_as_the_allowlisted_json() -> None:
    from diffprivlib.models import LogisticRegression, StandardScaler
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline(
        [
            ("scaler", StandardScaler(epsilon=0.5, bounds=([30, 13], [65, 23]))),
            ("classifier", LogisticRegression(epsilon=1.0, data_norm=2.0)),
        ]
    )
    steps = pipeline_steps(pipeline)
    assert steps == [
        {
            "step": "StandardScaler",
            "params": {"epsilon": 0.5, "bounds": [[30, 13], [65, 23]], "with_mean": True,
                       "with_std": True},
        },
        {
            "step": "LogisticRegression",
            "params": {"epsilon": 1.0, "data_norm": 2.0, "tol": 0.0001, "C": 1.0,
                       "fit_intercept": True, "max_iter": 100},
        },
    ]  # fmt: skip
    with pytest.raises(ValueError, match="random_state must be None"):
        pipeline_steps(LogisticRegression(epsilon=1.0, random_state=3))
    from sklearn.linear_model import LogisticRegression as Plain

    with pytest.raises(TypeError, match="only these diffprivlib classes"):
        pipeline_steps(Plain())


NOISE_FITS = 300


def mean_errors(epsilon: float, fits: int = NOISE_FITS) -> tuple[list[float], float]:
    """StandardScaler means fitted at ``epsilon`` on 300 rows all at 4000 (bounds 2000..7000),
    minus 4000; and the Laplace scale the *charged* ε = 1 implies, b = 5000 / (300 · 1)."""
    raw = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
    metadata = validate({**raw, "rows": 300})
    frame = coerce_types(pd.DataFrame({"body_mass_g": [4000.0] * 300}), {
        **metadata, "columns": {"body_mass_g": metadata["columns"]["body_mass_g"]}
    })  # fmt: skip
    steps = [{"step": "StandardScaler", "params": {"epsilon": epsilon, "with_std": False}}]
    request = ENGINE.parse(body(steps, features=["body_mass_g"])).check(metadata)
    errors = [
        fit(frame, metadata, request)["steps"][0]["fitted"]["mean_"][0] - 4000.0
        for _ in range(fits)
    ]
    return errors, (7000.0 - 2000.0) / (300 * 1.0)


def noise_of_the_charged_scale(errors: list[float], scale: float) -> bool:
    """The check: the mean absolute error M of the fits is within [0.65 b, 1.5 b].

    With N = 300 Laplace(b) errors, M is Gamma(N, b/N) (mean b, sd 0.058 b): outside the
    interval with probability 1.9e-12 (low) + 2.2e-14 (high). Noise of half the scale (ε
    spent twice the charge) makes M Gamma(N, b/2N), inside with probability 9.2e-7; twice
    the scale, 1.1e-6 (scipy.stats.gamma).
    """
    spread = float(np.mean(np.abs(errors)))
    return 0.65 * scale <= spread <= 1.5 * scale


def test_a_released_mean_carries_laplace_noise_of_the_charged_scale() -> None:
    """StandardScaler's mean at ε = 1: Laplace of scale b = (upper - lower) / (rows · ε)."""
    errors, scale = mean_errors(1.0)
    assert noise_of_the_charged_scale(errors, scale), (np.mean(np.abs(errors)), scale)


def test_the_noise_check_fails_a_release_with_half_the_noise() -> None:
    """Power: means released with ε = 2 (half the noise) where ε = 1 was charged fail the
    check above (they pass it with probability 9.2e-7)."""
    errors, scale = mean_errors(2.0)
    assert not noise_of_the_charged_scale(errors, scale), (np.mean(np.abs(errors)), scale)


def test_logistic_regression_on_penguins_at_epsilon_one_beats_the_majority_class() -> None:
    """Utility: StandardScaler (ε 0.5) + LogisticRegression (ε 0.5, data_norm 2, C 10).

    Trained on 240 random rows, scored on the 102 others (no noise: 98%; the majority class:
    44%). Measured over 400 fits: mean accuracy 0.55, sd 0.197 per fit (5% of fits below
    0.21, median 0.57; docs/diffprivlib.md). Asserted: the mean of 100 fits is at least
    0.44 (the majority class), 5.6 sds of that mean (0.0197) below the measured 0.55: a
    false failure below 1e-7 (normal approximation; 1.7e-7 if the true mean were 0.54, two
    sds of the measurement below it).
    """
    rows = FRAME.dropna(subset=FEATURES)
    order = np.random.default_rng(0).permutation(len(rows))
    train, test = rows.iloc[order[:240]], rows.iloc[order[240:]]
    metadata = dict(META, rows=240)
    steps = [
        {"step": "StandardScaler", "params": {"epsilon": 0.5}},
        {"step": "LogisticRegression", "params": {"epsilon": 0.5, "data_norm": 2.0, "C": 10.0}},
    ]
    request = ENGINE.parse(body(steps, "species")).check(metadata)
    X, y = test[FEATURES].to_numpy(float), test["species"].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = [rebuild(fit(train, metadata, request)).score(X, y) for _ in range(100)]
    assert float(np.mean(scores)) >= 0.44, scores


def test_a_failure_after_the_read_is_generic_and_the_spend_stands(
    service: Service, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chalicelib.engines.diffprivlib_fit as fitting

    def broken(*args: Any) -> Any:
        raise RuntimeError("bill_length_mm of row 7 is 39.1")

    monkeypatch.setattr(fitting, "prepare", broken)
    target, steps = MODELS["KMeans"]
    with pytest.raises(NeblinaError) as failed:
        service.query("alice", "PENGUIN", body(steps, target, query_id="q-dpl-broken"))
    assert "39.1" not in failed.value.message
    assert remaining(store) == GRANT - PrivacyCost(epsilon=exact_decimal(0.1), delta=0).charged()


@pytest.mark.parametrize("model", ["GaussianNB", "LogisticRegression"])
def test_a_class_absent_from_the_rows_is_fitted_like_the_others(model: str) -> None:
    """diffprivlib fits only the classes present (np.unique(y)): an absent class would show.

    Its GaussianNB leaves an absent class with a prior of exactly 0 and means of exactly 0,
    its LogisticRegression returns one row of coefficients fewer: a release that says,
    without noise, that no row has that class. Here every class of the metadata is fitted.
    """
    rows = FRAME[FRAME["species"] != "Chinstrap"]
    metadata = dict(META, rows=len(rows))
    steps = dict(MODELS)[model][1]
    request = ENGINE.parse(body(steps, "species")).check(metadata)
    fitted = fit(rows, metadata, request)["steps"][-1]["fitted"]
    if model == "GaussianNB":
        assert len(fitted["class_prior_"]) == 3
        assert all(prior > 0 for prior in fitted["class_prior_"])
        assert all(value != 0 for value in fitted["theta_"][1])
    else:
        assert len(fitted["coef_"]) == 3


def test_the_client_fits_a_real_pipeline_through_the_service(
    service: Service, store: MemoryStore
) -> None:
    """client.diffprivlib, wired to the service in-process: JSON out, a fitted pipeline back."""
    import json

    import httpx
    from diffprivlib.models import GaussianNB, StandardScaler
    from sklearn.pipeline import Pipeline

    from neblina_client import Client

    def route(request: httpx.Request) -> httpx.Response:
        document = json.loads(request.read())
        if request.url.path.endswith("/cost"):
            return httpx.Response(200, json=service.cost("alice", "PENGUIN", document))
        return httpx.Response(200, json=service.query("alice", "PENGUIN", document))

    client = Client(
        url="http://neblina.test",
        token="nbl_" + "a" * 43,
        dataset="PENGUIN",
        transport=httpx.MockTransport(route),
        max_retries=0,
    )
    pipeline = Pipeline(
        [
            ("scale", StandardScaler(epsilon=0.5)),
            ("nb", GaussianNB(epsilon=0.5, bounds=([-4.0] * 4, [4.0] * 4))),
        ]
    )
    assert client.diffprivlib.cost(pipeline, FEATURES, "species").epsilon == Decimal(1)
    fitted = client.diffprivlib.fit(pipeline, FEATURES, "species")
    assert fitted.cost.epsilon == Decimal(1) and remaining(store).epsilon == GRANT.epsilon - 1
    assert [name for name, _ in fitted.model.steps] == ["scale", "nb"]
    rows = FRAME.dropna(subset=FEATURES)
    assert set(fitted.model.predict(rows[FEATURES])) <= {"Adelie", "Chinstrap", "Gentoo"}
    dummy = client.diffprivlib.fit(pipeline, FEATURES, "species", dummy=True)
    assert dummy.answer.dummy and remaining(store).epsilon == GRANT.epsilon - 1


def test_a_process_without_the_libraries_refuses_before_the_debit(
    service: Service, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chalicelib.engines.diffprivlib_engine as engine_module

    monkeypatch.setattr(engine_module, "installed", lambda: False)
    target, steps = MODELS["KMeans"]
    with pytest.raises(NeblinaError, match="not installed in this deployment") as refused:
        service.query("alice", "PENGUIN", body(steps, target, query_id="q-dpl-missing"))
    assert refused.value.status_code == 422
    assert CountingLoader.reads == 0 and remaining(store) == GRANT


def test_lomas_notebook_code_fits_through_the_shim_with_a_model_and_no_score(
    service: Service, store: MemoryStore
) -> None:
    """neblina_client.lomas's diffprivlib, wired to the service in-process: Lomas's call and
    shapes (``result.model``; ``result.score`` None: no un-noised score is ever released)."""
    import json

    import httpx
    from diffprivlib.models import GaussianNB, StandardScaler
    from sklearn.pipeline import Pipeline

    from neblina_client import lomas

    def route(request: httpx.Request) -> httpx.Response:
        document = json.loads(request.read())
        if request.url.path.endswith("/cost"):
            return httpx.Response(200, json=service.cost("alice", "PENGUIN", document))
        return httpx.Response(200, json=service.query("alice", "PENGUIN", document))

    client = lomas.Client(
        "http://neblina.test",
        "Dr. Antartica",
        "PENGUIN",
        token="nbl_" + "a" * 43,
        transport=httpx.MockTransport(route),
        max_retries=0,
    )
    pipeline = Pipeline(
        [
            ("scale", StandardScaler(epsilon=0.5)),
            ("nb", GaussianNB(epsilon=0.5, bounds=([-4.0] * 4, [4.0] * 4))),
        ]
    )
    cost = client.diffprivlib.cost(pipeline, FEATURES, ["species"])
    assert (cost.epsilon, cost.delta) == (1.0, 0.0)
    dummy = client.diffprivlib.query(pipeline, FEATURES, ["species"], dummy=True, nb_rows=50)
    assert dummy.query_id is None and remaining(store) == GRANT
    response = client.diffprivlib.query(
        pipeline, FEATURES, ["species"], test_size=0.2, test_train_split_seed=1
    )
    assert (response.epsilon, response.requested_by) == (1.0, "Dr. Antartica")
    assert response.result.res_type == "diffprivlib" and response.result.score is None
    assert remaining(store).epsilon == GRANT.epsilon - 1
    rows = FRAME.dropna(subset=FEATURES)
    assert set(response.result.model.predict(rows[FEATURES])) <= {"Adelie", "Chinstrap", "Gentoo"}


def test_a_fit_with_wait_false_is_a_job_debited_once_that_reports_its_steps(
    service: Service, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``"wait": false``: 202 with the record (queued), the cost debited once at submission;
    the worker claims the job, fits it (the fraction of steps fitted is its progress) and
    the record ends done with the model; a resend of the submission is not a second debit."""
    from chalicelib.hop import InProcessWorkers
    from chalicelib.service import Accepted

    phases: list[tuple[str, float | None]] = []
    real = store.set_progress

    def noted(query_id: str, phase: str, progress: float | None) -> None:
        phases.append((phase, progress))
        real(query_id, phase, progress)

    monkeypatch.setattr(store, "set_progress", noted)
    target, steps = MODELS["LogisticRegression"]
    request = body(steps, target, query_id="q-dpl-job-1", wait=False)
    accepted = service.query("alice", "PENGUIN", request)
    assert isinstance(accepted, Accepted)
    assert (accepted.body["state"], accepted.body["phase"]) == ("running", "queued")
    charged = PrivacyCost(epsilon=Decimal("1.5"), delta=0)
    assert accepted.body["cost"] == charged.to_json()
    assert remaining(store) == GRANT - charged  # debited at submission
    assert isinstance(service.workers, InProcessWorkers)
    service.workers.join(timeout=60)
    record = service.get_query("alice", "PENGUIN", "q-dpl-job-1")
    assert record["state"] == "done" and record["result"]["type"] == "model"
    assert rebuild(record["result"]).predict(FRAME.dropna(subset=FEATURES)[FEATURES]).size
    assert phases[0] == ("running", None) and phases[-1] == ("archiving", None)
    fractions = [fraction for _, fraction in phases if fraction is not None]
    assert fractions and set(fractions) <= {0.5, 1.0}  # 1 of 2 steps (writes: at most 1/s)
    again = service.query("alice", "PENGUIN", request)  # the client's resend
    assert not isinstance(again, Accepted) or again.body["state"] == "done"
    assert remaining(store) == GRANT - charged and CountingLoader.reads == 1


def test_the_fit_tells_its_progress_after_each_step() -> None:
    steps = [
        {"step": "StandardScaler", "params": {"epsilon": 0.5}},
        {
            "step": "PCA",
            "params": {"epsilon": 0.5, "n_components": 2, "data_norm": 5.0, "bounds": [-5, 5]},
        },
        {"step": "KMeans", "params": {"epsilon": 0.5, "n_clusters": 2, "bounds": [-5, 5]}},
    ]
    request = ENGINE.parse(body(steps)).check(META)
    told: list[float] = []
    fit(FRAME, META, request, progress=told.append)
    assert told == [1 / 3, 2 / 3, 1.0]


# --- Lomas's test suite (server/lomas_server/tests/test_api_diffprivlib.py), translated ------
# Its pipelines, as Lomas users write them, through neblina_client.lomas in-process. Where
# Lomas's request is refused here, the case says why (docs/diffprivlib.md, "From Lomas").
LOMAS_BOUNDS = ([30.0, 13.0, 150.0, 2000.0], [65.0, 23.0, 250.0, 7000.0])
LOMAS_CLASSES = ["Adelie", "Chinstrap", "Gentoo"]


def lomas_pipeline(case: str) -> tuple[Any, list[str], list[str] | None, float]:
    """Lomas's pipeline for ``case``: (pipeline, features, target_columns, its ε)."""
    from diffprivlib import models
    from sklearn.pipeline import Pipeline

    b = LOMAS_BOUNDS
    cases: dict[str, tuple[list[tuple[str, Any]], list[str], list[str] | None, float]] = {
        "logistic_regression": (
            [("scaler", models.StandardScaler(epsilon=0.5, bounds=b)),
             ("classifier", models.LogisticRegression(epsilon=1.0, data_norm=83.69))],
            FEATURES, ["species"], 1.5,
        ),
        # Lomas fits bill_length_mm from itself; here a target cannot be a feature too
        "linear_regression": (
            [("lr", models.LinearRegression(epsilon=2.0, bounds_X=(30.0, 65.0),
                                             bounds_y=(13.0, 23.0)))],
            ["bill_length_mm"], ["bill_depth_mm"], 2.0,
        ),
        "naive_bayes": (
            [("scaler", models.StandardScaler(epsilon=0.5, bounds=b)),
             ("gaussian", models.GaussianNB(epsilon=1.0, bounds=b, priors=(0.3, 0.3, 0.4)))],
            FEATURES, ["species"], 1.5,
        ),
        "random_forest": (
            [("rf", models.RandomForestClassifier(n_estimators=10, epsilon=2.0, bounds=b,
                                                  classes=LOMAS_CLASSES))],
            FEATURES, ["species"], 2.0,
        ),
        "decision_tree": (
            [("dtc", models.DecisionTreeClassifier(epsilon=2.0, bounds=b,
                                                   classes=LOMAS_CLASSES))],
            FEATURES, ["species"], 2.0,
        ),
        "kmeans_with_target": (
            [("kmeans", models.KMeans(n_clusters=8, epsilon=2.0, bounds=b))],
            FEATURES, ["species"], 2.0,
        ),
        "kmeans": (
            [("kmeans", models.KMeans(n_clusters=8, epsilon=2.0, bounds=b))],
            FEATURES, None, 2.0,
        ),
        # Lomas asks for 8 components of 4 features; here at most 4 (400 otherwise, below)
        "pca": (
            [("pca", models.PCA(n_components=4, epsilon=2.0, bounds=b, data_norm=100))],
            FEATURES, ["species"], 2.0,
        ),
    }  # fmt: skip
    steps, features, target, epsilon = cases[case]
    return Pipeline(steps), features, target, epsilon


def lomas_client(service: Service, user: str = "alice", dataset: str = "PENGUIN") -> Any:
    """neblina_client.lomas's Client, its HTTP calls answered by ``service`` in-process."""
    import json

    import httpx

    from neblina_client import lomas

    def route(request: httpx.Request) -> httpx.Response:
        name = request.url.path.split("/")[3]
        document = json.loads(request.read())
        try:
            if request.url.path.endswith("/cost"):
                return httpx.Response(200, json=service.cost(user, name, document))
            return httpx.Response(200, json=service.query(user, name, document))
        except NeblinaError as error:
            return httpx.Response(
                error.status_code, json={"error": error.code, "message": error.message}
            )

    return lomas.Client(
        "http://neblina.test",
        "Dr. Antartica",
        dataset,
        token="nbl_" + "a" * 43,
        transport=httpx.MockTransport(route),
        max_retries=0,
    )


@pytest.mark.parametrize(
    "case",
    [
        "logistic_regression",
        "linear_regression",
        "naive_bayes",
        "random_forest",
        "decision_tree",
        "kmeans_with_target",
        "kmeans",
        "pca",
    ],
)
def test_each_lomas_model_is_charged_its_exact_cost_and_comes_back_working(
    service: Service, store: MemoryStore, case: str
) -> None:
    pipeline, features, target, epsilon = lomas_pipeline(case)
    client = lomas_client(service)
    cost = client.diffprivlib.cost(pipeline, features, target)
    assert (cost.epsilon, cost.delta) == (epsilon, 0.0)
    response = client.diffprivlib.query(pipeline, features, target)
    assert (response.epsilon, response.delta) == (epsilon, 0.0)
    assert response.result.score is None  # Lomas's un-noised score is never released
    assert remaining(store) == GRANT - PrivacyCost(epsilon=Decimal(str(epsilon)), delta=0)
    rows = FRAME.dropna(subset=features)[features]
    model = response.result.model
    if case == "pca":
        assert model.transform(rows).shape == (len(rows), 4)
    else:
        predicted = model.predict(rows)
        assert len(predicted) == len(rows)
        if target == ["species"] and not case.startswith("kmeans"):
            assert set(predicted) <= set(LOMAS_CLASSES)


def test_lomas_imputation_strategies_run_and_an_unknown_one_is_refused(service: Service) -> None:
    from neblina_client.lomas import InvalidQueryException

    pipeline, features, target, _ = lomas_pipeline("logistic_regression")
    client = lomas_client(service)
    for strategy in ("mean", "median", "most_frequent"):
        answer = client.diffprivlib.query(pipeline, features, target, imputer_strategy=strategy)
        assert answer.result.model is not None
    with pytest.raises(InvalidQueryException, match="i_do_not_exist' is not supported"):
        client.diffprivlib.query(pipeline, features, target, imputer_strategy="i_do_not_exist")


def test_lomas_privacy_leak_warning_case_is_a_400_before_any_read(
    service: Service, store: MemoryStore
) -> None:
    """Lomas: StandardScaler(ε 0.5) + LogisticRegression(ε 1), no bounds, no data_norm: 422
    ``PrivacyLeakWarning`` after loading the data. Here: the scaler's bounds come from the
    metadata and the classifier's missing data_norm is a 400 before the read, nothing debited."""
    from diffprivlib import models
    from sklearn.pipeline import Pipeline

    from neblina_client.lomas import InvalidQueryException

    pipeline = Pipeline(
        [
            ("scaler", models.StandardScaler(epsilon=0.5)),
            ("classifier", models.LogisticRegression(epsilon=1.0)),
        ]
    )
    client = lomas_client(service, dataset="GHOST")  # its rows do not exist: a read is a 503
    for call in (client.diffprivlib.cost, client.diffprivlib.query):
        with pytest.raises(InvalidQueryException, match="PrivacyLeakWarning"):
            call(pipeline, FEATURES, ["species"])
    assert CountingLoader.reads == 0 and remaining(store, "GHOST") == GRANT


def test_lomas_compatibility_warning_case_never_reaches_the_server(service: Service) -> None:
    """Lomas: a parameter diffprivlib does not use (``svd_solver``) warns
    ``DiffprivlibCompatibilityWarning`` and diffprivlib drops it. Here too the client sends
    only the allowlisted parameters, and the server refuses any other one (400) if sent."""
    from diffprivlib import models
    from diffprivlib.utils import DiffprivlibCompatibilityWarning

    with pytest.warns(DiffprivlibCompatibilityWarning):
        classifier = models.LogisticRegression(epsilon=1.0, svd_solver="full")
    assert "svd_solver" not in pipeline_steps(classifier)[0]["params"]
    steps = [{"step": "LogisticRegression", "params": {"epsilon": 1.0, "svd_solver": "full"}}]
    with pytest.raises(InvalidQuery, match="parameters not allowed: svd_solver"):
        service.cost("alice", "PENGUIN", body(steps, "species"))


def test_lomas_refusals_of_access_hold_for_cost_and_dummy_fits(
    service: Service, store: MemoryStore
) -> None:
    """Lomas: a user without access to a dataset gets 403 ``UnauthorizedAccessException`` for
    the cost and the dummy query (after fitting, in Lomas). Here before anything is read."""
    from neblina_client.lomas import UnauthorizedAccessException

    pipeline, features, target, _ = lomas_pipeline("logistic_regression")
    client = lomas_client(service, user="mallory")
    with pytest.raises(UnauthorizedAccessException):
        client.diffprivlib.cost(pipeline, features, target)
    with pytest.raises(UnauthorizedAccessException):
        client.diffprivlib.query(pipeline, features, target, dummy=True)
    assert CountingLoader.reads == 0


def test_lomas_dummy_fit_is_free_and_returns_a_working_model(
    service: Service, store: MemoryStore
) -> None:
    pipeline, features, target, _ = lomas_pipeline("naive_bayes")
    response = lomas_client(service).diffprivlib.query(
        pipeline, features, target, dummy=True, nb_rows=100, seed=42
    )
    assert response.query_id is None and response.result.score is None
    rows = FRAME.dropna(subset=features)[features]
    assert set(response.result.model.predict(rows)) <= set(LOMAS_CLASSES)
    assert remaining(store) == GRANT and CountingLoader.reads == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("pca_eight_components", "n_components must be at most 4"),
        ("target_is_a_feature", "target_column is also a feature column"),
    ],
)
def test_lomas_requests_that_neblina_refuses_are_400s_naming_the_reason(
    service: Service, change: str, message: str
) -> None:
    """Lomas's PCA test asks 8 components of 4 features, and its LinearRegression test fits
    bill_length_mm from itself; both are refused here before any read (docs/diffprivlib.md)."""
    from diffprivlib import models

    from neblina_client.lomas import InvalidQueryException

    client = lomas_client(service)
    if change == "pca_eight_components":
        pipeline: Any = models.PCA(n_components=8, epsilon=2.0, bounds=LOMAS_BOUNDS, data_norm=100)
        features, target = FEATURES, None
    else:
        pipeline = models.LinearRegression(
            epsilon=2.0, bounds_X=(30.0, 65.0), bounds_y=(13.0, 23.0)
        )
        features, target = ["bill_length_mm"], ["bill_length_mm"]
    with pytest.raises(InvalidQueryException, match=message):
        client.diffprivlib.cost(pipeline, features, target)


# --- the optional DP score (docs/diffprivlib.md, "Score") -------------------------------------
def test_a_scored_fit_is_charged_its_score_epsilon_on_top_and_spends_exactly_that(
    service: Service, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chalicelib.engines.diffprivlib_fit as fitting

    target, steps = MODELS["LogisticRegression"]  # ε 0.5 + 1.0
    scored = body(steps, target, score_epsilon=0.25, test_size=0.2)
    assert service.cost("alice", "PENGUIN", scored)["cost"] == {"epsilon": "1.75", "delta": "0"}
    # the accountant of a real fit spends the price to the digit, the score included
    request = ENGINE.parse(scored)
    price = ENGINE.cost(Dataset("PENGUIN", str(CSV), META, utcnow()), request)
    accountant = BudgetAccountant()
    told: list[tuple[int, int, float]] = []
    real = fitting.noisy_count

    def noted(count: int, total: int, epsilon: float) -> int:
        told.append((count, total, epsilon))
        return real(count, total, epsilon)

    monkeypatch.setattr(fitting, "noisy_count", noted)
    release = fit(FRAME, META, request.check(META), accountant)
    epsilon, delta = spent(accountant)
    assert PrivacyCost(epsilon=epsilon, delta=delta) == price  # to the digit
    assert len(accountant.spent_budget) == 3  # two steps and the score
    test_rows = round(0.2 * META["rows"])
    assert [(total, epsilon) for _, total, epsilon in told] == [(test_rows, 0.25)]
    score = release["score"]
    assert score["test_rows"] == test_rows and score["epsilon"] == 0.25
    correct = score["accuracy"] * test_rows  # a count of the held-out rows, over their number
    assert 0 <= score["accuracy"] <= 1 and abs(correct - round(correct)) < 1e-9
    fitted_on = release["steps"][0]["fitted"]["n_samples_seen_"]
    assert fitted_on == META["rows"] - test_rows  # the steps never see the held-out rows
    answer = service.query("alice", "PENGUIN", {**scored, "query_id": "q-dpl-scored"})
    assert answer["cost"] == {"epsilon": "1.75", "delta": "0"} and "score" in answer["result"]
    assert remaining(store) == GRANT - PrivacyCost(epsilon=Decimal("1.75"), delta=0)


class ConstantClassifier:
    """Predicts class 0 for every row: its correct count on a test set is known exactly."""

    def predict(self, X: Any) -> Any:
        return np.zeros(len(X), dtype=int)


def accuracy_errors(epsilon: float, draws: int = 1000) -> list[int]:
    """Released correct counts minus the true 50 (of 100 held-out rows), ``draws`` times,
    through the score's own code path (:func:`dp_accuracy`)."""
    from chalicelib.engines.diffprivlib_fit import dp_accuracy

    X, y = np.zeros((100, 1)), np.array([0] * 50 + [1] * 50)
    accountant = BudgetAccountant()
    released = [
        dp_accuracy([ConstantClassifier()], X, y, epsilon, accountant) for _ in range(draws)
    ]
    assert {r["test_rows"] for r in released} == {100}
    return [round(r["accuracy"] * 100) - 50 for r in released]


def geometric_noise_of_scale(errors: list[int], epsilon: float) -> bool:
    """Two-sided geometric noise at ε has E|X| = 2α / (1 − α²), α = e^−ε. Over 1000 draws at
    ε = 0.5 the mean |X| is in [0.8, 1.25] × that with probability 1 − 1.2e-10 (the exact
    distribution of the sum, by convolution); half the noise (2ε) lands inside with
    probability 7e-69, twice the noise (ε/2) 1e-46."""
    alpha = math.exp(-epsilon)
    expected = 2 * alpha / (1 - alpha**2)
    spread = float(np.mean(np.abs(errors)))
    return 0.8 * expected <= spread <= 1.25 * expected


def test_the_released_accuracy_carries_geometric_noise_of_the_charged_scale() -> None:
    errors = accuracy_errors(0.5)
    assert geometric_noise_of_scale(errors, 0.5), np.mean(np.abs(errors))


def test_the_score_noise_check_fails_half_or_twice_the_noise() -> None:
    """Power: accuracies released at 2ε (half the noise) or ε/2 where ε was charged fail."""
    for spent_epsilon in (1.0, 0.25):
        errors = accuracy_errors(spent_epsilon)
        assert not geometric_noise_of_scale(errors, 0.5), (spent_epsilon, np.mean(np.abs(errors)))


SCORE_REFUSALS = {
    "a clusterer": (None, "KMeans", {"score_epsilon": 0.5}, "for a classifier as the last step"),
    "a regressor": (
        "body_mass_g", "LinearRegression", {"score_epsilon": 0.5}, "not LinearRegression"
    ),
    "test_size alone": ("species", "GaussianNB", {"test_size": 0.2}, "only for a scored fit"),
    "test_size 1": (
        "species", "GaussianNB", {"score_epsilon": 0.5, "test_size": 1}, "fraction of the rows"
    ),
    "test_size a string": (
        "species", "GaussianNB", {"score_epsilon": 0.5, "test_size": "0.2"}, "must be a number"
    ),
    "too few test rows": (
        "species", "GaussianNB", {"score_epsilon": 0.5, "test_size": 0.01}, "at least 10"
    ),
    "a score epsilon below 1/test rows": (
        "species", "GaussianNB", {"score_epsilon": 0.01}, "score_epsilon must be at least"
    ),
    "a score epsilon of 0": ("species", "GaussianNB", {"score_epsilon": 0}, "score_epsilon"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SCORE_REFUSALS))
def test_a_bad_score_request_is_a_400_before_any_read(
    service: Service, store: MemoryStore, case: str
) -> None:
    target, step, extra, message = SCORE_REFUSALS[case]
    steps = [{"step": step, "params": {"epsilon": 1.0}}]
    request = body(steps, target, query_id="q-score-bad", **extra)
    for call in (service.cost, service.query):
        with pytest.raises((InvalidQuery, InvalidRequest)) as refused:
            call("alice", "GHOST", request)
        assert refused.value.status_code == 400 and message in refused.value.message
    assert CountingLoader.reads == 0 and remaining(store, "GHOST") == GRANT


def test_the_client_asks_for_a_score_and_reads_it(service: Service, store: MemoryStore) -> None:
    import json

    import httpx
    from diffprivlib.models import GaussianNB

    from neblina_client import Client

    def route(request: httpx.Request) -> httpx.Response:
        document = json.loads(request.read())
        if request.url.path.endswith("/cost"):
            return httpx.Response(200, json=service.cost("alice", "PENGUIN", document))
        return httpx.Response(200, json=service.query("alice", "PENGUIN", document))

    client = Client(
        url="http://neblina.test",
        token="nbl_" + "a" * 43,
        dataset="PENGUIN",
        transport=httpx.MockTransport(route),
        max_retries=0,
    )
    model = GaussianNB(epsilon=0.5)
    cost = client.diffprivlib.cost(model, FEATURES, "species", score_epsilon=0.25)
    assert cost.epsilon == Decimal("0.75")
    fitted = client.diffprivlib.fit(model, FEATURES, "species", score_epsilon=0.25, test_size=0.3)
    assert fitted.score is not None and 0 <= fitted.score <= 1
    assert fitted.release["score"]["test_rows"] == round(0.3 * META["rows"])
    assert client.diffprivlib.fit(model, FEATURES, "species").score is None
    assert remaining(store).epsilon == GRANT.epsilon - Decimal("1.25")
