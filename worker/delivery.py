"""Delivering a batch: its outputs acknowledged, then its offsets committed (invariant 1).

One interface, `BatchDelivery`, two modes (`MODSTREAM_DELIVERY`):

`AtLeastOnceDelivery.deliver` (the default):

1. Send every output not acknowledged yet (on the first try all of them; pipelined, the
   publishing thread already sent them with `send`, unless an earlier batch's send had
   failed and was not made again yet, or an earlier batch was held back itself: then
   they wait for this step, so that outputs of the same key leave in consumption
   order).
2. Wait until the broker acknowledged every one, at most `MODSTREAM_PUBLISH_TIMEOUT_S`.
3. On failure (worker/sink.py says which kind):
   a. one output refused for what it is (size, content): replace it by its minimal
      dead letter (worker/outputs.py), or give the record up when that was refused
      too (`output_abandoned`); go back to step 1 at once;
   b. any other failure that is not retriable (it leaves the idempotent producer
      failing every send): renew the producer, and from now on send this batch's
      outputs one at a time (so that 3a blames only the refused one); go back to
      step 1 at once the first time, else as 3c;
   c. count it, report not-ready, back off (0.5 s doubling to 30 s) and go back to
      step 1 with the same `Shipment`: acknowledged outputs are not sent again,
      pending ones are waited for, failed ones are re-sent. Asked to stop: one more
      try, then `WorkerStoppedError`; nothing is committed.
4. Ready again.
5. Commit, per partition, one past the batch's highest offset: synchronously, or
   (pipelined) asynchronously, `flush` making the latest certain before partitions
   are handed back (revocation, shutdown).

`TransactionalDelivery.deliver` (exactly-once, worker/transactional.py): steps 1-5 are one
Kafka transaction; its own steps are numbered there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import structlog
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from model.errors import ModstreamError
from worker.commit import CommitError, Committer
from worker.decode import SourceRecord
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.outputs import OutputFitter
from worker.refusal import authorization_hint
from worker.settings import WorkerSettings
from worker.sink import (
    OutputRecord,
    OutputRefusedError,
    PublishError,
    SendFailure,
    Shipment,
    Sink,
)

log = structlog.get_logger("modstream.worker")

FIRST_PUBLISH_BACKOFF_S = 0.5
MAX_PUBLISH_BACKOFF_S = 30.0


class WorkerStoppedError(ModstreamError):
    """Shutdown was requested while a batch's outputs were still unacknowledged."""


class Backoff:
    """The pause between tries: `first_s`, doubling to `MAX_PUBLISH_BACKOFF_S`.
    Processing thread (each delivery has its own)."""

    def __init__(self, first_s: float) -> None:
        self.first_s = first_s
        self.seconds = first_s

    def wait(self, stop: threading.Event) -> bool:
        """Pause; True when a stop was requested meanwhile (the pause is cut short)."""
        return stop.wait(self.seconds)

    def grow(self) -> None:
        self.seconds = min(self.seconds * 2, MAX_PUBLISH_BACKOFF_S)

    def reset(self) -> None:
        self.seconds = self.first_s


