"""The embedded AWS emulator: moto's WSGI app served single-threaded on 127.0.0.1:4566.

Why single-threaded: the stock ``moto_server`` serves requests on several threads and moto
has no per-request lock, so concurrent conditional updates of one DynamoDB item lose writes
(measured: 1004 successful debits of 1 against a budget of 1000). Served by one thread,
every request is applied whole, one after the other, as DynamoDB itself guarantees.

Usage: ``python localstack/emulator.py [--host 127.0.0.1] [--port 4566]``. It prints
``emulator ready on http://HOST:PORT`` once it accepts connections and exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import sys
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server


def _key_of(table: Any, op: dict[str, Any]) -> dict[str, Any] | None:
    """The primary key named by one write (``Key``, or the key attributes of ``Item``)."""
    if "Key" in op:
        return dict(op["Key"])
    item = op.get("Item") or {}
    names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
    if not all(name in item for name in names):
        return None  # moto will refuse the operation; nothing to undo
    return {name: item[name] for name in names}


def _restore(table: Any, key: dict[str, Any], attributes: dict[str, Any] | None) -> None:
    """Put one item back as it was (``None``: it did not exist)."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    hash_value = DynamoType(key[table.hash_key_attr])
    range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
    if table.get_item(hash_value, range_value) is not None:
        table.delete_item(hash_value, range_value)
    if attributes is not None:
        table.put_item(attributes)


def install_item_level_rollback() -> None:
    """Make moto's TransactWriteItems cost O(items in the transaction), not O(table size).

    moto 5.2.5 deep-copies every table a transaction touches before applying it, so it can
    put the copies back if a condition fails. The queries table grows with every query, so
    each debit got slower as the archive grew (a 800-debit test slowed from 17 s to 47 s
    over three runs). Here the undo information is the previous version of each item the
    transaction names; on failure those items are put back as they were. The server is
    single-threaded, so nothing can interleave with a transaction and its undo.
    """
    import copy

    import moto.dynamodb.models as models
    from moto.dynamodb.models.table import Table

    original = models.DynamoDBBackend.transact_write_items
    if getattr(original, "item_level_rollback", False):
        return

    class CopyWithoutTables:
        """Stands in for the ``copy`` module inside moto's models during a transaction."""

        @staticmethod
        def deepcopy(value: Any, memo: Any = None) -> Any:
            return value if isinstance(value, Table) else copy.deepcopy(value, memo)

        def __getattr__(self, name: str) -> Any:
            return getattr(copy, name)

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        undo = []
        for entry in transact_items:
            op = next(iter(entry.values()))
            table = self.tables.get(op.get("TableName"))
            key = _key_of(table, op) if table is not None else None
            if table is None or key is None:
                continue
            item = self.get_item(table.name, key)
            undo.append((table, key, None if item is None else item.to_json()["Attributes"]))
        models.copy = CopyWithoutTables()
        try:
            original(self, transact_items)
        except Exception:
            for table, key, attributes in reversed(undo):
                _restore(table, key, copy.deepcopy(attributes))
            raise
        finally:
            models.copy = copy

    transact_write_items.item_level_rollback = True  # type: ignore[attr-defined]
    models.DynamoDBBackend.transact_write_items = transact_write_items


def install_atomic_updates() -> None:
    """Make UpdateItem all-or-nothing, as on DynamoDB.

    moto 5.2.5 applies an update expression one action at a time to the stored item and
    checks the 400 KB item limit as each attribute is set. An update whose last action
    makes the item too large (a query record completed with a large result) failed with
    ``ValidationException`` but left its earlier actions applied: the record read ``done``
    with no result, where DynamoDB leaves it untouched (still ``running``). Here the item
    is put back as it was whenever the update raises; the server is single-threaded, so
    nothing can read the half-applied item in between.
    """
    import copy

    import moto.dynamodb.models as models

    original = models.DynamoDBBackend.update_item
    if getattr(original, "atomic", False):
        return

    def update_item(self: Any, table_name: str, key: dict[str, Any], *args: Any, **kw: Any) -> Any:
        table = self.tables.get(table_name)
        item = self.get_item(table_name, key) if table is not None else None
        before = None if item is None else copy.deepcopy(item.to_json()["Attributes"])
        try:
            return original(self, table_name, key, *args, **kw)
        except Exception:
            if table is not None:
                _restore(table, _key_of(table, {"Key": key}) or key, before)
            raise

    update_item.atomic = True  # type: ignore[attr-defined]
    models.DynamoDBBackend.update_item = update_item


