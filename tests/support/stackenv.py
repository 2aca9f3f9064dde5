"""The environment that points boto3 and the Neblina settings at a local stack's emulator.

A plain module, not part of conftest.py: tests import it by name (``from stackenv import
emulator_env``); ``import conftest`` would resolve to whichever of the suite's three
conftest.py files pytest loaded last.
"""

from __future__ import annotations


def emulator_env(url: str, prefix: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "NEBLINA_TABLE_PREFIX": prefix,
        "NEBLINA_BUCKET": "neblina-datasets",
    }
