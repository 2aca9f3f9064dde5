"""The Spark job's entry point: one Spark-backed query, run by spark-submit (docs/spark.md).

On AWS, EMR Serverless runs ``spark/main.py`` (scripts/spark_job_main.py, three lines that
call :func:`main`) with the code zip on ``--py-files``; locally the same script runs under
``spark-submit`` in local mode (tests/stack/test_spark_job.py). Its arguments are the job
document's location (``s3://bucket/spark-jobs/<id>.json`` or a local path, written by
:class:`chalicelib.emr.EmrServerlessWorkers`) and the query id.

The job is the ``spark`` worker's ``run`` in job mode, the same code as the local spark
worker process (:meth:`chalicelib.worker.Worker.run`): it claims the record first (of all
runs of one job, one gets it: a job run retried by EMR, or a hand-off retried, releases at
most once), opens the Parquet (a failure until then refunds: no data was read), runs the
mechanism once, and finishes the record through the same store. If the document itself
cannot be read, the job claims the record by its id and refunds it (no data was read); if
it cannot even do that, the record stays queued and the lease rule settles it.

The exit status is 0 once the record is settled (done, failed or refunded) or was not this
run's to settle: a non-zero status would only make EMR retry a job that has nothing left
to do.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger("neblina.spark_job")

FORWARDED = ("NEBLINA_",)


def _read_document(location: str) -> dict[str, Any]:
    parsed = urlparse(location)
    if parsed.scheme == "s3":
        import boto3

        body = boto3.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        document = json.loads(body["Body"].read())
    else:
        document = json.loads(Path(location).read_text())
    if not isinstance(document, dict) or not isinstance(document.get("payload"), dict):
        raise ValueError("not a job document")
    return document


def _delete_document(location: str) -> None:
    """The document is the job's input only: deleted once the record is settled."""
    parsed = urlparse(location)
    if parsed.scheme != "s3":
        return
    try:
        import boto3

        boto3.client("s3").delete_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
    except Exception:
        log.warning("could not delete the job document %s", location)


def _refund_unread(query_id: str) -> None:
    """The document could not be read: take the job (claim) and refund it."""
    from chalicelib.errors import InternalError
    from chalicelib.models import utcnow
    from chalicelib.storage import get_store

    store = get_store()
    record = store.claim(query_id, utcnow())
    if record is None:
        log.warning("query %s: not claimable (settled, or another run has it)", query_id)
        return
    failure = InternalError("the query could not be run; the cost was refunded")
    store.refund(record, utcnow(), {"error": failure.code, "message": failure.message})
    log.error("query %s: job document unreadable: refunded", query_id)


def run(location: str, query_id: str) -> dict[str, Any]:
    """Run one job; returns the worker's answer envelope (``{"ok": ...}``)."""
    try:
        document = _read_document(location)
        for name, value in dict(document.get("environment") or {}).items():
            if str(name).startswith(FORWARDED):
                os.environ[str(name)] = str(value)
        payload = document["payload"]
        if str(payload.get("record", {}).get("query_id")) != query_id:
            raise ValueError("the document is another query's")
    except Exception:
        log.exception("query %s: the job document %s cannot be read", query_id, location)
        _refund_unread(query_id)
        return {"ok": False, "error": {"code": "internal_error"}}
    from chalicelib.config import get_settings
    from chalicelib.deps import build_worker
    from chalicelib.workers import SPARK_WORKER

    get_settings.cache_clear()
    worker = build_worker(get_settings(), SPARK_WORKER)
    answer = worker.handle({**payload, "op": "run", "mode": "job"})
    if answer.get("claimed", True):
        _delete_document(location)
    return answer


def main(argv: list[str] | None = None) -> int:
    """``main.py DOCUMENT QUERY_ID``: see the module docstring."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=os.environ.get("NEBLINA_LOG_LEVEL", "INFO"))
    if len(args) != 2:
        print("usage: main.py DOCUMENT QUERY_ID", file=sys.stderr)
        return 2
    answer = run(args[0], args[1])
    outcome = "released" if answer.get("ok") and answer.get("result") is not None else "settled"
    if answer.get("ok") and answer.get("claimed") is False:
        outcome = "not claimed (another run has it, or it is settled)"
    print(f"neblina spark job {args[1]}: {outcome}", flush=True)
    try:
        from chalicelib.engines.spark_sql import _SESSION

        for session in _SESSION:
            session.stop()
    except Exception:  # pragma: no cover - best effort at exit
        log.warning("could not stop the Spark session")
    return 0