def install_normalised_numbers() -> None:
    """Do Number arithmetic as DynamoDB does: exact decimals, stored in normal form.

    moto 5.2.5 adds Numbers with ``f"{Decimal(a) + Decimal(b)}"``, which can store
    exponent forms such as ``0E-31`` (a refund of a cost whose delta has 31 digits), and
    parses any Number without a ``.`` with ``int()``: the next ``ADD`` on that attribute
    then fails with a ValueError, so after one refund the grant could never be debited
    again. DynamoDB stores Numbers normalised (``0``, ``0.0000000000000009992``), so
    arithmetic on them never fails that way. Here both operands are read as ``Decimal``
    and the result is written in DynamoDB's form (no exponent, no trailing zeros).

    The arithmetic is DynamoDB's too: 38 significant digits and magnitudes 1e-130..1e125
    (boto3's ``DYNAMODB_CONTEXT``). Python's default context keeps 28 digits and would
    round silently; a result DynamoDB cannot hold exactly is a ValidationException instead.
    """
    from decimal import Decimal, DecimalException

    from boto3.dynamodb.types import DYNAMODB_CONTEXT
    from moto.dynamodb.exceptions import IncorrectDataType, MockValidationException
    from moto.dynamodb.models.dynamo_type import DDBType, DynamoType

    if getattr(DynamoType.__add__, "normalised", False):
        return

    def normal(value: Decimal) -> str:
        return "0" if value == 0 else format(value.normalize(DYNAMODB_CONTEXT), "f")

    def operands(a: Any, b: Any) -> tuple[Decimal, Decimal]:
        if a.type != b.type:
            raise TypeError("Different types of operandi is not allowed.")
        if a.type != DDBType.NUMBER:
            raise IncorrectDataType()
        return Decimal(a.value), Decimal(b.value)

    def exactly(operation: Any, x: Decimal, y: Decimal) -> Any:
        try:
            return DynamoType({DDBType.NUMBER: normal(operation(x, y))})
        except DecimalException:
            raise MockValidationException(
                "Number overflow. Attempting to store a number with magnitude larger than "
                "supported range, or with more than 38 significant digits"
            ) from None

    def add(self: Any, other: Any) -> Any:
        return exactly(DYNAMODB_CONTEXT.add, *operands(self, other))

    def sub(self: Any, other: Any) -> Any:
        return exactly(DYNAMODB_CONTEXT.subtract, *operands(self, other))

    add.normalised = True  # type: ignore[attr-defined]
    DynamoType.__add__ = add  # type: ignore[method-assign]
    DynamoType.__sub__ = sub  # type: ignore[method-assign]


def skip_drain_wait() -> None:
    """Stop werkzeug from idling up to 10 ms after every response.

    After each response werkzeug waits (``select`` with a 10 ms timeout) for the client
    to send any unread request body, then drains it. With one server thread, that wait is
    spent idle whenever the client is slow to close its socket (a busy API process under
    load), capping the emulator at well under 100 requests/s. Every request body has
    already been read by moto before the response is written, so there is nothing to wait
    for: the selector used for that drain polls without waiting.
    """
    import selectors

    import werkzeug.serving as serving

    class NoWaitSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
        def select(self, timeout: float | None = None) -> Any:
            return super().select(timeout=0)

    class SelectorsModule:
        DefaultSelector = NoWaitSelector
        EVENT_READ = selectors.EVENT_READ

    serving.selectors = SelectorsModule  # type: ignore[assignment]


