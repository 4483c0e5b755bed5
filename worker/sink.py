"""Publishes results and dead letters and waits until the broker acknowledges them all."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError


@dataclass(frozen=True, slots=True)
class OutputRecord:
    topic: str
    key: bytes | None
    value: bytes
    source_timestamp_ms: int | None


class PublishError(Exception):
    """Some outputs of a batch were not acknowledged; its offsets must not be committed."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class Sink:
    """A thin, batch-oriented wrapper over KafkaProducer's futures."""

    def __init__(self, producer: KafkaProducer, timeout_s: float) -> None:
        self._producer = producer
        self._timeout_s = timeout_s

    def publish(self, outputs: Sequence[OutputRecord]) -> float:
        """Send all outputs, block until every one is acknowledged; returns the ack time.

        Raises PublishError when any send fails or the deadline passes.
        """
        try:
            futures = [
                self._producer.send(out.topic, value=out.value, key=out.key) for out in outputs
            ]
            self._producer.flush(timeout=self._timeout_s)
        except KafkaError as exc:
            raise PublishError(f"{type(exc).__name__}: {exc}", exc) from exc
        for future in futures:
            if not future.is_done:
                raise PublishError("output not acknowledged before the deadline")
            if future.failed():
                failure = future.exception
                raise PublishError(f"{type(failure).__name__}: {failure}", failure)
        return time.time()

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)
