"""The warm path's cached lookups and their bounds (docs/threat-model.md, "Cached lookups").

A warm query makes two store calls, the reserve and the finish; a budget read one. The
dataset record, the fact that the caller holds a grant and the source's version are reused
for ``lookup_cache_seconds``; the authorizer's answer for a token for the authorizer TTL.
Each bound is tested here on a fake clock: a change is seen once the bound has passed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib import metadata
from chalicelib.auth import authenticate, hash_token, issue_token
from chalicelib.config import AUTHORIZER_TTL_SECONDS, Settings, from_environ
from chalicelib.datasets import DatasetLoader
from chalicelib.errors import Forbidden, NoGrant, RateLimited, Unauthorized
from chalicelib.models import Dataset, PrivacyCost, User, metadata_digest, utcnow
from chalicelib.service import Service, rate_block
from chalicelib.storage.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
META = metadata.validate(yaml.safe_load((ROOT / "localstack/data/penguin.yaml").read_text()))
PENGUINS = ROOT / "localstack/data/penguins.csv"
BOUND = 5.0


def count(query_id: str) -> dict[str, Any]:
    return {
        "engine": "smartnoise_sql",
        "query": "SELECT COUNT(*) AS n FROM df",
        "epsilon": 1,
        "delta": 0,
        "query_id": query_id,
    }


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """The memory store, recording the name of every call made to it (one per round trip
    on a remote backend: tests/contract/test_round_trips.py)."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attribute(*args, **kwargs)

        return counted


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def memory() -> MemoryStore:
    store = MemoryStore()
    for user in ("alice", "bob"):
        store.put_user(User(user_id=user, created_at=utcnow()))
    store.put_dataset(Dataset("PENGUIN", str(PENGUINS), META, utcnow()))
    store.create_grant("alice", "PENGUIN", PrivacyCost(epsilon=50, delta="0.001"))
    return store


@pytest.fixture
def settings() -> Settings:
    return dataclasses.replace(from_environ(), lookup_cache_seconds=BOUND, rate_limit=600)


@pytest.fixture
def store(memory: MemoryStore) -> CountingStore:
    return CountingStore(memory)


@pytest.fixture
def service(store: CountingStore, settings: Settings, clock: Clock) -> Service:
    loader = DatasetLoader(settings, clock=clock)
    # a wall clock that stays inside one rate-limit window (the window's counting is tested
    # on its own below)
    at = datetime(2026, 1, 1, 10, 0, 1, tzinfo=UTC)
    return Service(store, settings, loader, clock=lambda: at, timer=clock, sleep=lambda _: None)  # type: ignore[arg-type]


# round trips -----------------------------------------------------------------------------
def test_a_warm_query_makes_two_store_calls_the_reserve_and_the_finish(
    service: Service, store: CountingStore
) -> None:
    service.query("alice", "PENGUIN", count("q-warm-0001"))
    assert store.calls == ["take_request", "get_dataset", "get_grant", "reserve", "finish"]
    for n in range(2, rate_block(600) + 1):  # the rest of the counted block
        store.calls.clear()
        service.query("alice", "PENGUIN", count(f"q-warm-{n:04d}"))
        assert store.calls == ["reserve", "finish"]


def test_a_budget_read_makes_one_store_call(service: Service, store: CountingStore) -> None:
    service.budget("alice", "PENGUIN")
    store.calls.clear()
    answer = service.budget("alice", "PENGUIN")
    assert store.calls == ["get_grant"]
    assert answer["remaining"]["epsilon"] == "50"