# --- what `terraform apply` of infra/terraform needs (tests/deploy/test_terraform_apply.py) -------
def list_moto_modules_once() -> None:
    """Stop moto from listing its own package directory on every request.

    moto 5.2.5's dispatcher asks ``backends.list_of_moto_modules()`` whether the request's
    host names a service, and that function lists moto's package directory and stats each
    of its ~200 entries, on every request: about 45% of the server's CPU for a DynamoDB
    ``GetItem`` (2.55 ms -> 1.46 ms per call, measured in-process; issue 14). The directory
    does not change while the server runs, so it is listed once.
    """
    from moto import backends

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules  # type: ignore[assignment]


def install_aws_managed_policies() -> None:
    """Know AWS's managed IAM policies, as every AWS account does.

    moto 5.2.5 ships AWS's managed policies (1,582 of them) but loads them only when
    ``MOTO_IAM_LOAD_MANAGED_POLICIES`` is set, so attaching one (the module attaches
    ``service-role/AmazonAPIGatewayPushToCloudWatchLogs`` to API Gateway's logging role)
    failed with ``NoSuchEntity``. Here they are always loaded, without touching the
    environment; it costs ~0.1 s, once, on the first IAM call.
    """
    import moto.iam.models as iam_models

    iam_models.load_iam_aws_managed_policies = lambda: True  # type: ignore[attr-defined]


def create_emr_serverless_applications_as_aws_does() -> None:
    """A new EMR Serverless application is ``CREATED``, as on AWS (docs/spark.md).

    moto 5.2.5 creates every application in state ``STARTED``; AWS creates it ``CREATED``
    (it starts with its first job when auto-start is on), and the AWS provider's create
    waits for ``CREATED``, so `terraform apply` of infra/terraform/emr.tf failed with
    "unexpected state 'STARTED', wanted target 'CREATED'". moto reads the state from a
    module constant when it builds an application: that constant is AWS's here.
    """
    import moto.emrserverless.models as emr_models

    emr_models.APPLICATION_STATUS = "CREATED"  # type: ignore[attr-defined]


def _acls_disabled(bucket: Any) -> bool:
    """Object Ownership "bucket owner enforced": ACLs are off and grant nothing. It is
    AWS's default for new buckets since April 2023 (moto records no rule for them)."""
    return getattr(bucket, "ownership_rule", None) in (None, "BucketOwnerEnforced")


def accept_policy_based_log_delivery() -> None:
    """Let PutBucketLogging target a bucket whose ACLs are disabled, as AWS does.

    moto 5.2.5 enables server access logging only if, at that moment, the target bucket
    either grants the log-delivery group WRITE and READ_ACP by ACL (the pre-2023 way) or
    already has a bucket policy statement for ``logging.s3.amazonaws.com``. With ACLs
    disabled (``BucketOwnerEnforced``, AWS's default) the permission can only come from
    the bucket policy, which S3 applies when it delivers logs; a Terraform module that
    creates the logging configuration and the target's policy as two independent
    resources (infra/terraform/s3.tf, as AWS documents it) was refused whenever the
    logging configuration happened to be created first. Here a target with ACLs disabled
    is accepted; the other checks (the target exists, same region) stay, and a target
    with ACLs enabled still needs the grant or the policy.
    """
    from moto.s3.models import FakeBucket

    original = FakeBucket._log_permissions_enabled_policy
    if getattr(original, "acls_disabled_aware", False):
        return

    def permitted(target_bucket: Any, target_prefix: str | None) -> bool:
        return _acls_disabled(target_bucket) or bool(original(target_bucket, target_prefix))

    permitted.acls_disabled_aware = True  # type: ignore[attr-defined]
    FakeBucket._log_permissions_enabled_policy = staticmethod(permitted)  # type: ignore[method-assign]


