"""Progress reporting for long jobs (training, retrain): a line callback and a bar.

`Progress` receives one human-readable line per event (epoch results, data sizes,
written checkpoint); `quiet` drops them. `ProgressBar` draws the batches of one epoch
on an interactive stderr and stays silent otherwise, so logs hold only the lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """The `Progress` that reports nothing."""


class ProgressBar:
    """A one-line batch progress bar on an interactive stderr; silent otherwise (the
    per-epoch lines are the plain progress)."""

    def __init__(self, total: int, prefix: str, enabled: bool) -> None:
        self.total, self.prefix, self.enabled = total, prefix, enabled
        self.started = time.perf_counter()

    def update(self, done: int, loss: float) -> None:
        if not self.enabled or (done % 5 and done != self.total):
            return
        filled = int(30 * done / max(self.total, 1))
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(done, 1) * (self.total - done)
        sys.stderr.write(
            f"\r{self.prefix} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} "
            f"loss {loss:.4f} eta {eta:4.0f}s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
