"""Teach mongomock 4.3 what a MongoDB server does with ``Decimal128``.

mongomock cannot compare ``Decimal128`` values (``$gte`` raises ``NotImplementedError``) and
its ``$inc`` adds them with Python's ``+``, which ``Decimal128`` does not define. The server
compares all numeric types by value and adds decimals in IEEE 754 decimal128 arithmetic (34
significant digits). This shim does the same, nothing more; it is installed only by the
contract suite's mongomock backend. A real server (``MONGODB_URI``) needs none of it.
"""

from __future__ import annotations

import decimal
from typing import Any

from bson.decimal128 import Decimal128, create_decimal128_context

_CONTEXT = create_decimal128_context()


def _plain(value: Any) -> Any:
    return value.to_decimal() if isinstance(value, Decimal128) else value


def install() -> None:
    """Patch mongomock's comparison and ``$inc`` (idempotent)."""
    from mongomock import collection, filtering

    if getattr(filtering, "_neblina_decimal128", False):
        return
    original_type = filtering._get_compare_type
    original_compare = filtering.bson_compare
    original_inc = collection._updaters["$inc"]

    def compare_type(value: Any) -> Any:
        return 10 if isinstance(value, Decimal128) else original_type(value)

    def bson_compare(op: Any, a: Any, b: Any, can_compare_types: bool = True) -> Any:
        return original_compare(op, _plain(a), _plain(b), can_compare_types)

    def inc(doc: Any, field_name: Any, value: Any) -> None:
        current = doc.get(field_name, 0) if isinstance(doc, dict) else None
        if isinstance(doc, dict) and (
            isinstance(value, Decimal128) or isinstance(current, Decimal128)
        ):
            with decimal.localcontext(_CONTEXT) as ctx:
                total = ctx.add(decimal.Decimal(_plain(current)), decimal.Decimal(_plain(value)))
            doc[field_name] = Decimal128(total)
            return
        original_inc(doc, field_name, value)

    filtering._get_compare_type = compare_type
    filtering.bson_compare = bson_compare
    collection._updaters["$inc"] = inc
    filtering._neblina_decimal128 = True
