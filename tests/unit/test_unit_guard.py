"""The unit tier's guard fails any test that opens a socket or starts a process."""

from __future__ import annotations

import textwrap

import pytest
from tier_guard import CLOSED

GUARDED_CONFTEST = (
    "from tier_guard import pytest_runtest_call, pytest_runtest_setup, pytest_runtest_teardown"
)

OFFENDERS = textwrap.dedent(
    """
    import multiprocessing
    import os
    import socket
    import subprocess

    import pytest


    def test_connecting_a_socket():
        with socket.socket() as s:
            s.connect_ex(("127.0.0.1", 9))


    def test_binding_a_port_and_swallowing_the_error():
        try:
            socket.create_server(("127.0.0.1", 0)).close()
        except BaseException:
            pass  # the guard still fails the test


    def test_running_a_process():
        subprocess.run(["true"], check=False)


    def test_starting_a_multiprocessing_worker():
        multiprocessing.get_context("spawn").Process(target=print).start()


    def test_forking():
        os.fork()


    @pytest.fixture
    def server():
        socket.socket().bind(("127.0.0.1", 0))


    def test_a_fixture_that_binds(server):
        pass


    def test_pure_computation_passes():
        assert sum(range(10)) == 45
    """
)


def test_the_guard_fails_every_test_that_leaves_the_process(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(GUARDED_CONFTEST)
    pytester.makepyfile(test_offenders=OFFENDERS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1, failed=5, errors=1)
    result.stdout.fnmatch_lines(["*connect_ex(*a unit test must not connect a socket*"])
    result.stdout.fnmatch_lines(["*bind(*a unit test must not bind a socket*"])
    result.stdout.fnmatch_lines(["*fork_exec(*a unit test must not start a process*"])
    result.stdout.fnmatch_lines(["*fork(*a unit test must not fork the process*"])


def test_the_guard_is_on_for_this_tier() -> None:
    closed = [getattr(owner, name) for owner, name, _ in CLOSED if hasattr(owner, name)]
    assert len(closed) >= 8
    assert all(getattr(function, "__name__", "") == "refused" for function in closed)
