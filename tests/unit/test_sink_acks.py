"""worker/sink.py: when a batch waits for acknowledgements and how long, what each kind of
failure says and carries, and how the producer is closed."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError, NotLeaderForPartitionError

from worker.sink import OutputRecord, PublishError, Shipment, Sink, describe


class Future:
    def __init__(self, state: str) -> None:
        self.state = state  # "ok", "pending" or "failed"
        self.exception = NotLeaderForPartitionError("leader moved")

    @property
    def is_done(self) -> bool:
        return self.state != "pending"

    def succeeded(self) -> bool:
        return self.state == "ok"

    def failed(self) -> bool:
        return self.state == "failed"


class Producer:
    """Answers sends with futures in the given states; `flush` settles the pending ones
    as `flush_to` (or raises `flush_error`) and records its timeout."""

    def __init__(self, states: list[str], flush_to: str = "ok") -> None:
        self.states = states
        self.flush_to = flush_to
        self.flush_error: BaseException | None = None
        self.send_error: BaseException | None = None
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.futures: list[Future] = []
        self.flushes: list[float | None] = []
        self.closed_with: list[float | None] = []

    def send(self, topic: str, value: bytes, key: bytes | None, headers: Any = None) -> Future:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append((topic, key, value))
        self.futures.append(Future(self.states.pop(0)))
        return self.futures[-1]

    def flush(self, timeout: float | None = None) -> None:
        self.flushes.append(timeout)
        if self.flush_error is not None:
            raise self.flush_error
        for future in self.futures:
            if future.state == "pending":
                future.state = self.flush_to

    def close(self, timeout: float | None = None) -> None:
        self.closed_with.append(timeout)


def outputs(n: int) -> list[OutputRecord]:
    return [OutputRecord("results", f"k{i}".encode(), f"v{i}".encode(), None) for i in range(n)]


def test_outputs_go_out_with_their_own_key_and_topic() -> None:
    producer = Producer(["ok", "ok"])
    Sink(producer, timeout_s=5).publish(  # type: ignore[arg-type]
        [OutputRecord("a", b"k0", b"v0", None), OutputRecord("b", None, b"v1", 7)]
    )
    assert producer.sent == [("a", b"k0", b"v0"), ("b", None, b"v1")]


def test_a_batch_already_acknowledged_does_not_wait_for_the_producer() -> None:
    """flush() also waits for later batches' records: only a batch that needs it calls it."""
    producer = Producer(["ok", "ok"])
    Sink(producer, timeout_s=5).publish(outputs(2))  # type: ignore[arg-type]
    assert producer.flushes == []


def test_a_batch_with_outputs_in_flight_waits_at_most_the_publish_timeout() -> None:
    producer = Producer(["ok", "pending"])
    acked_at = Sink(producer, timeout_s=5).publish(outputs(2))  # type: ignore[arg-type]
    assert acked_at > 0
    (timeout,) = producer.flushes
    assert timeout is not None and 4 < timeout <= 5


def test_past_its_deadline_a_try_still_gives_the_producer_a_moment() -> None:
    producer = Producer(["pending"])
    Sink(producer, timeout_s=0).publish(outputs(1))  # type: ignore[arg-type]
    assert producer.flushes == [0.001]


def test_outputs_still_pending_at_the_deadline_are_counted_in_the_error() -> None:
    producer = Producer(["ok", "pending", "pending"], flush_to="pending")
    producer.flush_error = KafkaTimeoutError("Timeout after waiting for 5 secs.")
    with pytest.raises(PublishError) as raised:
        Sink(producer, timeout_s=5).publish(outputs(3))  # type: ignore[arg-type]
    assert str(raised.value) == (
        "2 of 3 outputs not acknowledged within 5s (broker unreachable or topic not writable?)"
    )


def test_a_failed_output_names_its_topic_and_carries_the_cause() -> None:
    producer = Producer(["ok", "failed"])
    with pytest.raises(PublishError) as raised:
        Sink(producer, timeout_s=5).publish(outputs(2))  # type: ignore[arg-type]
    cause = producer.futures[1].exception
    assert str(raised.value) == f"output to 'results' failed: {describe(cause)}"
    assert raised.value.cause is cause


def test_a_producer_error_while_waiting_is_a_publish_error_with_its_cause() -> None:
    producer = Producer(["pending"])
    producer.flush_error = KafkaConnectionError("connection reset")
    with pytest.raises(PublishError) as raised:
        Sink(producer, timeout_s=5).publish(outputs(1))  # type: ignore[arg-type]
    assert str(raised.value) == "KafkaConnectionError: connection reset"
    assert raised.value.cause is producer.flush_error


def test_a_send_refused_by_the_client_names_the_topic_and_carries_the_cause() -> None:
    producer = Producer([])
    producer.send_error = KafkaConnectionError("broker gone")
    with pytest.raises(PublishError) as raised:
        Sink(producer, timeout_s=5).publish(outputs(1))  # type: ignore[arg-type]
    assert str(raised.value) == "cannot send to topic 'results': KafkaConnectionError: broker gone"
    assert raised.value.cause is producer.send_error

    producer.send_error = KafkaTimeoutError("Failed to update metadata after 1.0 secs.")
    with pytest.raises(PublishError) as raised:
        Sink(producer, timeout_s=5).publish(outputs(1))  # type: ignore[arg-type]
    assert str(raised.value) == (
        "cannot send to topic 'results': KafkaTimeoutError: Failed to update metadata after "
        "1.0 secs. (does the topic exist, and may this worker write to it?)"
    )


def test_a_retry_sends_only_what_never_got_out() -> None:
    producer = Producer(["ok"])
    sink = Sink(producer, timeout_s=5)  # type: ignore[arg-type]
    shipment = Shipment(outputs(2))
    shipment.futures[0] = Future("ok")  # acknowledged after an earlier try
    sink.complete(shipment)
    assert producer.sent == [("results", b"k1", b"v1")]
    assert shipment.unsent() == [] and shipment.acknowledged() == 2


@pytest.mark.parametrize(
    ("error", "described"),
    [
        (KafkaTimeoutError("took too long"), "KafkaTimeoutError: took too long"),
        (ValueError("NoBrokersAvailable"), "ValueError: NoBrokersAvailable"),
        # kafka-python's errors start with their class name already
        (KafkaConnectionError("reset"), "KafkaConnectionError: reset"),
        (ValueError(), "ValueError"),
    ],
)
def test_describe_names_the_class_once(error: BaseException, described: str) -> None:
    assert describe(error) == described


def test_closing_waits_a_bounded_time_for_the_producer() -> None:
    producer = Producer([])
    sink = Sink(producer, timeout_s=5)  # type: ignore[arg-type]
    sink.close()
    sink.close(timeout_s=1.0)
    assert producer.closed_with == [10.0, 1.0]
