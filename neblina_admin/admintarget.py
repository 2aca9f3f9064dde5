"""Which store ``neblina-admin`` talks to, and how it says so.

In order:

1. ``NEBLINA_STORE=mongodb``: the ``MONGODB_URI`` deployment;
2. any of ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID`` set: AWS as boto3
   resolves it (an emulator or LocalStack when ``AWS_ENDPOINT_URL`` says so);
3. else the local stack that ``make up`` described in ``.neblina/local.env``
   (``$NEBLINA_STATE_DIR/local.env``, else the nearest ``.neblina/local.env`` from the
   working directory upwards): its emulator endpoint, table prefix and bucket, with the
   emulator's dummy credentials;
4. else AWS through boto3's default credential chain.

Every target but an explicit ``AWS_ENDPOINT_URL`` or MongoDB is named on stderr, so the CLI
never reaches a real AWS account (or the local stack) without saying so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_FILE = Path(".neblina") / "local.env"
# What `make up` writes for the admin next to NEBLINA_URL/NEBLINA_TOKEN (the client
# ignores them): the emulator's endpoint, the table prefix, the bucket and the region.
ADMIN_KEYS = {
    "NEBLINA_ADMIN_ENDPOINT_URL": "AWS_ENDPOINT_URL",
    "NEBLINA_ADMIN_TABLE_PREFIX": "NEBLINA_TABLE_PREFIX",
    "NEBLINA_ADMIN_BUCKET": "NEBLINA_BUCKET",
    "NEBLINA_ADMIN_REGION": "AWS_DEFAULT_REGION",
}
# An emulator accepts any credentials; boto3 needs some to sign with.
EMULATOR_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


@dataclass(frozen=True)
class Target:
    """Where the admin's reads and writes go; ``environ`` is what to add to the environment."""

    description: str
    announce: bool
    environ: dict[str, str] = field(default_factory=dict)


def find_env_file(environ: Mapping[str, str], cwd: Path) -> Path | None:
    """``$NEBLINA_STATE_DIR/local.env``, else the nearest ``.neblina/local.env`` upwards."""
    state_dir = environ.get("NEBLINA_STATE_DIR", "").strip()
    if state_dir:
        candidate = Path(state_dir) / "local.env"
        return candidate if candidate.is_file() else None
    for directory in (cwd, *cwd.parents):
        candidate = directory / ENV_FILE
        if candidate.is_file():
            return candidate
    return None


def read_env_file(path: Path) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of an env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def resolve(environ: Mapping[str, str], cwd: Path) -> Target:
    """The target for this environment and working directory (reads only the env file)."""
    if environ.get("NEBLINA_STORE") == "mongodb":
        return Target("MongoDB (MONGODB_URI)", announce=False)
    region = environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or "us-east-1"
    if environ.get("AWS_ENDPOINT_URL"):
        return Target(f"AWS endpoint {environ['AWS_ENDPOINT_URL']}", announce=False)
    if environ.get("AWS_PROFILE"):
        return Target(f"AWS, profile {environ['AWS_PROFILE']}, region {region}", announce=True)
    if environ.get("AWS_ACCESS_KEY_ID"):
        return Target(f"AWS, credentials from AWS_ACCESS_KEY_ID, region {region}", announce=True)
    path = find_env_file(environ, cwd)
    values = read_env_file(path) if path is not None else {}
    if path is not None and values.get("NEBLINA_ADMIN_ENDPOINT_URL"):
        updates = {
            target: values[key]
            for key, target in ADMIN_KEYS.items()
            if values.get(key) and not environ.get(target)
        }
        updates["AWS_ENDPOINT_URL"] = values["NEBLINA_ADMIN_ENDPOINT_URL"]
        updates.update(EMULATOR_CREDENTIALS)
        prefix = environ.get("NEBLINA_TABLE_PREFIX") or updates.get("NEBLINA_TABLE_PREFIX", "")
        return Target(
            f"local stack at {updates['AWS_ENDPOINT_URL']}, tables {prefix}* (from {path})",
            announce=True,
            environ=updates,
        )
    return Target(
        f"AWS, default credentials, region {region} (no AWS_ENDPOINT_URL, AWS_PROFILE or "
        f"{ENV_FILE} of a local stack found; run `make up` for a local one)",
        announce=True,
    )


def use(environ: MutableMapping[str, str] | None = None, cwd: Path | None = None) -> Target:
    """Resolve the target and add what it needs to ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    target = resolve(env, Path.cwd() if cwd is None else cwd)
    env.update(target.environ)
    return target
