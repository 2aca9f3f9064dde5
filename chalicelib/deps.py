"""The composition root: the one place that builds the API's parts and hands them in.

``app.get_service`` calls :func:`build_service` once per process (lazily, so the
authorizer and the cold start import none of this). Everything below receives what it
needs instead of building it: the loader and the result overflow share one S3 client
factory (:mod:`chalicelib.aws`), the engines get their limits from the settings, the store
is the configured backend. Tests build a :class:`~chalicelib.service.Service` the same way
with their own parts (a memory store, a stub engine, a fake S3 client).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from chalicelib.config import Settings

if TYPE_CHECKING:
    from chalicelib.service import Service
    from chalicelib.worker import Worker


def build_service(settings: Settings) -> Service:
    """The front's service: the configured store, result overflow and workers.

    ``NEBLINA_WORKERS`` (:func:`chalicelib.hop.workers_config`) names each worker's
    Lambda function; unset or ``inprocess``, one in-process worker runs every engine (and
    then this process imports the engines and pandas when a query needs them). With
    ``NEBLINA_SPARK=emr`` the ``spark`` family's jobs are handed to EMR Serverless
    (:mod:`chalicelib.emr`).
    """
    import os

    from chalicelib.aws import s3_client
    from chalicelib.hop import LambdaWorkers, workers_config
    from chalicelib.result_overflow import ResultOverflow
    from chalicelib.service import Service
    from chalicelib.storage import get_store

    s3 = partial(s3_client, settings)
    store = get_store()
    results = ResultOverflow(settings, s3=s3)
    config = workers_config(os.environ.get("NEBLINA_WORKERS"))
    if config is not None:
        from chalicelib.emr import EmrConfig, EmrServerlessWorkers
        from chalicelib.hop import Workers

        workers: Workers = LambdaWorkers(config, settings)
        emr = EmrConfig.from_environ(os.environ)
        if emr is not None:  # NEBLINA_SPARK=emr: Spark jobs are EMR Serverless job runs
            workers = EmrServerlessWorkers(workers, emr, s3=s3)
        return Service(store, settings, results=results, workers=workers)
    from chalicelib.datasets import DatasetLoader
    from chalicelib.engines import Engines

    loader = DatasetLoader(settings, s3=s3)
    return Service(store, settings, loader, results=results, engines=Engines(settings))


def build_worker(settings: Settings, family: str | None) -> Worker:
    """A worker of ``family`` (None: every engine) with the configured store, loader,
    engines and result overflow (one S3 client factory for the loader and the overflow)."""
    from chalicelib.aws import s3_client
    from chalicelib.datasets import DatasetLoader
    from chalicelib.engines import Engines
    from chalicelib.result_overflow import ResultOverflow
    from chalicelib.storage import get_store
    from chalicelib.worker import Worker

    s3 = partial(s3_client, settings)
    return Worker(
        get_store(),
        settings,
        DatasetLoader(settings, s3=s3),
        results=ResultOverflow(settings, s3=s3),
        engines=Engines(settings),
        family=family,
    )
