"""The unit tier's guard: no socket connects or binds, no process starts (see conftest.py)."""

from __future__ import annotations

import _posixsubprocess  # type: ignore[import-not-found]
import os
import socket
import subprocess
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

import pytest


class LeftTheProcess(AssertionError):
    """A unit test opened a socket or started a process."""


# (owner, attribute, what it would have done)
CLOSED: list[tuple[Any, str, str]] = [
    (socket.socket, "connect", "connect a socket"),
    (socket.socket, "connect_ex", "connect a socket"),
    (socket.socket, "bind", "bind a socket"),
    (subprocess, "_fork_exec", "start a process"),  # subprocess's own reference
    (_posixsubprocess, "fork_exec", "start a process"),  # multiprocessing
    (os, "fork", "fork the process"),
    (os, "forkpty", "fork the process"),
    (os, "posix_spawn", "start a process"),
    (os, "posix_spawnp", "start a process"),
    (os, "system", "start a shell"),
]


@contextmanager
def no_processes_or_ports() -> Iterator[list[str]]:
    """Close every way out of the process; yields the attempts made meanwhile."""
    attempts: list[str] = []

    def refuse(what: str, name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            shown = ", ".join(repr(a) for a in args[:3] if not isinstance(a, socket.socket))
            attempt = f"{name}({shown}): a unit test must not {what}"
            attempts.append(attempt)
            raise LeftTheProcess(attempt + " (move it to tests/contract, stack or build)")

        return refused

    with ExitStack() as stack:
        for owner, name, what in CLOSED:
            if hasattr(owner, name):
                stack.enter_context(mock.patch.object(owner, name, refuse(what, name)))
        yield attempts


def _guarded() -> Generator[None, Any, Any]:
    with no_processes_or_ports() as attempts:
        result = yield
    if attempts:
        raise LeftTheProcess("; ".join(attempts))
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _guarded())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _guarded())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, Any, Any]:
    return (yield from _guarded())