class BatchDelivery(Protocol):
    """Publishes a batch's outputs and commits its offsets (the module docstring's steps).

    Processing thread: `deliver`, `flush`, `forget`, `close`.
    """

    def deliver(self, batch: Sequence[SourceRecord], shipment: Shipment) -> float | None:
        """Steps 1-5 for one batch; the time its outputs were acknowledged, or None when
        its records come back in a later poll (transaction aborted and rewound)."""
        ...

    def flush(self) -> None:
        """Make every commit sent so far certain (before partitions are handed back)."""
        ...

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions lost to the group: their offsets can no longer be committed here."""
        ...

    @property
    def committer(self) -> Committer | None:
        """What commits offsets outside the outputs (None: a transaction commits them)."""
        ...

    def commit_done(self, error: CommitError | None) -> None:
        """Count (and log) the outcome of a commit sent without waiting."""
        ...

    def retry_deferred_commits(self) -> None:
        """Re-send commits the broker refused for a passing reason (a rebalance)."""
        ...

    def close(self) -> None: ...


class AtLeastOnceDelivery:
    """Acknowledged, then committed; retried on the same outputs until acknowledged.

    Threads: `send` on the publishing thread (pipelined); `deliver`, `flush`, `forget`
    and `close` on the processing thread; the outcome of an asynchronous commit on
    whichever thread kafka-python reports it (only counted and logged). `_send_lock`
    keeps the publishing thread's sends apart from the producer's renewal and from
    step 3b's one-at-a-time sending; `_ahead_lock` guards the list of shipments sent
    ahead (never held while sending, so completing a batch never waits for a send).
    """

    def __init__(
        self,
        sink: Sink,
        consumer: KafkaConsumer,
        metrics: WorkerMetrics,
        health: HealthState,
        stop: threading.Event,
        commit_async: bool = False,
        first_backoff_s: float = FIRST_PUBLISH_BACKOFF_S,
        fitter: OutputFitter | None = None,
        settings: WorkerSettings | None = None,
    ) -> None:
        """`consumer` commits the offsets (a KafkaConsumer). `commit_async` (set when
        batches are pipelined): step 5 does not wait for the broker's answer, so the
        processing thread never waits a round trip per batch. `fitter` makes the
        minimal dead letters of step 3a (None: refused outputs are given up).
        `settings` name the setting behind a refused ACL in messages."""
        self._settings = settings
        self._sink = sink
        self._committer = Committer(consumer, self.commit_done)
        self._metrics = metrics
        self._health = health
        self._stop = stop
        self.commit_async = commit_async
        self._first_backoff_s = first_backoff_s
        self._fitter = fitter
        self._send_lock = threading.Lock()
        self._ahead_lock = threading.Lock()
        self._sent_ahead: list[Shipment] = []  # handed to `send`, not delivered yet
        self._isolating = False  # a batch's outputs go one at a time (step 3b)

    def send(self, shipment: Shipment) -> None:
        """Publishing thread: step 1 ahead of `deliver`, without waiting for acks; held
        back (sent by `deliver`, in order) while an earlier batch has an output not sent
        yet (its send failed and was not made again, or it was held back itself), or it
        could overtake that batch's outputs of the same key."""
        with self._send_lock:
            with self._ahead_lock:
                held = self._isolating or any(earlier.has_unsent() for earlier in self._sent_ahead)
                self._sent_ahead.append(shipment)
            if held:
                log.info("send_held", outputs=len(shipment.outputs))
                return
            self._sink.send(shipment)

    def deliver(self, batch: Sequence[SourceRecord], shipment: Shipment) -> float:
        """At-least-once steps 1-5; never None: it retries until acknowledged, or raises
        WorkerStoppedError."""
        publish_start = time.perf_counter()
        acked_at = self._publish_until_acknowledged(batch, shipment)  # steps 1-4
        self._metrics.stage_seconds.labels(stage="publish").observe(
            time.perf_counter() - publish_start
        )
        with self._ahead_lock:
            self._sent_ahead = [s for s in self._sent_ahead if s is not shipment]
        # Step 5: every output of the batch is acknowledged.
        commit_start = time.perf_counter()
        if self.commit_async:
            self._committer.retry_deferred()
            self._committer.commit_async(batch)
        else:
            try:
                self._committer.commit(batch)
            except CommitError as exc:
                self.commit_done(exc)
            else:
                self.commit_done(None)
        self._metrics.stage_seconds.labels(stage="commit").observe(
            time.perf_counter() - commit_start
        )
        return acked_at

    def _publish_until_acknowledged(
        self, batch: Sequence[SourceRecord], shipment: Shipment
    ) -> float:
        backoff = Backoff(self._first_backoff_s)
        last_try = False
        careful = False
        renew = False  # the producer fails every send until it is replaced
        try:
            while True:
                try:
                    if renew:
                        self._renew()
                        renew = False
                    # Steps 1-2, on the same shipment every try.
                    acked_at = self._sink.complete(shipment, careful=careful)
                except OutputRefusedError as exc:
                    # Step 3a: that output can never be sent; its stand-in goes at once.
                    self._metrics.kafka_errors.labels(kind=type(exc.cause).__name__).inc()
                    renew = exc.producer_failed
                    stand_in(shipment, exc, self._fitter, self._metrics)
                    continue
                except PublishError as exc:
                    if exc.failure is not SendFailure.RETRIABLE:
                        # Step 3b: renew, then find the refused output on its own.
                        renew = True
                        if not careful:
                            careful = True
                            with self._send_lock:
                                self._isolating = True
                            log.warning("publish_refused_isolating", error=str(exc))
                            continue
                    # Step 3c.
                    last_try = self._back_off(batch, shipment, exc, backoff, last_try)
                    continue
                self._health.set(kafka_ok=True, problem=None)  # step 4
                return acked_at
        finally:
            if careful:  # (only then: the rebalance listener completes batches too)
                with self._send_lock:
                    self._isolating = False

    def _back_off(
        self,
        batch: Sequence[SourceRecord],
        shipment: Shipment,
        exc: PublishError,
        backoff: Backoff,
        last_try: bool,
    ) -> bool:
        """Step 3c: count, report, back off. Returns whether the next try is the last
        (a stop was asked for); raises WorkerStoppedError after that last try."""
        kind = type(exc.cause).__name__ if exc.cause else "PublishError"
        self._metrics.kafka_errors.labels(kind=kind).inc()
        self._metrics.publish_retries.inc()
        problem = f"{exc}{self._acl_hint(exc.cause)}"
        self._health.set(kafka_ok=False, problem=f"publishing failed: {problem}")
        first = batch[0]
        log.error(
            "publish_failed",
            error=problem,
            failure=exc.failure.value,
            topic=first.topic,
            partition=first.partition,
            offset=first.offset,
            batch_size=len(batch),
            acknowledged=shipment.acknowledged(),
            retry_in_s=backoff.seconds,
            committed=False,
        )
        if last_try:
            raise WorkerStoppedError(
                f"stopped with {len(shipment.outputs) - shipment.acknowledged()} "
                f"outputs unacknowledged: {exc}"
            ) from exc
        if backoff.wait(self._stop):
            return True  # asked to stop: one more try (the broker may be back), then give up
        backoff.grow()
        self._health.tick()
        return False

    def _renew(self) -> None:
        """A new producer in place of one that fails every send, apart from the
        publishing thread's sends. Raises PublishError (retriable) when none can be
        made now: the next try renews again."""
        with self._send_lock:
            self._sink.renew()

    def flush(self) -> None:
        try:
            self._committer.flush()
        except CommitError as exc:
            self._commit_failed(exc)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        self._committer.forget(partitions)

    def close(self) -> None:
        close_sink(self._sink)

    @property
    def committer(self) -> Committer:
        return self._committer

    def commit_done(self, error: CommitError | None) -> None:
        if error is None:
            self._metrics.commits.labels(result="ok").inc()
            if self._health.commit_problem is not None:
                self._health.set(commit_problem=None)  # the refused right is back
                log.info("commits_recovered")
            return
        if not error.deferred:
            self._commit_failed(error)
            return
        # Refused for a reason that passes: sent again by `retry_deferred_commits`.
        self._metrics.commits.labels(result="deferred").inc()
        hint = self._acl_hint(error.__cause__)
        if not hint:  # the group is rebalancing
            log.info("commit_deferred", error=str(error), offsets=offset_names(error.offsets))
            return
        # An ACL refuses it: no commit works until it is granted, so not ready meanwhile.
        if self._health.commit_problem is None:
            kind = type(error.__cause__).__name__ if error.__cause__ else "CommitError"
            self._metrics.kafka_errors.labels(kind=kind).inc()
            log.warning(
                "commit_refused", error=f"{error}{hint}", offsets=offset_names(error.offsets)
            )
        self._health.set(commit_problem=f"committing offsets failed: {error}{hint}")

    def retry_deferred_commits(self) -> None:
        """Processing thread, between batches: re-send commits refused for a passing
        reason (see `Committer.retry_deferred`)."""
        self._committer.retry_deferred()

    def _acl_hint(self, exc: BaseException | None) -> str:
        """ "; the broker's ACLs deny this worker …" when an ACL refused it, else ""."""
        return authorization_hint(exc, self._settings) if self._settings is not None else ""

    def _commit_failed(self, exc: CommitError) -> None:
        # The partition moved on; its new owner re-reads from the last commit
        # (at-least-once: a duplicate, never a loss).
        self._metrics.commits.labels(result="failed").inc()
        kind = type(exc.__cause__).__name__ if exc.__cause__ else "CommitError"
        self._metrics.kafka_errors.labels(kind=kind).inc()
        log.warning(
            "commit_failed",
            error=str(exc),
            offsets=offset_names(exc.offsets),
        )


