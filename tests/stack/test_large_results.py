"""Large results: archived in S3 past the inline threshold, refused past the hard limit.

Everything runs against the session stack's emulator (DynamoDB and S3), no mocks: a
DynamoDB item holds 400 KB, so an in-memory store cannot show the failure this fixes (a
large GROUP BY used to be debited, fail to archive and answer 500). Over HTTP, one large
GROUP BY on SYNTHETIC (100,000 rows) with the server's default thresholds; at the service
level, small PENGUIN queries with the thresholds lowered so that every path (archived,
tampered, missing, over the limit, hardened, S3 or record write failing) is cheap to reach.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from typing import Any

import httpx
import pytest
from api_process import api_server

from chalicelib import result_overflow
from chalicelib.config import Settings, get_settings
from chalicelib.datasets import DatasetLoader
from chalicelib.errors import EngineFailed, EngineRefused, InternalError, ResultTooLarge
from chalicelib.models import PrivacyCost, QueryState
from chalicelib.service import HARDENED_ENGINE_MESSAGE, Service, _record_bytes
from chalicelib.storage.dynamo import DynamoStore
from chalicelib.worker import ARCHIVE_FAILED
from neblina_admin import operations as admin

pytestmark = pytest.mark.stack

LARGE = "SELECT age, hours, sex, COUNT(*) AS n FROM df GROUP BY age, hours, sex"
GROUPS = "SELECT species, island, sex, COUNT(*) AS n FROM df GROUP BY species, island, sex"
COUNT = "SELECT COUNT(*) AS n FROM df"
PENGUINS = "s3://neblina-datasets/PENGUIN/penguins.csv"


def hardened_penguin(store: DynamoStore) -> str:
    """A hardened copy of PENGUIN (same object and metadata, 10 ms bucket); its name."""
    name = f"HARD{uuid.uuid4().hex[:6]}"
    penguin = store.get_dataset("PENGUIN")
    assert penguin is not None
    admin.add_dataset(store, name, PENGUINS, penguin.metadata)
    admin.update_dataset(store, name, hardened=True, bucket_ms=10)
    return name


def body(query: str, query_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "engine": "smartnoise_sql",
        "query": query,
        "epsilon": 1.0,
        "delta": 1e-5,
        "query_id": query_id or uuid.uuid4().hex,
        **extra,
    }


def s3(settings: Settings) -> Any:
    return admin.s3_client(settings)


def archived_bytes(settings: Settings, query_id: str) -> bytes | None:
    try:
        response = s3(settings).get_object(
            Bucket=settings.bucket, Key=result_overflow.object_key(query_id)
        )
    except s3(settings).exceptions.NoSuchKey:
        return None
    data: bytes = response["Body"].read()
    return data


def service_with(store: Any, **limits: Any) -> Service:
    """A service on the stack's tables and bucket with its own result thresholds."""
    settings = dataclasses.replace(get_settings(), **limits)
    return Service(store, settings, DatasetLoader(settings))


