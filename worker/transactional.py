"""Exactly-once delivery: a batch's outputs and offsets in one Kafka transaction.

`TransactionalDelivery.deliver` (`MODSTREAM_DELIVERY=exactly_once`), one batch at a time:

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

The at-least-once delivery and the `BatchDelivery` interface both modes follow are in
worker/delivery.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

import structlog
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from worker.clients import FENCING_ERRORS, WorkerFencedError, fenced_message
from worker.commit import CommitError, as_commit_request, next_offsets
from worker.decode import SourceRecord
from worker.delivery import (
    FIRST_PUBLISH_BACKOFF_S,
    Backoff,
    WorkerStoppedError,
    close_sink,
    log_abandoned,
)
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.outputs import OutputFitter, refusal_kind
from worker.refusal import authorization_hint
from worker.settings import WorkerSettings
from worker.sink import (
    Origin,
    OutputRefusedError,
    PublishError,
    SendFailure,
    Shipment,
    Sink,
    describe,
)
from worker.source import Source

log = structlog.get_logger("modstream.worker")


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
        close_sink(self._sink)
