"""Delivering a batch: its outputs acknowledged, then its offsets committed (invariant 1).

One interface, `BatchDelivery`, two modes (`MODSTREAM_DELIVERY`):

`AtLeastOnceDelivery.deliver` (the default):

1. Send every output not acknowledged yet (on the first try all of them; pipelined, the
   publishing thread already sent them with `send`, unless an earlier batch's send had
   failed and was not made again yet: then they wait for this step, so that outputs
   of the same key leave in consumption order).
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

`TransactionalDelivery.deliver` (exactly-once): steps 1-5 are one Kafka transaction.

1. Begin a transaction.
2. Send the outputs and wait for every acknowledgement.
3. Add the batch's offsets with the consumer's group metadata (KIP-447: a zombie
   whose generation moved on cannot commit them).
4. Commit the transaction: outputs and offsets become visible together.

On a failure in steps 1-4:

5. Abort the transaction (its outputs stay invisible to `read_committed` readers); a
   producer that cannot abort is replaced, and initialising the new one with the same
   transactional id aborts what the old one left.
6. Rewind the consumer to the batch's first offsets, which are the last committed
   positions (batches run one at a time, in order): the records come back in a later
   poll. Not ready until a transaction commits again.
7. Back off (0.5 s doubling to 30 s) and return None. A refusal that is not retriable
   is remembered instead: the replayed batch sends its outputs one at a time, and the
   output refused on its own is replaced by its minimal dead letter (or, refused too,
   given up) in every later try of that batch; no backoff then.

A fenced producer (another live worker with the same transactional id) at any step
raises `WorkerFencedError`: the worker stops without committing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from model.errors import ModstreamError
from worker.clients import FENCING_ERRORS, WorkerFencedError, fenced_message
from worker.commit import CommitError, Committer, as_commit_request, next_offsets
from worker.decode import SourceRecord
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.outputs import OutputFitter, refusal_kind
from worker.security import authorization_hint
from worker.settings import WorkerSettings
from worker.sink import (
    Origin,
    OutputRecord,
    OutputRefusedError,
    PublishError,
    SendFailure,
    Shipment,
    Sink,
    describe,
)
from worker.source import Source

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
        back (sent by `deliver`, in order) while an earlier batch has a failed send not
        made again yet, or it could overtake that batch's outputs of the same key."""
        with self._send_lock:
            with self._ahead_lock:
                held = self._isolating or any(
                    earlier.has_unretried_failures() for earlier in self._sent_ahead
                )
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
        _close_sink(self._sink)

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
            log.info("commit_deferred", error=str(error), offsets=_offset_names(error.offsets))
            return
        # An ACL refuses it: no commit works until it is granted, so not ready meanwhile.
        if self._health.commit_problem is None:
            kind = type(error.__cause__).__name__ if error.__cause__ else "CommitError"
            self._metrics.kafka_errors.labels(kind=kind).inc()
            log.warning(
                "commit_refused", error=f"{error}{hint}", offsets=_offset_names(error.offsets)
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
            offsets=_offset_names(exc.offsets),
        )


