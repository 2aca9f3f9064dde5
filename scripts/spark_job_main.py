"""The EMR Serverless entry point of a Spark job (docs/spark.md): spark-submit runs this file
with the code zip on ``--py-files``; everything is in :mod:`chalicelib.spark_job`."""

import sys

from chalicelib.spark_job import main

sys.exit(main())
