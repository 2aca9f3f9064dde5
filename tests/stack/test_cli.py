"""neblina-admin against the emulator: plan/apply, every command, bad input changes nothing.

The CLI runs in-process (typer's CliRunner) on its own table prefix, so ``apply`` (which
removes what the file does not list) never touches the session's demo tables; one test runs
the installed console script as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from chalicelib.models import PrivacyCost, QueryRecord, QueryState, utcnow

ROOT = Path(__file__).resolve().parents[2]
PENGUIN_META = yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text())
PENGUIN_CSV = ROOT / "localstack/data/penguins.csv"
runner = CliRunner()


@pytest.fixture
def admin_env(stack: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """A fresh table prefix on the session's emulator; yields the store the CLI uses."""
    from chalicelib.config import get_settings
    from chalicelib.storage import get_store, reset_store

    prefix = f"cli{uuid.uuid4().hex[:6]}-"
    monkeypatch.setenv("NEBLINA_TABLE_PREFIX", prefix)
    get_settings.cache_clear()
    reset_store()
    store = get_store()
    store.create_schema()
    monkeypatch.chdir(tmp_path)
    yield store
    get_settings.cache_clear()
    reset_store()


def cli(*args: str) -> Any:
    from neblina_admin.cli import app

    return runner.invoke(app, list(args))


def write(path: Path, document: Any) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def declarative_file(tmp: Path, **changes: Any) -> Path:
    write(tmp / "penguin.yaml", PENGUIN_META)
    document = {
        "users": [
            {"id": "alice", "description": "Alice"},
            {"id": "bob"},
        ],
        "datasets": [
            {"name": "PENGUIN", "source": str(PENGUIN_CSV), "metadata": "penguin.yaml"},
            {
                "name": "PENGUIN_S3",
                "source": "s3://neblina-datasets/PENGUIN/penguins.csv",
                "metadata": "penguin.yaml",
                "cap": {"epsilon": 15, "delta": "0.01"},
            },
        ],
        "grants": [
            {"user": "alice", "dataset": "PENGUIN", "epsilon": 10, "delta": "0.001"},
            {"user": "bob", "dataset": "PENGUIN", "epsilon": 5, "delta": "0.001"},
            {"user": "alice", "dataset": "PENGUIN_S3", "epsilon": 10, "delta": "0.001"},
        ],
    }
    document.update(changes)
    return write(tmp / "neblina.yaml", document)


def state(store: Any) -> Any:
    """Everything an admin command could change."""
    return (
        store.list_users(),
        store.list_datasets(),
        list(store.list_grants()),
        store.list_tokens(),
        [store.get_cap(d.name) for d in store.list_datasets()],
    )


def spend(store: Any, user: str, dataset: str, epsilon: str) -> None:
    now = utcnow()
    store.reserve(
        QueryRecord(
            query_id=uuid.uuid4().hex,
            user_id=user,
            dataset=dataset,
            engine="smartnoise_sql",
            payload_hash="h",
            request={"query": "SELECT COUNT(*) AS n FROM df"},
            cost=PrivacyCost(epsilon=epsilon, delta=0),
            state=QueryState.RUNNING,
            created_at=now,
            lease_expires_at=now + timedelta(minutes=15),
        )
    )


