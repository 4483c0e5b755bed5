"""Publishes results and dead letters and waits until the broker acknowledges them all.

A batch's outputs travel as one `Delivery`. When a try fails (deadline passed, broker
gone, topic missing), the same `Delivery` is completed again: outputs the broker already
acknowledged stay acknowledged, outputs still in the producer's hands are waited for
(the idempotent producer retries them itself, without duplicates), and only outputs
whose send failed are sent again. A broker restart therefore costs waiting, not
duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from model.errors import ModstreamError


@dataclass(frozen=True, slots=True)
class OutputRecord:
    topic: str
    key: bytes | None
    value: bytes
    source_timestamp_ms: int | None


class PublishError(ModstreamError):
    """Some outputs of a batch were not acknowledged; its offsets must not be committed."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def describe(exc: BaseException) -> str:
    """`Class: message`, once (kafka-python's messages often start with the class name)."""
    name = type(exc).__name__
    text = str(exc)
    return text if text.startswith(name) else f"{name}: {text}" if text else name


class Delivery:
    """The outputs of one batch and, per output, the future of its latest send."""

    def __init__(self, outputs: Sequence[OutputRecord]) -> None:
        self.outputs = list(outputs)
        self.futures: list[Any | None] = [None] * len(self.outputs)

    def unsent(self) -> list[int]:
        """Outputs never sent, or whose last send failed: they must be sent (again)."""
        return [
            i
            for i, future in enumerate(self.futures)
            if future is None or (future.is_done and future.failed())
        ]

    def acknowledged(self) -> int:
        return sum(1 for f in self.futures if f is not None and f.is_done and f.succeeded())


class Sink:
    """A thin, batch-oriented wrapper over KafkaProducer's futures."""

    def __init__(self, producer: KafkaProducer, timeout_s: float) -> None:
        self._producer = producer
        self._timeout_s = timeout_s

    @property
    def producer(self) -> KafkaProducer:
        return self._producer

    @property
    def failed(self) -> bool:
        """True once the producer is in kafka-python's fatal state, failing every send.

        kafka-python 3.0.12's idempotent producer classifies any non-retriable batch error
        (e.g. a topic its principal may not write) as fatal, though its own comment says
        it should only fail the batch; only a new producer recovers. Its transaction
        manager (no I/O) is looked up defensively: an upgrade degrades to "not checked".
        """
        manager = getattr(self._producer, "_transaction_manager", None)
        has_fatal_error = getattr(manager, "has_fatal_error", None)
        return bool(callable(has_fatal_error) and has_fatal_error())

    def publish(self, outputs: Sequence[OutputRecord]) -> float:
        """Send all outputs, block until every one is acknowledged; returns the ack time.

        Raises PublishError when any send fails or the deadline passes.
        """
        return self.complete(Delivery(outputs))

    def complete(self, delivery: Delivery) -> float:
        """(Re)send what is unsent or failed, then wait for every acknowledgement.

        Returns the time the last acknowledgement was seen; raises PublishError naming
        the first failure when the deadline passes or a send fails.
        """
        deadline = time.monotonic() + self._timeout_s
        self.send(delivery)
        if any(future is None or not future.is_done for future in delivery.futures):
            # flush() also waits for later batches' records: only when this one needs it.
            try:
                self._producer.flush(timeout=max(deadline - time.monotonic(), 0.001))
            except KafkaTimeoutError:
                pass  # judged below, output by output
            except KafkaError as exc:
                raise PublishError(describe(exc), exc) from exc
        waiting = 0
        for i, future in enumerate(delivery.futures):
            assert future is not None
            if not future.is_done:
                waiting += 1
            elif future.failed():
                failure = future.exception
                raise PublishError(
                    f"output to {delivery.outputs[i].topic!r} failed: {describe(failure)}",
                    failure,
                )
        if waiting:
            raise PublishError(
                f"{waiting} of {len(delivery.outputs)} outputs not acknowledged within "
                f"{self._timeout_s:g}s (broker unreachable or topic not writable?)"
            )
        return time.time()

    def send(self, delivery: Delivery) -> None:
        """Send what is unsent or failed, without waiting for acknowledgements."""
        for i in delivery.unsent():
            out = delivery.outputs[i]
            try:
                delivery.futures[i] = self._producer.send(out.topic, value=out.value, key=out.key)
            except KafkaTimeoutError as exc:
                # send() blocks on topic metadata up to max_block_ms: the topic is
                # missing, or this client may not see it.
                raise PublishError(
                    f"cannot send to topic {out.topic!r}: {describe(exc)} "
                    "(does the topic exist, and may this worker write to it?)",
                    exc,
                ) from exc
            except KafkaError as exc:
                raise PublishError(
                    f"cannot send to topic {out.topic!r}: {describe(exc)}", exc
                ) from exc

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)
