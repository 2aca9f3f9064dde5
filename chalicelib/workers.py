"""Which worker runs which engine (docs/architecture.md).

The front (the API Lambda) carries no DP library: each engine family runs in its own worker
(a Lambda with its own package, memory and timeout; locally a process). Adding an engine is
one entry here, its factory in :mod:`chalicelib.engines`, its worker package in
``scripts/package_lambda.py`` and its Lambda in Terraform.
"""

from __future__ import annotations

from collections.abc import Mapping

# engine name (the request's "engine") -> worker family (env NEBLINA_WORKER of its Lambda)
ENGINE_WORKERS: Mapping[str, str] = {
    "smartnoise_sql": "sql",
    "opendp": "opendp",
    "opendp_polars": "polars",
    "diffprivlib": "diffprivlib",
    "smartnoise_synth": "synth",
}
# Engines whose queries always run as jobs (202, then poll): a synthesizer's fit takes
# from seconds to minutes (docs/synth.md). Dummy runs are still answered at once.
ASYNC_ENGINES = frozenset({"smartnoise_synth"})
# A dataset whose metadata says ``executor: spark`` has its SQL queries run as jobs by this
# family (docs/spark.md): locally a worker process running Spark in local mode; on AWS the
# job runs on EMR Serverless. Not a Lambda package of its own (not in families()).
SPARK_WORKER = "spark"
SPARK_ENGINES = frozenset({"smartnoise_sql"})
# GET /dummy builds a table with pandas: a worker that has it does the work.
DUMMY_WORKER = "sql"


def families() -> frozenset[str]:
    """Every worker family a deployment runs."""
    return frozenset(ENGINE_WORKERS.values()) | {DUMMY_WORKER}


def local_families() -> frozenset[str]:
    """Every worker family the local stack runs as a process (the Spark one included)."""
    return families() | {SPARK_WORKER}
