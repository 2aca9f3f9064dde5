"""A researcher's DiffPrivLib session: build a pipeline locally, price it, try it, fit it.

Needs the client's ``diffprivlib`` extra (``pip install "neblina-client[diffprivlib]"``).
Reads NEBLINA_URL and NEBLINA_TOKEN from the environment (or .neblina/local.env, written by
``make up``):

    make up && .venv/bin/python examples/diffprivlib_session.py; make down
"""

from __future__ import annotations

import warnings

from diffprivlib.models import GaussianNB, LogisticRegression, StandardScaler
from sklearn.pipeline import Pipeline

from neblina_client import Client, InvalidRequestError

warnings.filterwarnings("ignore", category=DeprecationWarning)  # SciPy on diffprivlib 0.6.6

FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def main() -> None:
    client = Client(dataset="PENGUIN")

    section("a pipeline built locally, priced from the metadata (free)")
    pipeline = Pipeline(
        [
            ("scaler", StandardScaler(epsilon=0.5)),  # bounds: the metadata's
            ("classifier", LogisticRegression(epsilon=0.5, data_norm=2.0, C=10.0)),
        ]
    )
    print(client.diffprivlib.cost(pipeline, FEATURES, "species"))

    section("tried on dummy rows (free), scored there")
    dummy_rows = client.dummy(rows=200, seed=1).dropna(subset=[*FEATURES, "species"])
    trial = client.diffprivlib.fit(pipeline, FEATURES, "species", dummy=True)
    print("accuracy on dummy rows:", trial.model.score(dummy_rows[FEATURES], dummy_rows["species"]))

    section("fitted on the private rows: parameters only, rebuilt locally")
    fitted = client.diffprivlib.fit(pipeline, FEATURES, "species")
    print("cost:", fitted.cost)
    print("coefficients:", fitted.release["steps"][-1]["fitted"]["coef_"])
    print(
        "predictions on two rows of my own:",
        fitted.model.predict([[39.0, 18.0, 190.0, 3700.0], [48.0, 15.0, 220.0, 5400.0]]),
    )

    section("a step that would leak is refused before any read (400, nothing debited)")
    leaky = Pipeline(
        [("scaler", StandardScaler(epsilon=0.5)), ("classifier", LogisticRegression(epsilon=1.0))]
    )
    try:
        client.diffprivlib.cost(leaky, FEATURES, "species")
    except InvalidRequestError as error:
        print(error)

    section("GaussianNB with priors")
    naive = GaussianNB(epsilon=1.0, priors=[0.44, 0.2, 0.36])
    model = client.diffprivlib.fit(naive, FEATURES, "species").model
    print("class means:", model.steps[-1][1].theta_.round(1).tolist())

    section("a fit as an async job: debited at submission, collected when done")
    job = client.diffprivlib.fit(naive, FEATURES, "species", wait=False)
    print(job, job.status().state)  # "running" (with its phase) until the fit is done
    print("class priors:", job.wait().model.steps[-1][1].class_prior_.round(2).tolist())
    print("remaining:", client.budget().remaining)


if __name__ == "__main__":
    main()
