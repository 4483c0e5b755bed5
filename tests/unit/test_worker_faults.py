"""Worker fault handling without a broker: poll errors, aborted transactions, fencing."""

from __future__ import annotations

from typing import Any, cast

import pytest
from kafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaError,
    ProducerFencedError,
)
from kafka.structs import TopicPartition

import worker.app as app
from model.engine import Engine
from worker.app import FatalWorkerError, Worker
from worker.decode import SourceRecord
from worker.settings import WorkerSettings
from worker.sink import OutputRecord, Sink


class StubEngine:
    version = "v1"
    labels = ("insult", "spam")
    device = "cpu"


class FakeConsumer:
    def __init__(self, failures: list[BaseException] | None = None) -> None:
        self.failures = failures or []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.assigned = {TopicPartition("in", 0)}

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        if self.failures:
            raise self.failures.pop(0)
        return {}

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def group_metadata(self) -> str:
        return "group-metadata"


class FakeFuture:
    is_done = True

    def succeeded(self) -> bool:
        return True

    def failed(self) -> bool:
        return False


class FakeTxnProducer:
    def __init__(self, commit_errors: list[BaseException]) -> None:
        self.commit_errors = commit_errors
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send(self, topic: str, value: bytes, key: bytes | None) -> FakeFuture:
        self.calls.append("send")
        return FakeFuture()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def send_offsets_to_transaction(self, offsets: dict[Any, Any], metadata: Any) -> None:
        self.calls.append(
            f"offsets {sorted((tp.partition, o.offset) for tp, o in offsets.items())}"
        )

    def commit_transaction(self) -> None:
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        self.calls.append("commit")

    def abort_transaction(self) -> None:
        self.calls.append("abort")


def make_worker(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Worker:
    monkeypatch.setattr(app, "POLL_ERROR_PAUSE_S", 0.0)
    monkeypatch.setattr(app, "FIRST_PUBLISH_BACKOFF_S", 0.0)
    worker = Worker(WorkerSettings(**settings), cast(Engine, StubEngine()))
    worker.health.set(group_joined=True, producer_ok=True, problem=None)  # as after connect()
    return worker


def test_poll_errors_make_the_worker_not_ready_until_polling_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = make_worker(monkeypatch)
    worker._consumer = FakeConsumer([KafkaConnectionError("111 ECONNREFUSED")])
    assert worker.health.readiness()[0]
    assert worker._poll(0.0, 10) == []
    ready, body = worker.health.readiness()
    assert not ready
    assert "polling Kafka failed: KafkaConnectionError" in body["reasons"][0]
    assert worker._poll(0.0, 10) == []
    assert worker.health.readiness()[0]


class FakeCoordinator:
    def __init__(self) -> None:
        self.unknown = False

    def coordinator_unknown(self) -> bool:
        return self.unknown


def test_an_idle_worker_notices_the_coordinator_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = make_worker(monkeypatch)
    consumer = FakeConsumer()
    consumer._coordinator = FakeCoordinator()  # type: ignore[attr-defined]
    worker._consumer = consumer
    assert worker._poll(0.0, 10) == [] and worker.health.readiness()[0]
    consumer._coordinator.unknown = True  # type: ignore[attr-defined]
    worker._poll(0.0, 10)
    ready, body = worker.health.readiness()
    assert not ready and "coordinator is unreachable" in body["reasons"][0]
    consumer._coordinator.unknown = False  # type: ignore[attr-defined]
    worker._poll(0.0, 10)
    assert worker.health.readiness()[0]


def test_a_stop_raised_in_a_rebalance_callback_is_not_swallowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = make_worker(monkeypatch)
    wrapped = KafkaError("User rebalance callback throws an error")
    wrapped.__cause__ = FatalWorkerError("fenced")
    worker._consumer = FakeConsumer([wrapped])
    with pytest.raises(FatalWorkerError, match="fenced"):
        worker._poll(0.0, 10)


def batch() -> list[SourceRecord]:
    return [
        SourceRecord("in", 0, 10, None, b"k", b"{}"),
        SourceRecord("in", 0, 11, None, b"k", b"{}"),
        SourceRecord("in", 1, 5, None, b"k", b"{}"),  # partition 1 was revoked meanwhile
    ]


def test_failed_transaction_is_aborted_and_the_consumer_rewound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = make_worker(monkeypatch, delivery="exactly_once")
    consumer = FakeConsumer()
    producer = FakeTxnProducer([CommitFailedError("generation moved")])
    worker._consumer = consumer
    worker._sink = Sink(producer, timeout_s=1.0)  # type: ignore[arg-type]
    outputs = [OutputRecord("out", b"k", b"v", None)] * 3

    assert worker._publish_in_transaction(outputs, batch()) is None
    assert producer.calls == ["begin", "send", "send", "send", "offsets [(0, 12), (1, 6)]", "abort"]
    assert consumer.seeks == [(TopicPartition("in", 0), 10)]  # only what is still assigned
    assert not worker.health.readiness()[0]

    producer.calls.clear()
    assert worker._publish_in_transaction(outputs, batch()) is not None
    assert producer.calls[-1] == "commit"
    assert worker.health.readiness()[0]


def test_a_fenced_producer_stops_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = make_worker(monkeypatch, delivery="exactly_once", transactional_id="tx-9")
    worker._consumer = FakeConsumer()
    worker._sink = Sink(FakeTxnProducer([ProducerFencedError()]), 1.0)  # type: ignore[arg-type]
    with pytest.raises(FatalWorkerError, match=r"'tx-9'.*must be unique"):
        worker._publish_in_transaction([OutputRecord("out", None, b"v", None)], batch())
