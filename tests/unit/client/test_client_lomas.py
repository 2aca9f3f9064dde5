"""neblina_client.lomas against a scripted server: Lomas's shapes, errors and refusals."""

from __future__ import annotations

from typing import Any

import httpx
import pandas as pd
import pytest
from fake_server import TOKEN, URL, FakeServer

from neblina_client import BudgetExhaustedError, EngineError, lomas


def lomas_client(server: FakeServer) -> lomas.Client:
    return lomas.Client(
        URL,
        "Dr. Antartica",
        "PENGUIN",
        token=TOKEN,
        transport=httpx.MockTransport(server.handle),
        sleep=server.sleeps.append,
    )


def budget(initial: str, spent: str, remaining: str) -> dict[str, Any]:
    def amount(value: str) -> dict[str, str]:
        return {"epsilon": value, "delta": "0.001"}

    return {"initial": amount(initial), "spent": amount(spent), "remaining": amount(remaining)}


def test_budgets_come_back_as_lomas_responses_of_floats(server: FakeServer) -> None:
    server.reply(json=budget("10", "0.30000000000000004", "9.69999999999999996"))
    server.reply(json=budget("10", "0.30000000000000004", "9.69999999999999996"))
    server.reply(json=budget("10", "0.30000000000000004", "9.69999999999999996"))
    client = lomas_client(server)
    initial = client.get_initial_budget()
    spent = client.get_total_spent_budget()
    remaining = client.get_remaining_budget()
    assert (initial.initial_epsilon, initial.initial_delta) == (10.0, 0.001)
    assert spent.total_spent_epsilon == 0.30000000000000004 and spent.total_spent_delta == 0.001
    assert (remaining.remaining_epsilon, remaining.remaining_delta) == (9.7, 0.001)
    assert server.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_a_sql_query_answers_with_a_dataframe_in_result_df(server: FakeServer) -> None:
    table = {
        "type": "table",
        "columns": ["NB_ROW"],
        "dtypes": {"NB_ROW": "int64"},
        "records": [{"NB_ROW": 346}],
    }
    server.reply(
        json={
            "query_id": "q-12345678",
            "dataset": "PENGUIN",
            "engine": "smartnoise_sql",
            "cost": {"epsilon": "0.5", "delta": "0"},
            "result": table,
            "dummy": False,
            "replayed": False,
            "created_at": "2026-11-29T17:00:00+00:00",
        }
    )
    response = lomas_client(server).smartnoise_sql.query(
        "SELECT COUNT(*) AS NB_ROW FROM df", epsilon=0.5, delta=1e-5
    )
    assert isinstance(response.result.df, pd.DataFrame)  # type: ignore[union-attr]
    assert response.result.res_type == "smartnoise_sql"
    assert (response.epsilon, response.delta, response.requested_by) == (0.5, 0.0, "Dr. Antartica")
    sent = server.body()
    assert sent["query"] == "SELECT COUNT(*) AS NB_ROW FROM df" and "mechanisms" not in sent


def test_neblina_errors_become_lomas_exceptions_carrying_the_neblina_error(
    server: FakeServer,
) -> None:
    server.error(409, "budget_exhausted", "not enough budget for this query")
    server.error(422, "engine_error", "Column cannot be found bill")
    server.error(403, "forbidden", "user disabled")
    client = lomas_client(server)
    with pytest.raises(lomas.InvalidQueryException) as exhausted:
        client.smartnoise_sql.query("SELECT COUNT(*) AS n FROM df", 1.0, 0.0)
    assert isinstance(exhausted.value.error, BudgetExhaustedError)
    with pytest.raises(lomas.ExternalLibraryException) as refused:
        client.smartnoise_sql.cost("SELECT AVG(bill) FROM df", 1.0, 0.0)
    assert refused.value.library == "smartnoise_sql"
    assert isinstance(refused.value.__cause__, EngineError)
    with pytest.raises(lomas.UnauthorizedAccessException):
        client.get_dataset_metadata()


