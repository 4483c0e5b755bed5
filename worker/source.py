"""The input side: the worker's KafkaConsumer and what it tells about the broker.

`Source.poll` turns polled records into `SourceRecord`s and watches the connection: a
failing poll, or (for an idle worker, whose polls do not fail when the broker goes) a
lost group coordinator, makes the worker not ready until a poll works again;
kafka-python reconnects by itself meanwhile. Exactly-once delivery rewinds the
consumer after an aborted transaction and sends its group metadata with the offsets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from model.errors import ModstreamError
from worker.clients import FENCING_ERRORS, WorkerFencedError, fenced_message
from worker.commit import first_offsets
from worker.decode import SourceRecord
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.refusal import authorization_hint, input_topic_unauthorized
from worker.settings import WorkerSettings
from worker.sink import describe

log = structlog.get_logger("modstream.worker")

POLL_ERROR_PAUSE_S = 1.0


class Source:
    """Owns the consumer: subscribe, poll, rewind, group metadata, assignment, close.

    Processing thread only: kafka-python's consumer is not thread-safe, and the
    rebalance callbacks it runs inside `poll` stay on the same thread.
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        health: HealthState,
        stop: threading.Event,
        error_pause_s: float = POLL_ERROR_PAUSE_S,
    ) -> None:
        """`stop` cuts the pause after a failed poll short."""
        self.consumer = consumer
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self._stop = stop
        self._error_pause_s = error_pause_s
        self._failing = False

    def subscribe(self, listener: ConsumerRebalanceListener) -> None:
        self.consumer.subscribe(topics=[self._settings.input_topic], listener=listener)

    def poll(self, timeout_s: float, max_records: int) -> list[SourceRecord]:
        """Up to `max_records` records; [] when polling failed (then not ready).

        Raises WorkerFencedError when another live member has this worker's instance id,
        and lets through the worker's own errors raised in a rebalance callback.
        """
        try:
            polled = self.consumer.poll(
                timeout_ms=int(timeout_s * 1000), max_records=max(max_records, 1)
            )
        except KafkaError as exc:
            # A rebalance callback's own errors (e.g. a stop) come back wrapped: let them
            # through.
            if isinstance(exc.__cause__, ModstreamError):
                raise exc.__cause__ from None
            if isinstance(exc, FENCING_ERRORS):  # e.g. another live member with our id
                raise WorkerFencedError(fenced_message(self._settings, exc)) from exc
            self._metrics.kafka_errors.labels(kind=type(exc).__name__).inc()
            hint = authorization_hint(exc, self._settings)
            self._polling_failed(f"polling Kafka failed: {describe(exc)}{hint}")
            self._stop.wait(self._error_pause_s)
            return []
        if not polled and self._coordinator_lost():
            # An idle worker's polls do not fail when the broker goes: this does.
            self._polling_failed("the group coordinator is unreachable (broker down?)")
            return []
        if not polled and (denied := input_topic_unauthorized(self.consumer, self._settings)):
            self._polling_failed(denied)  # else it would look idle and ready
            return []
        if self._failing:
            self._failing = False
            self._health.set(kafka_ok=True, problem=None)
            log.info("poll_recovered")
        polled_at = time.time()
        records = [
            SourceRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, polled_at)
            for partition_records in polled.values()
            for r in partition_records
        ]
        if records:
            self._metrics.in_flight.inc(len(records))
        return records

    def _polling_failed(self, problem: str) -> None:
        """Not ready until a poll works again; kafka-python reconnects by itself."""
        self._health.set(kafka_ok=False, problem=problem)
        if not self._failing:
            log.error("poll_failed", error=problem, retry_in_s=self._error_pause_s)
        self._failing = True
        self._health.tick()

    def _coordinator_lost(self) -> bool:
        """True when a worker that had joined its group no longer reaches the coordinator.

        kafka-python has no public call for this; its coordinator's `coordinator_unknown`
        (no I/O) is looked up defensively so a client upgrade degrades to "not checked".
        """
        if not self._health.group_joined:
            return False
        coordinator = getattr(self.consumer, "_coordinator", None)
        unknown = getattr(coordinator, "coordinator_unknown", None)
        return bool(callable(unknown) and unknown())

    def rewind(self, batch: Sequence[SourceRecord]) -> None:
        """Seek back to the batch's first offsets: the last committed positions."""
        assigned = self.consumer.assignment()
        for tp, offset in first_offsets(batch).items():
            if tp in assigned:  # a revoked partition resumes at its commit elsewhere
                self.consumer.seek(tp, offset)

    def group_metadata(self) -> Any:
        """The consumer's group generation and member id (KIP-447 fencing of offsets)."""
        return self.consumer.group_metadata()

    def assignment(self) -> set[TopicPartition]:
        return set(self.consumer.assignment())

    def close(self) -> None:
        self.consumer.close(autocommit=False)
