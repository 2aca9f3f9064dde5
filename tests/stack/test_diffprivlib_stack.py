"""DiffPrivLib fits end to end: the real client over HTTP, the API server, the diffprivlib
worker process (localstack/workerserver.py, reached through boto3's Lambda invoke) and the
emulator's ledger. The engine itself is tested in tests/unit/test_diffprivlib_engine.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from botocore.config import Config

from neblina_client import (
    Client,
    FitJob,
    FittedModel,
    InvalidRequestError,
    PermissionDeniedError,
)

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
ROWS = pd.read_csv(ROOT / "localstack/data/penguins.csv").dropna(subset=FEATURES)
SPECIES = {"Adelie", "Chinstrap", "Gentoo"}

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::UserWarning", "ignore::RuntimeWarning"
)


def pipeline() -> Any:
    from diffprivlib.models import GaussianNB, StandardScaler
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("scale", StandardScaler(epsilon=0.5)),
            ("nb", GaussianNB(epsilon=0.25, bounds=([-4.0] * 4, [4.0] * 4))),
        ]
    )


def connect(stack: Any, token: str) -> Client:
    return Client(url=stack.api_url, token=token, dataset="PENGUIN", max_retries=0)


def test_a_fit_over_http_is_priced_debited_exactly_once_and_the_rebuilt_model_predicts(
    stack: Any, make_researcher: Any
) -> None:
    researcher = make_researcher({"PENGUIN": ("10", "0")})
    with connect(stack, researcher.token) as client:
        before = client.budget().remaining
        cost = client.diffprivlib.cost(pipeline(), FEATURES, "species")
        assert (cost.epsilon, cost.delta) == (Decimal("0.75"), Decimal(0))
        trial = client.diffprivlib.fit(pipeline(), FEATURES, "species", dummy=True)
        assert trial.answer.dummy and set(trial.model.predict(ROWS[FEATURES])) <= SPECIES
        assert client.budget().remaining == before  # a dummy fit is free
        fitted = client.diffprivlib.fit(pipeline(), FEATURES, "species")
        assert isinstance(fitted, FittedModel) and fitted.cost == cost
        assert client.budget().remaining == before - cost  # exactly the price
        assert [name for name, _ in fitted.model.steps] == ["scale", "nb"]
        predicted = fitted.model.predict(ROWS[FEATURES])
        assert len(predicted) == len(ROWS) and set(predicted) <= SPECIES
        assert fitted.model.predict_proba(ROWS[FEATURES]).shape == (len(ROWS), 3)
        assert "score" not in json.dumps(fitted.release)  # no score unless asked for
        [record] = [q for q in client.history() if q.query_id == fitted.query_id]
        assert (record.engine, record.state, record.cost) == ("diffprivlib", "done", cost)
        # a DP score on held-out rows, asked for: charged on top of the steps' ε
        scored = client.diffprivlib.fit(pipeline(), FEATURES, "species", score_epsilon=0.25)
        assert scored.cost.epsilon == Decimal("1") and scored.score is not None
        assert 0 <= scored.score <= 1 and scored.release["score"]["test_rows"] == 69
        cost = replace(cost, epsilon=cost.epsilon + 1)  # both fits
        assert client.budget().remaining == before - cost
        # a step that would leak (no data_norm after a scaler): 400 before any read, free
        from diffprivlib.models import LogisticRegression, StandardScaler

        leaky = [StandardScaler(epsilon=0.5), LogisticRegression(epsilon=0.5)]
        with pytest.raises(InvalidRequestError, match="data_norm is required here"):
            client.diffprivlib.fit(leaky, FEATURES, "species")
        assert client.budget().remaining == before - cost


def test_a_detached_fit_is_debited_at_submission_and_waits_to_the_fitted_model(
    stack: Any, make_researcher: Any
) -> None:
    researcher = make_researcher({"PENGUIN": ("10", "0")})
    with connect(stack, researcher.token) as client:
        before = client.budget().remaining
        job = client.diffprivlib.fit(pipeline(), FEATURES, "species", wait=False)
        assert isinstance(job, FitJob) and job.dataset == "PENGUIN"
        price = Decimal("0.75")
        assert client.budget().remaining.epsilon == before.epsilon - price  # at submission
        assert job.status().cost.epsilon == price
        fitted = job.wait(timeout=60, progress=False)
        assert fitted.query_id == job.query_id and fitted.cost.epsilon == price
        assert set(fitted.model.predict(ROWS[FEATURES])) <= SPECIES
        assert job.status().state == "done"
        again = client.diffprivlib.job(job.query_id).wait(timeout=60, progress=False)
        assert again.release == fitted.release  # collected again for free
        assert client.budget().remaining.epsilon == before.epsilon - price  # one debit


def test_a_user_without_a_grant_is_refused_and_nothing_is_debited(
    stack: Any, make_researcher: Any
) -> None:
    researcher = make_researcher({"SYNTHETIC": ("10", "0")})  # no grant on PENGUIN
    with connect(stack, researcher.token) as client:
        for call in (client.diffprivlib.cost, client.diffprivlib.fit):
            with pytest.raises(PermissionDeniedError):
                call(pipeline(), FEATURES, "species")
    with Client(url=stack.api_url, token=researcher.token, dataset="SYNTHETIC") as other:
        assert other.budget().spent.epsilon == 0 and other.history() == []


def test_only_the_diffprivlib_worker_process_prices_and_fits_diffprivlib(
    stack: Any, store: Any
) -> None:
    """The fits above ran in the diffprivlib worker process: it prices a fit from the
    metadata; another family's worker (here the SQL one) refuses the engine."""
    from chalicelib.hop import dataset_to_wire

    dataset = store.get_dataset("PENGUIN")
    body = {
        "engine": "diffprivlib",
        "feature_columns": FEATURES,
        "target_column": "species",
        "pipeline": [{"step": "GaussianNB", "params": {"epsilon": 0.25}}],
    }
    payload = {"op": "price", "engine": "diffprivlib", "dataset": dataset_to_wire(dataset)}
    answers = {}
    for family in ("diffprivlib", "sql"):
        client = boto3.client(
            "lambda",
            endpoint_url=stack.workers[family],
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"total_max_attempts": 1}),
        )
        answer = client.invoke(
            FunctionName=f"neblina-worker-{family}",
            Payload=json.dumps({**payload, "body": body}).encode(),
        )
        answers[family] = json.loads(answer["Payload"].read())
    assert answers["diffprivlib"]["ok"] is True
    assert answers["diffprivlib"]["cost"] == {"epsilon": "0.25", "delta": "0"}
    assert answers["sql"]["ok"] is False and answers["sql"]["error"]["status"] == 500
