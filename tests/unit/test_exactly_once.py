"""worker/transactional.py against `FakeBroker`: which aborts back off before the replay
and which do not, how a refused output is found, replaced or given up across replays,
what is remembered of it (and until when), and what an ACL refusal tells the operator."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import structlog
from kafka.errors import CommitFailedError
from kafka.structs import TopicPartition

from tests.unit.test_delivery import FakeProducer, Parts
from tests.unit.test_delivery import batch as three_records
from tests.unit.test_delivery import outputs as three_outputs
from tests.unit.test_send_failures import (
    LETTERS,
    RESULTS,
    FakeBroker,
    GroupMember,
    accepted_kinds,
    batch,
    only,
    result,
    sample,
)
from worker.decode import SourceRecord
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.outputs import OutputFitter, OutputLimits
from worker.settings import WorkerSettings
from worker.sink import OutputRecord, Shipment
from worker.source import Source
from worker.transactional import TransactionalDelivery


class ExactlyOnce:
    """A transactional delivery on `broker`; `pauses` counts the backoffs it took."""

    def __init__(
        self,
        broker: FakeBroker,
        monkeypatch: pytest.MonkeyPatch,
        fitter: bool = True,
        partitions: tuple[int, ...] = (0,),
    ) -> None:
        self.broker = broker
        self.metrics = WorkerMetrics()
        self.health = HealthState(model_version="v1", group_joined=True)
        settings = WorkerSettings(
            delivery="exactly_once", output_topic=RESULTS, dead_letter_topic=LETTERS
        )
        self.consumer = GroupMember()
        self.consumer.assigned = {TopicPartition("requests", p) for p in partitions}
        source = Source(self.consumer, settings, self.metrics, self.health, broker.stop)  # type: ignore[arg-type]
        self.pauses = 0

        def pause(backoff: Any, stop: threading.Event) -> bool:
            self.pauses += 1
            return stop.is_set()

        monkeypatch.setattr("worker.delivery.Backoff.wait", pause)
        self.delivery = TransactionalDelivery(
            broker.new_producer(),  # type: ignore[arg-type]
            broker.new_producer,  # type: ignore[arg-type]
            source,
            settings,
            self.metrics,
            self.health,
            broker.stop,
            first_backoff_s=0.0,
            fitter=OutputFitter(OutputLimits(), LETTERS) if fitter else None,
        )

    def replay_until_committed(
        self, records: list[SourceRecord], outputs: list[OutputRecord], tries: int = 6
    ) -> int:
        """Deliver the batch, replayed (its outputs built again) until a transaction
        commits; how many tries that took."""
        for attempt in range(1, tries + 1):
            if self.delivery.deliver(records, Shipment(list(outputs))) is not None:
                return attempt
        raise AssertionError(f"no transaction committed in {tries} tries")

    def errors(self, kind: str) -> float:
        return sample(self.metrics, "modstream_kafka_errors_total", kind=kind)


def test_a_retriable_failure_backs_off_and_the_replay_sends_its_outputs_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A timeout is not a refusal: no output is looked for, the replay waits its backoff
    and sends the batch's outputs in one go, and so does the next batch."""
    broker = FakeBroker(expired={1})
    made = ExactlyOnce(broker, monkeypatch)
    records = batch(3)
    with structlog.testing.capture_logs() as logs:
        assert made.replay_until_committed(records, [result(r) for r in records]) == 2
    assert made.pauses == 1
    assert "publish_refused_isolating" not in [line["event"] for line in logs]
    assert broker.flushes == 2, "one flush per transaction: the outputs went together"
    assert made.errors("KafkaTimeoutError") == 1

    later = batch(3, first=3)
    assert made.replay_until_committed(later, [result(r) for r in later]) == 1
    assert broker.flushes == 3, "after a commit, outputs still go together"
    assert [offset for _, offset in accepted_kinds(broker)] == [0, 1, 2, 3, 4, 5]


def test_a_transaction_the_coordinator_refuses_backs_off_before_the_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[bool] = []

    def pause(backoff: Any, stop: threading.Event) -> bool:
        pauses.append(True)
        return stop.is_set()

    monkeypatch.setattr("worker.delivery.Backoff.wait", pause)
    parts = Parts(delivery="exactly_once")
    delivery = parts.transactional(FakeProducer([CommitFailedError("generation moved")]))
    assert delivery.deliver(three_records(), Shipment(three_outputs())) is None
    assert pauses == [True]


def test_finding_and_replacing_a_refused_output_takes_no_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = FakeBroker(topic_max={RESULTS: 500})
    made = ExactlyOnce(broker, monkeypatch)
    records = batch(3)
    outputs = [result(records[0]), result(records[1], 2_000), result(records[2])]
    with structlog.testing.capture_logs() as logs:
        assert made.replay_until_committed(records, outputs) == 3
    assert made.pauses == 0, "a refusal is not an outage: nothing to wait for"
    refused = "output to 'results' failed: MessageSizeTooLargeError: [Error 10] "
    refused += "MessageSizeTooLargeError"
    assert only(logs, "publish_refused_isolating") == {
        "event": "publish_refused_isolating",
        "log_level": "warning",
        "error": refused,
    }
    aborted = [line["error"] for line in logs if line["event"] == "transaction_aborted"]
    assert aborted == [
        refused,
        "output to 'results' refused: MessageSizeTooLargeError: [Error 10] "
        "MessageSizeTooLargeError",
    ]
    assert made.errors("MessageSizeTooLargeError") == 2
    assert accepted_kinds(broker) == [
        (RESULTS, 0),
        (LETTERS, ("output_too_large", 1)),
        (RESULTS, 2),
    ]


