"""A researcher's synthetic-data session: price a synthesizer, try it on dummy rows, fit it.

Reads NEBLINA_URL and NEBLINA_TOKEN from the environment (or .neblina/local.env, written by
``make up``):

    make up && .venv/bin/python examples/synth_session.py; make down

or beside another stack, on a free emulator port (run and checked this way: about 35 s,
ε 4 of PENGUIN's 10 spent, by the MST job and the conditional MWEM sample)::

    export NEBLINA_STATE_DIR=/tmp/neblina-synth
    .venv/bin/python localstack/stack.py up --emulator-port 4600
    set -a; . /tmp/neblina-synth/local.env; set +a
    .venv/bin/python examples/synth_session.py
    .venv/bin/python localstack/stack.py down
"""

from __future__ import annotations

from neblina_client import Client, InvalidRequestError

COLUMNS = ["species", "island", "sex", "flipper_length_mm"]
FAST_MST = {"iters": 300, "select_iters": 100}  # snsynth's defaults (5,000) take longer


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def main() -> None:
    client = Client(dataset="PENGUIN")

    section("the price is the request's (epsilon, delta), from the request alone (free)")
    print(client.synth.cost("mst", epsilon=3.0, delta=1e-6, select_cols=COLUMNS))
    print(client.synth.cost("mwem", epsilon=1.0))  # MWEM is pure epsilon-DP: delta 0

    section("tried on dummy rows (free)")
    trial = client.synth.sample("mwem", 1.0, select_cols=COLUMNS, nb_samples=5, dummy=True)
    print(trial)

    section("MST on the private rows, as a job: debited at submission, rows when done")
    job = client.synth.sample("mst", 3.0, 1e-6, COLUMNS, FAST_MST, nb_samples=500, wait=False)
    print(job, job.status().state)  # "running" with its phase and progress until done
    rows = job.wait()  # a progress bar on a terminal
    print(rows.head())
    print("species shares:", rows["species"].value_counts(normalize=True).round(2).to_dict())

    section("conditional sampling: only rows meeting a WHERE clause (post-processing)")
    dream = client.synth.sample(
        "mwem", 1.0, select_cols=COLUMNS, nb_samples=20, condition="island = 'Dream'"
    )
    print(dream["island"].unique())

    section("a GAN synthesizer is refused before anything runs (400, nothing debited)")
    try:
        client.synth.cost("dpctgan", 1.0)
    except InvalidRequestError as error:
        print(error.code, "-", error)

    print("\nremaining budget:", client.budget().remaining)


if __name__ == "__main__":
    main()
