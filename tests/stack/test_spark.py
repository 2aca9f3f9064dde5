"""Spark-backed datasets (docs/spark.md): the job path, and the differential test against
the in-function SQL engine. One local Spark session (loopback only) for the module."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if shutil.which("java") is None:  # pragma: no cover - these machines have Java 17
    pytest.skip(
        "Spark needs a Java 17 runtime (README: 'Spark-backed datasets'); none on PATH",
        allow_module_level=True,
    )
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from chalicelib import metadata as metadata_module
from chalicelib.config import from_environ
from chalicelib.datasets import DatasetLoader
from chalicelib.engines.smartnoise_engine import (
    DomainKeysReader,
    SmartnoiseSqlEngine,
    metadata_for,
)
from chalicelib.engines.spark_sql import SparkLoader, SparkSqlEngine, spark_session
from chalicelib.errors import EngineFailed, InvalidRequest
from chalicelib.hop import InProcessWorkers
from chalicelib.models import Dataset, PrivacyCost, QueryState, User, utcnow
from chalicelib.service import Accepted, Service
from chalicelib.storage.memory import MemoryStore

META: dict[str, Any] = {
    "max_ids": 1,
    "rows": 400,
    "row_privacy": True,
    "censor_dims": False,
    "columns": {
        "grp": {"type": "string", "categories": ["a", "b", "c"], "nullable": True},
        "flag": {"type": "boolean"},
        "level": {"type": "int", "lower": 1, "upper": 4},
        "x": {"type": "float", "lower": 0.0, "upper": 100.0, "nullable": True},
        "n": {"type": "int", "lower": 0, "upper": 1000},
    },
}


def frame(seed: int, rows: int = 400) -> pd.DataFrame:
    """Rows with values outside every declared domain, NULLs and NaNs (clamping matters)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-50, 150, rows)
    x[rng.random(rows) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "grp": rng.choice(np.array(["a", "b", "c", "d", None], dtype=object), rows),
            "flag": rng.random(rows) < 0.3,
            "level": rng.integers(-1, 7, rows),
            "x": x,
            "n": rng.integers(-100, 1200, rows),
        }
    )


@pytest.fixture(scope="module")
def session() -> Any:
    return spark_session()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory, session: Any) -> list[tuple[Any, Any]]:
    """(in-function loaded, Spark loaded) pairs over the same Parquet files."""
    folder = tmp_path_factory.mktemp("spark")
    pairs = []
    for seed in (1, 2):
        path = folder / f"data{seed}.parquet"
        frame(seed).to_parquet(path, engine="fastparquet", index=False)
        plain = Dataset("T", str(path), metadata_module.validate(META), utcnow(), "", "parquet")
        spark = Dataset(
            "T",
            str(path),
            metadata_module.validate({**META, "executor": "spark"}),
            utcnow(),
            "",
            "parquet",
        )
        pairs.append((DatasetLoader(from_environ()).load(plain), SparkLoader().load(spark)))
    return pairs


KEYS = ["grp", "flag", "level"]
AGGREGATES = ["COUNT(*)", "COUNT(x)", "SUM(n)", "SUM(x)", "AVG(n)", "AVG(x)", "SUM(level)"]
FILTERS = ["", " WHERE n > 500", " WHERE x < 40.0", " WHERE level >= 2 AND n < 900"]


@st.composite
def queries(draw: st.DrawFn) -> str:
    aggregates = draw(st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=2, unique=True))
    keys = draw(st.lists(st.sampled_from(KEYS), max_size=2, unique=True))
    selected = ", ".join([*keys, *(f"{a} AS v{i}" for i, a in enumerate(aggregates))])
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    return f"SELECT {selected} FROM df{draw(st.sampled_from(FILTERS))}{group}"  # noqa: S608


def exact_rows(reader: DomainKeysReader, query: str) -> list[list[Any]]:
    """SmartNoise's exact per-key aggregates (before noise), with GROUP BY completion."""
    subquery, _ = reader._rewrite(query)
    header, *rows = reader._get_reader(subquery)._execute_ast(subquery)
    return [list(header), *sorted((list(r) for r in rows), key=repr)]


def same(left: Any, right: Any) -> bool:
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, float) or isinstance(right, float):
        return math.isclose(float(left), float(right), rel_tol=1e-9, abs_tol=1e-9)
    return bool(left == right)


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(query=queries(), which=st.integers(0, 1))
def test_the_spark_path_aggregates_exactly_what_the_in_function_engine_does(
    datasets: list[tuple[Any, Any]], query: str, which: int
) -> None:
    plain, spark = datasets[which]
    sql_engine, spark_engine = SmartnoiseSqlEngine(executor="sqlite"), SparkSqlEngine()
    request = sql_engine.parse({"query": query, "epsilon": 1, "delta": "1e-6"})
    metadata = metadata_for("T", plain.metadata)
    reference = DomainKeysReader(
        sql_engine._reader(plain),
        metadata,
        privacy=request.privacy(),
        columns=plain.metadata["columns"],
        complete=True,
    )
    expected = exact_rows(reference, query)
    found = exact_rows(spark_engine._private(spark, request), query)
    assert len(found) == len(expected), (query, found, expected)
    assert [c.lower() for c in found[0]] == [c.lower() for c in expected[0]]
    for got, want in zip(found[1:], expected[1:], strict=True):
        assert all(same(g, w) for g, w in zip(got, want, strict=True)), (query, got, want)


