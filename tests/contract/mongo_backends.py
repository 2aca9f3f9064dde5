"""Database handles for the MongoDB backends of the storage contract suite.

A plain module, not part of conftest.py: tests import it by name (``from mongo_backends
import mongo_database``); ``import conftest`` would resolve to whichever of the suite's
three conftest.py files pytest loaded last.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

NO_MONGODB = (
    "MONGODB_URI is not set: no MongoDB server on this machine; the contract suite ran on "
    "mongomock instead (set MONGODB_URI=mongodb://... to run it against a real server)"
)


def mongo_database(kind: str) -> Any:
    """A database handle for ``mongomock`` or the real server at ``MONGODB_URI``."""
    if kind == "mongomock":
        import mongomock
        from mongomock_decimal128 import install

        install()
        return mongomock.MongoClient(tz_aware=True)["neblina"]
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        pytest.skip(NO_MONGODB)
    import pymongo

    client: Any = pymongo.MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000)
    return client.get_default_database(default="neblina_contract")
