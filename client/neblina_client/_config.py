"""Where the client finds its URL, token and dataset.

Each setting comes from the first of: the ``Client`` argument, the environment variable
(``NEBLINA_URL``, ``NEBLINA_TOKEN``, ``NEBLINA_DATASET``), the file ``.neblina/local.env``
found in the current directory or the nearest parent that has one. The file holds
``KEY=VALUE`` lines; blank lines and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ._exceptions import ConfigurationError

ENV_FILE = Path(".neblina") / "local.env"
DEFAULT_DATASET = "PENGUIN"


@dataclass(frozen=True)
class Settings:
    """The resolved connection settings."""

    url: str
    token: str = field(repr=False)
    dataset: str


def load_settings(
    url: str | None,
    token: str | None,
    dataset: str | None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Resolve the settings: arguments, then environment, then ``.neblina/local.env``."""
    env = os.environ if environ is None else environ
    start = Path.cwd() if cwd is None else cwd
    file_path: Path | None = None
    file_values: dict[str, str] | None = None

    def lookup(given: str | None, key: str) -> str | None:
        nonlocal file_path, file_values
        if given is not None:
            return given
        if env.get(key, "").strip():
            return env[key].strip()
        if file_values is None:  # read the file only when it is needed, and once
            file_path = find_env_file(start)
            file_values = read_env_file(file_path) if file_path else {}
        return file_values.get(key) or None

    resolved_url = lookup(url, "NEBLINA_URL")
    resolved_token = lookup(token, "NEBLINA_TOKEN")
    resolved_dataset = lookup(dataset, "NEBLINA_DATASET") or DEFAULT_DATASET
    where = f"found {file_path}" if file_path else f"none found from {start} upwards"
    if not resolved_url:
        raise ConfigurationError(_missing("URL", "url", "NEBLINA_URL", where))
    if not resolved_token:
        raise ConfigurationError(_missing("API token", "token", "NEBLINA_TOKEN", where))
    resolved_url = resolved_url.rstrip("/")
    if not resolved_url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"the Neblina URL must start with http:// or https://, got {resolved_url!r}"
        )
    return Settings(url=resolved_url, token=resolved_token, dataset=resolved_dataset)


def find_env_file(start: Path) -> Path | None:
    """The nearest ``.neblina/local.env`` in ``start`` or its parents."""
    for directory in (start, *start.parents):
        candidate = directory / ENV_FILE
        if candidate.is_file():
            return candidate
    return None


def read_env_file(path: Path) -> dict[str, str]:
    """The ``KEY=VALUE`` pairs of an env file."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _missing(what: str, argument: str, variable: str, where: str) -> str:
    return (
        f"No Neblina {what} configured: pass {argument}=..., set the {variable} environment "
        f"variable, or put {variable}=... in {ENV_FILE} ({where})."
    )