def stand_in(
    shipment: Shipment,
    refusal: OutputRefusedError,
    fitter: OutputFitter | None,
    metrics: WorkerMetrics,
) -> None:
    """Step 3a: the minimal dead letter in place of a refused output; or, when that was
    the refused one (or there is no fitter), the record given up, loudly."""
    replacement = fitter.refused(refusal.output, refusal.refusal) if fitter is not None else None
    if replacement is not None:
        output, kind = replacement
        shipment.replace(refusal.index, output)
        metrics.dead_letters.labels(reason=kind).inc()
        return
    shipment.abandon(refusal.index)
    metrics.outputs_abandoned.inc()
    log_abandoned(refusal.output, refusal)


def log_abandoned(output: OutputRecord, refusal: OutputRefusedError) -> None:
    origin = output.origin
    log.error(
        "output_abandoned",
        topic=origin.topic if origin else None,
        partition=origin.partition if origin else None,
        offset=origin.offset if origin else None,
        output_topic=output.topic,
        error=str(refusal),
        why="the broker refuses even the minimal dead letter: this record gets no output",
    )


def close_sink(sink: Sink) -> None:
    try:
        sink.close()
    except KafkaError as exc:
        log.warning("producer_close_failed", error=str(exc))


def offset_names(offsets: dict[TopicPartition, int]) -> dict[str, int]:
    return {f"{tp.topic}-{tp.partition}": offset for tp, offset in offsets.items()}