# --- over HTTP: the large GROUP BY ------------------------------------------------------
def test_a_large_group_by_is_released_archived_in_s3_and_replayed(
    stack: Any, store: DynamoStore, make_researcher: Any
) -> None:
    settings = get_settings()
    who = make_researcher({"SYNTHETIC": ("10", "0.001")})
    http = httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {who.token}"}, timeout=300
    )
    query_id = uuid.uuid4().hex
    first = http.post("/v1/datasets/SYNTHETIC/queries", json=body(LARGE, query_id))
    assert first.status_code == 200, first.text
    answer = first.json()
    released = result_overflow.encode(answer["result"])
    print(
        f"large GROUP BY: {len(answer['result']['records']):,} rows, {len(released):,} bytes "
        f"of JSON as measured ({len(first.content):,} bytes of response)"
    )
    assert len(released) > 400_000  # more than a DynamoDB item can hold
    assert len(released) <= settings.max_result_bytes

    record = store.get_query(query_id)
    assert record is not None and record.state is QueryState.DONE
    pointer = record.result
    assert pointer is not None and result_overflow.is_pointer(pointer)
    assert pointer["key"] == f"archive/{query_id}.json"
    assert pointer["bucket"] == settings.bucket
    stored = archived_bytes(settings, query_id)
    assert stored is not None
    assert pointer["bytes"] == len(stored) == len(released)
    assert pointer["sha256"] == hashlib.sha256(stored).hexdigest()
    assert json.loads(stored) == answer["result"]

    grant = store.get_grant(who.user_id, "SYNTHETIC")
    assert grant is not None
    assert grant.spent == record.cost  # exactly, ε and δ
    assert PrivacyCost(**answer["cost"]) == record.cost

    again = http.post("/v1/datasets/SYNTHETIC/queries", json=body(LARGE, query_id))
    assert again.status_code == 200
    assert again.json()["replayed"] is True
    assert again.json()["result"] == answer["result"]
    one = http.get(f"/v1/datasets/SYNTHETIC/queries/{query_id}").json()
    assert one["state"] == "done" and one["result"] == answer["result"]
    history = http.get("/v1/datasets/SYNTHETIC/queries").json()
    assert history["queries"][0]["result"] == answer["result"]
    assert store.get_grant(who.user_id, "SYNTHETIC") == grant  # replays cost nothing

    # One byte changed in the object: detected, never served (a generic 500 on every read).
    tampered = bytearray(stored)
    tampered[stored.index(b'"n": ') + 5] ^= 0x01  # a digit of the first count, same length
    s3(settings).put_object(Bucket=settings.bucket, Key=pointer["key"], Body=bytes(tampered))
    generic = {"error": "internal_error", "message": "internal error"}
    for response in (
        http.post("/v1/datasets/SYNTHETIC/queries", json=body(LARGE, query_id)),
        http.get(f"/v1/datasets/SYNTHETIC/queries/{query_id}"),
        http.get("/v1/datasets/SYNTHETIC/queries"),
    ):
        assert response.status_code == 500 and response.json() == generic
    assert store.get_grant(who.user_id, "SYNTHETIC") == grant


def test_over_http_with_low_thresholds(
    stack: Any, store: DynamoStore, make_researcher: Any, tmp_path: Any
) -> None:
    """A server of its own: every result goes to S3, any over 200 bytes is refused."""
    name = hardened_penguin(store)
    who = make_researcher({"PENGUIN": ("10", "0.001"), name: ("10", "0.001")})
    env = {"NEBLINA_INLINE_RESULT_BYTES": "0", "NEBLINA_MAX_RESULT_BYTES": "200"}
    with api_server(stack, env, tmp_path) as api:
        http = httpx.Client(
            base_url=api.url, headers={"Authorization": f"Bearer {who.token}"}, timeout=60
        )
        small = body(COUNT)
        first = http.post("/v1/datasets/PENGUIN/queries", json=small)
        assert first.status_code == 200, first.text
        record = store.get_query(small["query_id"])
        assert record is not None and result_overflow.is_pointer(record.result)
        again = http.post("/v1/datasets/PENGUIN/queries", json=small).json()
        assert again["replayed"] is True and again["result"] == first.json()["result"]

        before = store.get_grant(who.user_id, "PENGUIN")
        assert before is not None
        large = body(GROUPS)
        refused = http.post("/v1/datasets/PENGUIN/queries", json=large)
        assert refused.status_code == 422
        assert refused.json() == {
            "error": "result_too_large",
            "message": str(ResultTooLarge(200, spent=True)),
        }
        record = store.get_query(large["query_id"])
        assert record is not None and record.state is QueryState.FAILED
        after = store.get_grant(who.user_id, "PENGUIN")
        assert after is not None and after.spent == before.spent + record.cost

        hardened = http.post(f"/v1/datasets/{name}/queries", json=body(GROUPS))
        assert hardened.status_code == 422
        assert hardened.json() == {"error": "engine_error", "message": HARDENED_ENGINE_MESSAGE}


