"""worker/delivery.py without a broker: the at-least-once retry and commit, the
exactly-once transaction with its abort, rewind and fencing."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kafka.errors import CommitFailedError, KafkaTimeoutError, ProducerFencedError
from kafka.future import Future
from kafka.structs import TopicPartition

from tests.unit.test_source import FakeConsumer
from worker.clients import WorkerFencedError
from worker.decode import SourceRecord
from worker.delivery import AtLeastOnceDelivery, Backoff, WorkerStoppedError
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings
from worker.sink import OutputRecord, Shipment, Sink
from worker.source import Source
from worker.transactional import TransactionalDelivery


class FakeFuture:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.is_done = True
        self.exception = KafkaTimeoutError("no leader")

    def succeeded(self) -> bool:
        return self.ok

    def failed(self) -> bool:
        return not self.ok


class FakeProducer:
    """send/flush and the transaction calls of kafka-python's KafkaProducer, recorded;
    `failed_sends` sends fail, then `commit_errors` are raised by commit_transaction."""

    def __init__(self, commit_errors: list[BaseException] | None = None, failed_sends: int = 0):
        self.commit_errors = commit_errors or []
        self.failed_sends = failed_sends
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send(self, topic: str, value: bytes, key: bytes | None, headers: Any = None) -> FakeFuture:
        self.calls.append("send")
        if self.failed_sends:
            self.failed_sends -= 1
            return FakeFuture(ok=False)
        return FakeFuture()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def send_offsets_to_transaction(self, offsets: dict[Any, Any], metadata: Any) -> None:
        offsets_sent = sorted((tp.partition, o.offset) for tp, o in offsets.items())
        self.calls.append(f"offsets {offsets_sent} {metadata}")

    def commit_transaction(self) -> None:
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        self.calls.append("commit")

    def abort_transaction(self) -> None:
        self.calls.append("abort")

    def close(self, timeout: float | None = None) -> None:
        self.calls.append("close")


class CommittingConsumer(FakeConsumer):
    """FakeConsumer that also commits (kafka-python's commit/commit_async)."""

    def __init__(self) -> None:
        super().__init__()
        self.commits: list[dict[int, int]] = []

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp.partition: meta.offset for tp, meta in offsets.items()})

    def commit_async(self, offsets: dict[TopicPartition, Any], callback: Any = None) -> Future:
        """Answered at once, like a broker that is quick: the future is already done."""
        self.commits.append({tp.partition: meta.offset for tp, meta in offsets.items()})
        if callback is not None:
            callback(offsets, None)
        answered = Future()
        answered.success(None)
        return answered

    def group_metadata(self) -> str:
        return "group-metadata"


def batch() -> list[SourceRecord]:
    return [
        SourceRecord("in", 0, 10, None, b"k", b"{}"),
        SourceRecord("in", 0, 11, None, b"k", b"{}"),
        SourceRecord("in", 1, 5, None, b"k", b"{}"),  # partition 1 was revoked meanwhile
    ]


def outputs(n: int = 3) -> list[OutputRecord]:
    return [OutputRecord("out", b"k", b"v", None)] * n


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class Parts:
    def __init__(self, **settings: Any) -> None:
        self.settings = WorkerSettings(**settings)
        self.metrics = WorkerMetrics()
        self.health = HealthState(model_version="v1", group_joined=True)
        self.stop = threading.Event()
        self.consumer = CommittingConsumer()

    def at_least_once(self, producer: FakeProducer, commit_async: bool) -> AtLeastOnceDelivery:
        sink = Sink(producer, timeout_s=1.0)  # type: ignore[arg-type]
        return AtLeastOnceDelivery(
            sink,
            self.consumer,
            self.metrics,
            self.health,
            self.stop,
            commit_async,
            first_backoff_s=0.0,
        )

    def transactional(self, *producers: FakeProducer) -> TransactionalDelivery:
        source = Source(self.consumer, self.settings, self.metrics, self.health, self.stop)  # type: ignore[arg-type]
        spares = list(producers[1:])
        return TransactionalDelivery(
            producers[0],  # type: ignore[arg-type]
            lambda: spares.pop(0),  # type: ignore[arg-type,return-value]
            source,
            self.settings,
            self.metrics,
            self.health,
            self.stop,
            first_backoff_s=0.0,
        )


