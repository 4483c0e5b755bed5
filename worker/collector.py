"""Python's garbage collector kept off the stream's critical path.

Why: a full (generation 2) collection walks every container object the process holds,
and a worker holds ≈ 223,000 of them once the model is loaded and warmed up (the
vocabulary, the token tables and caches, torch's and pydantic's Python side, the Kafka
clients). One full collection of that heap took 130-225 ms on the project's 2-core
machine, with the interpreter lock held throughout, so every thread of the worker
stood still; CPython starts one whenever the objects that survived younger
collections since the last one reach a quarter of the long-lived ones, which a model
reload (a new vocabulary and caches) or a growing cache does.

What (`freeze_long_lived`): once start-up and warm-up are done, and again after a
reloaded model is warmed up, collect what is garbage now and move every surviving
object to the permanent generation (`gc.freeze()`). The collector never walks them
again; they are still freed by reference counting when dropped (a swapped-out engine
is: checked by a unit test). A full collection afterwards walks only what survived
since, and took 0.005 ms right after freezing the warmed-up engine above. Young
collections are left at Python's thresholds: at 200 msg/s they ran 4-7 times a second
for ≈ 2 ms a second in all (bench/gc_pauses.py), nothing worth trading memory for.

`PauseRecorder` times every collection (`gc.callbacks`) for the
`modstream_gc_pause_seconds` histogram. The callback only appends to a deque: it runs
inside whichever thread's allocation started the collection, possibly while that
thread holds a lock the metrics use, so the processing loop moves the pauses into
the histogram (`flush`) instead.
"""

from __future__ import annotations

import gc
import time
from collections import deque

from prometheus_client import Histogram

MAX_PENDING_PAUSES = 10_000  # bounded whatever the loop does; oldest dropped first


def freeze_long_lived() -> int:
    """Collect the garbage there is now, then freeze every survivor; returns how many
    objects the collector now leaves alone."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class PauseRecorder:
    """Times every garbage collection of this process (`install`, then `flush` from the
    processing loop into the histogram).

    Threads: the callback runs on whichever thread collects; `flush` on one thread.
    """

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._children = {
            g: histogram.labels(process="worker", generation=str(g)) for g in (0, 1, 2)
        }
        self._pending: deque[tuple[int, float]] = deque(maxlen=MAX_PENDING_PAUSES)
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._on_collection)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_collection)
            self._installed = False

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        # Collections never overlap (the collector runs under the interpreter lock and
        # does not re-enter itself), so one start time suffices.
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pending.append((info["generation"], time.perf_counter() - self._started))

    def flush(self) -> int:
        """Move the pauses recorded so far into the histogram; returns how many."""
        moved = 0
        while self._pending:
            generation, seconds = self._pending.popleft()
            self._children[generation].observe(seconds)
            moved += 1
        return moved
