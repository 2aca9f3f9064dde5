"""``import lomas`` on the in-memory store: amounts, history, refusals, the declarative form.

The fixtures (tests/fixtures/lomas/) are one Lomas 0.4 deployment in both of its forms: the
YAML database its server loads, and a mongoexport of its four collections.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib.config import from_environ
from chalicelib.datasets import DatasetLoader
from chalicelib.errors import InvalidRequest, QueryIdConflict
from chalicelib.models import Dataset, PrivacyCost, QueryState, User, utcnow
from chalicelib.service import Service
from chalicelib.storage.memory import MemoryStore
from neblina_admin import declarative, lomas

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lomas"
YAML_DB = FIXTURES / "yaml" / "lomas_admin.yaml"
EXPORT = FIXTURES / "mongoexport"


def convert(source: Path = YAML_DB, **options: Any) -> lomas.LomasImport:
    base = source if source.is_dir() else source.parent
    return lomas.convert(lomas.read(source), base, source=str(source), **options)


def imported_store(imported: lomas.LomasImport | None = None) -> MemoryStore:
    store = MemoryStore()
    lomas.apply(store, imported or convert())
    return store


def lomas_yaml() -> dict[str, Any]:
    return dict(yaml.safe_load(YAML_DB.read_text()))


def test_the_yaml_database_and_the_mongo_export_import_the_same_deployment() -> None:
    from_yaml, from_mongo = convert(YAML_DB), convert(EXPORT)
    assert from_yaml.problems == [] and from_mongo.problems == []
    assert from_mongo.desired.grants == from_yaml.desired.grants
    assert from_mongo.desired.spent == from_yaml.desired.spent
    assert {n: d.metadata for n, d in from_mongo.desired.datasets.items()} == {
        n: d.metadata for n, d in from_yaml.desired.datasets.items()
    }
    assert [(r.query_id, r.cost, r.created_at) for r in lomas.iter_history(from_mongo)] == [
        (r.query_id, r.cost, r.created_at) for r in lomas.iter_history(from_yaml)
    ]
    assert set(from_yaml.desired.users) == {"Dr._Antartica", "Tintin", "Milou", "BirthdayGirl"}
    assert from_yaml.renamed == {"Dr. Antartica": "Dr._Antartica"}
    assert from_yaml.archive_count() == 7


def test_spent_budgets_come_across_exactly_and_never_leave_more_than_lomas_had() -> None:
    imported = convert()
    store = imported_store(imported)
    grant = store.get_grant("BirthdayGirl", "BIRTHDAYS")
    assert grant is not None
    assert grant.spent == PrivacyCost(epsilon=Decimal("3.2"), delta=Decimal("0.00001"))
    assert grant.initial == PrivacyCost(epsilon=Decimal(10), delta=Decimal("0.05"))
    tintin = store.get_grant("Tintin", "PENGUIN")
    assert tintin is not None and tintin.spent.epsilon == Decimal("0.30000000000000004")
    # 1.0 - 0.89 is 0.10999999999999999 in Lomas's floats: spent is raised by 1e-17 so the
    # imported remaining (0.10999999999999999) is not the 0.11 Lomas would have refused
    iris = store.get_grant("BirthdayGirl", "IRIS")
    assert iris is not None and iris.spent.epsilon == Decimal("0.89000000000000001")
    for user in lomas_yaml()["users"]:
        uid = user["user_name"].replace(". ", "._")
        for entry in user["datasets_list"]:
            stored = store.get_grant(uid, entry["dataset_name"])
            assert stored is not None
            for axis in ("epsilon", "delta"):
                initial = float(entry[f"initial_{axis}"])
                lomas_remaining = initial - float(entry[f"total_spent_{axis}"])
                assert getattr(stored.remaining, axis) <= Decimal(repr(lomas_remaining))
                assert getattr(stored.spent, axis) >= Decimal(
                    repr(float(entry[f"total_spent_{axis}"]))
                )


def test_every_grants_spend_is_the_sum_of_its_records_costs() -> None:
    store = imported_store()
    for grant in store.list_grants():
        records = [
            r
            for r in store.queries.values()
            if (r.user_id, r.dataset) == (grant.user_id, grant.dataset)
        ]
        assert sum((r.cost for r in records), PrivacyCost.zero()) == grant.spent
        assert all(r.state is QueryState.DONE and r.result is None for r in records)
    openings = [r for r in store.queries.values() if r.engine == "import"]
    assert {(r.user_id, r.dataset) for r in openings} == {
        ("Tintin", "PENGUIN"),  # 0.30000000000000004 spent, 0.1 + 0.2 archived
        ("BirthdayGirl", "BIRTHDAYS"),
        ("BirthdayGirl", "IRIS"),
    }
    tintin = next(r for r in openings if r.user_id == "Tintin")
    assert tintin.cost == PrivacyCost(epsilon=Decimal("4E-17"), delta=0)


def test_the_archive_keeps_timestamps_requests_and_costs_and_drops_every_pickle() -> None:
    store = imported_store()
    records = sorted(
        (r for r in store.queries.values() if r.engine.startswith("lomas:")),
        key=lambda r: r.created_at,
    )
    assert [r.engine for r in records] == [
        "lomas:smartnoise_sql",
        "lomas:opendp",
        "lomas:diffprivlib",
        "lomas:smartnoise_synth",
        "lomas:smartnoise_synth",
        "lomas:opendp",
        "lomas:opendp",
    ]
    first = records[0]
    assert first.created_at.timestamp() == pytest.approx(1738570000.123456, abs=1e-6)
    assert (
        first.request["lomas"]["client_input"]["query_str"] == "SELECT COUNT(*) AS NB_ROW FROM df"
    )
    assert first.request["lomas"]["response"]["result"]["df"]["data"] == [[346]]
    # Lomas's 1.4999999999999999e-05 has a digit below the ledger's 1e-20 grid: rounded up
    assert first.cost == PrivacyCost(epsilon=Decimal("0.5"), delta=Decimal("0.000015"))
    dump = json.dumps([r.request for r in records])
    assert "gASV" not in dump  # the base64 pickles of the diffprivlib and synth models
    model = records[2].request["lomas"]["response"]["result"]["model"]
    assert model.startswith("dropped: a pickled object is never unpickled")
    assert "pickled model was dropped" in records[3].request["note"]
    assert records[4].request["lomas"]["response"]["result"]["df_samples"]["columns"] == [
        "species",
        "island",
    ]


def test_history_shows_imported_queries_and_their_ids_can_never_be_replayed() -> None:
    store = imported_store()
    settings = from_environ()
    service = Service(store, settings, DatasetLoader(settings))
    page = service.history("Tintin", "PENGUIN", 100, None)
    engines = [q["engine"] for q in page["queries"]]
    assert engines.count("lomas:opendp") == 2 and "import" in engines
    imported_id = next(q["query_id"] for q in page["queries"] if q["engine"] == "lomas:opendp")
    before = store.get_grant("Tintin", "PENGUIN")
    body = {
        "engine": "smartnoise_sql",
        "query": "SELECT COUNT(*) AS n FROM df",
        "epsilon": "1",
        "delta": "0",
        "query_id": imported_id,
    }
    with pytest.raises(QueryIdConflict):
        service.query("Tintin", "PENGUIN", body)
    assert store.get_grant("Tintin", "PENGUIN") == before
    assert service.get_query("Tintin", "PENGUIN", imported_id)["state"] == "done"


def test_may_query_false_is_a_disabled_user_and_every_user_gets_a_token() -> None:
    store = MemoryStore()
    tokens = lomas.apply(store, convert())
    assert set(tokens) == {"Dr._Antartica", "Tintin", "Milou", "BirthdayGirl"}
    milou = store.get_user("Milou")
    assert milou is not None and milou.disabled
    assert not any(u.disabled for u in store.list_users() if u.user_id != "Milou")
    for uid, issued in tokens.items():
        stored = store.get_token(issued.record.token_hash)
        assert stored is not None and stored.user_id == uid


def test_every_refusal_is_listed_with_its_reason_and_nothing_is_written(tmp_path: Path) -> None:
    broken = lomas_yaml()
    broken["users"].append(copy.deepcopy(broken["users"][1]))  # Tintin twice
    broken["users"][0]["datasets_list"].append(
        {"dataset_name": "Bijoux de la Castafiore", "initial_epsilon": 1.0, "initial_delta": 0.0}
    )
    broken["users"][2]["datasets_list"][0]["total_spent_epsilon"] = 6.0  # above 5
    broken["datasets"][1]["dataset_access"] = {"database_type": "SQL_DB", "path": "x"}
    broken["queries"].append({**broken["queries"][0], "user_name": "Haddock"})
    (tmp_path / "metadata").mkdir()
    meta = yaml.safe_load((FIXTURES / "yaml/metadata/birthdays_metadata.yaml").read_text())
    meta["columns"]["birthday"]["lower"] = "2060-01-01"  # above its upper
    (tmp_path / "metadata/birthdays_metadata.yaml").write_text(yaml.safe_dump(meta))
    for name in ("penguin", "iris"):
        source = FIXTURES / f"yaml/metadata/{name}_metadata.yaml"
        (tmp_path / f"metadata/{name}_metadata.yaml").write_text(source.read_text())
    path = tmp_path / "lomas_admin.yaml"
    path.write_text(yaml.safe_dump(broken))
    imported = convert(path)
    text = "\n".join(imported.problems)
    assert "user 'Tintin': duplicate" in text
    assert "grant on 'Bijoux de la Castafiore': no such dataset" in text
    assert "grant Milou on IRIS: spent (epsilon 6, delta 0) is above the initial budget" in text
    assert "database_type 'SQL_DB' is not PATH_DB or S3_DB" in text
    assert "dataset BIRTHDAYS: invalid metadata" in text
    assert "('Haddock' on 'PENGUIN'): no such grant" in text
    store = MemoryStore()
    with pytest.raises(InvalidRequest, match="nothing imported"):
        lomas.apply(store, imported)
    assert store.list_users() == [] and store.list_datasets() == [] and store.queries == {}


def test_a_grant_spent_above_its_initial_budget_is_refused(tmp_path: Path) -> None:
    broken = lomas_yaml()
    broken["users"][2]["datasets_list"][0]["total_spent_epsilon"] = 6.0  # Milou: 6 of 5
    (tmp_path / "lomas_admin.yaml").write_text(yaml.safe_dump(broken))
    (tmp_path / "metadata").symlink_to(FIXTURES / "yaml/metadata")
    (tmp_path / "data").symlink_to(FIXTURES / "yaml/data")
    problems = convert(tmp_path / "lomas_admin.yaml").problems
    assert problems == [
        "grant Milou on IRIS: spent (epsilon 6, delta 0) is above the initial budget"
    ]


def test_names_already_in_neblina_are_refused_and_nothing_is_written() -> None:
    store = MemoryStore()
    store.put_user(User("Tintin", utcnow()))
    _, problems = lomas.plan(store, convert())
    assert problems == ["user Tintin already exists in Neblina (import only creates)"]
    with pytest.raises(InvalidRequest):
        lomas.apply(store, convert())
    assert [u.user_id for u in store.list_users()] == ["Tintin"]
    assert store.list_grants() == [] and store.queries == {}


def test_archived_queries_of_revoked_grants_are_refused_unless_left_behind(tmp_path: Path) -> None:
    trimmed = lomas_yaml()
    trimmed["users"][1]["datasets_list"] = []  # Tintin's grant on PENGUIN was revoked in Lomas
    (tmp_path / "lomas_admin.yaml").write_text(yaml.safe_dump(trimmed))
    (tmp_path / "metadata").symlink_to(FIXTURES / "yaml/metadata")
    (tmp_path / "data").symlink_to(FIXTURES / "yaml/data")
    refused = convert(tmp_path / "lomas_admin.yaml")
    assert len(refused.problems) == 2 and "--drop-orphan-queries" in refused.problems[0]
    dropped = convert(tmp_path / "lomas_admin.yaml", drop_orphans=True)
    assert dropped.problems == [] and dropped.archive_count() == 5
    assert "2 archived queries without a grant left behind" in dropped.notes


def test_the_declarative_file_carries_spent_as_an_opening_balance(tmp_path: Path) -> None:
    document, metadata = lomas.document(convert())
    (tmp_path / "metadata").mkdir()
    for name, meta in metadata.items():
        (tmp_path / f"metadata/{name}.yaml").write_text(yaml.safe_dump(meta))
    path = tmp_path / "neblina.yaml"
    path.write_text(yaml.safe_dump(document))
    desired = declarative.load(path)
    assert desired.spent[("BirthdayGirl", "BIRTHDAYS")] == PrivacyCost(
        epsilon="3.2", delta="0.00001"
    )
    store = MemoryStore()
    changes = declarative.apply(store, desired)
    assert any("already spent epsilon 3.2, delta 0.00001" in c.line() for c in changes)
    grant = store.get_grant("BirthdayGirl", "BIRTHDAYS")
    assert grant is not None and grant.spent == PrivacyCost(epsilon="3.2", delta="0.00001")
    opening = [r for r in store.queries.values() if r.dataset == "BIRTHDAYS"]
    assert [(r.engine, r.cost) for r in opening] == [("import", grant.spent)]
    # a second apply changes nothing: spent is an opening balance, not a setting
    assert declarative.plan(store, declarative.load(path))[0] == []


def test_a_declarative_spent_above_the_grant_is_refused(tmp_path: Path) -> None:
    raw = {
        "users": [{"id": "alice"}],
        "grants": [
            {
                "user": "alice",
                "dataset": "D",
                "epsilon": 1,
                "delta": 0,
                "spent": {"epsilon": 2, "delta": 0},
            }
        ],
    }
    with pytest.raises(InvalidRequest, match="spent is above the grant's epsilon or delta"):
        declarative.parse(raw, tmp_path)


def test_the_cli_prints_the_plan_and_writes_the_file_but_nothing_to_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from neblina_admin import cli

    store = MemoryStore()
    monkeypatch.setattr(cli, "_store", lambda: store)
    out = tmp_path / "neblina.yaml"
    result = CliRunner().invoke(cli.app, ["import", "lomas", str(YAML_DB), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        "+ grant BirthdayGirl on BIRTHDAYS: epsilon 10, delta 0.05; spent epsilon 3.2"
        in result.output
    )
    assert "needs an IAM grant: TINTIN_S3_TEST: s3://example/data/test_penguin.csv" in result.output
    assert "Nothing written to the store" in result.output
    assert store.list_users() == []
    assert declarative.load(out).spent[("Tintin", "PENGUIN")].epsilon == Decimal(
        "0.30000000000000004"
    )


@pytest.mark.parametrize(
    "raw",
    [
        {"users": "x", "datasets": [1, {"dataset_name": "A"}], "queries_archives": [None]},
        {
            "users": [{"user_name": "u", "may_query": "yes", "datasets_list": {"a": 1}}],
            "datasets": [{"dataset_name": "A", "dataset_access": {"database_type": "S3_DB"}}],
            "metadata": [{"A": "nope"}],
            "queries_archives": [{"user_name": "u", "dataset_name": "A", "timestamp": "x"}],
        },
        {
            "users": [
                {
                    "user_name": "u",
                    "datasets_list": [
                        {"dataset_name": "A", "initial_epsilon": float("inf"), "initial_delta": 2}
                    ],
                }
            ],
            "datasets": [{"dataset_name": "A" * 100}],
            "metadata": [],
        },
    ],
)
def test_malformed_documents_are_refusals_never_crashes(raw: dict[str, Any]) -> None:
    imported = lomas.convert(raw, FIXTURES)
    assert imported.problems
    with pytest.raises(InvalidRequest, match="nothing imported"):
        lomas.apply(MemoryStore(), imported)


def test_unreadable_sources_are_refused_with_their_reason(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot read"):
        lomas.read(tmp_path / "missing.yaml")
    (tmp_path / "users.json").write_text('{"user_name": "a"}')
    with pytest.raises(InvalidRequest, match=r"no datasets\.json"):
        lomas.read(tmp_path)
    for name in ("datasets", "metadata"):
        (tmp_path / f"{name}.json").write_text("[]")
    assert lomas.read(tmp_path)["users"] == [{"user_name": "a"}]
    (tmp_path / "users.json").write_text('{"user_name": "a"')
    with pytest.raises(InvalidRequest, match="is not mongoexport JSON"):
        lomas.read(tmp_path)


def test_an_import_converts_each_dataset_to_its_parquet_copy_as_datasets_add_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    converted: list[str] = []

    def columnar_copy(settings: object, dataset: Dataset) -> dict[str, str] | None:
        converted.append(dataset.name)
        if dataset.name == "IRIS":
            raise RuntimeError("the bucket refused the write")  # logged; the source is read
        return {"uri": dataset.source + ".parquet", "etag": '"e"', "source_version": "v"}

    monkeypatch.setattr(lomas.admin, "columnar_copy", columnar_copy)
    store = MemoryStore()
    lomas.apply(store, convert(), settings=object())  # type: ignore[arg-type]
    assert sorted(converted) == sorted(d.name for d in store.list_datasets())
    for dataset in store.list_datasets():
        expected = None if dataset.name == "IRIS" else dataset.source + ".parquet"
        assert (dataset.columnar or {}).get("uri") == expected
    untouched = MemoryStore()
    lomas.apply(untouched, convert())  # no settings (tests, plan only): nothing converted
    assert all(d.columnar is None for d in untouched.list_datasets())
