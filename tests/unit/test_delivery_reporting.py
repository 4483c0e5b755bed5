"""worker/delivery.py: what a failing delivery tells an operator (log lines with the
record's coordinates, metrics, readiness) and how each failure ends, in both modes."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import structlog
from kafka.errors import (
    CommitFailedError,
    CoordinatorNotAvailableError,
    KafkaConnectionError,
    KafkaTimeoutError,
    ProducerFencedError,
)
from kafka.structs import TopicPartition

from tests.unit.test_delivery import (
    CommittingConsumer,
    FakeProducer,
    Parts,
    batch,
    outputs,
    sample,
)
from worker.clients import WorkerFencedError
from worker.delivery import WorkerStoppedError
from worker.sink import Shipment, describe


class Consumer(CommittingConsumer):
    """Commits like kafka-python's consumer; `refuse` makes every commit fail."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: list[str] = []
        self.refuse: BaseException | None = None

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.refuse is not None:
            raise self.refuse
        super().commit(offsets)
        self.kinds.append("sync")

    def commit_async(self, offsets: dict[TopicPartition, Any], callback: Any) -> None:
        CommittingConsumer.commit(self, offsets)
        self.kinds.append("async")
        callback(offsets, self.refuse)


class PendingProducer(FakeProducer):
    """Sends are never acknowledged (every try runs out of time), except the first
    `acknowledged` ones."""

    class Pending:
        is_done = False

    def __init__(self, acknowledged: int = 0) -> None:
        super().__init__()
        self.acknowledged = acknowledged

    def send(self, topic: str, value: bytes, key: bytes | None, headers: Any = None) -> Any:
        if self.acknowledged:
            self.acknowledged -= 1
            return super().send(topic, value, key)
        self.calls.append("send")
        return self.Pending()


def parts(**settings: Any) -> Parts:
    made = Parts(**settings)
    made.consumer = Consumer()
    made.consumer.assigned = {TopicPartition("in", 0), TopicPartition("in", 1)}
    return made


