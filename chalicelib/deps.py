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


def build_service(settings: Settings) -> Service:
    """The service with the configured store, loader, engines and result overflow."""
    from chalicelib.aws import s3_client
    from chalicelib.datasets import DatasetLoader
    from chalicelib.engines import Engines
    from chalicelib.result_overflow import ResultOverflow
    from chalicelib.service import Service
    from chalicelib.storage import get_store

    s3 = partial(s3_client, settings)
    return Service(
        get_store(),
        settings,
        DatasetLoader(settings, s3=s3),
        results=ResultOverflow(settings, s3=s3),
        engines=Engines(settings),
    )