def test_apply_is_idempotent_and_plan_shows_exactly_the_edits(
    admin_env: Any, tmp_path: Path
) -> None:
    path = declarative_file(tmp_path)
    planned = cli("plan", str(path))
    assert planned.exit_code == 0, planned.output
    assert "Plan: 8 to create, 0 to update, 0 to remove." in planned.output
    assert admin_env.list_users() == []  # plan changed nothing
    assert cli("plan", str(path), "--detailed-exitcode").exit_code == 5
    applied = cli("apply", str(path))
    assert applied.exit_code == 0, applied.output
    assert "Applied: 8 to create" in applied.output
    grant = admin_env.get_grant("alice", "PENGUIN_S3")
    assert grant.initial == PrivacyCost(epsilon=10, delta="0.001") and grant.capped
    assert admin_env.get_cap("PENGUIN_S3").limit == PrivacyCost(epsilon=15, delta="0.01")
    again = cli("apply", str(path))
    assert again.exit_code == 0 and "No changes" in again.output
    assert "No changes" in cli("plan", str(path)).output
    assert cli("plan", str(path), "--detailed-exitcode").exit_code == 0

    # edit: bob's budget, one metadata bound, a new user, PENGUIN_S3 and its grant gone
    edited_meta = json.loads(json.dumps(PENGUIN_META))
    edited_meta["columns"]["body_mass_g"]["upper"] = 8000.0
    write(tmp_path / "penguin2.yaml", edited_meta)
    edited = declarative_file(
        tmp_path,
        users=[{"id": "alice", "description": "Alice"}, {"id": "bob"}, {"id": "carol"}],
        datasets=[{"name": "PENGUIN", "source": str(PENGUIN_CSV), "metadata": "penguin2.yaml"}],
        grants=[
            {"user": "alice", "dataset": "PENGUIN", "epsilon": 10, "delta": "0.001"},
            {"user": "bob", "dataset": "PENGUIN", "epsilon": 7, "delta": "0.001"},
        ],
    )
    result = cli("plan", str(edited), "--json")
    assert result.exit_code == 0, result.output
    changes = {(c["action"], c["kind"], c["key"]) for c in json.loads(result.output)["changes"]}
    assert changes == {
        ("create", "user", "carol"),
        ("update", "dataset", "PENGUIN"),
        ("update", "grant", "bob on PENGUIN"),
        ("remove", "grant", "alice on PENGUIN_S3"),
        ("remove", "dataset", "PENGUIN_S3"),
    }
    text = cli("plan", str(edited)).output
    assert "~ dataset PENGUIN: metadata.columns.body_mass_g.upper 7000.0 -> 8000.0" in text
    assert "~ grant bob on PENGUIN: epsilon 5, delta 0.001 -> epsilon 7, delta 0.001" in text
    assert cli("apply", str(edited), "--yes").exit_code == 0  # it removes: --yes, no question
    assert "No changes" in cli("apply", str(edited)).output
    assert admin_env.get_dataset("PENGUIN_S3") is None
    assert admin_env.get_grant("bob", "PENGUIN").initial.epsilon == 7


def test_apply_never_lowers_a_grant_below_spent(admin_env: Any, tmp_path: Path) -> None:
    path = declarative_file(tmp_path)
    assert cli("apply", str(path)).exit_code == 0
    spend(admin_env, "bob", "PENGUIN", "4")
    shrunk = declarative_file(
        tmp_path,
        users=[{"id": "alice", "description": "Alice"}, {"id": "bob"}, {"id": "dave"}],
        grants=[
            {"user": "alice", "dataset": "PENGUIN", "epsilon": 10, "delta": "0.001"},
            {"user": "bob", "dataset": "PENGUIN", "epsilon": 3, "delta": "0.001"},
            {"user": "alice", "dataset": "PENGUIN_S3", "epsilon": 10, "delta": "0.001"},
        ],
    )
    before = state(admin_env)
    for command in ("plan", "apply"):
        result = cli(command, str(shrunk))
        assert result.exit_code == 1
        assert "below what was already spent (epsilon 4, delta 0)" in result.output
    assert state(admin_env) == before  # not even dave was created
    grant = admin_env.get_grant("bob", "PENGUIN")
    assert grant.spent.epsilon == 4 and grant.initial.epsilon == 5


BAD_META = {
    "bounds reversed": (
        {"study_year": {"type": "int", "lower": 2010, "upper": 2009}},
        "columns.study_year: lower (2010) is greater than upper (2009)",
    ),
    "unknown type": (
        {"study_year": {"type": "text"}},
        "columns.study_year: unknown type 'text'",
    ),
    "categories not matching": (
        {"code": {"type": "int", "categories": [1, "two"], "cardinality": 3}},
        "int categories must all be ints",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_META))
def test_malformed_metadata_is_refused_with_its_path(
    admin_env: Any, tmp_path: Path, case: str
) -> None:
    columns, message = BAD_META[case]
    meta = {**PENGUIN_META, "columns": {**PENGUIN_META["columns"], **columns}}
    write(tmp_path / "bad.yaml", meta)
    result = cli("datasets", "add", "BAD", "--source", str(PENGUIN_CSV), "--metadata", "bad.yaml")
    assert result.exit_code == 1
    assert message in result.output
    assert admin_env.get_dataset("BAD") is None
    path = declarative_file(
        tmp_path,
        datasets=[{"name": "BAD", "source": str(PENGUIN_CSV), "metadata": "bad.yaml"}],
        grants=[],
    )
    result = cli("apply", str(path))
    assert result.exit_code == 1 and message in result.output
    assert state(admin_env) == ([], [], [], [], [])


