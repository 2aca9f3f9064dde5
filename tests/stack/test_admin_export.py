"""`export-config` writes the stored state as a file plan/apply accept (round trip: no
changes), and `apply` asks before removing anything unless --yes (issue 11 §5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from test_admin_registration import GOOD_CSV, SURVEY_META
from test_cli import admin_env, cli, declarative_file, runner, spend, state, write  # noqa: F401


def test_export_then_plan_shows_no_changes(admin_env: Any, tmp_path: Path) -> None:  # noqa: F811
    assert cli("apply", str(declarative_file(tmp_path))).exit_code == 0
    write(tmp_path / "survey.yaml", SURVEY_META)
    (tmp_path / "survey.csv").write_text(GOOD_CSV)
    added = cli("datasets", "add", "SURVEY", "--source", "survey.csv", "--metadata", "survey.yaml")
    assert added.exit_code == 0, added.output
    assert cli("users", "add", "carol", "--description", "Carol: on leave").exit_code == 0
    assert cli("users", "disable", "carol").exit_code == 0
    assert cli("grants", "add", "carol", "SURVEY", "-e", "0.3", "-d", "1e-6").exit_code == 0
    assert cli("grants", "cap", "SURVEY", "-e", "2.5", "-d", "0.0001").exit_code == 0
    policy = ["--per-query-epsilon", "1", "--per-query-delta", "1e-5", "--hardened"]
    assert cli("datasets", "update", "SURVEY", *policy, "--latency-bucket-ms", "250").exit_code == 0
    spend(admin_env, "bob", "PENGUIN", "1.5")

    exported = cli("export-config", "-o", "state/neblina.yaml")
    assert exported.exit_code == 0, exported.output
    assert "3 users, 3 datasets, 4 grants" in exported.output
    document = yaml.safe_load((tmp_path / "state/neblina.yaml").read_text())
    survey = next(d for d in document["datasets"] if d["name"] == "SURVEY")
    assert survey["metadata"] == "metadata/SURVEY.yaml"  # relative to the file
    assert (tmp_path / "state/metadata/SURVEY.yaml").is_file()
    assert survey["cap"] == {"epsilon": "2.5", "delta": "0.0001"}
    assert survey["per_query_cap"] == {"epsilon": "1", "delta": "0.00001"}
    assert survey["hardened"] is True and survey["latency_bucket_ms"] == 250
    assert {"user": "carol", "dataset": "SURVEY", "epsilon": "0.3", "delta": "0.000001"} in (
        document["grants"]
    )
    assert {"id": "carol", "description": "Carol: on leave", "disabled": True} in (
        document["users"]
    )

    planned = cli("plan", "state/neblina.yaml", "--detailed-exitcode")
    assert planned.exit_code == 0, planned.output
    assert "No changes" in planned.output
    applied = cli("apply", "state/neblina.yaml")
    assert applied.exit_code == 0 and "No changes" in applied.output
    # an existing export is not overwritten by accident
    again = cli("export-config", "-o", "state/neblina.yaml")
    assert again.exit_code == 1 and "pass --force" in again.output
    assert cli("export-config", "-o", "state/neblina.yaml", "--force").exit_code == 0


def test_apply_asks_before_removing_anything(admin_env: Any, tmp_path: Path) -> None:  # noqa: F811
    from neblina_admin.cli import app

    assert cli("apply", str(declarative_file(tmp_path))).exit_code == 0
    before = state(admin_env)
    # a file listing only one new dataset: everything else would be removed
    only_new = declarative_file(
        tmp_path,
        users=[],
        datasets=[{"name": "NEW", "source": str(tmp_path / "survey.csv"), "metadata": "s.yaml"}],
        grants=[],
    ).rename(tmp_path / "only-new.yaml")
    write(tmp_path / "s.yaml", SURVEY_META)
    (tmp_path / "survey.csv").write_text(GOOD_CSV)
    for answer in ("n\n", "", "whatever\nn\n"):
        result = runner.invoke(app, ["apply", str(only_new)], input=answer)
        assert result.exit_code == 1, result.output
        assert "  - dataset PENGUIN_S3" in result.stdout  # the plan is shown first
        assert "7 to remove" in result.output and "Apply? [y/N]" in result.output
        assert "error: nothing applied (pass --yes" in result.output
        assert state(admin_env) == before
    created_only = declarative_file(tmp_path, users=[{"id": "alice", "description": "Alice"},
                                    {"id": "bob"}, {"id": "dave"}])  # fmt: skip
    added = runner.invoke(app, ["apply", str(created_only)])  # nothing removed: no question
    assert added.exit_code == 0 and "Apply?" not in added.output
    assert "Applied: 1 to create, 0 to update, 0 to remove." in added.output
    confirmed = runner.invoke(app, ["apply", str(only_new)], input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert "Applied: 1 to create, 0 to update, 8 to remove." in confirmed.output
    assert [d.name for d in admin_env.list_datasets()] == ["NEW"]
    assert cli("apply", str(declarative_file(tmp_path)), "--auto-approve").exit_code == 0
    assert cli("apply", str(only_new), "--yes").exit_code == 0
    assert admin_env.list_users() == []
