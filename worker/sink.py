"""Publishes results and dead letters and waits until the broker acknowledges them all.

A batch's outputs travel as one `Shipment`. When a try fails (deadline passed, broker
gone, topic missing), the same `Shipment` is completed again: outputs the broker already
acknowledged stay acknowledged, outputs still in the producer's hands are waited for
(the idempotent producer retries them itself, without duplicates), and only outputs
whose send failed are sent again. A broker restart therefore costs waiting, not
duplicates.

A failed send is one of three kinds (`SendFailure`, `classify`):

- retriable (kafka-python's `retriable`: timeouts, leader moves, broker down, topic
  missing): the delivery backs off and completes the same shipment again;
- the record itself is refused (`MessageSizeTooLargeError`, `RecordListTooLargeError`,
  `InvalidRecordError`): no retry can help that output; sent alone (`careful`) it raises
  `OutputRefusedError` naming it, and the delivery replaces it (worker/outputs.py);
- the topic is refused (authorization, invalid topic, anything else not retriable): an
  infrastructure fault, retried with backoff like a missing topic.

kafka-python's idempotent producer turns any send failure that is not retriable into a
fatal state: it fails every record it holds and every later send (measured with
kafka-python 3.0.12: a 5-byte record sent after a refused 200 KB one failed with the same
`MessageSizeTooLargeError`). So after such a failure the producer is renewed
(`renew`), and the failed outputs are sent again one at a time (`careful`), each waited
for, so that only the output that is refused on its own is blamed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog
from kafka import KafkaProducer
from kafka.errors import (
    InvalidRecordError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

from model.errors import ModstreamError

log = structlog.get_logger("modstream.worker")

# Refusals of one record's content or size: the same bytes are refused every time.
RECORD_REFUSALS: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidRecordError,
)


class SendFailure(StrEnum):
    """What a failed send means, and so what the delivery does about it."""

    RETRIABLE = "retriable"  # back off, send again
    RECORD_REFUSED = "record_refused"  # this output can never be sent: replace it
    TOPIC_REFUSED = "topic_refused"  # infrastructure (authorization, invalid topic)


def classify(exc: BaseException | None) -> SendFailure:
    """The kind of a send failure; no exception (a deadline passed) is retriable."""
    if exc is None:
        return SendFailure.RETRIABLE
    if isinstance(exc, RECORD_REFUSALS):
        return SendFailure.RECORD_REFUSED
    if getattr(exc, "retriable", False):
        return SendFailure.RETRIABLE
    return SendFailure.TOPIC_REFUSED


@dataclass(frozen=True, slots=True)
class Origin:
    """The input record an output answers (for a replacement dead letter)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class OutputRecord:
    topic: str
    key: bytes | None
    value: bytes
    source_timestamp_ms: int | None
    headers: tuple[tuple[str, bytes], ...] = ()
    origin: Origin | None = None
    last_resort: bool = False
    """A minimal dead letter standing in for a refused output: if it is refused too,
    nothing smaller is left to send."""


