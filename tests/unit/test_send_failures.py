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
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from kafka.errors import (
    IllegalStateError,
    InvalidRecordError,
    KafkaConnectionError,
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
    it handed out. Stops the test's worker after `max_sends` sends or `max_producers`
    producers: a delivery that retries forever ends with WorkerStoppedError instead of
    hanging the test. `invalid`: values refused for their content (InvalidRecordError);
    `unanswered`: the numbers (from 1) of the flushes that answer nothing (the deadline
    passes); `expired`: those that fail every pending record with a retriable
    KafkaTimeoutError (the producer stays usable); `on_flush` runs at the start of every
    flush (what another thread does meanwhile)."""

    def __init__(
        self,
        topic_max: dict[str, int] | None = None,
        denied: set[str] | None = None,
        max_request_size: int = 1_048_576,
        max_sends: int = 200,
        max_producers: int = 50,
        invalid: set[bytes] | None = None,
        unanswered: set[int] | None = None,
        expired: set[int] | None = None,
    ) -> None:
        self.topic_max = topic_max or {}
        self.denied = denied or set()
        self.max_request_size = max_request_size
        self.invalid = invalid or set()
        self.unanswered = unanswered or set()
        self.expired = expired or set()
        self.on_flush: Callable[[FakeKafkaProducer], None] | None = None
        self.accepted: list[tuple[str, bytes | None, bytes]] = []
        self.accepted_headers: list[Any] = []
        self.producers: list[FakeKafkaProducer] = []
        self.cannot_create: list[KafkaError] = []  # raised by the next new_producer calls
        self.sends = 0
        self.flushes = 0
        self.max_sends = max_sends
        self.max_producers = max_producers
        self.stop = threading.Event()

    def new_producer(self) -> FakeKafkaProducer:
        if self.cannot_create:
            raise self.cannot_create.pop(0)
        producer = FakeKafkaProducer(self)
        self.producers.append(producer)
        if len(self.producers) >= self.max_producers:
            self.stop.set()
        return producer


class FakeKafkaProducer:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.pending: list[tuple[FakeFuture, str, bytes | None, bytes, Any]] = []
        self.fatal: BaseException | None = None
        self.closed = False
        self.closed_with: list[float | None] = []
        self.close_error: KafkaError | None = None
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
        broker = self.broker
        broker.flushes += 1
        if broker.on_flush is not None:
            broker.on_flush(self)
        if broker.flushes in broker.unanswered:
            return
        pending, self.pending = self.pending, []
        for future, topic, key, value, headers in pending:
            future.is_done = True
            if self.fatal is not None:
                future.exception = self.fatal
            elif broker.flushes in broker.expired:
                future.exception = KafkaTimeoutError("Batch for results expired")
            elif value in broker.invalid:
                future.exception = self._fail(InvalidRecordError("corrupt record"))
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
                self.broker.accepted_headers.append(headers)

    def _fail(self, exc: KafkaError) -> KafkaError:
        self.fatal = exc  # idempotent: fatal; transactional: abortable (until abort)
        return exc

    def close(self, timeout: float | None = None) -> None:
        self.closed = True
        self.closed_with.append(timeout)
        if self.close_error is not None:
            raise self.close_error

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
        """Records of the aborted transaction, answered or not, are never seen."""
        self.calls.append("abort")
        for future, *_ in self.pending:
            future.is_done, future.exception = True, KafkaError("transaction aborted")
        self.fatal, self.committed, self.in_transaction, self.pending = None, [], False, []


def batch(n: int, partition: int = 0, first: int = 0) -> list[SourceRecord]:
    return [SourceRecord("requests", partition, first + i, None, b"k", b"{}") for i in range(n)]


def result(record: SourceRecord, size: int = 10) -> OutputRecord:
    origin = Origin(record.topic, record.partition, record.offset, None)
    value = json.dumps({"offset": record.offset, "pad": "x" * size}).encode()
    return OutputRecord(RESULTS, b"k", value, None, (), origin)


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class AtLeastOnce:
    def __init__(
        self, broker: FakeBroker, fitter: bool = True, settings: WorkerSettings | None = None
    ) -> None:
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
            settings=settings,
        )


def only(logs: list[dict[str, Any]], event: str) -> dict[str, Any]:
    (line,) = [line for line in logs if line["event"] == event]
    return line


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
    # An error that does not say it passes is not retried as if it would.
    assert classify(RuntimeError("unexpected in the sender")) is SendFailure.TOPIC_REFUSED


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
    letter = json.loads(broker.accepted[0][2])
    assert "(record_refused): MessageSizeTooLargeError: " in letter["error_message"]
    refusals = sample(
        parts.metrics, "modstream_kafka_errors_total", kind="MessageSizeTooLargeError"
    )
    assert refusals == 1


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


def test_a_held_batch_is_not_overtaken_by_a_batch_sent_after_the_failed_one_is_delivered() -> None:
    """Pipelined with two batches in flight: batch N's send fails, so batch N+1 is held;
    batch N is delivered; batch N+2, sent now, must wait for N+1 (never sent yet), or
    outputs of the same key would leave out of consumption order."""
    broker = FakeBroker()
    parts = AtLeastOnce(broker)
    first, second, third = batch(1), batch(1, first=1), batch(1, first=2)
    shipments = [Shipment([result(records[0])]) for records in (first, second, third)]
    parts.delivery.send(shipments[0])
    failed, *_ = broker.producers[0].pending.pop()
    failed.is_done, failed.exception = True, KafkaTimeoutError("expired")
    with structlog.testing.capture_logs():
        parts.delivery.send(shipments[1])
        assert shipments[1].futures == [None], "held behind the failed send"
        parts.delivery.deliver(first, shipments[0])
        parts.delivery.send(shipments[2])
        assert shipments[2].futures == [None], "held behind the batch that was held"
        parts.delivery.deliver(second, shipments[1])
        parts.delivery.deliver(third, shipments[2])
    assert [offset for _, offset in accepted_kinds(broker)] == [0, 1, 2]
    assert parts.consumer.commits == [{0: 1}, {0: 2}, {0: 3}]


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


def test_while_a_batch_is_sent_one_at_a_time_later_batches_wait_then_go_ahead_again() -> None:
    """Pipelined: a refused output makes the delivery send its batch one output at a time
    on a renewed producer. A batch the publishing thread sends meanwhile waits (it would
    fail on the producer that is about to be renewed, or overtake the retried outputs);
    once the refused output is replaced, later batches are sent ahead again."""
    broker = FakeBroker(topic_max={RESULTS: 500})
    parts = AtLeastOnce(broker)
    first, second, third = batch(2), batch(2, first=2), batch(1, first=4)
    first_shipment = Shipment([result(first[0]), result(first[1], size=2_000)])
    second_shipment = Shipment([result(r) for r in second])
    sent_while_isolating: list[list[Any]] = []

    def publishing_thread_sends(producer: FakeKafkaProducer) -> None:
        # The renewed producer's first flush: the refused output, sent on its own.
        if producer is not broker.producers[0] and not sent_while_isolating:
            parts.delivery.send(second_shipment)
            sent_while_isolating.append(list(second_shipment.futures))

    broker.on_flush = publishing_thread_sends
    parts.delivery.send(first_shipment)
    with structlog.testing.capture_logs() as logs:
        parts.delivery.deliver(first, first_shipment)
    assert sent_while_isolating == [[None, None]], "held back while isolating"
    assert only(logs, "send_held") == {"event": "send_held", "log_level": "info", "outputs": 2}
    assert only(logs, "publish_refused_isolating") == {
        "event": "publish_refused_isolating",
        "log_level": "warning",
        "error": "output to 'results' failed: MessageSizeTooLargeError: [Error 10] "
        "MessageSizeTooLargeError",
    }
    # Counted once, by the refusal that named the output (the first failure only
    # started the isolation).
    refusals = sample(
        parts.metrics, "modstream_kafka_errors_total", kind="MessageSizeTooLargeError"
    )
    assert refusals == 1

    broker.on_flush = None
    parts.delivery.deliver(second, second_shipment)
    third_shipment = Shipment([result(third[0])])
    parts.delivery.send(third_shipment)
    assert third_shipment.futures[0] is not None, "sent ahead again once isolation ended"
    parts.delivery.deliver(third, third_shipment)
    assert accepted_kinds(broker) == [
        (RESULTS, 0),
        (LETTERS, ("output_too_large", 1)),
        (RESULTS, 2),
        (RESULTS, 3),
        (RESULTS, 4),
    ]
    assert parts.consumer.commits == [{0: 2}, {0: 4}, {0: 5}]


def test_a_batch_sent_ahead_with_a_failed_send_holds_later_batches_until_it_is_delivered() -> None:
    """Delivering one batch must not forget the batches sent ahead after it: the second
    batch's failed send still holds the third back, or the third would overtake it."""
    broker = FakeBroker()
    parts = AtLeastOnce(broker)
    first, second, third = batch(1), batch(1, first=1), batch(1, first=2)
    shipments = [Shipment([result(records[0])]) for records in (first, second, third)]
    parts.delivery.send(shipments[0])
    parts.delivery.send(shipments[1])
    producer = broker.producers[0]
    # The broker loses the second batch's output: its future fails, retriably.
    lost, *_ = producer.pending.pop()
    lost.is_done, lost.exception = True, KafkaTimeoutError("expired")
    parts.delivery.deliver(first, shipments[0])

    parts.delivery.send(shipments[2])
    assert shipments[2].futures == [None], "held: the second batch's send is not made again"
    parts.delivery.deliver(second, shipments[1])
    parts.delivery.deliver(third, shipments[2])
    assert [offset for _, offset in accepted_kinds(broker)] == [0, 1, 2]
    assert parts.consumer.commits == [{0: 1}, {0: 2}, {0: 3}]


def test_the_producer_is_renewed_after_a_refusal_not_on_every_retry_after_it() -> None:
    """A renewal replaces a producer that fails everything; a timeout on the renewed
    one is an ordinary retry on the same producer, which still holds the output."""
    # Flush 1 (first producer): the refusal. Flush 2 (renewed producer, the refused
    # output alone): the broker does not answer in time. Flush 3: it answers.
    broker = FakeBroker(topic_max={RESULTS: 500}, unanswered={2})
    parts = AtLeastOnce(broker)
    records = batch(2)
    with structlog.testing.capture_logs() as logs:
        parts.delivery.deliver(records, Shipment([result(records[0]), result(records[1], 2_000)]))
    # One renewal for the refusal that started the isolation, one for the refusal of
    # the output on its own (it leaves that producer failing too).
    assert len(broker.producers) == 3
    renewed = {"event": "producer_renewed", "log_level": "warning"}
    renewed["reason"] = "a send failed in a way that is not retriable"
    assert [line for line in logs if line["event"] == "producer_renewed"] == [renewed] * 2
    assert [producer.closed_with for producer in broker.producers] == [[1.0], [1.0], []], (
        "a failing producer gets one second to close"
    )
    assert only(logs, "publish_failed")["error"] == (
        "1 of 2 outputs not acknowledged within 1s (broker unreachable or topic not writable?)"
    )
    assert sample(parts.metrics, "modstream_publish_retries_total") == 1, "the timeout"
    assert accepted_kinds(broker) == [(RESULTS, 0), (LETTERS, ("output_too_large", 1))]
    assert parts.consumer.commits == [{0: 2}]


def test_an_output_refused_for_its_content_becomes_an_output_rejected_dead_letter() -> None:
    broker = FakeBroker()
    parts = AtLeastOnce(broker)
    records = batch(2)
    outputs = [result(records[0]), result(records[1])]
    broker.invalid = {outputs[1].value}
    with structlog.testing.capture_logs():
        parts.delivery.deliver(records, Shipment(outputs))
    assert accepted_kinds(broker) == [(RESULTS, 0), (LETTERS, ("output_rejected", 1))]
    letter = json.loads(broker.accepted[1][2])
    assert "(record_refused): InvalidRecordError: " in letter["error_message"]
    assert sample(parts.metrics, "modstream_dead_letters_total", reason="output_rejected") == 1
    assert sample(parts.metrics, "modstream_kafka_errors_total", kind="InvalidRecordError") == 1
    assert parts.consumer.commits == [{0: 2}]


def test_a_given_up_output_is_logged_with_its_record_its_topic_and_the_refusal() -> None:
    broker = FakeBroker(topic_max={RESULTS: 500}, max_request_size=400)
    parts = AtLeastOnce(broker, fitter=False)
    records = batch(1)
    with structlog.testing.capture_logs() as logs:
        parts.delivery.deliver(records, Shipment([result(records[0], 2_000)]))
    assert only(logs, "output_abandoned") == {
        "event": "output_abandoned",
        "log_level": "error",
        "topic": "requests",
        "partition": 0,
        "offset": 0,
        "output_topic": RESULTS,
        "error": "output to 'results' refused: MessageSizeTooLargeError: [Error 10] "
        "MessageSizeTooLargeError: larger than the max_request_size you configured",
        "why": "the broker refuses even the minimal dead letter: this record gets no output",
    }


def test_an_output_that_does_not_know_its_record_is_given_up_without_failing() -> None:
    """An output built without its input's coordinates cannot have a dead letter made
    for it: it is given up, logged without coordinates, and the batch still commits."""
    broker = FakeBroker(max_request_size=400)
    parts = AtLeastOnce(broker)
    records = batch(2)
    anonymous = OutputRecord(RESULTS, b"k", b"x" * 1_000, None)
    with structlog.testing.capture_logs() as logs:
        parts.delivery.deliver(records, Shipment([result(records[0]), anonymous]))
    abandoned = only(logs, "output_abandoned")
    assert (abandoned["topic"], abandoned["partition"], abandoned["offset"]) == (None, None, None)
    assert abandoned["output_topic"] == RESULTS
    assert accepted_kinds(broker) == [(RESULTS, 0)]
    assert sample(parts.metrics, "modstream_outputs_abandoned_total") == 1
    assert parts.consumer.commits == [{0: 2}]


def test_a_topic_refused_by_an_acl_names_the_right_and_its_setting_while_not_ready() -> None:
    broker = FakeBroker(denied={RESULTS}, max_sends=6)
    settings = WorkerSettings(output_topic=RESULTS, dead_letter_topic=LETTERS)
    parts = AtLeastOnce(broker, settings=settings)
    records = batch(1)
    with structlog.testing.capture_logs() as logs, pytest.raises(WorkerStoppedError):
        parts.delivery.deliver(records, Shipment([result(records[0])]))
    hint = (
        "; the broker's ACLs deny this worker WRITE on topic 'results' "
        "(MODSTREAM_OUTPUT_TOPIC): grant it (README: Security)"
    )
    ready, body = parts.health.readiness()
    assert not ready
    assert body["reasons"] == [
        f"publishing failed: output to 'results' failed: TopicAuthorizationFailedError: "
        f"[Error 29] TopicAuthorizationFailedError: results{hint}"
    ]
    failed = [line for line in logs if line["event"] == "publish_failed"]
    assert failed and all(line["error"].endswith(hint) for line in failed)


def test_an_output_given_up_does_not_stop_the_rest_of_its_batch_from_being_sent() -> None:
    """Sent one at a time after the refusal: the outputs after the one given up are
    still sent and acknowledged before the batch commits."""
    broker = FakeBroker(topic_max={RESULTS: 500})
    parts = AtLeastOnce(broker, fitter=False)
    records = batch(3)
    outputs = [result(records[0]), result(records[1], 2_000), result(records[2])]
    with structlog.testing.capture_logs():
        parts.delivery.deliver(records, Shipment(outputs))
    assert accepted_kinds(broker) == [(RESULTS, 0), (RESULTS, 2)]
    assert parts.consumer.commits == [{0: 3}]


def test_after_an_output_refused_at_send_the_others_are_still_waited_for() -> None:
    """`send` refused the first output (over max_request_size) and it was given up; the
    second is not acknowledged in time on the next try: nothing commits until it is."""
    broker = FakeBroker(max_request_size=400, unanswered={1})
    parts = AtLeastOnce(broker, fitter=False)
    records = batch(2)
    with structlog.testing.capture_logs():
        parts.delivery.deliver(records, Shipment([result(records[0], 1_000), result(records[1])]))
    assert sample(parts.metrics, "modstream_publish_retries_total") == 1
    assert accepted_kinds(broker) == [(RESULTS, 1)]
    assert parts.consumer.commits == [{0: 2}]


def test_an_outputs_headers_travel_with_it() -> None:
    broker = FakeBroker()
    parts = AtLeastOnce(broker)
    records = batch(1)
    hashed = OutputRecord(RESULTS, b"digest", b"{}", None, (("modstream-key", b"sha256"),))
    parts.delivery.deliver(records, Shipment([hashed]))
    assert broker.accepted_headers == [[("modstream-key", b"sha256")]]


def test_renewing_retries_a_producer_not_made_and_logs_an_old_one_that_fails_to_close() -> None:
    broker = FakeBroker(topic_max={RESULTS: 500})
    parts = AtLeastOnce(broker)
    broker.producers[0].close_error = KafkaConnectionError("socket gone")
    broker.cannot_create = [KafkaConnectionError("no brokers")]
    records = batch(2)
    with structlog.testing.capture_logs() as logs:
        parts.delivery.deliver(records, Shipment([result(records[0]), result(records[1], 2_000)]))
    assert only(logs, "publish_failed")["error"] == (
        "cannot renew the producer: KafkaConnectionError: no brokers"
    )
    assert only(logs, "producer_close_failed") == {
        "event": "producer_close_failed",
        "log_level": "warning",
        "error": str(KafkaConnectionError("socket gone")),
    }
    assert accepted_kinds(broker) == [(RESULTS, 0), (LETTERS, ("output_too_large", 1))]
    assert parts.health.readiness()[0]


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