# --- service level, on the stack's DynamoDB tables and S3 bucket ------------------------
def test_over_the_inline_threshold_the_record_points_to_s3(
    store: DynamoStore, make_researcher: Any
) -> None:
    who = make_researcher({"PENGUIN": ("10", "0.001")})
    service = service_with(store, inline_result_bytes=0)
    answer = service.query(who.user_id, "PENGUIN", body(GROUPS))
    record = store.get_query(answer["query_id"])
    assert record is not None and result_overflow.is_pointer(record.result)
    assert (
        service.get_query(who.user_id, "PENGUIN", answer["query_id"])["result"]
        == (answer["result"])
    )
    replay = service.query(who.user_id, "PENGUIN", body(GROUPS, answer["query_id"]))
    assert replay["replayed"] is True and replay["result"] == answer["result"]
    grant = store.get_grant(who.user_id, "PENGUIN")
    assert grant is not None and grant.spent == record.cost
    # the server's default threshold keeps the same small result inline
    inline = service_with(store).query(who.user_id, "PENGUIN", body(GROUPS))
    stored = store.get_query(inline["query_id"])
    assert stored is not None and stored.result == inline["result"]
    assert archived_bytes(get_settings(), inline["query_id"]) is None


@pytest.mark.parametrize("damage", ["changed", "longer", "deleted"])
def test_a_tampered_or_missing_archive_object_is_never_served(
    store: DynamoStore, make_researcher: Any, damage: str
) -> None:
    who = make_researcher({"PENGUIN": ("10", "0.001")})
    service = service_with(store, inline_result_bytes=0)
    settings = service.settings
    answer = service.query(who.user_id, "PENGUIN", body(GROUPS))
    query_id = answer["query_id"]
    key = result_overflow.object_key(query_id)
    original = archived_bytes(settings, query_id)
    assert original is not None
    if damage == "deleted":
        s3(settings).delete_object(Bucket=settings.bucket, Key=key)
    else:
        edited = original.replace(b'"n": ', b'"n": 1', 1) if damage == "longer" else original
        if damage == "changed":
            edited = original.replace(b'"Adelie"', b'"Adelia"', 1)
            assert edited != original and len(edited) == len(original)
        s3(settings).put_object(Bucket=settings.bucket, Key=key, Body=edited)
    spent = store.get_grant(who.user_id, "PENGUIN")
    for read in (
        lambda: service.query(who.user_id, "PENGUIN", body(GROUPS, query_id)),
        lambda: service.get_query(who.user_id, "PENGUIN", query_id),
        lambda: service.history(who.user_id, "PENGUIN", None, None),
    ):
        with pytest.raises(InternalError) as raised:
            read()
        assert raised.value.message == "internal error"
    assert store.get_grant(who.user_id, "PENGUIN") == spent


def test_over_the_hard_limit_nothing_is_released_and_the_cost_stands(
    store: DynamoStore, make_researcher: Any
) -> None:
    who = make_researcher({"PENGUIN": ("10", "0.001")})
    service = service_with(store, inline_result_bytes=0, max_result_bytes=200)
    query_id = uuid.uuid4().hex
    with pytest.raises(ResultTooLarge) as raised:
        service.query(who.user_id, "PENGUIN", body(GROUPS, query_id))
    assert raised.value.status_code == 422 and raised.value.code == "result_too_large"
    assert raised.value.message == (
        "the result is larger than 200 bytes, so it was not released; the cost of the "
        "query stands. Ask for fewer rows (fewer or coarser GROUP BY columns)."
    )
    record = store.get_query(query_id)
    assert record is not None and record.state is QueryState.FAILED and record.result is None
    assert record.error == {"error": "result_too_large", "message": raised.value.message}
    grant = store.get_grant(who.user_id, "PENGUIN")
    assert grant is not None and grant.spent == record.cost  # the engine ran: no refund
    assert archived_bytes(service.settings, query_id) is None
    # a retry of the id says it failed; dummy data (public) gets the message, free
    from chalicelib.errors import QueryFailed

    with pytest.raises(QueryFailed):
        service.query(who.user_id, "PENGUIN", body(GROUPS, query_id))
    with pytest.raises(ResultTooLarge, match="a query on dummy data costs nothing"):
        service.query(who.user_id, "PENGUIN", body(GROUPS, dummy=True, dummy_rows=1000))
    assert store.get_grant(who.user_id, "PENGUIN") == grant


def test_over_the_hard_limit_a_hardened_dataset_answers_like_an_engine_failure(
    store: DynamoStore, make_researcher: Any
) -> None:
    name = hardened_penguin(store)
    who = make_researcher({name: ("10", "0.001")})
    service = service_with(store, max_result_bytes=200)
    query_id = uuid.uuid4().hex
    with pytest.raises(EngineRefused) as raised:
        service.query(who.user_id, name, body(GROUPS, query_id))
    assert raised.value.code == "engine_error"
    assert raised.value.message == HARDENED_ENGINE_MESSAGE
    record = store.get_query(query_id)
    assert record is not None and record.state is QueryState.FAILED
    failure = EngineFailed()  # what the record of an engine failure says, word for word
    assert record.error == {"error": failure.code, "message": failure.message}
    grant = store.get_grant(who.user_id, name)
    assert grant is not None and grant.spent == record.cost