# The request context bucket-policy conditions are evaluated against. The emulator stands in
# for AWS's HTTPS endpoints (it serves loopback only), so its requests count as TLS.
REQUEST_CONTEXT = {"aws:securetransport": "true"}


def _condition_holds(operator: str, key: str, expected: Any, context: dict[str, str]) -> bool:
    """One condition of a policy statement, as IAM evaluates it against ``context``: a key
    missing from the request makes the condition false (true for ``...IfExists``; ``Null``
    tests exactly that); an operator not handled here is false too (the statement does
    not apply)."""
    wanted = [str(v) for v in (expected if isinstance(expected, list) else [expected])]
    actual = context.get(key.lower())
    operator, if_exists = operator.removesuffix("IfExists"), operator.endswith("IfExists")
    if operator == "Null":
        return (actual is None) == (wanted[0].lower() == "true")
    if actual is None:
        return if_exists
    if operator == "Bool":
        return actual.lower() in {w.lower() for w in wanted}
    if operator == "StringEquals":
        return actual in wanted
    if operator == "StringNotEquals":
        return actual not in wanted
    if operator == "StringLike":
        return any(fnmatch.fnmatchcase(actual, w) for w in wanted)
    return False


def honour_bucket_policy_conditions() -> None:
    """Apply a bucket-policy statement only when its ``Condition`` holds, as S3 does.

    moto 5.2.5 skips every condition operator but ``StringEquals`` (treating the condition
    as met) and passes no request context. A TLS-only bucket policy (``Deny s3:*`` when
    ``aws:SecureTransport`` is ``false``, the usual hardening and the one in
    infra/terraform/s3.tf) therefore denied every object request: uploads, reads, even
    Terraform's HeadObject refresh of the Lambda packages failed with 403. Here the
    statements whose conditions do not hold against ``REQUEST_CONTEXT`` are dropped
    before moto evaluates the policy; statements without conditions are untouched, so
    an unconditional Deny still denies.
    """
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.s3.models import FakeBucket

    original = FakeBucket.get_permission
    if getattr(original, "conditions_aware", False):
        return

    def get_permission(self: Any, action: str, resource: str) -> Any:
        if self.policy is None:
            return PermissionResult.NEUTRAL
        document = json.loads(self.policy)
        statements = document.get("Statement", [])
        applying = []
        for statement in statements if isinstance(statements, list) else [statements]:
            conditions = statement.get("Condition") or {}
            if all(
                _condition_holds(operator, key, expected, REQUEST_CONTEXT)
                for operator, pairs in conditions.items()
                for key, expected in pairs.items()
            ):
                applying.append({k: v for k, v in statement.items() if k != "Condition"})
        if not applying:
            return PermissionResult.NEUTRAL
        policy = IAMPolicy(json.dumps({**document, "Statement": applying}))
        return policy.is_action_permitted(action, resource)

    get_permission.conditions_aware = True  # type: ignore[attr-defined]
    FakeBucket.get_permission = get_permission  # type: ignore[method-assign]


def build_server(host: str, port: int) -> BaseWSGIServer:
    """A single-threaded WSGI server around moto's multi-service dispatcher."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    install_item_level_rollback()
    install_atomic_updates()
    install_normalised_numbers()
    skip_drain_wait()
    list_moto_modules_once()
    install_aws_managed_policies()
    create_emr_serverless_applications_as_aws_does()
    accept_policy_based_log_delivery()
    honour_bucket_policy_conditions()
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )

    class QuietHandler(MotoRequestHandler):  # type: ignore[misc]
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # one line per AWS call would drown everything else

    app = DomainDispatcherApplication(create_backend_app)
    return make_server(host, port, app, threaded=False, request_handler=QuietHandler)


class EmulatorThread:
    """The emulator in a background thread of this process (for tests and benchmarks)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = build_server(host, port)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> EmulatorThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    args = parser.parse_args(argv)
    try:
        server = build_server(args.host, args.port)
    except OSError as exc:
        print(f"emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"emulator ready on http://{host}:{port}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
