"""Synthetic data end to end: the real client, API server, synth worker process and emulator.

The unit tests (tests/unit/test_synth_engine.py) check prices, spends and noise in process;
here one synthesis goes through the front, the hop to the synth worker (its own process,
localstack/workerserver.py) as a job, and back: 202 at once, one exact debit, the rows, and
the Lomas shim's ``result.df_samples``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from neblina_client import Client, InvalidRequestError, SynthJob, lomas


@pytest.fixture
def researcher(make_researcher):  # type: ignore[no-untyped-def]
    return make_researcher({"PENGUIN": ("10", "0.001")})


def test_a_synthesis_runs_as_a_job_on_the_synth_worker_and_is_debited_exactly_once(
    stack: Any, researcher: Any
) -> None:
    assert "synth" in stack.workers  # its own worker process
    columns = ["species", "island", "sex", "flipper_length_mm"]
    with Client(url=stack.api_url, token=researcher.token, dataset="PENGUIN") as client:
        price = client.synth.cost("mwem", 1.5, select_cols=columns)
        assert (str(price.epsilon), str(price.delta)) == ("1.5", "0")
        before = client.budget().remaining
        job = client.synth.sample(
            "mwem", 1.5, None, columns, {"iterations": 10}, nb_samples=120, wait=False
        )
        assert isinstance(job, SynthJob)
        assert client.budget().remaining == before - price  # debited at submission
        rows = job.wait(timeout=120, progress=False)
        assert isinstance(rows, pd.DataFrame) and list(rows.columns) == columns
        assert len(rows) == 120 and set(rows["species"]) <= {"Adelie", "Chinstrap", "Gentoo"}
        assert job.status().state == "done"
        assert client.budget().remaining == before - price  # exactly one debit
        with pytest.raises(InvalidRequestError) as refused:
            client.synth.sample("dpctgan", 1.0)
        assert refused.value.code == "unsupported_synthesizer"
        assert client.budget().remaining == before - price


def test_the_lomas_shim_returns_synthetic_rows_in_df_samples(stack: Any, researcher: Any) -> None:
    client = lomas.Client(stack.api_url, "Dr. Antartica", "PENGUIN", token=researcher.token)
    cost = client.smartnoise_synth.cost("mwem", 0.5, select_cols=["species", "island"])
    assert (cost.epsilon, cost.delta) == (0.5, 0.0)
    answer = client.smartnoise_synth.query(
        "mwem", 0.5, select_cols=["species", "island"], nb_samples=30, dummy=True
    )
    assert isinstance(answer.result, lomas.SmartnoiseSynthSamples)
    assert len(answer.result.df_samples) == 30 and answer.query_id is None  # dummy: free