def test_when_the_s3_write_fails_the_record_fails_and_nothing_is_released(
    store: DynamoStore, make_researcher: Any
) -> None:
    who = make_researcher({"PENGUIN": ("10", "0.001")})
    # a bucket that does not exist: PutObject fails on the emulator
    service = service_with(store, inline_result_bytes=0, bucket=f"gone-{uuid.uuid4().hex[:8]}")
    query_id = uuid.uuid4().hex
    with pytest.raises(InternalError):
        service.query(who.user_id, "PENGUIN", body(COUNT, query_id))
    record = store.get_query(query_id)
    assert record is not None and record.state is QueryState.FAILED and record.result is None
    assert record.error == ARCHIVE_FAILED
    grant = store.get_grant(who.user_id, "PENGUIN")
    assert grant is not None and grant.spent == record.cost

    # an object already at the key is never replaced (create-only write)
    taken = uuid.uuid4().hex
    settings = get_settings()
    s3(settings).put_object(
        Bucket=settings.bucket, Key=result_overflow.object_key(taken), Body=b"{}"
    )
    with pytest.raises(InternalError):
        service_with(store, inline_result_bytes=0).query(who.user_id, "PENGUIN", body(COUNT, taken))
    assert archived_bytes(settings, taken) == b"{}"
    record = store.get_query(taken)
    assert record is not None and record.state is QueryState.FAILED


class RecordWriteFails(DynamoStore):
    """The stack's tables, with the write that completes a record failing (fault injection)."""

    def finish(self, query_id: str, state: QueryState, *args: Any, **kwargs: Any) -> None:
        if state is QueryState.DONE:
            raise RuntimeError("injected: the record write failed")
        super().finish(query_id, state, *args, **kwargs)


def test_when_the_record_write_fails_after_s3_the_object_is_an_orphan_and_nothing_is_released(
    make_researcher: Any,
) -> None:
    who = make_researcher({"PENGUIN": ("10", "0.001")})
    settings = dataclasses.replace(get_settings(), inline_result_bytes=0)
    store = RecordWriteFails(settings)
    service = Service(store, settings, DatasetLoader(settings))
    query_id = uuid.uuid4().hex
    with pytest.raises(InternalError):
        service.query(who.user_id, "PENGUIN", body(COUNT, query_id))
    record = store.get_query(query_id)
    assert record is not None and record.state is QueryState.FAILED and record.result is None
    assert record.error == ARCHIVE_FAILED
    assert archived_bytes(settings, query_id) is not None  # the orphan: referenced by nothing
    grant = store.get_grant(who.user_id, "PENGUIN")
    assert grant is not None and grant.spent == record.cost


def test_a_history_page_stops_before_its_records_outgrow_a_response(
    store: DynamoStore, make_researcher: Any
) -> None:
    who = make_researcher({"PENGUIN": ("10", "0.001")})
    writer = service_with(store, inline_result_bytes=0)
    ids = [writer.query(who.user_id, "PENGUIN", body(COUNT))["query_id"] for _ in range(3)]
    sizes = [_record_bytes(store.get_query(query_id)) for query_id in ids]
    # room for the newest two records, not for the third
    reader = service_with(store, max_result_bytes=sizes[2] + sizes[1] + sizes[0] // 2)
    page = reader.history(who.user_id, "PENGUIN", "10", None)
    assert [q["query_id"] for q in page["queries"]] == ids[::-1][:2]
    assert all(q["result"]["type"] == "table" for q in page["queries"])
    assert page["next_cursor"] is not None
    rest = reader.history(who.user_id, "PENGUIN", "10", page["next_cursor"])
    assert [q["query_id"] for q in rest["queries"]] == [ids[0]]
    assert rest["next_cursor"] is None
    whole = service_with(store).history(who.user_id, "PENGUIN", "10", None)
    assert [q["query_id"] for q in whole["queries"]] == ids[::-1]
