"""worker/sink.py and worker/delivery.py when the broker refuses: each kind of send
failure handled its own way, a deterministic one never retried forever, and a retried
output never overtaken by a later batch's output.

`FakeBroker` hands out producers that behave as kafka-python 3.0.12's idempotent
producer was measured to (see worker/sink.py): a record over `max_request_size` is
refused by `send` itself; any failure that is not retriable (a record over the topic's
`max.message.bytes`, a topic this client may not write) fails that record and leaves
the producer failing every record it holds and every later send, until it is replaced.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import structlog
from kafka.errors import (
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from kafka.structs import TopicPartition

from tests.unit.test_delivery import CommittingConsumer
from tests.unit.test_source import FakeConsumer
from worker.decode import SourceRecord
from worker.delivery import AtLeastOnceDelivery, WorkerStoppedError
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.outputs import OutputFitter, OutputLimits, serialised_size
from worker.settings import WorkerSettings
from worker.sink import Origin, OutputRecord, SendFailure, Shipment, Sink, classify
from worker.source import Source
from worker.transactional import TransactionalDelivery

RESULTS, LETTERS = "results", "dead-letters"


class FakeFuture:
    def __init__(self) -> None:
        self.is_done = False
        self.exception: BaseException | None = None

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def failed(self) -> bool:
        return self.is_done and self.exception is not None


class FakeBroker:
    """Topic limits and permissions, the records it accepted in order, and the producers
    it handed out. Stops the test's worker after `max_sends` sends: a delivery that
    retries forever ends with WorkerStoppedError instead of hanging the test."""

    def __init__(
        self,
        topic_max: dict[str, int] | None = None,
        denied: set[str] | None = None,
        max_request_size: int = 1_048_576,
        max_sends: int = 200,
    ) -> None:
        self.topic_max = topic_max or {}
        self.denied = denied or set()
        self.max_request_size = max_request_size
        self.accepted: list[tuple[str, bytes | None, bytes]] = []
        self.producers: list[FakeKafkaProducer] = []
        self.sends = 0
        self.max_sends = max_sends
        self.stop = threading.Event()

    def new_producer(self) -> FakeKafkaProducer:
        producer = FakeKafkaProducer(self)
        self.producers.append(producer)
        return producer


class FakeKafkaProducer:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.pending: list[tuple[FakeFuture, str, bytes | None, bytes, Any]] = []
        self.fatal: BaseException | None = None
        self.closed = False
        self.in_transaction = False
        self.committed: list[tuple[str, bytes | None, bytes]] = []
        self.calls: list[str] = []

    def send(self, topic: str, value: bytes, key: bytes | None, headers: Any = None) -> FakeFuture:
        broker = self.broker
        broker.sends += 1
        if broker.sends >= broker.max_sends:
            broker.stop.set()
        if self.closed:
            raise IllegalStateError("KafkaProducer already closed!")
        if serialised_size(OutputRecord(topic, key, value, None)) > broker.max_request_size:
            raise MessageSizeTooLargeError("larger than the max_request_size you configured")
        future = FakeFuture()
        if self.fatal is not None:
            future.is_done, future.exception = True, self.fatal
        else:
            self.pending.append((future, topic, key, value, headers))
        return future

    def flush(self, timeout: float | None = None) -> None:
        """The broker answers every pending record, in order."""
        pending, self.pending = self.pending, []
        for future, topic, key, value, _ in pending:
            future.is_done = True
            if self.fatal is not None:
                future.exception = self.fatal
            elif topic in self.broker.denied:
                future.exception = self._fail(TopicAuthorizationFailedError(topic))
            elif serialised_size(OutputRecord(topic, key, value, None)) > self.broker.topic_max.get(
                topic, 1 << 40
            ):
                future.exception = self._fail(MessageSizeTooLargeError())
            elif self.in_transaction:
                self.committed.append((topic, key, value))
            else:
                self.broker.accepted.append((topic, key, value))

    def _fail(self, exc: KafkaError) -> KafkaError:
        self.fatal = exc  # idempotent: fatal; transactional: abortable (until abort)
        return exc

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    # Transactions (exactly-once): sends fail after a refusal until the abort.
    def begin_transaction(self) -> None:
        self.calls.append("begin")
        self.in_transaction, self.committed = True, []

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any) -> None:
        self.calls.append("offsets")

    def commit_transaction(self) -> None:
        if self.fatal is not None:
            raise KafkaError(f"cannot commit after {self.fatal!r}")
        self.calls.append("commit")
        self.broker.accepted.extend(self.committed)
        self.in_transaction = False

    def abort_transaction(self) -> None:
        self.calls.append("abort")
        self.fatal, self.committed, self.in_transaction = None, [], False


def batch(n: int, partition: int = 0, first: int = 0) -> list[SourceRecord]:
    return [SourceRecord("requests", partition, first + i, None, b"k", b"{}") for i in range(n)]


def result(record: SourceRecord, size: int = 10) -> OutputRecord:
    origin = Origin(record.topic, record.partition, record.offset, None)
    value = json.dumps({"offset": record.offset, "pad": "x" * size}).encode()
    return OutputRecord(RESULTS, b"k", value, None, (), origin)


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class AtLeastOnce:
    def __init__(self, broker: FakeBroker, fitter: bool = True) -> None:
        self.broker = broker
        self.metrics = WorkerMetrics()
        self.health = HealthState(model_version="v1", group_joined=True)
        self.consumer = CommittingConsumer()
        self.consumer.assigned = {TopicPartition("requests", 0)}
        sink = Sink(broker.new_producer(), 1.0, broker.new_producer)  # type: ignore[arg-type]
        self.delivery = AtLeastOnceDelivery(
            sink,
            self.consumer,
            self.metrics,
            self.health,
            broker.stop,
            first_backoff_s=0.0,
            fitter=OutputFitter(OutputLimits(), LETTERS) if fitter else None,
        )


def accepted_kinds(broker: FakeBroker) -> list[tuple[str, Any]]:
    """Per accepted record its topic and its offset or (a dead letter) its kind and offset."""
    kinds = []
    for topic, _, value in broker.accepted:
        body = json.loads(value)
        kinds.append(
            (
                topic,
                (body["error_kind"], body["offset"]) if "error_kind" in body else body["offset"],
            )
        )
    return kinds


def test_classes_of_send_failures() -> None:
    assert classify(KafkaTimeoutError()) is SendFailure.RETRIABLE
    assert classify(None) is SendFailure.RETRIABLE
    assert classify(MessageSizeTooLargeError()) is SendFailure.RECORD_REFUSED
    assert classify(TopicAuthorizationFailedError()) is SendFailure.TOPIC_REFUSED


def test_a_record_the_broker_refuses_is_replaced_and_the_batch_commits() -> None:
    """The topic's limit is lower than the worker knew: the broker refuses one output,
    and kafka-python's producer then fails every other send with the same error."""
    broker = FakeBroker(topic_max={RESULTS: 500})
    parts = AtLeastOnce(broker)
    records = batch(3)
    outputs = [result(records[0]), result(records[1], size=2_000), result(records[2])]
    with structlog.testing.capture_logs() as logs:
        parts.delivery.deliver(records, Shipment(outputs))
    assert accepted_kinds(broker) == [
        (RESULTS, 0),
        (LETTERS, ("output_too_large", 1)),
        (RESULTS, 2),
    ], "the others are not blamed for the refused one"
    assert parts.consumer.commits == [{0: 3}]
    assert len(broker.producers) >= 2, "the failing producer was replaced"
    assert broker.producers[0].closed
    assert sample(parts.metrics, "modstream_dead_letters_total", reason="output_too_large") == 1
    assert "publish_refused_isolating" in [line["event"] for line in logs]
    assert parts.health.readiness()[0]


