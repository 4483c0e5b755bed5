"""Sink retries: acknowledged outputs are never sent again, pending ones are waited for."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, NotLeaderForPartitionError

from worker.sink import OutputRecord, PublishError, Shipment, Sink


class FakeFuture:
    def __init__(self, outcome: str) -> None:
        self.outcome = outcome  # "ok", "pending" or "failed"

    @property
    def is_done(self) -> bool:
        return self.outcome != "pending"

    def succeeded(self) -> bool:
        return self.outcome == "ok"

    def failed(self) -> bool:
        return self.outcome == "failed"

    @property
    def exception(self) -> Exception:
        return NotLeaderForPartitionError("leader moved")


class FakeProducer:
    def __init__(self, outcomes: list[str], missing_topic: str | None = None) -> None:
        self.outcomes = outcomes
        self.missing_topic = missing_topic
        self.sent: list[bytes] = []
        self.futures: list[FakeFuture] = []

    def send(self, topic: str, value: bytes, key: bytes | None, headers: Any = None) -> Any:
        if topic == self.missing_topic:
            raise KafkaTimeoutError("Failed to update metadata after 1.0 secs.")
        self.sent.append(value)
        future = FakeFuture(self.outcomes.pop(0))
        self.futures.append(future)
        return future

    def flush(self, timeout: float | None = None) -> None:
        if any(not f.is_done for f in self.futures):
            raise KafkaTimeoutError("Timeout waiting for future")


def outputs(n: int, topic: str = "results") -> list[OutputRecord]:
    return [OutputRecord(topic, b"k", f"v{i}".encode(), None) for i in range(n)]


def test_retry_resends_only_failed_outputs_and_waits_for_pending_ones() -> None:
    producer = FakeProducer(["ok", "pending", "failed", "ok"])
    sink = Sink(producer, timeout_s=0.01)  # type: ignore[arg-type]
    shipment = Shipment(outputs(3))
    with pytest.raises(PublishError, match="leader moved"):
        sink.complete(shipment)
    assert producer.sent == [b"v0", b"v1", b"v2"]
    assert shipment.acknowledged() == 1

    with pytest.raises(PublishError, match="1 of 3 outputs not acknowledged"):
        sink.complete(shipment)  # v2 re-sent; v1 still with the producer
    assert producer.sent == [b"v0", b"v1", b"v2", b"v2"]

    producer.futures[1].outcome = "ok"  # the producer's own retry got through
    sink.complete(shipment)
    assert producer.sent == [b"v0", b"v1", b"v2", b"v2"], "nothing sent twice needlessly"
    assert shipment.acknowledged() == 3


def test_missing_topic_is_named_in_the_error() -> None:
    producer = FakeProducer(["ok"], missing_topic="results")
    sink = Sink(producer, timeout_s=0.01)  # type: ignore[arg-type]
    with pytest.raises(PublishError) as raised:
        sink.publish(outputs(1))
    message = str(raised.value)
    assert "'results'" in message
    assert "does the topic exist" in message
    assert message.count("KafkaTimeoutError") == 1
    assert isinstance(raised.value.cause, KafkaTimeoutError)
