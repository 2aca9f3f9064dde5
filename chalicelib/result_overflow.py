"""Released results too large for a ledger record, archived as S3 objects.

A DynamoDB item holds 400 KB at most (a MongoDB document 16 MB). A result whose JSON is
over ``NEBLINA_INLINE_RESULT_BYTES`` is written to the deployment's bucket
(``NEBLINA_BUCKET``) as ``archive/<query_id>.json`` *before* its record is completed, and
the record keeps a pointer instead of the rows::

    {"type": "s3_archive", "bucket": "...", "key": "archive/<query_id>.json",
     "bytes": 1234567, "sha256": "<hex>"}

Reading the record fetches the object and checks its size and SHA-256 against the pointer;
an object that is missing or differs is never served. The service does all of this, so
every storage backend shares it (see ``docs/ledger.md``, "Large results").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import partial
from typing import Any

from chalicelib.aws import s3_client
from chalicelib.config import Settings

ARCHIVE_PREFIX = "archive/"
POINTER_TYPE = "s3_archive"
_POINTER_KEYS = {"type", "bucket", "key", "bytes", "sha256"}


class ArchiveCorrupt(Exception):
    """An archived result is missing, or its bytes are not the ones its pointer names."""


def encode(result: dict[str, Any]) -> bytes:
    """The result's JSON as it is measured and archived (what the stores write inline).

    Python's default ``json.dumps`` (ASCII, ``", "`` and ``": "`` separators), which is
    what PynamoDB writes into the record, so a result under the inline threshold fits
    the item as measured. The API's response is the compact form, never larger.
    """
    return json.dumps(result).encode("ascii")


def is_pointer(result: object) -> bool:
    """True for a record's result that names an archived object instead of holding it."""
    return isinstance(result, dict) and result.get("type") == POINTER_TYPE


def object_key(query_id: str) -> str:
    """Where a query's result is archived (``query_id`` is validated: ``[A-Za-z0-9_-]``)."""
    return f"{ARCHIVE_PREFIX}{query_id}.json"


class ResultOverflow:
    """Writes and reads archived results in the deployment's bucket."""

    def __init__(self, settings: Settings, s3: Callable[[], Any] | None = None) -> None:
        self._settings = settings
        self._s3 = s3 or partial(s3_client, settings)

    def _client(self) -> Any:
        return self._s3()

    def put(self, query_id: str, body: bytes) -> dict[str, Any]:
        """Write ``body`` as the query's archived result; returns the pointer to store.

        Create-only (``If-None-Match: *``): an archived result is never replaced.
        """
        key = object_key(query_id)
        self._client().put_object(
            Bucket=self._settings.bucket,
            Key=key,
            Body=body,
            ContentType="application/json",
            IfNoneMatch="*",
        )
        return {
            "type": POINTER_TYPE,
            "bucket": self._settings.bucket,
            "key": key,
            "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }

    def get(self, query_id: str, pointer: dict[str, Any]) -> dict[str, Any]:
        """The archived result, after checking it is exactly what the pointer names.

        Raises :class:`ArchiveCorrupt` for a malformed pointer, a key that is not this
        query's, a missing object, or bytes whose length or SHA-256 differ.
        """
        size = pointer.get("bytes")
        if (
            set(pointer) != _POINTER_KEYS
            or pointer.get("key") != object_key(query_id)
            or not isinstance(pointer.get("bucket"), str)
            or not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
            or not isinstance(pointer.get("sha256"), str)
        ):
            raise ArchiveCorrupt("malformed pointer")
        try:
            response = self._client().get_object(Bucket=pointer["bucket"], Key=pointer["key"])
            body: bytes = response["Body"].read(size + 1)  # never more than one byte too many
        except Exception as exc:
            raise ArchiveCorrupt(f"cannot read the archived object: {type(exc).__name__}") from exc
        if len(body) != size or hashlib.sha256(body).hexdigest() != pointer["sha256"]:
            raise ArchiveCorrupt("the archived object differs from its pointer")
        result = json.loads(body)
        if not isinstance(result, dict):
            raise ArchiveCorrupt("the archived object is not a result")
        return result