def test_a_record_refused_even_as_a_minimal_dead_letter_is_given_up_loudly() -> None:
    broker = FakeBroker(topic_max={RESULTS: 500, LETTERS: 200})
    parts = AtLeastOnce(broker)
    records = batch(2)
    with structlog.testing.capture_logs() as logs:
        parts.delivery.deliver(records, Shipment([result(records[0]), result(records[1], 2_000)]))
    assert accepted_kinds(broker) == [(RESULTS, 0)]
    assert parts.consumer.commits == [{0: 2}], "the partition moves on"
    assert sample(parts.metrics, "modstream_outputs_abandoned_total") == 1
    (abandoned,) = [line for line in logs if line["event"] == "output_abandoned"]
    assert abandoned["log_level"] == "error"
    assert (abandoned["topic"], abandoned["partition"], abandoned["offset"]) == ("requests", 0, 1)


def test_an_output_over_max_request_size_is_replaced_without_renewing_the_producer() -> None:
    """`send` itself refuses it (the worker's limits said more than the producer's):
    nothing else failed, the producer stays."""
    broker = FakeBroker(max_request_size=1_000)
    parts = AtLeastOnce(broker)
    records = batch(2)
    parts.delivery.deliver(records, Shipment([result(records[0], 2_000), result(records[1])]))
    assert accepted_kinds(broker) == [(LETTERS, ("output_too_large", 0)), (RESULTS, 1)]
    assert len(broker.producers) == 1


