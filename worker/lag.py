"""Consumer lag per assigned partition: `modstream_consumer_lag_records` and the summary.

Lag is end offset minus position. The end offset is the high watermark the consumer's
own fetch responses carry, so a refresh costs no request; only partitions not fetched
yet need one ListOffsets call. A partition leaving the assignment leaves the metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from worker.metrics import WorkerMetrics

log = structlog.get_logger("modstream.worker")

LAG_LOOKUP_TIMEOUT_MS = 2_000


class LagMonitor:
    """Measures lag between polls, every `interval_s`, with the worker's consumer.

    Processing thread only (it uses the consumer, which is not thread-safe; rebalance
    callbacks that call `forget` run inside poll on the same thread).
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        metrics: WorkerMetrics,
        topic: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._metrics = metrics
        self._topic = topic
        self._interval_s = interval_s
        self._clock = clock
        self._lag: dict[TopicPartition, int] = {}
        self._next_refresh = 0.0

    @property
    def lag(self) -> dict[TopicPartition, int]:
        """The last measured lag per partition (a copy)."""
        return dict(self._lag)

    def maybe_refresh(self) -> None:
        """Refresh when `interval_s` has passed since the last refresh."""
        now = self._clock()
        if now < self._next_refresh:
            return
        self._next_refresh = now + self._interval_s
        self.refresh()

    def refresh_soon(self) -> None:
        """Measure on the next `maybe_refresh` (e.g. a new assignment)."""
        self._next_refresh = 0.0

    def refresh(self) -> dict[TopicPartition, int]:
        """Per assigned partition: end offset - position; the last values on failure."""
        consumer = self._consumer
        assigned = set(consumer.assignment())
        self.forget(set(self._lag) - assigned)
        ends: dict[TopicPartition, int] = {}
        unknown: list[TopicPartition] = []
        for tp in assigned:
            highwater = consumer.highwater(tp)
            if highwater is None:
                unknown.append(tp)
            else:
                ends[tp] = highwater
        try:
            if unknown:
                ends.update(consumer.end_offsets(unknown, timeout_ms=LAG_LOOKUP_TIMEOUT_MS))
            positions = {tp: consumer.position(tp, timeout_ms=LAG_LOOKUP_TIMEOUT_MS) for tp in ends}
        except KafkaError as exc:
            self._metrics.kafka_errors.labels(kind=type(exc).__name__).inc()
            log.warning("lag_refresh_failed", error=str(exc), topic=self._topic)
            return dict(self._lag)
        for tp, end in ends.items():
            position = positions.get(tp)
            if position is None:
                continue
            lag = max(end - position, 0)
            self._lag[tp] = lag
            self._metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
        return dict(self._lag)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions no longer assigned: their series go away."""
        for tp in partitions:
            if self._lag.pop(tp, None) is not None:
                self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    def keep_only(self, assigned: set[TopicPartition]) -> None:
        """Forget every partition outside `assigned`."""
        self.forget(set(self._lag) - assigned)
