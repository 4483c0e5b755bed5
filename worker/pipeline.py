"""Overlaps Kafka I/O with inference: a scoring and a publishing thread between the
consumer and the acks.

The processing thread owns the KafkaConsumer (kafka-python's consumer is not
thread-safe): it polls, decodes and tokenises a closed batch (pure Python), hands it
over, and completes batches strictly in the order it handed them over. The scoring
thread only runs the model (torch releases the GIL inside its calls, so Python work
goes on meanwhile); the publishing thread builds each scored batch's outputs and sends
them without waiting, while the scoring thread is already on the next batch.
Completing a batch means waiting for its acknowledgements (re-sending what failed) and
committing its offsets, so invariant 1 holds exactly as in the synchronous path: a
batch commits only after every earlier batch has.

At most `depth` batches are in flight; the processing thread waits for the oldest to
complete before handing over another (backpressure instead of unbounded memory).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from model.errors import ModstreamError
from worker.decode import SourceRecord
from worker.processing import PreparedBatch
from worker.sink import PublishError, Shipment

log = structlog.get_logger("modstream.pipeline")

SETTLE_CHECK_S = 0.005
"""How often `InFlight.wait_settled` looks at a batch's send futures."""


@dataclass
class InFlight:
    """One handed-over batch: `scored` is set once the model ran on it, `ready` once its
    outputs were sent (or either step failed)."""

    batch: list[SourceRecord]
    work: Any  # what the processing thread prepared for `score` (decoded, encoded)
    scored: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)
    scores: Any = None  # what `score` returned, for `prepare`
    prepared: PreparedBatch | None = None
    shipment: Shipment | None = None
    error: PipelineError | None = None

    def settled(self) -> bool:
        """Nothing of it is still on its way: every output acknowledged, failed or never
        sent. Completing it then waits for nobody but its own retries."""
        if not self.ready.is_set():
            return False
        if self.shipment is None:
            return True  # a stage failed: completing raises it
        return all(f is None or f.is_done for f in self.shipment.futures)

    def wait_settled(self, deadline: float) -> bool:
        """Wait until `settled`, at the latest until `deadline` (`time.monotonic()`).
        The send futures are looked at every `SETTLE_CHECK_S`: kafka-python resolves
        them on its own thread and offers no wait for many at once."""
        while not self.settled():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.ready.wait(min(remaining, SETTLE_CHECK_S)):
                time.sleep(min(remaining, SETTLE_CHECK_S))  # sent: look again shortly
        return True

    def has_failed_sends(self) -> bool:
        """Some output was never sent or its send failed: completing it means re-sending."""
        return self.shipment is not None and bool(self.shipment.unsent())


class PipelineError(ModstreamError):
    """A pipeline thread raised: the worker cannot answer this batch (exit code 1)."""


class ScoringFailedError(PipelineError):
    """The scoring thread raised while running the model on a batch."""


class OutputsFailedError(PipelineError):
    """The publishing thread raised while building or sending a batch's outputs (not a
    broker refusal: `PublishError`s are retried when the batch completes)."""


class Pipeline:
    """The scoring and publishing threads and the ordered window of batches in flight.

    Threads: `submit`, `oldest`, `pop_oldest`, `close` and the properties on the
    processing thread; `score` runs on the scoring thread, `prepare` and `send` on the
    publishing thread. A batch's `InFlight` is handed between them through queues and
    its events, never touched by two at once.
    """

    def __init__(
        self,
        score: Callable[[Any], Any],
        prepare: Callable[[Any, Any], PreparedBatch],
        send: Callable[[Shipment], None],
        depth: int,
    ) -> None:
        """`score(work)` runs the model; `prepare(work, scores)` builds the outputs."""
        self._score = score
        self._prepare = prepare
        self._send = send
        self.depth = depth
        self._inbox: queue.Queue[InFlight | None] = queue.Queue()
        self._scored: queue.Queue[InFlight | None] = queue.Queue()
        self._window: deque[InFlight] = deque()
        self._threads = [
            threading.Thread(target=self._run_scoring, name="scoring", daemon=True),
            threading.Thread(target=self._run_publishing, name="publishing", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def __len__(self) -> int:
        return len(self._window)

    @property
    def full(self) -> bool:
        return len(self._window) >= self.depth

    @property
    def scorer_idle(self) -> bool:
        """Nothing handed over is waiting to be scored: a new batch would start at once."""
        return all(item.scored.is_set() for item in self._window)

    def submit(self, batch: Sequence[SourceRecord], work: Any) -> None:
        """Processing thread: hand over a closed batch and its prepared `work` (the
        caller keeps the window bounded)."""
        item = InFlight(list(batch), work)
        self._window.append(item)
        self._inbox.put(item)

    def oldest(self, wait_s: float | None) -> InFlight | None:
        """The oldest batch once its outputs were sent; None if it is not ready in time."""
        if not self._window:
            return None
        head = self._window[0]
        if not head.ready.wait(wait_s):
            return None
        if head.error is not None:
            raise head.error
        return head

    def pop_oldest(self) -> InFlight:
        return self._window.popleft()

    def close(self) -> None:
        self._inbox.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    def _run_scoring(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                self._scored.put(None)
                return
            try:
                item.scores = self._score(item.work)
            except BaseException as exc:  # handed to the processing thread, never lost
                item.error = ScoringFailedError(f"scoring failed: {exc!r}")
                item.error.__cause__ = exc
            finally:
                item.scored.set()
                self._scored.put(item)

    def _run_publishing(self) -> None:
        while True:
            item = self._scored.get()
            if item is None:
                return
            if item.error is not None:
                item.ready.set()
                continue
            try:
                prepared = self._prepare(item.work, item.scores)
                shipment = Shipment(prepared.outputs)
                try:
                    self._send(shipment)
                except PublishError as exc:
                    # Completing the batch re-sends what was not sent, with backoff.
                    log.warning("send_failed", error=str(exc), batch_size=len(item.batch))
                item.prepared, item.shipment = prepared, shipment
            except BaseException as exc:  # handed to the processing thread, never lost
                item.error = OutputsFailedError(f"building or sending outputs failed: {exc!r}")
                item.error.__cause__ = exc
            finally:
                item.ready.set()