def test_a_topic_that_may_not_be_written_is_an_outage_not_a_poison_record() -> None:
    """Authorization is the operator's to fix: nothing is replaced, the worker is not
    ready and retries (on a renewed producer) until the topic may be written again."""
    broker = FakeBroker(denied={RESULTS})
    parts = AtLeastOnce(broker)
    records = batch(2)
    tries = 0
    original_flush = FakeKafkaProducer.flush

    def flush(producer: FakeKafkaProducer, timeout: float | None = None) -> None:
        nonlocal tries
        tries += 1
        if tries == 4:
            assert not parts.health.readiness()[0], "not ready while the topic is refused"
            broker.denied.clear()  # the operator grants the ACL
        original_flush(producer, timeout)

    with structlog.testing.capture_logs() as logs:
        try:
            FakeKafkaProducer.flush = flush  # type: ignore[method-assign]
            parts.delivery.deliver(records, Shipment([result(r) for r in records]))
        finally:
            FakeKafkaProducer.flush = original_flush  # type: ignore[method-assign]
    assert accepted_kinds(broker) == [(RESULTS, 0), (RESULTS, 1)], "nothing dead-lettered"
    failed = [line for line in logs if line["event"] == "publish_failed"]
    assert failed and {line["failure"] for line in failed} == {"topic_refused"}
    kinds = sample(
        parts.metrics, "modstream_kafka_errors_total", kind="TopicAuthorizationFailedError"
    )
    assert kinds >= 1
    assert parts.health.readiness()[0]


def test_no_fitter_means_a_refused_output_is_given_up_not_retried_forever() -> None:
    broker = FakeBroker(topic_max={RESULTS: 500})
    parts = AtLeastOnce(broker, fitter=False)
    records = batch(1)
    with structlog.testing.capture_logs():
        parts.delivery.deliver(records, Shipment([result(records[0], 2_000)]))
    assert broker.accepted == []
    assert sample(parts.metrics, "modstream_outputs_abandoned_total") == 1
    assert parts.consumer.commits == [{0: 1}]