def test_every_command_refuses_bad_input_and_changes_nothing(
    admin_env: Any, tmp_path: Path
) -> None:
    assert cli("apply", str(declarative_file(tmp_path))).exit_code == 0
    issued = cli("tokens", "issue", "alice", "--expires-in", "30d", "--json")
    assert issued.exit_code == 0, issued.output
    spend(admin_env, "bob", "PENGUIN", "2")
    before = state(admin_env)
    cases = [
        (["users", "show", "nobody"], 3, "unknown user nobody"),
        (["users", "add", "has space"], 1, "invalid user id"),
        (["users", "add", "alice"], 1, "already exists"),
        (["users", "disable", "nobody"], 3, "unknown user"),
        (["users", "remove", "alice"], 1, "unexpired token"),
        (["tokens", "issue", "nobody"], 3, "unknown user"),
        (["tokens", "issue", "alice", "--expires-in", "soon"], 1, "invalid duration"),
        (["tokens", "revoke", "0123456789ab"], 3, "unknown token"),
        (["tokens", "revoke", "secret!"], 1, "invalid token id"),
        (["datasets", "show", "NOPE"], 3, "unknown dataset NOPE"),
        (["datasets", "remove", "PENGUIN"], 1, "still has 2 grant(s)"),
        (
            ["datasets", "add", "X", "--source", "/no/such.csv", "--metadata", "penguin.yaml"],
            1,
            "not a readable file",
        ),
        (
            [
                "datasets",
                "add",
                "X",
                "--source",
                "s3://neblina-datasets/none.csv",
                "--metadata",
                "penguin.yaml",
            ],
            1,
            "cannot be read",
        ),
        (
            ["datasets", "add", "X", "--source", str(PENGUIN_CSV), "--metadata", "missing.yaml"],
            1,
            "cannot read metadata file",
        ),
        (["datasets", "update", "NOPE", "--description", "x"], 3, "unknown dataset"),
        (["grants", "add", "nobody", "PENGUIN", "-e", "1", "-d", "0"], 3, "unknown user"),
        (["grants", "add", "carol", "NOPE", "-e", "1", "-d", "0"], 3, "unknown user carol"),
        (["grants", "add", "alice", "NOPE", "-e", "1", "-d", "0"], 3, "unknown dataset NOPE"),
        (
            ["grants", "add", "bob", "PENGUIN_S3", "-e", "-1", "-d", "0"],
            1,
            "epsilon must be a finite number >= 0 (got '-1')",
        ),
        (
            ["grants", "add", "bob", "PENGUIN_S3", "-e", "nan", "-d", "0"],
            1,
            "epsilon must be a finite number >= 0 (got 'nan')",
        ),
        (
            ["grants", "add", "bob", "PENGUIN_S3", "-e", "1", "-d", "1.5"],
            1,
            "delta must be below 1",
        ),
        (["grants", "top-up", "bob", "PENGUIN", "-e", "-2"], 1, "finite number >= 0"),
        (
            ["grants", "set", "bob", "PENGUIN", "-e", "1.5", "-d", "0.001"],
            1,
            "below what was already spent (epsilon 2, delta 0)",
        ),
        (["grants", "set", "bob", "PENGUIN", "-e", "inf", "-d", "0.001"], 1, "finite number"),
        (["grants", "show", "bob", "PENGUIN_S3"], 3, "bob holds no grant on PENGUIN_S3"),
        (["grants", "revoke", "bob", "PENGUIN_S3"], 3, "holds no grant"),
        (["grants", "cap", "PENGUIN", "-e", "1", "-d", "0"], 1, "below what its grants"),
        (["grants", "cap", "PENGUIN"], 1, "give --epsilon and --delta, or --no-limit"),
        (["archive", "export"], 1, "name a user (--user) or a dataset (--dataset)"),
        (["archive", "export", "--user", "alice", "--format", "xml"], 2, "Invalid value"),
        (["plan", "missing.yaml"], 1, "cannot read missing.yaml"),
    ]
    for args, code, message in cases:
        result = cli(*args)
        assert result.exit_code == code, (args, result.output)
        assert message in result.output, (args, result.output)
    assert state(admin_env) == before


