"""Fuzzing the running API from its own OpenAPI document (schemathesis, bounded examples).

Every operation is called with generated parameters and bodies (valid and invalid) with a
valid token, with a malformed token and with none; every response must be a non-5xx whose
status code, content type and body match the document. Requests with a valid token are
also sent against the real dataset name, so bodies reach the engines and the ledger.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 25
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
CALLS: Counter[str] = Counter()


@pytest.fixture
def fuzz_token(make_researcher) -> str:  # type: ignore[no-untyped-def]
    return make_researcher(
        {"PENGUIN": ("1000000000", "0.5"), "SYNTHETIC": ("1000000000", "0.5")}
    ).token


@pytest.fixture(scope="module")
def operations(stack):  # type: ignore[no-untyped-def]
    """Every operation of the document the running server serves (schemathesis's loader).

    schemathesis's pytest plugin does not work with pytest 9 (it reads a private attribute
    of test items), so each operation's hypothesis strategy is driven here directly.
    """
    loaded = schemathesis.openapi.from_url(f"{stack.api_url}/v1/openapi.json")
    return [result.ok() for result in loaded.get_all_operations()]


def fuzz(
    operations, stack, headers: dict[str, str], label: str, dataset: str | None = None
) -> None:  # type: ignore[no-untyped-def]
    for operation in operations:

        @given(case=operation.as_strategy())
        @SETTINGS
        def run(case) -> None:  # type: ignore[no-untyped-def]
            if dataset is not None and "name" in (case.path_parameters or {}):
                case.path_parameters["name"] = dataset
            for name, value in headers.items():
                case.headers = {**(case.headers or {}), name: value}
            if "Authorization" not in headers and case.headers:
                case.headers.pop("Authorization", None)
            response = case.call_and_validate(base_url=stack.api_url, checks=CHECKS)
            CALLS[f"{label} {response.status_code}"] += 1

        run()


def test_with_a_valid_token(operations, stack, fuzz_token) -> None:  # type: ignore[no-untyped-def]
    fuzz(operations, stack, {"Authorization": f"Bearer {fuzz_token}"}, "valid-token")


def test_on_a_real_dataset(operations, stack, fuzz_token) -> None:  # type: ignore[no-untyped-def]
    fuzz(operations, stack, {"Authorization": f"Bearer {fuzz_token}"}, "real-dataset", "PENGUIN")


def test_with_bad_tokens(operations, stack) -> None:  # type: ignore[no-untyped-def]
    fuzz(operations, stack, {"Authorization": "Bearer nbl_" + "A" * 43}, "unknown-token")
    fuzz(operations, stack, {"Authorization": "Basic dXNlcjpwYXNz"}, "wrong-scheme")
    fuzz(operations, stack, {}, "no-token")


def test_fuzzing_reached_the_server(stack) -> None:  # type: ignore[no-untyped-def]
    """Runs after the fuzz tests in this module: they sent requests and saw real answers."""
    total = sum(CALLS.values())
    print(f"\nschemathesis: {total} requests: {dict(sorted(CALLS.items()))}")
    if total == 0:
        pytest.skip("run together with the fuzz tests of this module")
    assert CALLS["real-dataset 200"] > 0
    assert all(not key.endswith(tuple(f" 5{d}" for d in "0123456789")) for key in CALLS)