def test_a_spark_dataset_is_priced_exactly_as_the_same_dataset_in_a_function(
    datasets: list[tuple[Any, Any]],
) -> None:
    engine = SmartnoiseSqlEngine()
    body = {"query": "SELECT grp, AVG(x) AS m, COUNT(*) AS c FROM df GROUP BY grp", "epsilon": 0.7}
    request = engine.parse({**body, "delta": "1e-6"})
    plain = Dataset("T", "x.parquet", metadata_module.validate(META), utcnow())
    spark = Dataset(
        "T", "x.parquet", metadata_module.validate({**META, "executor": "spark"}), utcnow()
    )
    assert engine.cost(spark, request) == engine.cost(plain, request)
    assert engine.cost(spark, request).epsilon > 0


# --- the job path through the service --------------------------------------------------
@pytest.fixture
def spark_store(tmp_path: Path) -> MemoryStore:
    s = MemoryStore()
    s.put_user(User(user_id="alice", created_at=utcnow()))
    path = tmp_path / "people.parquet"
    frame(7).to_parquet(path, engine="fastparquet", index=False)
    spark_meta = metadata_module.validate({**META, "executor": "spark"})
    s.put_dataset(Dataset("BIG", str(path), spark_meta, utcnow(), "", "parquet"))
    missing = str(tmp_path / "missing.parquet")
    s.put_dataset(Dataset("GONE", missing, spark_meta, utcnow(), "", "parquet"))
    for name in ("BIG", "GONE"):
        s.create_grant("alice", name, PrivacyCost(epsilon=10, delta="0.001"))
    return s


QUERY = {
    "engine": "smartnoise_sql",
    "query": "SELECT level, COUNT(*) AS c, SUM(n) AS s FROM df GROUP BY level",
    "epsilon": 1,
    "delta": "1e-6",
}


def remaining(store: MemoryStore, name: str) -> PrivacyCost:
    grant = store.get_grant("alice", name)
    assert grant is not None
    return grant.remaining


def test_a_query_on_a_spark_dataset_is_a_job_debited_at_submission_and_released_once(
    spark_store: MemoryStore,
) -> None:
    service = Service(spark_store, from_environ(), DatasetLoader(from_environ()))
    cost = service.cost("alice", "BIG", QUERY)["cost"]
    before = remaining(spark_store, "BIG")
    answer = service.query("alice", "BIG", {**QUERY, "query_id": "spark-job-1"})  # no wait
    assert isinstance(answer, Accepted)  # 202 although the request did not say wait: false
    charged = PrivacyCost(epsilon=cost["epsilon"], delta=cost["delta"])
    assert remaining(spark_store, "BIG") == before - charged
    assert isinstance(service.workers, InProcessWorkers)
    service.workers.join(timeout=120)
    record = service.get_query("alice", "BIG", "spark-job-1")
    assert record["state"] == "done", record
    table = record["result"]
    # the public domain of level (1..4), every key answered, in declared values
    assert table["type"] == "table"
    assert sorted(row["level"] for row in table["records"]) == [1, 2, 3, 4]
    assert remaining(spark_store, "BIG") == before - charged


def test_a_spark_job_delivered_twice_releases_once(spark_store: MemoryStore) -> None:
    events: list[dict[str, Any]] = []

    class Queue(InProcessWorkers):
        def submit(self, worker: str, payload: dict[str, Any]) -> None:
            assert worker == "spark"
            events.append(payload)

    service = Service(spark_store, from_environ(), DatasetLoader(from_environ()))
    assert service.local is not None
    worker = service.local
    service.workers = Queue(worker)
    service.query("alice", "BIG", {**QUERY, "query_id": "spark-twice-1"})
    (event,) = events
    first = worker.handle(json.loads(json.dumps(event)))
    second = worker.handle(json.loads(json.dumps(event)))
    assert first["ok"] is True and first["result"]["type"] == "table"
    assert second == {"ok": True, "result": None, "claimed": False}
    record = spark_store.get_query("spark-twice-1")
    assert record is not None and record.state is QueryState.DONE


