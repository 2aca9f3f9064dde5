"""neblina-admin's edges: its target, closed pipes, usage errors, plain-text help, plan errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_cli import PENGUIN_CSV, PENGUIN_META, admin_env, cli, spend, write  # noqa: F401

from neblina_admin import admintarget

ENV_FILE_TEXT = """# written by Neblina's local stack
NEBLINA_URL=http://127.0.0.1:8123
NEBLINA_TOKEN=nbl_secret
NEBLINA_ADMIN_ENDPOINT_URL=http://127.0.0.1:4999
NEBLINA_ADMIN_TABLE_PREFIX=neblina-
NEBLINA_ADMIN_BUCKET=neblina-datasets
NEBLINA_ADMIN_REGION=us-east-1
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory with a local stack's .neblina/local.env, and a subdirectory to work in."""
    (tmp_path / ".neblina").mkdir()
    (tmp_path / ".neblina/local.env").write_text(ENV_FILE_TEXT)
    (tmp_path / "notebooks").mkdir()
    return tmp_path


def test_with_no_aws_settings_the_admin_uses_the_local_stack_and_says_so(project: Path) -> None:
    environ: dict[str, str] = {"HOME": "/nonexistent"}
    target = admintarget.use(environ, project / "notebooks")
    assert target.announce
    assert target.description == (
        f"local stack at http://127.0.0.1:4999, tables neblina-* (from {project}/.neblina/local.env)"
    )
    assert environ == {
        "HOME": "/nonexistent",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:4999",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "NEBLINA_TABLE_PREFIX": "neblina-",
        "NEBLINA_BUCKET": "neblina-datasets",
    }


def test_explicit_aws_settings_win_over_the_local_stack_file(project: Path) -> None:
    explicit = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "AWS_PROFILE": "prod",
        "AWS_ACCESS_KEY_ID": "AKIA...",
    }
    for key, value in explicit.items():
        environ = {key: value}
        target = admintarget.use(environ, project)
        assert environ == {key: value}, key  # nothing from the file is mixed in
        assert "local stack" not in target.description
        assert target.announce == (key != "AWS_ENDPOINT_URL"), key
    profile = admintarget.resolve({"AWS_PROFILE": "prod", "AWS_REGION": "eu-west-1"}, project)
    assert profile.description == "AWS, profile prod, region eu-west-1"


def test_without_a_local_stack_real_aws_is_named_never_silent(tmp_path: Path) -> None:
    target = admintarget.resolve({}, tmp_path)
    assert target.announce and target.environ == {}
    assert target.description.startswith("AWS, default credentials, region us-east-1")
    assert "make up" in target.description
    # NEBLINA_STATE_DIR names the file; a directory without one is not searched upwards
    state = tmp_path / "second"
    state.mkdir()
    (state / "local.env").write_text(ENV_FILE_TEXT.replace("4999", "4600"))
    second = admintarget.resolve({"NEBLINA_STATE_DIR": str(state)}, tmp_path)
    assert second.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4600"
    empty = admintarget.resolve({"NEBLINA_STATE_DIR": str(tmp_path / "none")}, tmp_path)
    assert empty.description.startswith("AWS, default credentials")


def test_a_closed_pipe_ends_an_export_quietly(admin_env: Any, tmp_path: Path) -> None:  # noqa: F811
    """`archive export ... | head`: the reader went away; that is no storage error."""
    assert cli("users", "add", "alice").exit_code == 0
    write(tmp_path / "penguin.yaml", PENGUIN_META)
    added = cli(
        "datasets", "add", "PENGUIN", "--source", str(PENGUIN_CSV), "--metadata", "penguin.yaml"
    )
    assert added.exit_code == 0, added.output
    assert cli("grants", "add", "alice", "PENGUIN", "-e", "10", "-d", "0").exit_code == 0
    for _ in range(3):
        spend(admin_env, "alice", "PENGUIN", "0.5")
    script = Path(sys.executable).parent / "neblina-admin"
    process = subprocess.Popen(
        [str(script), "archive", "export", "--user", "alice"],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # as `head` does once it has what it wants
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, stderr
    assert stderr == ""


USAGE_ERRORS = [
    ["grants", "add", "alice", "PENGUIN", "-e", "abc", "-d", "0"],
    ["grants", "add", "alice", "PENGUIN", "-e", "1", "-d", "1e-5x"],
    ["grants", "top-up", "alice", "PENGUIN", "-e", "lots"],
    ["grants", "cap", "PENGUIN", "-e", "1,5", "-d", "0"],
    ["archive", "export", "--user", "alice", "--format", "xlsx"],
    ["datasets", "add", "X", "--source", "x.csv", "--metadata", "x.yaml", "--format", "xlsx"],
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=lambda a: " ".join(a))
def test_usage_errors_exit_2_before_anything_is_read(args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output


def test_help_is_plain_text_without_restructuredtext_backticks() -> None:
    from neblina_admin.cli import app

    groups = ["", "users", "tokens", "datasets", "grants", "archive"]
    commands = [
        ["users", "add"], ["datasets", "add"], ["datasets", "check"], ["grants", "cap"],
        ["archive", "export"], ["plan"], ["apply"], ["init"],
    ]  # fmt: skip
    for args in [[g] if g else [] for g in groups] + commands:
        shown = cli(*args, "--help")
        assert shown.exit_code == 0, args
        assert "``" not in shown.output and ":mod:" not in shown.output, args
    assert "neblina-admin: users, tokens" in cli("--help").output
    assert app.info.help is not None and "``" not in app.info.help


def test_a_bad_metadata_file_in_a_plan_is_reported_once(admin_env: Any, tmp_path: Path) -> None:  # noqa: F811
    broken = {**PENGUIN_META, "columns": {"study_year": {"type": "text"}}}
    write(tmp_path / "broken.yaml", broken)
    document = {
        "users": [{"id": "alice"}, {"id": "has space"}],
        "datasets": [{"name": "PENGUIN", "source": str(PENGUIN_CSV), "metadata": "broken.yaml"}],
        "grants": [
            {"user": "alice", "dataset": "PENGUIN", "epsilon": 1, "delta": 0},
            {"user": "has space", "dataset": "PENGUIN", "epsilon": 1, "delta": 0},
            {"user": "alice", "dataset": "ELSEWHERE", "epsilon": 1, "delta": 0},
        ],
    }
    result = cli("plan", str(write(tmp_path / "neblina.yaml", document)))
    assert result.exit_code == 1
    assert "columns.study_year: unknown type 'text'" in result.output
    assert "invalid user id 'has space'" in result.output
    assert "dataset 'PENGUIN' is not among" not in result.output  # no follow-on error
    assert "user 'has space' is not among" not in result.output
    assert "grants[2]: dataset 'ELSEWHERE' is not among the file's datasets" in result.output