def test_without_a_fitter_the_refused_output_is_given_up_loudly_and_the_rest_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = FakeBroker(topic_max={RESULTS: 500})
    made = ExactlyOnce(broker, monkeypatch, fitter=False)
    records = batch(3)
    outputs = [result(records[0]), result(records[1], 2_000), result(records[2])]
    with structlog.testing.capture_logs() as logs:
        assert made.replay_until_committed(records, outputs) == 3
    assert accepted_kinds(broker) == [(RESULTS, 0), (RESULTS, 2)]
    assert sample(made.metrics, "modstream_outputs_abandoned_total") == 1
    assert sample(made.metrics, "modstream_dead_letters_total", reason="output_too_large") == 0
    assert only(logs, "output_abandoned") == {
        "event": "output_abandoned",
        "log_level": "error",
        "topic": "requests",
        "partition": 0,
        "offset": 1,
        "output_topic": RESULTS,
        "error": "output to 'results' refused: MessageSizeTooLargeError: [Error 10] "
        "MessageSizeTooLargeError",
        "why": "the broker refuses even the minimal dead letter: this record gets no output",
    }


def test_an_output_refused_for_its_content_is_replaced_by_an_output_rejected_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = FakeBroker()
    made = ExactlyOnce(broker, monkeypatch)
    records = batch(2)
    outputs = [result(records[0]), result(records[1])]
    broker.invalid = {outputs[1].value}
    with structlog.testing.capture_logs():
        made.replay_until_committed(records, outputs)
    assert accepted_kinds(broker) == [(RESULTS, 0), (LETTERS, ("output_rejected", 1))]
    letter = json.loads(broker.accepted[1][2])
    assert "(record_refused): InvalidRecordError: " in letter["error_message"]
    assert sample(made.metrics, "modstream_dead_letters_total", reason="output_rejected") == 1


def test_a_refusal_is_forgotten_once_its_record_is_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read again later (offsets reset by an operator, after raising the topic's
    limit), the record is tried afresh and gets its real result."""
    broker = FakeBroker(topic_max={RESULTS: 500})
    made = ExactlyOnce(broker, monkeypatch)
    records = batch(2)
    outputs = [result(records[0]), result(records[1], 2_000)]
    with structlog.testing.capture_logs():
        made.replay_until_committed(records, outputs)
        broker.topic_max = {}
        broker.accepted.clear()
        assert made.replay_until_committed(records, outputs) == 1
    assert accepted_kinds(broker) == [(RESULTS, 0), (RESULTS, 1)]


def test_a_refusal_is_remembered_while_its_partition_is_away_and_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The eager protocol may revoke a partition after the refusal was found and hand it
    straight back: the refused record's replay needs no new search (no new abort)."""
    broker = FakeBroker(topic_max={RESULTS: 500})
    made = ExactlyOnce(broker, monkeypatch, partitions=(0, 1))
    mixed = [batch(1)[0], batch(1, partition=1)[0]]
    outputs = [result(mixed[0]), result(mixed[1], 2_000)]
    with structlog.testing.capture_logs():
        assert made.delivery.deliver(mixed, Shipment(list(outputs))) is None  # isolating
        assert made.delivery.deliver(mixed, Shipment(list(outputs))) is None  # found
        # Partition 1 revoked: the replay holds partition 0's record only.
        assert made.replay_until_committed(mixed[:1], outputs[:1]) == 1
        # Partition 1 back: its record is replayed with its stand-in at once.
        assert made.replay_until_committed(mixed[1:], outputs[1:]) == 1
    assert sample(made.metrics, "modstream_commits_total", result="aborted") == 2
    assert accepted_kinds(broker) == [(RESULTS, 0), (LETTERS, ("output_too_large", 0))]


def test_an_output_that_does_not_know_its_record_is_given_up_and_the_batch_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = FakeBroker(max_request_size=400)
    made = ExactlyOnce(broker, monkeypatch)
    records = batch(2)
    anonymous = OutputRecord(RESULTS, b"k", b"x" * 1_000, None)
    with structlog.testing.capture_logs():
        made.replay_until_committed(records, [result(records[0]), anonymous])
    assert accepted_kinds(broker) == [(RESULTS, 0)]
    assert made.consumer.seeks == [(TopicPartition("requests", 0), 0)], "one abort, rewound"


def test_an_output_topic_refused_by_an_acl_names_the_right_and_its_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = FakeBroker(denied={RESULTS})
    made = ExactlyOnce(broker, monkeypatch)
    records = batch(1)
    with structlog.testing.capture_logs() as logs:
        assert made.delivery.deliver(records, Shipment([result(records[0])])) is None
    hint = (
        "; the broker's ACLs deny this worker WRITE on topic 'results' "
        "(MODSTREAM_OUTPUT_TOPIC): grant it (README: Security)"
    )
    error = "output to 'results' failed: TopicAuthorizationFailedError: [Error 29] "
    error += "TopicAuthorizationFailedError: results"
    ready, body = made.health.readiness()
    assert not ready and body["reasons"] == [f"transaction aborted: {error}{hint}"]
    assert only(logs, "transaction_aborted")["error"] == error + hint
    assert made.errors("TopicAuthorizationFailedError") == 1
