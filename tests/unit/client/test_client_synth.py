"""client.synth against a scripted server: the request it sends, the rows it returns."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pandas as pd
from fake_server import TOKEN, URL, FakeServer

from neblina_client import Client, SynthJob

ROWS = {
    "type": "table",
    "columns": ["species", "island"],
    "dtypes": {"species": "object", "island": "object"},
    "records": [{"species": "Gentoo", "island": "Biscoe"}] * 2,
}
RECORD: dict[str, Any] = {
    "query_id": "q-synth-0002",
    "dataset": "PENGUIN",
    "engine": "smartnoise_synth",
    "cost": {"epsilon": "1", "delta": "0"},
    "state": "running",
    "phase": "queued",
    "progress": None,
    "created_at": "2026-01-01T00:00:00+00:00",
}


def client_for(server: FakeServer) -> Client:
    return Client(
        URL, TOKEN, "PENGUIN", transport=httpx.MockTransport(server.handle),
        sleep=server.sleeps.append,
    )  # fmt: skip


def sent(server: FakeServer, index: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(server.requests[index].read())
    return body


def test_cost_sends_the_synthesizer_its_budget_columns_and_parameters(server: FakeServer) -> None:
    server.reply(json={"dataset": "PENGUIN", "engine": "smartnoise_synth",
                       "cost": {"epsilon": "3", "delta": "0.000001"}})  # fmt: skip
    cost = client_for(server).synth.cost("aim", 3.0, 1e-6, ["species"], {"rounds": 20})
    assert (cost.epsilon, cost.delta) == (Decimal(3), Decimal("0.000001"))
    assert sent(server) == {
        "engine": "smartnoise_synth", "synth_name": "aim", "epsilon": 3.0, "delta": 1e-6,
        "select_cols": ["species"], "synth_params": {"rounds": 20},
    }  # fmt: skip


def test_sample_without_waiting_returns_a_job_whose_wait_gives_the_rows(
    server: FakeServer,
) -> None:
    server.reply(status=202, json=RECORD)
    server.reply(json={**RECORD, "state": "done", "phase": None, "result": ROWS, "dummy": False})
    job = client_for(server).synth.sample("mwem", 1.0, nb_samples=2, wait=False)
    assert isinstance(job, SynthJob) and job.query_id == sent(server)["query_id"]
    assert sent(server)["nb_samples"] == 2 and sent(server)["wait"] is False
    rows = job.wait(progress=False)
    assert list(rows["species"]) == ["Gentoo", "Gentoo"]
    assert job.answer is not None and str(job.answer.cost.epsilon) == "1"


def test_a_dummy_sample_answered_at_once_is_a_dataframe(server: FakeServer) -> None:
    server.reply(json={**RECORD, "state": "done", "phase": None, "result": ROWS, "dummy": True})
    rows = client_for(server).synth.sample("mst", 1.0, 1e-6, dummy=True, dummy_rows=50)
    assert isinstance(rows, pd.DataFrame) and len(rows) == 2
    assert sent(server)["dummy"] is True and sent(server)["dummy_rows"] == 50