def test_a_spark_job_that_cannot_open_its_parquet_is_refunded(spark_store: MemoryStore) -> None:
    service = Service(spark_store, from_environ(), DatasetLoader(from_environ()))
    before = remaining(spark_store, "GONE")
    service.query("alice", "GONE", {**QUERY, "query_id": "spark-gone-1"})
    assert isinstance(service.workers, InProcessWorkers)
    service.workers.join(timeout=120)
    record = spark_store.get_query("spark-gone-1")
    assert record is not None and record.state is QueryState.REFUNDED
    assert remaining(spark_store, "GONE") == before


def test_a_spark_dataset_refuses_other_engines_before_any_debit(spark_store: MemoryStore) -> None:
    service = Service(spark_store, from_environ(), DatasetLoader(from_environ()))
    before = remaining(spark_store, "BIG")
    body = {"engine": "opendp", "query_id": "spark-odp-1"}
    with pytest.raises(InvalidRequest, match="runs on Spark"):
        service.query("alice", "BIG", body)
    assert remaining(spark_store, "BIG") == before


# --- end to end on the local stack ------------------------------------------------------
def test_a_spark_dataset_answers_a_dp_query_end_to_end_on_the_local_stack(
    stack: Any, make_researcher: Any
) -> None:
    """Over HTTP: the front, the spark worker process (Spark local mode), the emulator's S3
    and DynamoDB; the blocking client call waits for the job the server chose."""
    from neblina_client import Client

    sql = "SELECT sex, COUNT(*) AS n, AVG(income) AS income FROM df GROUP BY sex"
    researcher = make_researcher({"SYNTHETIC_SPARK": ("10", "0.001"), "SYNTHETIC": ("10", "0.001")})
    url, token = stack.api_url, researcher.token
    with Client(url=url, token=token, dataset="SYNTHETIC_SPARK", timeout=300) as spark:
        with Client(url=url, token=token, dataset="SYNTHETIC") as plain:
            price = spark.sql.cost(sql, 0.5, "1e-6")
            assert price == plain.sql.cost(sql, 0.5, "1e-6")
        before = spark.budget().remaining
        answer = spark.sql.query(sql, 0.5, "1e-6")
        assert answer.cost == price
        assert sorted(answer.result["sex"]) == ["female", "male"]  # the declared domain
        assert spark.budget().remaining == before - price