def test_what_neblina_lacks_is_a_clear_error_naming_the_neblina_way(server: FakeServer) -> None:
    client = lomas_client(server)
    with pytest.raises(lomas.NotSupportedInNeblina, match="one target column"):
        client.diffprivlib.query(None, ["bill_length_mm"], ["species", "island"])
    with pytest.raises(lomas.NotSupportedInNeblina, match="never sends a model object"):
        client.smartnoise_synth.query("mwem", 1.0, return_model=True)
    with pytest.raises(lomas.NotSupportedInNeblina, match="from the metadata"):
        client.smartnoise_synth.cost("mst", 1.0, constraints={"age": "ordinal"})

    class LazyFrame:
        def collect(self) -> None: ...

    with pytest.raises(lomas.NotSupportedInNeblina, match=r"opendp\.context\(privacy_loss"):
        client.opendp.query(LazyFrame())
    with pytest.raises(lomas.NotSupportedInNeblina, match=r"\['mechanism'\]"):
        client.opendp.cost(object(), mechanism="gaussian")
    assert server.requests == []  # refused before anything was sent


def test_previous_queries_are_lomas_archive_documents_oldest_first(server: FakeServer) -> None:
    def record(query_id: str, engine: str, created: str, **fields: Any) -> dict[str, Any]:
        return {
            "query_id": query_id,
            "dataset": "PENGUIN",
            "engine": engine,
            "state": "done",
            "cost": {"epsilon": "1", "delta": "0"},
            "created_at": created,
            "finished_at": created,
            "error": None,
            **fields,
        }

    lomas_input = {"dataset_name": "PENGUIN", "opendp_json": "{}", "fixed_delta": None}
    imported = record(
        "lomas-1",
        "lomas:opendp",
        "2025-02-03T08:00:00+00:00",
        request={
            "lomas": {
                "library": "opendp",
                "client_input": lomas_input,
                "response": {"epsilon": 0.1, "delta": 0.0, "result": {"value": 342.0}},
            }
        },
        result=None,
    )
    native = record(
        "q-12345678",
        "opendp",
        "2026-11-29T17:00:00+00:00",
        request={"engine": "opendp", "pipeline": {"nodes": []}, "fixed_delta": None},
        result={"type": "value", "value": 12.5},
    )
    opening = record("opening-1", "import", "2026-11-29T16:00:00+00:00", request={}, result=None)
    server.reply(json={"queries": [native, opening, imported], "next_cursor": None})
    documents = lomas_client(server).get_previous_queries()
    assert [d["dp_librairy"] for d in documents] == ["opendp", "opendp"]
    assert documents[0]["client_input"] == lomas_input
    assert documents[1]["response"]["result"] == {"res_type": "opendp", "value": 12.5}
    assert documents[1]["response"]["epsilon"] == 1.0
    assert documents[0]["timestamp"] < documents[1]["timestamp"]


SYNTH_ROWS = {
    "type": "table",
    "columns": ["species", "flipper_length_mm"],
    "dtypes": {"species": "object", "flipper_length_mm": "float64"},
    "records": [{"species": "Adelie", "flipper_length_mm": 181.5}] * 3,
}


def test_a_lomas_synth_query_is_a_job_whose_rows_come_back_in_df_samples(
    server: FakeServer,
) -> None:
    record = {
        "query_id": "q-synth-0001",
        "dataset": "PENGUIN",
        "engine": "smartnoise_synth",
        "cost": {"epsilon": "2", "delta": "1E-9"},
        "state": "running",
        "phase": "queued",
        "progress": None,
        "created_at": "2026-01-01T00:00:00+00:00",
    }
    server.reply(status=202, json=record)
    done = {**record, "state": "done", "phase": None, "result": SYNTH_ROWS, "dummy": False}
    server.reply(json=done)
    client = lomas_client(server)
    answer = client.smartnoise_synth.query(
        "mst", 2.0, select_cols=["species", "flipper_length_mm"], nb_samples=3
    )
    sent = server.requests[0]
    body = sent.read()
    import json

    payload = json.loads(body)
    assert payload["engine"] == "smartnoise_synth" and payload["synth_name"] == "mst"
    assert payload["wait"] is False and payload["nb_samples"] == 3
    assert payload["select_cols"] == ["species", "flipper_length_mm"]
    assert "delta" not in payload  # Lomas's None: the server's snsynth default (1e-9)
    assert isinstance(answer.result, lomas.SmartnoiseSynthSamples)
    assert answer.result.res_type == "sn_synth_samples"
    assert list(answer.result.df_samples.columns) == ["species", "flipper_length_mm"]
    assert len(answer.result.df_samples) == 3
    assert (answer.epsilon, answer.delta) == (2.0, 1e-9)
