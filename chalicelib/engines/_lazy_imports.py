"""SQLAlchemy imported only when the SQLite path first needs it (cold start, issue 14).

SmartNoise's ``snsql.sql.reader.pandas`` runs ``from sqlalchemy import create_engine, text``
when SmartNoise is imported, for the SQLite copy only; on the DuckDB path (the default) nothing
calls them, yet importing SQLAlchemy was ~20% of a cold SQL worker's imports (0.15–0.3 s of
~1.1 s here, ``python -X importtime``: 457 ms of self time under load 8). :func:`install` puts
a one-shot finder on ``sys.meta_path``: while that one module executes, ``sqlalchemy`` is a
stand-in whose ``create_engine`` and ``text`` import the real SQLAlchemy when first called.
The stand-in is removed as soon as the module has run, so every other import of
``sqlalchemy`` gets the real package. If SQLAlchemy or that module is already imported, the
finder does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

_TARGET = "snsql.sql.reader.pandas"
_LOCK = threading.Lock()


def _create_engine(*args: Any, **kwargs: Any) -> Any:
    import sqlalchemy

    return sqlalchemy.create_engine(*args, **kwargs)


def _text(*args: Any, **kwargs: Any) -> Any:
    import sqlalchemy

    return sqlalchemy.text(*args, **kwargs)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ... of the real one
        return getattr(self._inner, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        if "sqlalchemy" in sys.modules:  # imported meanwhile: nothing to defer
            self._inner.exec_module(module)
            return
        stand_in = types.ModuleType("sqlalchemy", "stand-in: the real one on first call")
        stand_in.create_engine = _create_engine  # type: ignore[attr-defined]
        stand_in.text = _text  # type: ignore[attr-defined]
        sys.modules["sqlalchemy"] = stand_in
        try:
            self._inner.exec_module(module)
        finally:
            if sys.modules.get("sqlalchemy") is stand_in:
                del sys.modules["sqlalchemy"]


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        uninstall()  # one shot
        if "sqlalchemy" in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec


_FINDER = _Finder()


def install() -> None:
    """Defer SQLAlchemy for SmartNoise's pandas reader, unless already too late."""
    with _LOCK:
        if _TARGET in sys.modules or "sqlalchemy" in sys.modules or _FINDER in sys.meta_path:
            return
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    with _LOCK:
        if _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)