def test_the_rate_limit_is_counted_a_block_at_a_time_and_never_exceeded(
    memory: MemoryStore, settings: Settings, clock: Clock
) -> None:
    limited = dataclasses.replace(settings, rate_limit=120, rate_window_seconds=3600)
    assert rate_block(120) == 2
    # a window that cannot end during the test: an hour, starting on the hour
    at = datetime(2026, 1, 1, 10, 0, 1, tzinfo=UTC)
    fronts = [CountingStore(memory), CountingStore(memory)]
    services = [Service(f, limited, clock=lambda: at, timer=clock) for f in fronts]  # type: ignore[arg-type]
    served = 0
    for n in range(200):
        try:
            services[n % 7 % 2]._throttle("alice")
            served += 1
        except RateLimited:
            pass
    # never more than the limit; at most block - 1 per other process lost to its allowance
    assert 120 - (rate_block(120) - 1) <= served <= 120
    one = Service(CountingStore(MemoryStore()), limited, clock=lambda: at, timer=clock)  # type: ignore[arg-type]
    for _ in range(120):
        one._throttle("bob")
    with pytest.raises(RateLimited):
        one._throttle("bob")
    assert one.store.calls.count("take_request") == 60 + 2  # type: ignore[attr-defined]


# the dataset record ----------------------------------------------------------------------
def test_a_dataset_update_is_seen_once_the_bound_has_passed(
    service: Service, memory: MemoryStore, clock: Clock
) -> None:
    assert service.metadata("alice", "PENGUIN")["metadata"]["max_ids"] == META["max_ids"]
    changed = {**META, "max_ids": META["max_ids"] + 4}
    memory.datasets["PENGUIN"] = dataclasses.replace(memory.datasets["PENGUIN"], metadata=changed)
    clock.now += BOUND - 0.01
    assert service.metadata("alice", "PENGUIN")["metadata"]["max_ids"] == META["max_ids"]
    clock.now += 0.01
    assert service.metadata("alice", "PENGUIN")["metadata"]["max_ids"] == changed["max_ids"]


def test_a_query_runs_under_the_metadata_it_was_priced_with(
    service: Service, memory: MemoryStore, clock: Clock
) -> None:
    """Within the bound a query is priced and run under the cached record; after it, under
    the new one: the loaded rows are keyed by the metadata the charge was computed from."""
    service.query("alice", "PENGUIN", count("q-meta-0001"))
    changed = {**META, "max_ids": META["max_ids"] + 4}
    memory.datasets["PENGUIN"] = dataclasses.replace(memory.datasets["PENGUIN"], metadata=changed)
    clock.now += BOUND
    service.query("alice", "PENGUIN", count("q-meta-0002"))
    digests = {key[2] for key in service.loader._cache._items}
    assert digests == {metadata_digest(changed)}


# the grant -------------------------------------------------------------------------------
def test_a_removed_grant_refuses_the_next_query_at_the_reserve_with_nothing_debited(
    service: Service, store: CountingStore, memory: MemoryStore
) -> None:
    service.query("alice", "PENGUIN", count("q-gone-0001"))
    memory.delete_grant("alice", "PENGUIN")
    store.calls.clear()
    with pytest.raises(NoGrant):
        service.query("alice", "PENGUIN", count("q-gone-0002"))
    assert "reserve" in store.calls and "finish" not in store.calls
    assert memory.get_query("q-gone-0002") is None
    store.calls.clear()
    with pytest.raises(NoGrant):  # no longer taken as seen: read again at once
        service.cost("alice", "PENGUIN", count("q-gone-0003"))
    assert "get_grant" in store.calls


def test_a_new_grant_is_usable_at_once(service: Service, memory: MemoryStore) -> None:
    with pytest.raises(NoGrant):
        service.cost("bob", "PENGUIN", count("q-new-00001"))
    memory.create_grant("bob", "PENGUIN", PrivacyCost(epsilon=5, delta=0))
    assert service.query("bob", "PENGUIN", count("q-new-00002"))["cost"]["epsilon"] == "1"


def test_without_a_grant_nothing_is_priced(service: Service) -> None:
    """The grant is checked before pricing (a price and an engine's refusal reveal metadata)."""
    service.workers.call = None  # type: ignore[method-assign]  # any hop would fail loudly
    with pytest.raises(NoGrant):
        service.query("bob", "PENGUIN", count("q-nogrant-01"))