def readiness_at_each_pause(made: Parts, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What /readyz said each time the delivery paused before another try."""
    seen: list[Any] = []

    def pause(backoff: Any, stop: threading.Event) -> bool:
        seen.append(made.health.readiness())
        return stop.is_set()

    monkeypatch.setattr("worker.delivery.Backoff.wait", pause)
    return seen


def only(logs: list[dict[str, Any]], event: str) -> dict[str, Any]:
    (line,) = [line for line in logs if line["event"] == event]
    return line


# -- at-least-once -----------------------------------------------------------------------


def test_a_failed_publish_is_logged_with_coordinates_counted_and_not_ready_until_it_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = parts()
    seen = readiness_at_each_pause(made, monkeypatch)
    delivery = made.at_least_once(FakeProducer(failed_sends=1), commit_async=False)
    with structlog.testing.capture_logs() as logs:
        assert delivery.deliver(batch(), Shipment(outputs())) > 0
    failure = only(logs, "publish_failed")
    error = "output to 'out' failed: KafkaTimeoutError: no leader"
    assert failure == {
        "event": "publish_failed",
        "log_level": "error",
        "error": error,
        "topic": "in",
        "partition": 0,
        "offset": 10,
        "batch_size": 3,
        "acknowledged": 2,
        "retry_in_s": 0.0,
        "committed": False,
        "failure": "retriable",
    }
    ((ready, body),) = seen
    assert not ready and body["producer_ok"] is False
    assert body["reasons"] == [f"publishing failed: {error}"]
    assert made.health.readiness()[0], "ready again once acknowledged"
    assert sample(made.metrics, "modstream_kafka_errors_total", kind="KafkaTimeoutError") == 1
    assert sample(made.metrics, "modstream_publish_retries_total") == 1
    for stage in ("publish", "commit"):
        assert sample(made.metrics, "modstream_stage_latency_seconds_count", stage=stage) == 1
        assert sample(made.metrics, "modstream_stage_latency_seconds_sum", stage=stage) < 60


def test_stopped_while_outputs_wait_says_how_many_are_unacknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = parts()
    made.stop.set()
    seen = readiness_at_each_pause(made, monkeypatch)
    producer = PendingProducer(acknowledged=1)
    delivery = made.at_least_once(producer, commit_async=False)
    shipment = Shipment(outputs())
    with pytest.raises(WorkerStoppedError) as raised:
        delivery.deliver(batch(), shipment)
    assert str(raised.value).startswith("stopped with 2 outputs unacknowledged: 2 of 3 outputs")
    assert len(seen) == 1, "one pause, cut short by the stop, then one last try"
    assert producer.calls == ["send"] * 3, "pending outputs are waited for, not sent again"
    assert sample(made.metrics, "modstream_kafka_errors_total", kind="PublishError") == 2
    assert made.consumer.commits == []


def test_a_refused_commit_is_counted_and_logged_and_the_batch_still_counts_as_delivered() -> None:
    made = parts()
    made.consumer.refuse = CommitFailedError("the group rebalanced")
    delivery = made.at_least_once(FakeProducer(), commit_async=False)
    with structlog.testing.capture_logs() as logs:
        assert delivery.deliver(batch(), Shipment(outputs())) > 0
    failure = only(logs, "commit_failed")
    assert failure == {
        "event": "commit_failed",
        "log_level": "warning",
        "error": f"CommitFailedError: {made.consumer.refuse}",
        "offsets": {"in-0": 12, "in-1": 6},
    }
    assert sample(made.metrics, "modstream_commits_total", result="failed") == 1
    assert sample(made.metrics, "modstream_commits_total", result="ok") == 0
    assert sample(made.metrics, "modstream_kafka_errors_total", kind="CommitFailedError") == 1


def test_an_asynchronous_commit_and_its_refusal_are_counted_when_the_answer_comes() -> None:
    made = parts()
    delivery = made.at_least_once(FakeProducer(), commit_async=True)
    delivery.deliver(batch(), Shipment(outputs()))
    assert made.consumer.kinds == ["async"]
    assert sample(made.metrics, "modstream_commits_total", result="ok") == 1

    made.consumer.refuse = CommitFailedError("coordinator moved")
    with structlog.testing.capture_logs() as logs:
        delivery.deliver(batch(), Shipment(outputs()))
    assert only(logs, "commit_failed")["offsets"] == {"in-0": 12, "in-1": 6}
    assert sample(made.metrics, "modstream_commits_total", result="failed") == 1
    assert sample(made.metrics, "modstream_kafka_errors_total", kind="CommitFailedError") == 1

    with structlog.testing.capture_logs() as logs:
        delivery.flush()  # the synchronous commit before handing partitions back
    assert only(logs, "commit_failed")["error"].startswith("CommitFailedError: ")
    assert sample(made.metrics, "modstream_commits_total", result="failed") == 2


def test_offsets_of_forgotten_partitions_are_not_flushed() -> None:
    made = parts()
    delivery = made.at_least_once(FakeProducer(), commit_async=True)
    delivery.deliver(batch(), Shipment(outputs()))
    delivery.forget([TopicPartition("in", 1)])
    delivery.flush()
    assert made.consumer.commits == [{0: 12, 1: 6}, {0: 12}]
    assert made.consumer.kinds == ["async", "sync"]


def test_a_producer_that_fails_to_close_is_logged_not_raised() -> None:
    class Unclosable(FakeProducer):
        def close(self, timeout: float | None = None) -> None:
            raise KafkaConnectionError("already gone")

    made = parts()
    for delivery in (
        made.at_least_once(Unclosable(), commit_async=False),
        made.transactional(Unclosable()),
    ):
        with structlog.testing.capture_logs() as logs:
            delivery.close()
        assert logs == [
            {
                "event": "producer_close_failed",
                "log_level": "warning",
                "error": "KafkaConnectionError: already gone",
            }
        ]


# -- exactly-once ------------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["commit", "coordinator", "send"])
def test_an_aborted_transaction_is_logged_with_coordinates_and_counted(failing: str) -> None:
    made = parts(delivery="exactly_once")
    if failing == "send":
        producer = FakeProducer(failed_sends=1)
        error = reason = "output to 'out' failed: KafkaTimeoutError: no leader"
        kind = "KafkaTimeoutError"
    else:
        refusal: Exception = (
            CommitFailedError("generation moved")
            if failing == "commit"
            else CoordinatorNotAvailableError("coordinator moving")  # "[Error 15] …"
        )
        producer = FakeProducer([refusal])
        error, reason, kind = describe(refusal), str(refusal), type(refusal).__name__
    delivery = made.transactional(producer)
    with structlog.testing.capture_logs() as logs:
        assert delivery.deliver(batch(), Shipment(outputs())) is None
    assert only(logs, "transaction_aborted") == {
        "event": "transaction_aborted",
        "log_level": "error",
        "error": error,
        "topic": "in",
        "partition": 0,
        "offset": 10,
        "batch_size": 3,
        "retry_in_s": 0.0,
        "committed": False,
    }
    ready, body = made.health.readiness()
    assert not ready and body["producer_ok"] is False
    assert body["reasons"] == [f"transaction aborted: {reason}"]
    assert sample(made.metrics, "modstream_kafka_errors_total", kind=kind) == 1
    assert sample(made.metrics, "modstream_publish_retries_total") == 1
    assert sample(made.metrics, "modstream_stage_latency_seconds_count", stage="publish") == 1
    assert sample(made.metrics, "modstream_stage_latency_seconds_sum", stage="publish") < 60


def test_a_transaction_timing_out_without_a_cause_counts_as_a_publish_error() -> None:
    made = parts(delivery="exactly_once", publish_timeout_s=0.001)
    delivery = made.transactional(PendingProducer())
    assert delivery.deliver(batch(), Shipment(outputs())) is None
    assert sample(made.metrics, "modstream_kafka_errors_total", kind="PublishError") == 1


def test_fenced_while_aborting_stops_the_worker_naming_the_ids_to_fix() -> None:
    class FencedOnAbort(FakeProducer):
        def abort_transaction(self) -> None:
            raise ProducerFencedError()

    made = parts(delivery="exactly_once", transactional_id="tx-9")
    delivery = made.transactional(FencedOnAbort([CommitFailedError("generation moved")]))
    with pytest.raises(WorkerFencedError) as raised:
        delivery.deliver(batch(), Shipment(outputs()))
    assert str(raised.value).startswith("ProducerFencedError: ")
    assert "transactional id 'tx-9'" in str(raised.value)
    assert isinstance(raised.value.__cause__, ProducerFencedError)


def test_fenced_inside_the_transaction_names_the_error_and_the_ids() -> None:
    made = parts(delivery="exactly_once", transactional_id="tx-9")
    delivery = made.transactional(FakeProducer([ProducerFencedError()]))
    with pytest.raises(WorkerFencedError) as raised:
        delivery.deliver(batch(), Shipment(outputs(1)))
    assert str(raised.value).startswith("ProducerFencedError: ")
    assert "'tx-9'" in str(raised.value)


class Stuck(FakeProducer):
    """Cannot abort: the delivery must replace it."""

    def __init__(self) -> None:
        super().__init__([CommitFailedError("generation moved")])
        self.closed_with: list[float | None] = []

    def abort_transaction(self) -> None:
        raise KafkaTimeoutError("abort timed out")

    def close(self, timeout: float | None = None) -> None:
        super().close(timeout)
        self.closed_with.append(timeout)


def test_replacing_a_stuck_producer_closes_it_briefly_and_retries_creating_the_new_one() -> None:
    made = parts(delivery="exactly_once", transactional_id="tx-9")
    stuck, fresh = Stuck(), FakeProducer()
    attempts: list[Any] = [KafkaConnectionError("coordinator not available"), fresh]

    def new_producer() -> Any:
        answer = attempts.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    delivery = made.transactional(stuck)
    delivery._new_producer = new_producer  # type: ignore[assignment]
    with structlog.testing.capture_logs() as logs:
        assert delivery.deliver(batch(), Shipment(outputs())) is None
    assert stuck.closed_with == [1.0], "a stuck producer gets one second to close"
    assert only(logs, "abort_failed_replacing_producer") == {
        "event": "abort_failed_replacing_producer",
        "log_level": "warning",
        "error": str(KafkaTimeoutError("abort timed out")),
    }
    assert only(logs, "producer_init_failed") == {
        "event": "producer_init_failed",
        "log_level": "error",
        "error": str(KafkaConnectionError("coordinator not available")),
        "retry_in_s": 0.0,
    }
    assert delivery.deliver(batch(), Shipment(outputs())) is not None
    assert fresh.calls[-1] == "commit"
    delivery.close()
    assert fresh.calls[-1] == "close"


def test_a_stuck_producer_that_fails_to_close_is_logged_and_replaced_anyway() -> None:
    class Unclosable(Stuck):
        def close(self, timeout: float | None = None) -> None:
            raise KafkaConnectionError("socket gone")

    made = parts(delivery="exactly_once")
    fresh = FakeProducer()
    delivery = made.transactional(Unclosable(), fresh)
    with structlog.testing.capture_logs() as logs:
        assert delivery.deliver(batch(), Shipment(outputs())) is None
    assert only(logs, "producer_close_failed") == {
        "event": "producer_close_failed",
        "log_level": "warning",
        "error": str(KafkaConnectionError("socket gone")),
    }
    assert delivery.deliver(batch(), Shipment(outputs())) is not None
    assert fresh.calls[-1] == "commit"


def test_a_stop_while_the_producer_is_being_replaced_ends_the_delivery() -> None:
    made = parts(delivery="exactly_once")
    made.stop.set()

    def broker_down() -> Any:
        raise KafkaConnectionError("no brokers")

    delivery = made.transactional(Stuck())
    delivery._new_producer = broker_down  # type: ignore[assignment]
    with pytest.raises(WorkerStoppedError, match=r"^stopped while re-creating the producer$"):
        delivery.deliver(batch(), Shipment(outputs()))


def test_fenced_while_creating_the_new_producer_stops_the_worker() -> None:
    made = parts(delivery="exactly_once", transactional_id="tx-9")

    def fenced() -> Any:
        raise ProducerFencedError()

    delivery = made.transactional(Stuck())
    delivery._new_producer = fenced  # type: ignore[assignment]
    with pytest.raises(WorkerFencedError) as raised:
        delivery.deliver(batch(), Shipment(outputs()))
    assert str(raised.value).startswith("ProducerFencedError: ")
    assert "'tx-9'" in str(raised.value)
