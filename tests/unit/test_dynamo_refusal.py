"""DynamoDB: a cancelled transaction's reasons are attributed by their items, not positions.

PynamoDB does not promise the order it sends a transaction's items in, so the store reads
which table each failed reason's old item belongs to. Every order of the same reasons must
give the same diagnosis.
"""

from __future__ import annotations

import itertools

from pynamodb.exceptions import CancellationReason, TransactWriteError, VerboseClientError

from chalicelib.storage.dynamo import _Refusal

FAILED = "ConditionalCheckFailed"
QUERY = {"query_id": {"S": "q1"}, "payload_hash": {"S": "p"}, "ledger_attempt": {"S": "a1"}}
GRANT = {"user_id": {"S": "u"}, "initial_epsilon": {"N": "1"}, "remaining_epsilon": {"N": "0"}}
CAP = {"dataset": {"S": "D"}, "limited": {"BOOL": True}, "remaining_epsilon": {"N": "0"}}


def cancelled(reasons: list[CancellationReason | None]) -> TransactWriteError:
    cause = VerboseClientError(
        {"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"}},
        "TransactWriteItems",
        cancellation_reasons=reasons,
    )
    return TransactWriteError("cancelled", cause=cause)


def test_each_failed_reason_is_attributed_to_its_table_whatever_the_order() -> None:
    reasons = [
        CancellationReason(code=FAILED, raw_item=QUERY),
        CancellationReason(code=FAILED, raw_item=GRANT),
        CancellationReason(code=FAILED, raw_item=CAP),
        CancellationReason(code="None"),
    ]
    for order in itertools.permutations(reasons):
        refusal = _Refusal.of(cancelled(list(order)))
        assert (refusal.query, refusal.grant, refusal.cap) == (QUERY, GRANT, CAP)
        assert refusal.absent is False


def test_a_failed_reason_without_an_item_means_an_absent_item_and_passes_are_ignored() -> None:
    reasons = [
        None,
        CancellationReason(code="None"),
        CancellationReason(code=FAILED),  # the grant (or cap) did not exist
    ]
    for order in itertools.permutations(reasons):
        refusal = _Refusal.of(cancelled(list(order)))
        assert (refusal.query, refusal.grant, refusal.cap) == (None, None, None)
        assert refusal.absent is True
