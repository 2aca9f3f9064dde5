"""Registration reads the data: `neblina-admin datasets add/update/check` and `apply` refuse a
source that does not match its metadata (exit 1, nothing written), naming the problem and a
sample row. Runs the installed `neblina-admin` executable on the session's emulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from test_cli import admin_env, cli, state, write  # noqa: F401  (admin_env is a fixture)

SURVEY_META = {
    "description": "a small survey",
    "max_ids": 1,
    "rows": 4,
    "row_privacy": True,
    "censor_dims": False,
    "columns": {
        "region": {"type": "string", "categories": ["north", "south"]},
        "age": {"type": "int", "lower": 18, "upper": 99},
        "income": {"type": "float", "lower": 0.0, "upper": 10000.0, "nullable": True},
        "smoker": {"type": "boolean"},
        "visited": {"type": "datetime", "lower": "2020-01-01", "upper": "2025-12-31"},
    },
}
GOOD_CSV = (
    "region,age,income,smoker,visited\n"
    "north,34,1200.5,true,2021-05-13\n"
    "south,51,,false,2022-11-02\n"
    "north,29,800.0,False,2023-01-31\n"
    "south,70,2500.25,True,2021-12-01\n"
)
BAD_CSVS = {
    "renamed column": (
        GOOD_CSV.replace("region,", "area,", 1),
        [
            "the source lacks declared column(s) region "
            "(its columns: area, age, income, smoker, visited)",
            "the source has column(s) the metadata does not declare: area",
        ],
    ),
    "dd/mm/yyyy dates": (
        GOOD_CSV.replace("2021-05-13", "13/05/2021").replace("2022-11-02", "02/11/2022"),
        [
            "column visited: not datetime (use ISO 8601 dates, e.g. 2021-05-13 or "
            "2021-05-13T08:30:00): 2 value(s); first at row 1 (line 2): '13/05/2021'"
        ],
    ),
    "yes/no booleans": (
        GOOD_CSV.replace(",true,", ",yes,").replace(",false,", ",no,"),
        [
            "column smoker: not boolean (use true or false, not yes/no): 2 value(s); "
            "first at row 1 (line 2): 'yes'"
        ],
    ),
    "missing column": (
        "\n".join(line.rsplit(",", 1)[0] for line in GOOD_CSV.splitlines()) + "\n",
        ["the source lacks declared column(s) visited"],
    ),
    "nulls in a non-nullable column": (
        GOOD_CSV.replace("south,51,", ",51,").replace("north,29,", "north,,"),
        [
            "column region: empty, but the metadata says nullable: false: 1 value(s); "
            "first at row 2 (line 3)",
            "column age: empty, but the metadata says nullable: false: 1 value(s); "
            "first at row 3 (line 4)",
        ],
    ),
    "a value that is not a number": (
        GOOD_CSV.replace("1200.5", "1.200,5"),
        ["column income: not float"],
    ),
    "a category that is not declared": (
        GOOD_CSV.replace("south,70", "west,70"),
        [
            "column region: outside the declared categories (queries would read them as "
            "missing): 1 value(s); first at row 4 (line 5): 'west'"
        ],
    ),
}


def admin_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script, with the test's environment (its own table prefix)."""
    script = Path(sys.executable).parent / "neblina-admin"
    return subprocess.run(
        [str(script), *args],
        env=dict(os.environ),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def survey(admin_env: Any, tmp_path: Path) -> Path:  # noqa: F811
    write(tmp_path / "survey.yaml", SURVEY_META)
    (tmp_path / "good.csv").write_text(GOOD_CSV)
    return tmp_path


def test_a_source_that_matches_its_metadata_is_registered(admin_env: Any, survey: Path) -> None:  # noqa: F811
    added = admin_cli(
        "datasets", "add", "SURVEY", "--source", "good.csv", "--metadata", "survey.yaml", cwd=survey
    )
    assert added.returncode == 0, added.stderr
    assert admin_env.get_dataset("SURVEY") is not None
    checked = cli("datasets", "check", "SURVEY")
    assert checked.exit_code == 0 and "matches its metadata" in checked.stdout
    frame = pd.read_csv(survey / "good.csv", parse_dates=["visited"])
    frame.to_parquet(survey / "good.parquet", engine="fastparquet")
    added = cli(
        "datasets", "add", "SURVEY_PQ", "--source", "good.parquet", "--metadata", "survey.yaml"
    )
    assert added.exit_code == 0, added.output


def test_bad_csv_sources_are_refused_by_datasets_add_with_the_exact_problem(
    admin_env: Any,  # noqa: F811
    survey: Path,
) -> None:
    before = state(admin_env)
    for case, (text, messages) in BAD_CSVS.items():
        (survey / "bad.csv").write_text(text)
        result = cli("datasets", "add", "BAD", "--source", "bad.csv", "--metadata", "survey.yaml")
        assert result.exit_code == 1, (case, result.output)
        assert result.stderr.startswith("error: source ") and "does not match its metadata" in (
            result.stderr
        ), case
        for message in messages:
            assert message in result.stderr, (case, result.stderr)
    assert state(admin_env) == before  # nothing written
    # --upload: the data is checked before anything reaches the bucket
    from chalicelib.config import get_settings
    from neblina_admin import operations as admin

    uploaded = cli(
        "datasets", "add", "BAD", "--source", "bad.csv", "--metadata", "survey.yaml", "--upload"
    )
    assert uploaded.exit_code == 1 and "does not match its metadata" in uploaded.output
    settings = get_settings()
    listing = admin.s3_client(settings).list_objects_v2(Bucket=settings.bucket, Prefix="BAD/")
    assert listing.get("KeyCount", 0) == 0
    # the same through the installed executable
    result = admin_cli(
        "datasets", "add", "BAD", "--source", "bad.csv", "--metadata", "survey.yaml", cwd=survey
    )
    assert result.returncode == 1 and "column region: outside the declared" in result.stderr
    assert state(admin_env) == before


def test_a_bad_parquet_source_is_refused(admin_env: Any, survey: Path) -> None:  # noqa: F811
    frame = pd.read_csv(survey / "good.csv")  # visited stays text: fine, it is ISO
    frame["age"] = ["34", "51", "twenty-nine", "70"]
    frame["smoker"] = frame["smoker"].astype(str).str.lower().map({"true": "yes", "false": "no"})
    frame.to_parquet(survey / "bad.parquet", engine="fastparquet")
    result = admin_cli(
        "datasets", "add", "BAD", "--source", "bad.parquet", "--metadata", "survey.yaml", cwd=survey
    )
    assert result.returncode == 1, result.stderr
    assert "column age: not int (use whole numbers): 1 value(s); first at row 3: 'twenty-nine'" in (
        result.stderr
    )
    assert "column smoker: not boolean" in result.stderr
    assert admin_env.get_dataset("BAD") is None


def test_update_check_and_apply_read_the_data_too(admin_env: Any, survey: Path) -> None:  # noqa: F811
    added = cli("datasets", "add", "SURVEY", "--source", "good.csv", "--metadata", "survey.yaml")
    assert added.exit_code == 0, added.output
    (survey / "bad.csv").write_text(BAD_CSVS["yes/no booleans"][0])
    stored = admin_env.get_dataset("SURVEY")

    updated = cli("datasets", "update", "SURVEY", "--source", "bad.csv")
    assert updated.exit_code == 1 and "column smoker: not boolean" in updated.output
    narrower = {**SURVEY_META, "columns": {**SURVEY_META["columns"]}}
    narrower["columns"]["region"] = {"type": "string", "categories": ["north"]}
    write(survey / "narrow.yaml", narrower)
    updated = cli("datasets", "update", "SURVEY", "--metadata", "narrow.yaml")
    assert updated.exit_code == 1 and "outside the declared categories" in updated.output
    assert admin_env.get_dataset("SURVEY") == stored

    # the source went bad after registration: `datasets check` says so (exit 1)
    (survey / "good.csv").write_text(BAD_CSVS["dd/mm/yyyy dates"][0])
    checked = cli("datasets", "check", "SURVEY")
    assert checked.exit_code == 1 and "column visited: not datetime" in checked.output

    document = {
        "users": [],
        "datasets": [{"name": "SURVEY", "source": "bad.csv", "metadata": "survey.yaml"}],
        "grants": [],
    }
    path = write(survey / "neblina.yaml", document)
    for command in ("plan", "apply"):
        result = cli(command, str(path))
        assert result.exit_code == 1, result.output
        assert "datasets.SURVEY: source" in result.output and "column smoker" in result.output
    assert admin_env.get_dataset("SURVEY") == stored


def test_the_demo_data_passes_the_strict_check() -> None:
    """Seeding applies localstack/demo.yaml through the same check: its data must pass."""
    from chalicelib import metadata
    from neblina_admin import sourcecheck

    root = Path(__file__).resolve().parents[2]
    meta = metadata.validate(yaml.safe_load((root / "localstack/data/penguin.yaml").read_text()))
    frame = pd.read_csv(root / "localstack/data/penguins.csv")
    assert sourcecheck.problems(frame, meta, "csv") == []


def test_registration_converts_an_s3_csv_once_to_a_parquet_copy_beside_it(
    admin_env: Any,  # noqa: F811
    survey: Path,
) -> None:
    """add --upload, update and apply write the typed copy and record it; workers read it."""
    from chalicelib.config import get_settings
    from chalicelib.datasets import DatasetLoader, read_csv, read_parquet, typed_frame
    from neblina_admin import operations as admin

    settings = get_settings()
    s3 = admin.s3_client(settings)
    added = cli(
        "datasets", "add", "SURVEY", "--source", "good.csv", "--metadata", "survey.yaml", "--upload"
    )
    assert added.exit_code == 0, added.output
    stored = admin_env.get_dataset("SURVEY")
    copy = stored.columnar
    assert copy is not None and copy["uri"] == stored.source + ".parquet"
    bucket, key = copy["uri"][5:].split("/", 1)
    written = s3.get_object(Bucket=bucket, Key=key)
    assert written["ETag"] == copy["etag"]
    meta = stored.metadata
    pd.testing.assert_frame_equal(
        read_parquet(written["Body"].read()), typed_frame(read_csv(GOOD_CSV.encode(), meta), meta)
    )
    loaded = DatasetLoader(settings).load(stored)
    assert loaded.parquet is not None and not loaded.has_frame
    shown = cli("datasets", "show", "SURVEY", "--json")
    assert json.loads(shown.stdout)["columnar"] == copy

    # a policy change keeps the copy; a metadata change converts again
    assert cli("datasets", "update", "SURVEY", "--description", "d").exit_code == 0
    assert admin_env.get_dataset("SURVEY").columnar == copy
    wider = {**SURVEY_META, "columns": {**SURVEY_META["columns"]}}
    wider["columns"]["age"] = {"type": "float", "lower": 0.0, "upper": 120.0}
    write(survey / "wider.yaml", wider)
    updated = cli("datasets", "update", "SURVEY", "--metadata", "wider.yaml")
    assert updated.exit_code == 0, updated.output
    again = admin_env.get_dataset("SURVEY").columnar
    assert again is not None and again["metadata_digest"] != copy["metadata_digest"]
    again_bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert str(read_parquet(again_bytes)["age"].dtype) == "float64"

    # the declarative file: a new S3 CSV source is converted when applied
    other = admin.upload(settings, settings.bucket, "SURVEY/other.csv", GOOD_CSV.encode())
    document = {
        "users": [],
        "datasets": [{"name": "SURVEY", "source": other, "metadata": "wider.yaml"}],
        "grants": [],
    }
    applied = cli("apply", str(write(survey / "neblina.yaml", document)), "--yes")
    assert applied.exit_code == 0, applied.output
    last = admin_env.get_dataset("SURVEY")
    assert last.columnar is not None and last.columnar["uri"] == other + ".parquet"
    assert DatasetLoader(settings).load(last).parquet is not None
