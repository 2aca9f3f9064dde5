"""The OpenAPI document served at ``/v1/openapi.json``.

The document is generated at build time from the models in ``chalicelib/api_models.py``
(``.venv/bin/python -m chalicelib.api_models``) and committed as ``chalicelib/openapi.json``;
serving it reads that file only, so neither pydantic nor the models load on the Lambda.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

DOCUMENT_PATH = Path(__file__).with_name("openapi.json")


@cache
def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text())
    return loaded


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document, with the server's version."""
    doc = copy.deepcopy(_document())
    doc["info"]["version"] = version
    return doc