# the source version ----------------------------------------------------------------------
def test_a_replaced_source_is_seen_once_the_bound_has_passed(
    tmp_path: Path, settings: Settings, clock: Clock
) -> None:
    source = tmp_path / "penguins.csv"
    source.write_bytes(PENGUINS.read_bytes())
    dataset = Dataset("P", str(source), META, utcnow())
    loader = DatasetLoader(settings, clock=clock)
    first = loader.load(dataset)
    rows = PENGUINS.read_text().splitlines()
    source.write_text("\n".join(rows[:100]) + "\n")
    clock.now += BOUND - 0.01
    assert loader.load(dataset) is first and loader.reads == 1
    clock.now += 0.01
    assert len(loader.load(dataset).frame) < len(first.frame) and loader.reads == 2


def test_no_cache_when_the_bound_is_zero(tmp_path: Path, settings: Settings, clock: Clock) -> None:
    source = tmp_path / "penguins.csv"
    source.write_bytes(PENGUINS.read_bytes())
    dataset = Dataset("P", str(source), META, utcnow())
    loader = DatasetLoader(dataclasses.replace(settings, lookup_cache_seconds=0), clock=clock)
    loader.load(dataset)
    source.write_text("\n".join(PENGUINS.read_text().splitlines()[:100]) + "\n")
    loader.load(dataset)
    assert loader.reads == 2


# the authorizer's result cache (localstack/apiserver.py, as API Gateway) --------------------
@dataclasses.dataclass
class Request:
    token: str


def authorizer(store: MemoryStore, clock: Clock, calls: list[str]) -> Callable[[Request], str]:
    """app.token_authorizer's logic on a clock: 'allow' or 'deny: why', or raise (401)."""
    start = utcnow()

    def answer(request: Request) -> str:
        calls.append(request.token)
        now = start + timedelta(seconds=clock.now - 1000.0)
        try:
            return f"allow {authenticate(store, 'Bearer ' + request.token, now).user_id}"
        except Forbidden as refused:
            return f"deny: {refused.message}"

    return answer


def test_a_revoked_token_is_refused_once_the_authorizer_ttl_has_passed(
    memory: MemoryStore, clock: Clock
) -> None:
    from apiserver import AuthorizerCache  # localstack/apiserver.py

    cache = AuthorizerCache(AUTHORIZER_TTL_SECONDS, clock=clock)
    calls: list[str] = []
    func = authorizer(memory, clock, calls)
    issued = issue_token("alice")
    memory.put_token(issued.record)
    request = Request(issued.secret)
    assert cache.answer(func, request) == "allow alice"
    memory.revoke_token(hash_token(issued.secret))
    clock.now += AUTHORIZER_TTL_SECONDS - 0.01
    assert cache.answer(func, request) == "allow alice"  # API Gateway's cached answer
    assert len(calls) == 1
    clock.now += 0.01
    assert cache.answer(func, request) == "deny: API token revoked"


def test_an_expired_token_is_refused_at_most_one_ttl_after_it_expired(
    memory: MemoryStore, clock: Clock
) -> None:
    from apiserver import AuthorizerCache

    cache = AuthorizerCache(AUTHORIZER_TTL_SECONDS, clock=clock)
    func = authorizer(memory, clock, [])
    issued = issue_token("alice", expires_in=timedelta(seconds=10), now=utcnow())
    memory.put_token(issued.record)
    request = Request(issued.secret)
    clock.now += 9
    assert cache.answer(func, request) == "allow alice"  # cached until 9 + TTL
    clock.now += AUTHORIZER_TTL_SECONDS
    assert cache.answer(func, request) == "deny: API token expired"


def test_unknown_tokens_are_asked_every_time_and_a_ttl_of_zero_caches_nothing(
    memory: MemoryStore, clock: Clock
) -> None:
    from apiserver import AuthorizerCache

    calls: list[str] = []
    func = authorizer(memory, clock, calls)
    cache = AuthorizerCache(AUTHORIZER_TTL_SECONDS, clock=clock)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            cache.answer(func, Request("nbl_" + "x" * 43))
    assert len(calls) == 2
    issued = issue_token("alice")
    memory.put_token(issued.record)
    off = AuthorizerCache(0, clock=clock)
    for _ in range(2):
        off.answer(func, Request(issued.secret))
    assert len(calls) == 4