def test_a_retried_output_is_not_overtaken_by_the_next_batchs_outputs() -> None:
    """Pipelined: the publishing thread sends batch N+1 while batch N waits for its
    acknowledgements. Once a send of batch N failed, batch N+1's outputs wait until
    batch N's are sent again, so outputs of the same key keep consumption order."""
    broker = FakeBroker()
    parts = AtLeastOnce(broker)
    first, second = batch(2), batch(2, first=2)
    first_shipment = Shipment([result(r) for r in first])
    parts.delivery.send(first_shipment)
    producer = broker.producers[0]
    # The broker loses the first batch: its futures fail with a retriable error.
    for future, *_ in producer.pending:
        future.is_done, future.exception = True, KafkaTimeoutError("expired")
    producer.pending.clear()

    with structlog.testing.capture_logs() as logs:
        second_shipment = Shipment([result(r) for r in second])
        parts.delivery.send(second_shipment)  # the publishing thread, meanwhile
        assert second_shipment.futures == [None, None], "held back"
        parts.delivery.deliver(first, first_shipment)
        parts.delivery.deliver(second, second_shipment)
    assert [offset for _, offset in accepted_kinds(broker)] == [0, 1, 2, 3]
    assert "send_held" in [line["event"] for line in logs]
    assert parts.consumer.commits == [{0: 2}, {0: 4}]


def test_sends_go_ahead_when_no_earlier_batch_failed() -> None:
    broker = FakeBroker()
    parts = AtLeastOnce(broker)
    first, second = batch(1), batch(1, first=1)
    shipments = [Shipment([result(first[0])]), Shipment([result(second[0])])]
    for shipment in shipments:
        parts.delivery.send(shipment)
    assert all(f is not None for s in shipments for f in s.futures)
    parts.delivery.deliver(first, shipments[0])
    parts.delivery.deliver(second, shipments[1])
    assert [offset for _, offset in accepted_kinds(broker)] == [0, 1]


class Transactional:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.metrics = WorkerMetrics()
        self.health = HealthState(model_version="v1", group_joined=True)
        settings = WorkerSettings(delivery="exactly_once")
        consumer = GroupMember()
        consumer.assigned = {TopicPartition("requests", 0)}
        self.consumer = consumer
        source = Source(consumer, settings, self.metrics, self.health, broker.stop)  # type: ignore[arg-type]
        self.delivery = TransactionalDelivery(
            broker.new_producer(),  # type: ignore[arg-type]
            broker.new_producer,  # type: ignore[arg-type]
            source,
            settings,
            self.metrics,
            self.health,
            broker.stop,
            first_backoff_s=0.0,
            fitter=OutputFitter(OutputLimits(), LETTERS),
        )


class GroupMember(FakeConsumer):
    def group_metadata(self) -> str:
        return "group-metadata"


def test_exactly_once_replaces_the_refused_output_in_the_replayed_batch() -> None:
    """A refusal aborts the transaction; the replay sends one at a time and finds the
    refused output; the next replay sends its minimal dead letter in its place."""
    broker = FakeBroker(topic_max={RESULTS: 500})
    parts = Transactional(broker)
    records = batch(3)

    def shipment() -> Shipment:  # the replayed batch builds the same outputs again
        return Shipment([result(records[0]), result(records[1], 2_000), result(records[2])])

    answers = []
    with structlog.testing.capture_logs():
        for _ in range(5):
            answers.append(parts.delivery.deliver(records, shipment()))
            if answers[-1] is not None:
                break
    assert answers[:-1] == [None] * (len(answers) - 1) and answers[-1] is not None
    assert len(answers) <= 3, "no backoff loop: one try to isolate, one to replace"
    assert accepted_kinds(broker) == [
        (RESULTS, 0),
        (LETTERS, ("output_too_large", 1)),
        (RESULTS, 2),
    ]
    rewound_to = {offset for tp, offset in parts.consumer.seeks}
    assert parts.consumer.seeks and rewound_to == {0}, "each abort rewinds to the batch start"
    assert sample(parts.metrics, "modstream_dead_letters_total", reason="output_too_large") == 1


def test_retrying_forever_is_what_the_stop_guard_catches() -> None:
    """The guard the tests above rely on: a shipment that can never complete ends in
    WorkerStoppedError once the fake broker has seen `max_sends` sends."""
    broker = FakeBroker(denied={RESULTS}, max_sends=10)
    parts = AtLeastOnce(broker)
    records = batch(1)
    with structlog.testing.capture_logs(), pytest.raises(WorkerStoppedError):
        parts.delivery.deliver(records, Shipment([result(records[0])]))
