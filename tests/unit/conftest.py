"""The unit tier: no process, no port, no emulator; the whole tier runs in seconds.

Every test under ``tests/unit/`` runs (setup, call and teardown) with the ways out of the
process closed: a socket that connects or binds, a child process (``subprocess``,
``multiprocessing``, ``os.fork``/``posix_spawn``/``system``). Any attempt raises
:class:`LeftTheProcess` and fails the test, even if the code under test catches the error.
A test that needs any of these belongs in ``tests/contract``, ``tests/stack`` or
``tests/build``. The guard lives in ``tier_guard.py``; ``test_unit_guard.py`` proves it trips.
"""

from tier_guard import pytest_runtest_call, pytest_runtest_setup, pytest_runtest_teardown

__all__ = ["pytest_runtest_call", "pytest_runtest_setup", "pytest_runtest_teardown"]
