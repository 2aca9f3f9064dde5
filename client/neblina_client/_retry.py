"""When and how long to wait before retrying a request."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter; a server's ``Retry-After`` wins, up to a cap."""

    base: float = 0.2
    cap: float = 5.0
    retry_after_cap: float = 30.0

    def delay(
        self,
        retry: int,
        retry_after: float | None = None,
        *,
        uniform: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap)
        ceiling = min(self.cap, self.base * 2.0**retry)
        return ceiling * (0.5 + uniform() / 2)


def is_retryable(status_code: int, code: str | None) -> bool:
    """Whether an error response may succeed if sent again unchanged.

    Every route is safe to resend: GETs and ``/cost`` change nothing, and ``/queries`` is
    idempotent by ``query_id`` (the retry carries the same id, so it is never charged twice).
    ``dataset_unavailable`` (503) is not retried: the source must be fixed first.
    """
    if code in NOT_RETRYABLE:
        return False
    return status_code >= 500 or status_code == 429 or code == "query_in_progress"


NOT_RETRYABLE = frozenset({"dataset_unavailable"})


def parse_retry_after(value: str | None) -> float | None:
    """The seconds of a ``Retry-After`` header; None if absent or an HTTP date."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None
