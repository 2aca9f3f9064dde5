"""A Lomas deployment imported with the CLI, then Lomas notebook code run through the shim.

The deployment is tests/fixtures/lomas/yaml (a Lomas 0.4 YAML database), copied with a suffix
on every user and dataset name so it cannot clash with the session's demo PENGUIN. The
session code below is written from Lomas's documented client API (lomas_client 0.4.1):
only the import line and ``token=`` differ.
"""

from __future__ import annotations

import shutil
import uuid
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from neblina_client import Client as NeblinaClient
from neblina_client import QueryConflictError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lomas" / "yaml"
NAMES = ("PENGUIN", "IRIS", "TINTIN_S3_TEST", "BIRTHDAYS", "Tintin", "Milou", "BirthdayGirl")


@pytest.fixture(scope="module")
def deployment(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The fixture imported into the session's store; names, tokens and the CLI's output."""
    from neblina_admin.cli import app

    suffix = uuid.uuid4().hex[:6]
    folder = tmp_path_factory.mktemp("lomas") / "deployment"
    shutil.copytree(FIXTURE, folder)
    text = (folder / "lomas_admin.yaml").read_text()
    names = {name: f"{name}_{suffix}" for name in NAMES}
    names["Dr. Antartica"] = f"Dr. Antartica {suffix}"
    for old, new in names.items():
        text = text.replace(f"{old}\n", f"{new}\n").replace(f": {old},", f": {new},")
    (folder / "lomas_admin.yaml").write_text(text)
    plan = CliRunner().invoke(app, ["import", "lomas", str(folder / "lomas_admin.yaml")])
    applied = CliRunner().invoke(
        app, ["import", "lomas", str(folder / "lomas_admin.yaml"), "--apply"]
    )
    assert applied.exit_code == 0, applied.output
    tokens = {}
    for line in applied.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            tokens[parts[0]] = parts[2]
    names["Dr. Antartica user"] = f"Dr._Antartica_{suffix}"
    return {
        "names": names,
        "tokens": tokens,
        "plan": plan,
        "applied": applied,
        "url": stack.api_url,
    }


def session(deployment: dict[str, Any], user: str, dataset: str) -> Any:
    from neblina_client.lomas import Client

    names, tokens = deployment["names"], deployment["tokens"]
    uid = names["Dr. Antartica user"] if user == "Dr. Antartica" else names[user]
    return Client(deployment["url"], names[user], names[dataset], token=tokens[uid])


def test_the_plan_writes_nothing_and_apply_issues_one_token_per_user(
    deployment: dict[str, Any], store: Any
) -> None:
    plan, names = deployment["plan"], deployment["names"]
    assert plan.exit_code == 0, plan.output
    assert "Nothing written to the store" in plan.output
    assert f"+ user {names['Dr. Antartica user']} (Lomas '{names['Dr. Antartica']}')" in plan.output
    assert "needs an IAM grant" in plan.output
    assert len(deployment["tokens"]) == 4
    grant = store.get_grant(names["BirthdayGirl"], names["BIRTHDAYS"])
    assert grant.spent.epsilon == Decimal("3.2") and grant.spent.delta == Decimal("0.00001")
    milou = store.get_user(names["Milou"])
    assert milou is not None and milou.disabled


def test_lomas_session_code_runs_unchanged_through_the_shim(deployment: dict[str, Any]) -> None:
    import opendp.prelude as dp

    client = session(deployment, "Dr. Antartica", "PENGUIN")  # the one changed line
    # --- Lomas notebook code from here (lomas_client 0.4.1 API) ---
    metadata = client.get_dataset_metadata()
    assert metadata["max_ids"] == 1 and "bill_length_mm" in metadata["columns"]
    df_dummy = client.get_dummy_dataset(nb_rows=50, seed=1)
    assert isinstance(df_dummy, pd.DataFrame) and len(df_dummy) == 50
    assert list(df_dummy.columns) == list(metadata["columns"])

    initial = client.get_initial_budget()
    spent = client.get_total_spent_budget()
    remaining = client.get_remaining_budget()
    assert (initial.initial_epsilon, initial.initial_delta) == (10.0, 0.005)
    assert spent.total_spent_epsilon == pytest.approx(4.693147180559945, abs=1e-15)
    assert remaining.remaining_epsilon == pytest.approx(10 - 4.693147180559945, abs=1e-15)

    query = "SELECT COUNT(*) AS NB_ROW FROM df"
    cost = client.smartnoise_sql.cost(query=query, epsilon=0.5, delta=1e-5)
    dummy = client.smartnoise_sql.query(
        query=query, epsilon=0.5, delta=1e-5, dummy=True, nb_rows=100, seed=1
    )
    assert (dummy.epsilon, dummy.delta) == (cost.epsilon, cost.delta)
    assert client.get_total_spent_budget() == spent  # cost and dummy runs are free
    res = client.smartnoise_sql.query(query=query, epsilon=0.5, delta=1e-5)
    assert isinstance(res.result.df, pd.DataFrame) and list(res.result.df.columns) == ["NB_ROW"]
    assert res.requested_by == deployment["names"]["Dr. Antartica"]

    dp.enable_features("contrib")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pipeline = (
            dp.t.make_split_dataframe(separator=",", col_names=list(metadata["columns"]))
            >> dp.t.make_select_column(key="bill_length_mm", TOA=str)
            >> dp.t.then_cast_default(TOA=float)
            >> dp.t.then_impute_constant(47.5)
            >> dp.t.then_clamp(bounds=(30.0, 65.0))
            >> dp.t.then_resize(size=metadata["rows"], constant=47.5)
            >> dp.t.then_mean()
            >> dp.m.then_laplace(scale=0.5)
        )
    opendp_cost = client.opendp.cost(opendp_pipeline=pipeline)
    assert opendp_cost.epsilon == pytest.approx(float(pipeline.map(d_in=1)), rel=1e-12)
    opendp_res = client.opendp.query(opendp_pipeline=pipeline)
    assert isinstance(opendp_res.result.value, float)

    after = client.get_total_spent_budget()
    assert after.total_spent_epsilon == pytest.approx(
        spent.total_spent_epsilon + cost.epsilon + opendp_cost.epsilon, abs=1e-12
    )
    previous = client.get_previous_queries()
    libraries = [q["dp_librairy"] for q in previous]
    assert libraries[:5] == [
        "smartnoise_sql",
        "opendp",
        "diffprivlib",
        "smartnoise_synth",
        "smartnoise_synth",
    ]  # the imported archive, oldest first, then the two new releases
    assert libraries[5:] == ["smartnoise_sql", "opendp"]
    assert previous[0]["client_input"]["query_str"] == query
    assert previous[0]["timestamp"] == 1738570000.123456  # Lomas's own float, kept
    assert previous[5]["response"]["result"]["df"]["columns"] == ["NB_ROW"]


def test_imported_queries_show_in_history_and_are_never_replayed(
    deployment: dict[str, Any],
) -> None:
    names = deployment["names"]
    token = deployment["tokens"][names["Tintin"]]
    with NeblinaClient(deployment["url"], token, names["PENGUIN"], max_retries=0) as client:
        history = client.history()
        imported = [q for q in history if q.engine == "lomas:opendp"]
        assert len(imported) == 2 and all(q.state == "done" for q in imported)
        before = client.budget()
        assert before.spent.epsilon == Decimal("0.30000000000000004")
        with pytest.raises(QueryConflictError):
            client.sql.query("SELECT COUNT(*) AS n FROM df", 1, 0, query_id=imported[0].query_id)
        assert client.budget().spent == before.spent


def test_a_disabled_lomas_user_is_refused_as_lomas_would(deployment: dict[str, Any]) -> None:
    from neblina_client.lomas import UnauthorizedAccessException

    client = session(deployment, "Milou", "IRIS")
    with pytest.raises(UnauthorizedAccessException):
        client.get_remaining_budget()
