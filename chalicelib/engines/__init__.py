"""DP engines behind one small interface, and the registry that names them.

An engine module is imported only when a request names it, so a SmartNoise request never
pays for another engine's imports (and the authorizer pays for none).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from chalicelib.errors import InvalidRequest
from chalicelib.models import Dataset, PrivacyCost

# The fields every engine accepts besides its own: the engine's name, the caller's idempotency
# key and the dummy-run switches (the service reads these; each engine refuses the rest).
COMMON_FIELDS = frozenset({"engine", "query_id", "dummy", "dummy_rows", "dummy_seed"})


class EngineRequest(Protocol):
    """An engine's validated request."""

    def canonical(self) -> dict[str, Any]:
        """The request as stored in the archive and hashed for idempotency."""


class Engine(Protocol):
    """One DP library.

    ``parse`` and ``cost`` see only the request and the public metadata; ``execute`` is the
    only method that sees rows (private or dummy).
    """

    name: str

    def parse(self, body: dict[str, Any]) -> EngineRequest:
        """Validate the engine's fields of a request body (400 on bad input)."""

    def cost(self, dataset: Dataset, request: EngineRequest) -> PrivacyCost:
        """The exact privacy cost, from the request and metadata only."""

    def execute(self, loaded: Any, request: EngineRequest) -> dict[str, Any]:
        """Run the mechanism on a loaded (private or dummy) dataset; a JSON result."""


ENGINE_MODULES = {
    "smartnoise_sql": "chalicelib.engines.smartnoise_engine",
    "opendp": "chalicelib.engines.opendp_engine",
}

_LOADED: dict[str, Engine] = {}


def get_engine(name: object) -> Engine:
    """The engine called ``name``; 400 for an unknown name."""
    if not isinstance(name, str) or name not in ENGINE_MODULES:
        known = ", ".join(sorted(ENGINE_MODULES))
        raise InvalidRequest(f"unknown engine {name!r} (expected one of: {known})")
    if name not in _LOADED:
        module = importlib.import_module(ENGINE_MODULES[name])
        _LOADED[name] = module.ENGINE
    return _LOADED[name]
