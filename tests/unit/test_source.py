"""worker/source.py without a broker: poll errors, a lost coordinator, errors raised in
rebalance callbacks, fencing, rewinding."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kafka.errors import FencedInstanceIdError, KafkaConnectionError, KafkaError
from kafka.structs import TopicPartition

from worker.clients import WorkerFencedError
from worker.decode import SourceRecord
from worker.delivery import WorkerStoppedError
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings
from worker.source import Source


class FakeCoordinator:
    def __init__(self) -> None:
        self.unknown = False

    def coordinator_unknown(self) -> bool:
        return self.unknown


class FakeConsumer:
    """poll/assignment/seek like kafka-python's KafkaConsumer; `polls` are answered in
    turn (an exception is raised), then nothing."""

    def __init__(self, polls: list[Any] | None = None) -> None:
        self.polls = polls or []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.assigned = {TopicPartition("in", 0)}
        self._coordinator = FakeCoordinator()

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        answer = self.polls.pop(0) if self.polls else {}
        if isinstance(answer, BaseException):
            raise answer
        return dict(answer)

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


class Polled:
    """A record as kafka-python's poll returns it."""

    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = "in", 0, offset
        self.timestamp, self.key, self.value = 1_000, b"k", b"{}"


def make_source(
    consumer: FakeConsumer, **settings: Any
) -> tuple[Source, HealthState, WorkerMetrics]:
    health = HealthState(model_version="v1", group_joined=True)  # as after joining
    metrics = WorkerMetrics()
    source = Source(
        consumer,  # type: ignore[arg-type]
        WorkerSettings(**settings),
        metrics,
        health,
        threading.Event(),
        error_pause_s=0.0,
    )
    return source, health, metrics


def test_poll_errors_make_the_worker_not_ready_until_polling_works() -> None:
    source, health, metrics = make_source(FakeConsumer([KafkaConnectionError("111 ECONNREFUSED")]))
    assert health.readiness()[0]
    assert source.poll(0.0, 10) == []
    ready, body = health.readiness()
    assert not ready
    assert "polling Kafka failed: KafkaConnectionError" in body["reasons"][0]
    kind = {"kind": "KafkaConnectionError"}
    assert metrics.registry.get_sample_value("modstream_kafka_errors_total", kind) == 1
    assert source.poll(0.0, 10) == []
    assert health.readiness()[0]


def test_polled_records_become_source_records_counted_in_flight() -> None:
    tp = TopicPartition("in", 0)
    source, _, metrics = make_source(FakeConsumer([{tp: [Polled(7), Polled(8)]}]))
    records = source.poll(0.0, 10)
    assert [(r.topic, r.partition, r.offset, r.key) for r in records] == [
        ("in", 0, 7, b"k"),
        ("in", 0, 8, b"k"),
    ]
    assert all(r.polled_at is not None for r in records)
    assert metrics.registry.get_sample_value("modstream_in_flight_messages") == 2


def test_an_idle_worker_notices_the_coordinator_is_gone() -> None:
    consumer = FakeConsumer()
    source, health, _ = make_source(consumer)
    assert source.poll(0.0, 10) == [] and health.readiness()[0]
    consumer._coordinator.unknown = True
    source.poll(0.0, 10)
    ready, body = health.readiness()
    assert not ready and "coordinator is unreachable" in body["reasons"][0]
    consumer._coordinator.unknown = False
    source.poll(0.0, 10)
    assert health.readiness()[0]


@pytest.mark.parametrize(
    "error", [WorkerFencedError("fenced"), WorkerStoppedError("stopped with 3 outputs")]
)
def test_an_error_raised_in_a_rebalance_callback_is_not_swallowed(error: Exception) -> None:
    wrapped = KafkaError("User rebalance callback throws an error")
    wrapped.__cause__ = error
    source, health, _ = make_source(FakeConsumer([wrapped]))
    with pytest.raises(type(error)) as raised:
        source.poll(0.0, 10)
    assert raised.value is error
    assert health.readiness()[0], "not a polling failure"


def test_another_member_with_our_instance_id_stops_the_worker() -> None:
    source, _, _ = make_source(
        FakeConsumer([FencedInstanceIdError()]), group_instance_id="worker-1"
    )
    with pytest.raises(WorkerFencedError, match=r"'worker-1'.*must be unique"):
        source.poll(0.0, 10)


def test_rewind_seeks_only_partitions_still_assigned() -> None:
    consumer = FakeConsumer()
    source, _, _ = make_source(consumer)
    source.rewind(
        [
            SourceRecord("in", 0, 11, None, b"k", b"{}"),
            SourceRecord("in", 0, 10, None, b"k", b"{}"),
            SourceRecord("in", 1, 5, None, b"k", b"{}"),  # partition 1 was revoked meanwhile
        ]
    )
    assert consumer.seeks == [(TopicPartition("in", 0), 10)]
