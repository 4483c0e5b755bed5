"""The info-level `summary` log line, every `MODSTREAM_LOG_SUMMARY_INTERVAL_S`.

Per-batch detail (`batch_processed`) is debug-level; this line is what an operator reads
at info: messages and messages/s, outcomes, batches, in-flight records and the lag.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import structlog
from kafka.structs import TopicPartition

from worker.metrics import WorkerMetrics

log = structlog.get_logger("modstream.worker")


class SummaryLog:
    """What the worker did since the last summary line, and when to write the next.

    Processing thread only: `add` once per completed batch, `maybe_log` once per turn.
    """

    def __init__(
        self,
        metrics: WorkerMetrics,
        topic: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._topic = topic
        self._interval_s = interval_s
        self._clock = clock
        self._since = clock()
        self._reset()

    def _reset(self) -> None:
        self.batches = 0
        self.messages = 0
        self.outcomes: dict[str, int] = {"ok": 0, "invalid": 0, "error": 0}

    def add(self, outcomes: Mapping[str, int]) -> None:
        """One completed batch: its records by outcome."""
        self.batches += 1
        for outcome, count in outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count
            self.messages += count

    def maybe_log(self, lag: Mapping[TopicPartition, int]) -> None:
        """Write the line and start a new window once `interval_s` has passed."""
        now = self._clock()
        elapsed = now - self._since
        if elapsed < self._interval_s:
            return
        in_flight = self._metrics.registry.get_sample_value("modstream_in_flight_messages")
        log.info(
            "summary",
            topic=self._topic,
            seconds=round(elapsed, 1),
            messages=self.messages,
            messages_per_s=round(self.messages / elapsed, 2),
            batches=self.batches,
            ok=self.outcomes["ok"],
            invalid=self.outcomes["invalid"],
            error=self.outcomes["error"],
            lag=sum(lag.values()),
            lag_by_partition={f"{tp.topic}-{tp.partition}": n for tp, n in lag.items()},
            in_flight=int(in_flight or 0),
        )
        self._reset()
        self._since = now
