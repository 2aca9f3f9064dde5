"""A researcher's session on a Spark-backed dataset (docs/spark.md).

SYNTHETIC_SPARK is the SYNTHETIC Parquet declared with ``executor: spark``: the same SQL,
priced exactly as on SYNTHETIC, runs as a Spark job (local mode in the local stack's spark
worker; needs Java 17). Reads NEBLINA_URL and NEBLINA_TOKEN from the environment (or
.neblina/local.env, written by ``make up``):

    make up && .venv/bin/python examples/spark_session.py; make down
"""

from __future__ import annotations

import time

from neblina_client import Client

SQL = "SELECT region, COUNT(*) AS n, AVG(income) AS income FROM df GROUP BY region"


def main() -> None:
    spark, plain = Client(dataset="SYNTHETIC_SPARK"), Client(dataset="SYNTHETIC")
    print("price on Spark:   ", spark.sql.cost(SQL, 1.0, "1e-6"))
    print("price in function:", plain.sql.cost(SQL, 1.0, "1e-6"), "(the same)")

    before = spark.budget().remaining
    started = time.perf_counter()
    job = spark.sql.query(SQL, 1.0, "1e-6", wait=False)  # a Spark dataset always answers 202
    print(f"submitted {job.query_id}: {job.status().state}, debited at submission")
    result = job.wait(progress=True)
    print(result.result.head(5).to_string(index=False))
    print(f"submit to done: {time.perf_counter() - started:.1f} s")
    print("debited once, exactly the cost:", before - spark.budget().remaining == result.cost)

    spark.close()
    plain.close()


if __name__ == "__main__":
    main()