class TransactionalDelivery:
    """Outputs and offsets in one Kafka transaction per batch, one transaction at a time.

    Owns the transactional producer (and replaces it when it cannot abort). Processing
    thread only.
    """

    def __init__(
        self,
        producer: KafkaProducer,
        new_producer: Callable[[], KafkaProducer],
        source: Source,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        health: HealthState,
        stop: threading.Event,
        first_backoff_s: float = FIRST_PUBLISH_BACKOFF_S,
        fitter: OutputFitter | None = None,
    ) -> None:
        """`producer` has its transactions initialised; `new_producer` makes another
        (initialised the same way) when this one must be replaced. `fitter` makes the
        minimal dead letters of step 7 (None: refused outputs are given up)."""
        self._producer = producer
        self._sink = Sink(producer, settings.publish_timeout_s)
        self._new_producer = new_producer
        self._source = source
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self._stop = stop
        self._backoff = Backoff(first_backoff_s)
        self._fitter = fitter
        # Step 7's memory: outputs refused on their own, by what they answer.
        self._refusals: dict[tuple[Origin | None, str, bool], BaseException] = {}
        self._careful = False  # the next transaction sends its outputs one at a time

    def deliver(self, batch: Sequence[SourceRecord], shipment: Shipment) -> float | None:
        """Exactly-once steps 1-4, or 5-7 and None when the transaction was aborted."""
        publish_start = time.perf_counter()
        acked_at = self._transaction(batch, shipment)
        self._metrics.stage_seconds.labels(stage="publish").observe(
            time.perf_counter() - publish_start
        )
        return acked_at

    def _transaction(self, batch: Sequence[SourceRecord], shipment: Shipment) -> float | None:
        offsets = as_commit_request(next_offsets(batch))
        self._apply_refusals(shipment)
        try:
            self._producer.begin_transaction()  # step 1
            acked_at = self._sink.complete(shipment, careful=self._careful)  # step 2
            self._producer.send_offsets_to_transaction(  # step 3
                offsets, self._source.group_metadata()
            )
            self._producer.commit_transaction()  # step 4
        except FENCING_ERRORS as exc:
            raise WorkerFencedError(fenced_message(self._settings, exc)) from exc
        except OutputRefusedError as exc:
            self._remember_refusal(exc)
            self._abort_and_rewind(batch, exc, back_off=False)  # steps 5-7
            return None
        except PublishError as exc:
            # A first refusal that is not retriable: find the output refused, at once.
            find = exc.failure is not SendFailure.RETRIABLE and not self._careful
            if find:
                self._careful = True
                log.warning("publish_refused_isolating", error=str(exc))
            self._abort_and_rewind(batch, exc, back_off=not find)  # steps 5-7
            return None
        except KafkaError as exc:
            self._abort_and_rewind(batch, exc)  # steps 5-7
            return None
        self._backoff.reset()
        self._careful = False
        answered = {(r.topic, r.partition, r.offset) for r in batch}
        self._refusals = {
            key: cause
            for key, cause in self._refusals.items()
            if key[0] is None or (key[0].topic, key[0].partition, key[0].offset) not in answered
        }
        self._metrics.commits.labels(result="ok").inc()
        self._health.set(kafka_ok=True, problem=None)
        return acked_at

    def _remember_refusal(self, refusal: OutputRefusedError) -> None:
        """Step 7: the refused output's stand-in (or none) goes in every later try."""
        output = refusal.output
        self._refusals[(output.origin, output.topic, output.last_resort)] = refusal.refusal
        if output.last_resort or self._fitter is None:
            self._metrics.outputs_abandoned.inc()
            log_abandoned(output, refusal)
        else:
            self._metrics.dead_letters.labels(reason=refusal_kind(refusal.refusal)).inc()

    def _apply_refusals(self, shipment: Shipment) -> None:
        """Outputs refused in an earlier try of this batch: their stand-ins instead."""
        if not self._refusals:
            return
        for i in range(len(shipment.outputs)):
            while i not in shipment.abandoned:
                output = shipment.outputs[i]
                cause = self._refusals.get((output.origin, output.topic, output.last_resort))
                if cause is None:
                    break
                replacement = (
                    self._fitter.refused(output, cause) if self._fitter is not None else None
                )
                if replacement is None:
                    shipment.abandon(i)
                else:
                    shipment.replace(i, replacement[0])

    def _abort_and_rewind(
        self, batch: Sequence[SourceRecord], exc: Exception, back_off: bool = True
    ) -> None:
        cause = exc.cause if isinstance(exc, PublishError) else exc
        self._metrics.kafka_errors.labels(kind=type(cause or exc).__name__).inc()
        self._metrics.publish_retries.inc()
        self._metrics.commits.labels(result="aborted").inc()
        hint = authorization_hint(cause or exc, self._settings)
        self._health.set(kafka_ok=False, problem=f"transaction aborted: {exc}{hint}")
        first = batch[0]
        log.error(
            "transaction_aborted",
            error=(str(exc) if isinstance(exc, PublishError) else describe(exc)) + hint,
            topic=first.topic,
            partition=first.partition,
            offset=first.offset,
            batch_size=len(batch),
            retry_in_s=self._backoff.seconds,
            committed=False,
        )
        # Step 5: abort, or replace a producer that cannot.
        try:
            self._producer.abort_transaction()
        except FENCING_ERRORS as abort_exc:
            raise WorkerFencedError(fenced_message(self._settings, abort_exc)) from abort_exc
        except KafkaError as abort_exc:
            log.warning("abort_failed_replacing_producer", error=str(abort_exc))
            self._replace_producer()
        self._source.rewind(batch)  # step 6
        self._health.tick()
        if back_off:
            self._backoff.wait(self._stop)  # step 7
            self._backoff.grow()

    def _replace_producer(self) -> None:
        try:
            self._sink.close(timeout_s=1.0)
        except KafkaError as exc:
            log.warning("producer_close_failed", error=str(exc))
        while True:
            try:
                self._producer = self._new_producer()
                self._sink = Sink(self._producer, self._settings.publish_timeout_s)
                return
            except FENCING_ERRORS as exc:
                raise WorkerFencedError(fenced_message(self._settings, exc)) from exc
            except KafkaError as exc:
                log.error("producer_init_failed", error=str(exc), retry_in_s=self._backoff.seconds)
                if self._backoff.wait(self._stop):
                    raise WorkerStoppedError("stopped while re-creating the producer") from exc
                self._backoff.grow()

    def flush(self) -> None:
        """Nothing to flush: a committed transaction committed its offsets."""

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Nothing to forget: offsets only travel inside a transaction."""

    @property
    def committer(self) -> None:
        """None: offsets only travel inside a transaction."""
        return None

    def commit_done(self, error: CommitError | None) -> None:
        """Never called: no commit travels outside a transaction."""

    def retry_deferred_commits(self) -> None:
        """Nothing is ever deferred: offsets only travel inside a transaction."""

    def close(self) -> None:
        _close_sink(self._sink)


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


def _close_sink(sink: Sink) -> None:
    try:
        sink.close()
    except KafkaError as exc:
        log.warning("producer_close_failed", error=str(exc))


def _offset_names(offsets: dict[TopicPartition, int]) -> dict[str, int]:
    return {f"{tp.topic}-{tp.partition}": offset for tp, offset in offsets.items()}
