"""The composition root and its seams: one LRU helper, a typed engine registry that hands
each engine its limits, and one S3 client factory shared by the loader and the overflow."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest

from chalicelib.config import from_environ
from chalicelib.engines import FACTORIES, Engines
from chalicelib.errors import InvalidRequest
from chalicelib.lru import LruCache


def test_the_lru_cache_evicts_the_least_recently_used_entry() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    cache.discard(lambda key: key != "a")
    assert (len(cache), cache.get("c")) == (1, 3)
    assert cache.get_or_build("d", lambda: 4) == 4 and cache.get_or_build("d", lambda: 5) == 4


def test_the_lru_cache_never_holds_more_than_its_size_under_concurrent_writers() -> None:
    cache: LruCache[int, int] = LruCache(8)

    def write(offset: int) -> None:
        for i in range(2_000):
            cache.put(offset + i, i)
            assert len(cache) <= 8

    threads = [threading.Thread(target=write, args=(n * 10_000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 8


def test_the_engine_registry_hands_the_sql_engine_the_deployments_query_length_limit() -> None:
    query = "SELECT COUNT(*) AS n FROM df WHERE island = 'Biscoe'"  # 52 characters
    body = {"engine": "smartnoise_sql", "query": query, "epsilon": 1, "delta": 0}
    short = Engines(replace(from_environ(), max_query_chars=40)).get("smartnoise_sql")
    with pytest.raises(InvalidRequest, match="longer than 40 characters"):
        short.parse(body)
    roomy = Engines(replace(from_environ(), max_query_chars=len(query))).get("smartnoise_sql")
    assert roomy.parse(body).canonical()["query"] == query


def test_an_unknown_engine_is_a_400_and_no_engine_is_built() -> None:
    built: list[str] = []

    def factory(_settings: Any) -> Any:
        built.append("sql")
        raise AssertionError("must not be built")

    registry = Engines(from_environ(), {**FACTORIES, "smartnoise_sql": factory})
    for name in ("nope", None, 3):
        with pytest.raises(InvalidRequest, match="unknown engine"):
            registry.get(name)
    assert built == []
    assert registry.names == set(FACTORIES)


def test_the_composition_root_shares_one_s3_client_factory_and_the_engine_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chalicelib import deps, storage

    store = object()
    monkeypatch.setattr(storage, "get_store", lambda: store)
    settings = replace(from_environ(), max_query_chars=123)
    service = deps.build_service(settings)
    assert service.store is store and service.settings is settings
    assert service.loader._s3 == service.results._s3  # one factory (same function, settings)
    assert service.engines.get("smartnoise_sql").max_query_chars == 123  # type: ignore[attr-defined]
