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
    """
    from decimal import Decimal

    from moto.dynamodb.exceptions import IncorrectDataType
    from moto.dynamodb.models.dynamo_type import DDBType, DynamoType

    if getattr(DynamoType.__add__, "normalised", False):
        return

    def normal(value: Decimal) -> str:
        return "0" if value == 0 else format(value.normalize(), "f")

    def operands(a: Any, b: Any) -> tuple[Decimal, Decimal]:
        if a.type != b.type:
            raise TypeError("Different types of operandi is not allowed.")
        if a.type != DDBType.NUMBER:
            raise IncorrectDataType()
        return Decimal(a.value), Decimal(b.value)

    def add(self: Any, other: Any) -> Any:
        x, y = operands(self, other)
        return DynamoType({DDBType.NUMBER: normal(x + y)})

    def sub(self: Any, other: Any) -> Any:
        x, y = operands(self, other)
        return DynamoType({DDBType.NUMBER: normal(x - y)})

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


def build_server(host: str, port: int) -> BaseWSGIServer:
    """A single-threaded WSGI server around moto's multi-service dispatcher."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    install_item_level_rollback()
    install_atomic_updates()
    install_normalised_numbers()
    skip_drain_wait()
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