class PublishError(ModstreamError):
    """Some outputs of a batch were not acknowledged; its offsets must not be committed."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause

    @property
    def failure(self) -> SendFailure:
        return classify(self.cause)


class OutputRefusedError(PublishError):
    """One output, sent on its own, was refused for what it is (size, content).

    `producer_failed`: the refusal came from the broker, which leaves kafka-python's
    idempotent producer failing every later send until it is renewed; a refusal raised
    by `send` itself (over `max_request_size`) leaves it intact."""

    def __init__(
        self, index: int, output: OutputRecord, cause: BaseException, producer_failed: bool
    ) -> None:
        super().__init__(
            f"output to {output.topic!r} refused: {describe(cause)}",
            cause,
        )
        self.index = index
        self.output = output
        self.refusal = cause
        self.producer_failed = producer_failed


def describe(exc: BaseException) -> str:
    """`Class: message`, once (kafka-python's messages often start with the class name)."""
    name = type(exc).__name__
    text = str(exc)
    return text if text.startswith(name) else f"{name}: {text}" if text else name


class Shipment:
    """The outputs of one batch and, per output, the future of its latest send.

    Made on the publishing thread (pipelined) or the processing thread, then handed to
    the processing thread with its batch: one thread at a time (the publishing thread
    only reads `has_unsent` of shipments it handed over)."""

    def __init__(self, outputs: Sequence[OutputRecord]) -> None:
        self.outputs = list(outputs)
        self.futures: list[Any | None] = [None] * len(self.outputs)
        self.abandoned: set[int] = set()

    def unsent(self) -> list[int]:
        """Outputs never sent, or whose last send failed: they must be sent (again)."""
        return [
            i
            for i, future in enumerate(self.futures)
            if i not in self.abandoned and (future is None or (future.is_done and future.failed()))
        ]

    def acknowledged(self) -> int:
        return sum(1 for f in self.futures if f is not None and f.is_done and f.succeeded())

    def has_unsent(self) -> bool:
        """An output was never sent (held back) or its send failed and was not made
        again yet: a later batch's outputs sent now would overtake it."""
        return bool(self.unsent())

    def replace(self, index: int, output: OutputRecord) -> None:
        """Put `output` in place of a refused one; it is sent on the next try."""
        self.outputs[index] = output
        self.futures[index] = None

    def abandon(self, index: int) -> None:
        """Give an output up: nothing left to send for its record (counted, logged)."""
        self.abandoned.add(index)
        self.futures[index] = None


class Sink:
    """A thin, batch-oriented wrapper over KafkaProducer's futures.

    Threads: `send` on the publishing thread (pipelined) or the processing thread;
    `complete`, `publish`, `renew` and `close` on the processing thread. KafkaProducer is
    thread-safe; a `Shipment` is only touched by one thread at a time (handed over with
    its batch); the at-least-once delivery keeps `send` and `renew` apart with a lock.
    """

    def __init__(
        self,
        producer: KafkaProducer,
        timeout_s: float,
        new_producer: Callable[[], KafkaProducer] | None = None,
    ) -> None:
        """`new_producer` makes a replacement for `renew` (None: the caller replaces the
        producer itself, as the exactly-once delivery does)."""
        self._producer = producer
        self._timeout_s = timeout_s
        self._new_producer = new_producer

    def publish(self, outputs: Sequence[OutputRecord]) -> float:
        """Send all outputs, block until every one is acknowledged; returns the ack time.

        Raises PublishError when any send fails or the deadline passes.
        """
        return self.complete(Shipment(outputs))

    def complete(self, shipment: Shipment, careful: bool = False) -> float:
        """(Re)send what is unsent or failed, then wait for every acknowledgement.

        Returns the time the last acknowledgement was seen; raises PublishError naming
        the first failure when the deadline passes or a send fails, OutputRefusedError
        when `send` refuses an output itself or (careful) the broker refuses one. Careful:
        the outputs to send go one at a time, each waited for, so that a refusal names
        the output refused and nothing else fails with it.
        """
        deadline = time.monotonic() + self._timeout_s
        if careful:
            self._complete_one_by_one(shipment, deadline)
            return time.time()
        self.send(shipment)
        self._wait(shipment, deadline)
        waiting = 0
        for i, future in enumerate(shipment.futures):
            if i in shipment.abandoned:
                continue
            assert future is not None
            if not future.is_done:
                waiting += 1
            elif future.failed():
                self._raise_failure(shipment, i)
        if waiting:
            raise self._not_acknowledged(waiting, len(shipment.outputs))
        return time.time()

    def _complete_one_by_one(self, shipment: Shipment, deadline: float) -> None:
        self._wait(shipment, deadline)  # what the producer still holds, first
        for i, output in enumerate(shipment.outputs):
            if i in shipment.abandoned:
                continue
            future = shipment.futures[i]
            if future is None or (future.is_done and future.failed()):
                self._send_one(shipment, i)
                self._wait(shipment, deadline)
                future = shipment.futures[i]
            assert future is not None
            if not future.is_done:
                raise self._not_acknowledged(1, len(shipment.outputs))
            if future.failed():
                if classify(future.exception) is SendFailure.RECORD_REFUSED:
                    raise OutputRefusedError(i, output, future.exception, producer_failed=True)
                self._raise_failure(shipment, i)

    def _wait(self, shipment: Shipment, deadline: float) -> None:
        if any(future is not None and not future.is_done for future in shipment.futures):
            # flush() also waits for later batches' records: only when this one needs it.
            try:
                self._producer.flush(timeout=max(deadline - time.monotonic(), 0.001))
            except KafkaTimeoutError:
                pass  # judged by the caller, output by output
            except KafkaError as exc:
                raise PublishError(describe(exc), exc) from exc

    def _not_acknowledged(self, waiting: int, total: int) -> PublishError:
        return PublishError(
            f"{waiting} of {total} outputs not acknowledged within "
            f"{self._timeout_s:g}s (broker unreachable or topic not writable?)"
        )

    @staticmethod
    def _raise_failure(shipment: Shipment, index: int) -> None:
        future = shipment.futures[index]
        assert future is not None
        failure = future.exception
        raise PublishError(
            f"output to {shipment.outputs[index].topic!r} failed: {describe(failure)}",
            failure,
        )

    def send(self, shipment: Shipment) -> None:
        """Send what is unsent or failed, without waiting for acknowledgements."""
        for i in shipment.unsent():
            self._send_one(shipment, i)

    def _send_one(self, shipment: Shipment, index: int) -> None:
        out = shipment.outputs[index]
        try:
            shipment.futures[index] = self._producer.send(
                out.topic, value=out.value, key=out.key, headers=list(out.headers)
            )
        except RECORD_REFUSALS as exc:
            # Refused before it reached the producer's buffers (max_request_size): the
            # producer is unharmed.
            raise OutputRefusedError(index, out, exc, producer_failed=False) from exc
        except KafkaTimeoutError as exc:
            # send() blocks on topic metadata up to max_block_ms: the topic is
            # missing, or this client may not see it.
            raise PublishError(
                f"cannot send to topic {out.topic!r}: {describe(exc)} "
                "(does the topic exist, and may this worker write to it?)",
                exc,
            ) from exc
        except KafkaError as exc:
            raise PublishError(f"cannot send to topic {out.topic!r}: {describe(exc)}", exc) from exc

    def renew(self) -> None:
        """Replace a producer that a refused send left failing everything (see the
        module docstring); the old one is closed. Raises PublishError (retriable) when
        no new producer can be made now."""
        if self._new_producer is None:
            return
        try:
            fresh = self._new_producer()
        except KafkaError as exc:
            # Retriable whatever the cause: the next try renews again.
            raise PublishError(f"cannot renew the producer: {describe(exc)}") from exc
        old, self._producer = self._producer, fresh
        log.warning("producer_renewed", reason="a send failed in a way that is not retriable")
        try:
            old.close(timeout=1.0)
        except KafkaError as exc:
            log.warning("producer_close_failed", error=str(exc))

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)
