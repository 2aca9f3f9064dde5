"""DP engines behind one typed interface, and the lazy registry that builds them.

An engine module is imported only when a request names it, so a SmartNoise request never
pays for another engine's imports (and the authorizer pays for none). Each engine is built
by a factory from the deployment's :class:`~chalicelib.config.Settings` (its limits are
handed in; no engine reads global settings), and each factory states the engine's request
type, so mypy checks that the engine really is an ``Engine`` of that request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from chalicelib.config import Settings
from chalicelib.engines._lazy_imports import install as _defer_sqlalchemy
from chalicelib.errors import InvalidRequest
from chalicelib.models import Dataset, PrivacyCost

if TYPE_CHECKING:  # the loader imports pandas: never at cold start
    from chalicelib.datasets import LoadedDataset

_defer_sqlalchemy()  # SmartNoise's SQLAlchemy only for the SQLite path (_lazy_imports)

# The fields every engine accepts besides its own: the engine's name, the caller's idempotency
# key, the dummy-run switches, whether to wait for the answer, the accuracy's confidence
# level and whether an identical earlier release may be reused (the service reads these;
# each engine refuses the rest).
COMMON_FIELDS = frozenset(
    {"engine", "query_id", "dummy", "dummy_rows", "dummy_seed", "wait", "level", "reuse"}
)


class EngineRequest(Protocol):
    """An engine's validated request."""

    def canonical(self) -> dict[str, Any]:
        """The request as stored in the archive and hashed for idempotency."""
        ...


class Engine[R: EngineRequest](Protocol):
    """One DP library, whose validated requests are ``R``.

    ``parse`` and ``cost`` see only the request and the public metadata; ``execute`` is the
    only method that sees rows (private or dummy).
    """

    name: str

    def parse(self, body: dict[str, Any]) -> R:
        """Validate the engine's fields of a request body (400 on bad input)."""
        ...

    def cost(self, dataset: Dataset, request: R) -> PrivacyCost:
        """The exact privacy cost, from the request and metadata only."""
        ...

    def execute(self, loaded: LoadedDataset, request: R) -> dict[str, Any]:
        """Run the mechanism on a loaded (private or dummy) dataset; a JSON result."""
        ...


type EngineFactory = Callable[[Settings], Engine[Any]]


def _smartnoise_sql(settings: Settings) -> Engine[Any]:
    from chalicelib.engines.smartnoise_engine import SmartnoiseSqlEngine, SqlRequest

    engine: Engine[SqlRequest] = SmartnoiseSqlEngine(max_query_chars=settings.max_query_chars)
    return engine


def _opendp(settings: Settings) -> Engine[Any]:
    from chalicelib.engines.opendp_engine import OpenDPEngine, OpenDPRequest

    engine: Engine[OpenDPRequest] = OpenDPEngine()
    return engine


def _opendp_polars(settings: Settings) -> Engine[Any]:
    from chalicelib.engines.polars_engine import PolarsEngine, PolarsRequest

    engine: Engine[PolarsRequest] = PolarsEngine()
    return engine


def _diffprivlib(settings: Settings) -> Engine[Any]:
    from chalicelib.engines.diffprivlib_engine import DiffPrivLibBody, DiffPrivLibEngine

    engine: Engine[DiffPrivLibBody] = DiffPrivLibEngine()
    return engine


def _smartnoise_synth(settings: Settings) -> Engine[Any]:
    from chalicelib.engines.synth_engine import SynthBody, SynthEngine

    engine: Engine[SynthBody] = SynthEngine()
    return engine


# The engines a request may name ("engine"), each with its factory.
FACTORIES: Mapping[str, EngineFactory] = {
    "smartnoise_sql": _smartnoise_sql,
    "opendp": _opendp,
    "opendp_polars": _opendp_polars,
    "diffprivlib": _diffprivlib,
    "smartnoise_synth": _smartnoise_synth,
}


class Engines:
    """The engines by name, each built on first use and then kept (thread-safe)."""

    def __init__(self, settings: Settings, factories: Mapping[str, EngineFactory] = FACTORIES):
        self._settings = settings
        self._factories = dict(factories)
        self._built: dict[str, Engine[Any]] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._factories)

    def get(self, name: object) -> Engine[Any]:
        """The engine called ``name``; 400 for an unknown name."""
        if not isinstance(name, str) or name not in self._factories:
            known = ", ".join(sorted(self._factories))
            raise InvalidRequest(f"unknown engine {name!r} (expected one of: {known})")
        with self._lock:
            if name not in self._built:
                self._built[name] = self._factories[name](self._settings)
            return self._built[name]


_DEFAULT: list[Engines] = []


def get_engine(name: object) -> Engine[Any]:
    """The engine called ``name`` under the process settings (scripts, benchmarks, tests).

    The API's service uses the :class:`Engines` its composition root hands it.
    """
    if not _DEFAULT:
        from chalicelib.config import get_settings

        _DEFAULT.append(Engines(get_settings()))
    return _DEFAULT[0].get(name)