@pytest.mark.parametrize("commit_async", [False, True])
def test_at_least_once_retries_until_acknowledged_then_commits(commit_async: bool) -> None:
    parts = Parts()
    producer = FakeProducer(failed_sends=1)
    delivery = parts.at_least_once(producer, commit_async)
    acked_at = delivery.deliver(batch(), Shipment(outputs()))
    assert acked_at > 0
    assert producer.calls == ["send"] * 4, "only the failed output is sent again"
    assert parts.consumer.commits == [{0: 12}], "partition 1 is no longer ours: not committed"
    assert sample(parts.metrics, "modstream_publish_retries_total") == 1
    assert sample(parts.metrics, "modstream_commits_total", result="ok") == 1
    assert sample(parts.metrics, "modstream_stage_latency_seconds_count", stage="publish") == 1
    assert sample(parts.metrics, "modstream_stage_latency_seconds_count", stage="commit") == 1
    assert parts.health.readiness()[0]


def test_at_least_once_stopped_while_failing_commits_nothing() -> None:
    parts = Parts()
    delivery = parts.at_least_once(FakeProducer(failed_sends=10), commit_async=False)
    parts.stop.set()
    with pytest.raises(WorkerStoppedError, match="3 outputs unacknowledged"):
        delivery.deliver(batch(), Shipment(outputs()))
    assert parts.consumer.commits == []
    ready, body = parts.health.readiness()
    assert not ready and "publishing failed" in body["reasons"][0]


def test_failed_transaction_is_aborted_and_the_consumer_rewound() -> None:
    parts = Parts(delivery="exactly_once")
    producer = FakeProducer([CommitFailedError("generation moved")])
    delivery = parts.transactional(producer)

    assert delivery.deliver(batch(), Shipment(outputs())) is None
    assert producer.calls == [
        "begin",
        "send",
        "send",
        "send",
        "offsets [(0, 12), (1, 6)] group-metadata",
        "abort",
    ]
    assert parts.consumer.seeks == [(TopicPartition("in", 0), 10)]  # only what is still assigned
    assert not parts.health.readiness()[0]
    assert sample(parts.metrics, "modstream_commits_total", result="aborted") == 1

    producer.calls.clear()
    assert delivery.deliver(batch(), Shipment(outputs())) is not None
    assert producer.calls[-1] == "commit"
    assert parts.health.readiness()[0]
    assert sample(parts.metrics, "modstream_commits_total", result="ok") == 1
    assert parts.consumer.commits == [], "offsets travel only inside the transaction"


def test_a_producer_that_cannot_abort_is_replaced() -> None:
    class Stuck(FakeProducer):
        def abort_transaction(self) -> None:
            raise KafkaTimeoutError("abort timed out")

    parts = Parts(delivery="exactly_once")
    stuck, fresh = Stuck([CommitFailedError("generation moved")]), FakeProducer()
    delivery = parts.transactional(stuck, fresh)
    assert delivery.deliver(batch(), Shipment(outputs())) is None
    assert stuck.calls[-1] == "close"
    assert delivery.deliver(batch(), Shipment(outputs())) is not None
    assert fresh.calls[0] == "begin" and fresh.calls[-1] == "commit"


def test_a_fenced_producer_stops_the_worker() -> None:
    parts = Parts(delivery="exactly_once", transactional_id="tx-9")
    delivery = parts.transactional(FakeProducer([ProducerFencedError()]))
    with pytest.raises(WorkerFencedError, match=r"'tx-9'.*must be unique"):
        delivery.deliver(batch(), Shipment(outputs(1)))


def test_backoff_doubles_to_its_cap_and_a_stop_cuts_it_short() -> None:
    backoff = Backoff(0.5)
    seen = []
    for _ in range(8):
        seen.append(backoff.seconds)
        backoff.grow()
    assert seen == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    backoff.reset()
    assert backoff.seconds == 0.5
    stop = threading.Event()
    stop.set()
    assert backoff.wait(stop), "a requested stop ends the pause at once"