def test_a_spark_job_that_fails_after_the_read_keeps_its_cost(
    spark_store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib.engines import spark_sql

    def broken(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("executor lost")

    monkeypatch.setattr(spark_sql.SparkRowsReader, "execute", broken)
    service = Service(spark_store, from_environ(), DatasetLoader(from_environ()))
    before = remaining(spark_store, "BIG")
    service.query("alice", "BIG", {**QUERY, "query_id": "spark-broken-1"})
    assert isinstance(service.workers, InProcessWorkers)
    service.workers.join(timeout=120)
    record = spark_store.get_query("spark-broken-1")
    assert record is not None and record.state is QueryState.FAILED
    failure = EngineFailed()
    assert record.error == {"error": failure.code, "message": failure.message}
    assert remaining(spark_store, "BIG") == before - record.cost


def test_a_spark_load_carries_the_source_version_the_function_loader_sees(
    spark_store: MemoryStore,
) -> None:
    """So a reuse key (docs/api.md) is checked against the same version on both paths."""
    dataset = spark_store.get_dataset("BIG")
    assert dataset is not None
    assert SparkLoader().load(dataset).version == DatasetLoader(from_environ()).version(dataset)


# --- the local copies of S3 sources -----------------------------------------------------
class VersionedS3:
    """An S3 stand-in serving one local Parquet file whose ETag the test changes."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.etag = '"v1"'

    def __call__(self) -> VersionedS3:
        return self

    def head_object(self, Bucket: str, Key: str) -> dict[str, str]:
        return {"ETag": self.etag}

    def download_file(self, bucket: str, key: str, path: str) -> None:
        shutil.copyfile(self.source, path)


def test_the_local_copy_of_an_older_etag_is_deleted_once_no_query_reads_it(
    spark_store: MemoryStore, session: Any
) -> None:
    import gc

    big = spark_store.get_dataset("BIG")
    assert big is not None
    s3 = VersionedS3(Path(big.source))
    dataset = Dataset("BIG", "s3://bucket/big.parquet", big.metadata, utcnow(), "", "parquet")
    loader = SparkLoader(s3)
    first = loader.load(dataset)
    (old,) = loader.temporary_files()
    assert loader.load(dataset).version == first.version  # same ETag: the same copy
    assert loader.temporary_files() == {old}
    s3.etag = '"v2"'
    second = loader.load(dataset)
    new = (loader.temporary_files() - {old}).pop()
    assert os.path.exists(old), "deleted while a loaded dataset still reads it"
    assert first.frame.count() == second.frame.count() > 0
    del first
    gc.collect()
    assert not os.path.exists(old) and loader.temporary_files() == {new}
    loader.close()
    assert not os.path.exists(new) and loader.temporary_files() == set()
    del second


def test_the_local_copies_are_deleted_when_the_process_exits(tmp_path: Path) -> None:
    import subprocess
    import sys

    source = tmp_path / "rows.parquet"
    frame(3, rows=10).to_parquet(source, engine="fastparquet", index=False)
    program = f"""
import shutil, sys
from chalicelib.engines.spark_sql import SparkLoader
from chalicelib.models import Dataset, utcnow
class S3:
    def __call__(self): return self
    def head_object(self, Bucket, Key): return {{"ETag": '"e"'}}
    def download_file(self, bucket, key, path): shutil.copyfile({str(source)!r}, path)
loader = SparkLoader(S3())
path, _ = loader._path(Dataset("T", "s3://b/k.parquet", {{}}, utcnow(), "", "parquet"))
print(path)
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    path = done.stdout.strip().splitlines()[-1]
    assert path.endswith(".parquet") and "neblina-spark-" in path
    assert not os.path.exists(path)


# --- the EMR Serverless job's entry point, run by spark-submit in local mode -------------
def test_the_spark_job_entry_point_under_spark_submit_finishes_the_record_exactly_once(
    stack: Any, make_researcher: Any, store: Any, tmp_path: Path
) -> None:
    """What EMR Serverless runs (scripts/spark_job_main.py with the code zip on --py-files),
    run by pyspark's spark-submit in local mode on 127.0.0.1 against the local stack's
    DynamoDB and S3, twice (a job run retried by EMR): one release, one debit."""
    import subprocess
    import sys
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from package_lambda import build_spark_job

    from chalicelib.aws import s3_client
    from chalicelib.config import get_settings
    from chalicelib.emr import job_document

    settings = get_settings()
    package = build_spark_job(tmp_path / "package")
    researcher = make_researcher({"SYNTHETIC_SPARK": ("10", "0.001")})
    events: list[dict[str, Any]] = []

    class Queue(InProcessWorkers):
        def submit(self, worker: str, payload: dict[str, Any]) -> None:
            assert worker == "spark"
            events.append(payload)

    service = Service(store, settings, DatasetLoader(settings, s3=lambda: s3_client(settings)))
    assert service.local is not None
    service.workers = Queue(service.local)
    sql = "SELECT sex, COUNT(*) AS n, AVG(income) AS income FROM df GROUP BY sex"
    body = {"engine": "smartnoise_sql", "query": sql, "epsilon": 0.5, "delta": "1e-6"}
    query_id = f"spark-submit-{os.urandom(4).hex()}"
    before = store.get_grant(researcher.user_id, "SYNTHETIC_SPARK").remaining
    assert isinstance(
        service.query(researcher.user_id, "SYNTHETIC_SPARK", {**body, "query_id": query_id}),
        Accepted,
    )
    (payload,) = events
    env = {k: v for k, v in stack.env().items() if k != "NEBLINA_WORKERS"}
    document = tmp_path / f"{query_id}.json"
    document.write_text(json.dumps(job_document(payload, env)))
    spark_submit = Path(sys.executable).parent / "spark-submit"
    command = [
        str(spark_submit), "--master", "local[2]",
        "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
        "--conf", "spark.ui.enabled=false",
        "--py-files", str(tmp_path / "package" / "spark-job.zip"),
        package["entry_point"], str(document), query_id,
    ]  # fmt: skip
    env.update(
        SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
    )  # fmt: skip
    # The second delivery (a retried job run) claims nothing, before any Spark is started:
    # it runs the same entry point and zip with the plain interpreter (spark-submit would
    # only add its JVM's start, ~10-20 s on this loaded machine).
    zipped = str(tmp_path / "package" / "spark-job.zip")
    retry = [sys.executable, package["entry_point"], str(document), query_id]
    outputs, seconds = [], []
    for argv, extra in ((command, {}), (retry, {"PYTHONPATH": zipped})):
        started = time.perf_counter()
        done = subprocess.run(
            argv, env={**env, **extra}, capture_output=True, text=True, timeout=180
        )
        seconds.append(round(time.perf_counter() - started, 1))
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout)
    print(f"\nspark-submit runs, seconds: {seconds}")
    assert f"neblina spark job {query_id}: released" in outputs[0]
    assert f"neblina spark job {query_id}: not claimed" in outputs[1]
    record = store.get_query(query_id)
    assert record is not None and record.state is QueryState.DONE
    assert sorted(row["sex"] for row in record.result["records"]) == ["female", "male"]
    after = store.get_grant(researcher.user_id, "SYNTHETIC_SPARK").remaining
    assert after == before - record.cost  # debited once, at submission; released once
