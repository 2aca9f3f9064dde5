"""The progress bar of ``Job.wait``: tqdm on stderr, showing the job's phase and fraction.

tqdm is imported when the first bar is drawn (about 40 ms after the client's own imports),
never at ``import neblina_client``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

from ._types import JobStatus

if TYPE_CHECKING:
    from tqdm import tqdm

BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar:24}| {elapsed}"


def wants_bar(progress: bool | None, stream: TextIO) -> bool:
    """``progress`` if given, else whether ``stream`` is a terminal (silent in logs and CI)."""
    if progress is not None:
        return progress
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


class ProgressBar:
    """One job's bar; draws nothing when disabled. The fraction never moves back."""

    def __init__(self, label: str, *, enabled: bool, stream: TextIO | None = None) -> None:
        self._label = label
        self._enabled = enabled
        self._stream = stream
        self._bar: tqdm[Any] | None = None
        self._fraction = 0.0

    def update(self, status: JobStatus) -> None:
        """Show ``status``: its phase (or final state) and the engine's fraction of work."""
        if not self._enabled:
            return
        if status.state == "done":
            self._fraction = 1.0
        elif status.progress is not None:
            self._fraction = max(self._fraction, status.progress)
        stage = status.phase if status.state == "running" and status.phase else status.state
        desc = f"{self._label} {stage:<9}"
        if self._bar is None:  # its first frame is this status
            self._bar = self._draw(desc, self._fraction)
            return
        self._bar.set_description_str(desc, refresh=False)
        self._bar.n = self._fraction
        self._bar.refresh()

    def close(self) -> None:
        """End the bar's line (it stays on screen)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _draw(self, desc: str, fraction: float) -> tqdm[Any]:
        from tqdm import tqdm

        bar: tqdm[Any] = tqdm(
            desc=desc,
            initial=fraction,
            total=1.0,
            file=self._stream if self._stream is not None else sys.stderr,
            bar_format=BAR_FORMAT,
            mininterval=0,
            leave=True,
        )
        return bar
