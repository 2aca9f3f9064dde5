"""The storage contract suite's backends: every test here runs once per backend.

- ``dynamodb``: DynamoStore on the embedded emulator (moto, single-threaded) of the session's
  local stack, with its own table prefix;
- ``mongomock``: MongoStore on mongomock (in-process; taught Decimal128 by
  ``mongomock_decimal128``), which proves the logic but not concurrency;
- ``mongodb``: MongoStore on a real server when ``MONGODB_URI`` is set, skipped otherwise;
- ``memory``: MemoryStore, the in-process store the service tests use, held to the same
  contract so what those tests prove holds for the real backends.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from mongo_backends import mongo_database

BACKENDS = ("dynamodb", "mongomock", "mongodb", "memory")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh, empty store of each kind (own tables / collections per module)."""
    prefix = f"c{uuid.uuid4().hex[:8]}-"
    if request.param == "dynamodb":
        request.getfixturevalue("stack")
        from chalicelib.config import get_settings
        from chalicelib.storage.dynamo import DynamoStore

        store: Any = DynamoStore(dataclasses.replace(get_settings(), table_prefix=prefix))
        store.create_schema()
        yield store
        return
    if request.param == "memory":
        from chalicelib.storage.memory import MemoryStore

        yield MemoryStore()
        return
    from chalicelib.storage.mongo import MongoStore

    database = mongo_database(request.param)
    store = MongoStore(database, prefix, grace=timedelta(seconds=900))
    store.create_schema()
    yield store
    for name in database.list_collection_names():
        if name.startswith(prefix):
            database.drop_collection(name)