def test_commands_do_what_they_say(admin_env: Any, tmp_path: Path) -> None:
    assert cli("apply", str(declarative_file(tmp_path))).exit_code == 0
    assert cli("users", "add", "erin", "--description", "Erin").exit_code == 0
    listed = json.loads(cli("users", "list", "--json").output)
    assert [u["user"] for u in listed] == ["alice", "bob", "erin"]
    assert cli("users", "disable", "erin").exit_code == 0
    assert admin_env.get_user("erin").disabled
    assert cli("users", "enable", "erin").exit_code == 0
    assert not admin_env.get_user("erin").disabled

    issued = json.loads(cli("tokens", "issue", "erin", "--json").output)
    assert issued["token"].startswith("nbl_")
    lifetime = datetime.fromisoformat(issued["expires_at"]) - utcnow()  # the default: 90 days
    assert timedelta(days=90) - timedelta(minutes=1) < lifetime <= timedelta(days=90)
    shown = cli("tokens", "list", "--user", "erin")
    assert issued["token_id"] in shown.output and issued["token"] not in shown.output
    listed_tokens = json.loads(cli("tokens", "list", "--json").output)
    assert all("token" not in t and "token_hash" not in t for t in listed_tokens)
    assert cli("users", "remove", "erin").exit_code == 1  # a live token
    assert cli("tokens", "revoke", issued["token_id"]).exit_code == 0
    assert admin_env.get_token(admin_env.list_tokens("erin")[0].token_hash).revoked
    assert cli("grants", "add", "erin", "PENGUIN", "-e", "1", "-d", "0").exit_code == 0
    spend(admin_env, "erin", "PENGUIN", "0.25")
    removed = cli("users", "remove", "erin")
    assert removed.exit_code == 0, removed.output
    assert "1 grant(s) removed, 1 archived queries kept" in removed.output
    assert admin_env.get_user("erin") is None and admin_env.get_grant("erin", "PENGUIN") is None
    exported = cli("archive", "export", "--user", "erin")
    rows = [json.loads(line) for line in exported.output.splitlines() if line.startswith("{")]
    assert [r["cost_epsilon"] for r in rows] == ["0.25"]  # the archive outlives the user

    assert cli("grants", "top-up", "bob", "PENGUIN", "-e", "0.5").exit_code == 0
    assert cli("grants", "set", "bob", "PENGUIN", "-e", "2.5", "-d", "0.0005").exit_code == 0
    spend(admin_env, "bob", "PENGUIN", "1.25")
    shown = json.loads(cli("grants", "show", "bob", "PENGUIN", "--json").output)
    assert shown["initial"] == {"epsilon": "2.5", "delta": "0.0005"}
    assert shown["spent"] == {"epsilon": "1.25", "delta": "0"}
    assert shown["remaining"] == {"epsilon": "1.25", "delta": "0.0005"}
    text = cli("grants", "show", "bob", "PENGUIN").output
    assert "spent      epsilon 1.25, delta 0" in text
    capped = cli("grants", "cap", "PENGUIN", "-e", "20", "-d", "0.01")
    assert capped.exit_code == 0 and "spent ε 1.25, δ 0" in capped.output
    assert cli("grants", "cap", "PENGUIN", "--no-limit").exit_code == 0
    assert admin_env.get_cap("PENGUIN").limit is None
    assert cli("grants", "revoke", "bob", "PENGUIN").exit_code == 0
    assert admin_env.get_grant("bob", "PENGUIN") is None

    csv_path = tmp_path / "penguin.csv"
    assert (
        cli(
            "archive", "export", "--dataset", "PENGUIN", "--format", "csv", "-o", str(csv_path)
        ).exit_code
        == 0
    )
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("query_id,user_id,dataset") and len(lines) == 3

    meta = json.loads(json.dumps(PENGUIN_META))
    meta["rows"] = 400
    write(tmp_path / "penguin400.yaml", meta)
    assert cli("datasets", "update", "PENGUIN", "--metadata", "penguin400.yaml").exit_code == 0
    assert admin_env.get_dataset("PENGUIN").metadata["rows"] == 400
    shown_ds = json.loads(cli("datasets", "show", "PENGUIN", "--json").output)
    assert shown_ds["metadata"]["rows"] == 400 and shown_ds["cap"]["limit"] is None
    added = cli(
        "datasets",
        "add",
        "UPLOADED",
        "--source",
        str(PENGUIN_CSV),
        "--metadata",
        "penguin.yaml",
        "--upload",
    )
    assert added.exit_code == 0, added.output
    assert admin_env.get_dataset("UPLOADED").source == "s3://neblina-datasets/UPLOADED/penguins.csv"
    assert cli("datasets", "remove", "PENGUIN", "--force").exit_code == 0
    assert admin_env.get_dataset("PENGUIN") is None


def test_the_installed_console_script(admin_env: Any, tmp_path: Path) -> None:
    """The real `neblina-admin` executable: JSON output and exit codes a script can use."""
    script = Path(sys.executable).parent / "neblina-admin"
    assert script.exists(), "pip install -e . installs the console script"
    assert cli("apply", str(declarative_file(tmp_path))).exit_code == 0
    env = dict(os.environ)
    listed = subprocess.run(
        [str(script), "grants", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert {(g["user"], g["dataset"]) for g in json.loads(listed.stdout)} == {
        ("alice", "PENGUIN"),
        ("bob", "PENGUIN"),
        ("alice", "PENGUIN_S3"),
    }
    missing = subprocess.run(
        [str(script), "users", "show", "nobody"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 3 and "error: unknown user nobody" in missing.stderr
