"""worker/app.py's loop on the default, pipelined path with stand-in Kafka clients: batches
complete in order and commit only once acknowledged, a stop answers what is in flight,
every way `run` fails exits 1 without committing, and a new model starts at a batch."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import structlog
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from tests.helpers import request_bytes, wait_for
from tests.unit.test_app import GroupConsumer, sample
from tests.unit.test_model_engine import make_engine
from worker.app import Worker
from worker.settings import WorkerSettings

TOPIC = "moderation.requests"
TP = TopicPartition(TOPIC, 0)


class HeldFuture:
    """A send's future that the broker has not answered yet."""

    def __init__(self) -> None:
        self.is_done = False
        self.ok = True
        self.exception: Exception | None = None

    def succeeded(self) -> bool:
        return self.is_done and self.ok

    def failed(self) -> bool:
        return self.is_done and not self.ok

    def fail(self) -> None:
        self.is_done, self.ok = True, False
        self.exception = KafkaTimeoutError("Batch for moderation.results expired")


class SlowBroker:
    """A producer whose acknowledgements arrive only when someone waits for them (`flush`)
    or the test says (`ack`): batches stay in flight until the worker completes them.
    `fail_sends` makes every send fail at once instead."""

    def __init__(self, fail_sends: bool = False, on_send: Callable[[], None] = lambda: None):
        self.fail_sends = fail_sends
        self.on_send = on_send
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.futures: list[HeldFuture] = []
        self.closed = False

    def send(self, topic: str, value: bytes, key: bytes | None, headers: Any = None) -> HeldFuture:
        self.on_send()
        future = HeldFuture()
        if self.fail_sends:
            future.fail()
        self.sent.append((topic, key, value))
        self.futures.append(future)
        return future

    def flush(self, timeout: float | None = None) -> None:
        self.ack(range(len(self.futures)))

    def ack(self, indexes: Iterable[int]) -> None:
        for i in indexes:
            if not self.futures[i].is_done:
                self.futures[i].is_done = True

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    def values(self) -> list[dict[str, Any]]:
        return [json.loads(value) for _, _, value in self.sent]


class Consumer(GroupConsumer):
    """Records each commit with how it was made: "sync" or "async"."""

    def __init__(self) -> None:
        super().__init__()
        self.assigned = {TP}
        self.kinds: list[str] = []

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        super().commit(offsets)
        self.kinds.append("sync")

    def commit_async(self, offsets: dict[TopicPartition, Any], callback: Any) -> None:
        super().commit(offsets)
        self.kinds.append("async")
        callback(offsets, None)


class Polled:
    """A valid request as kafka-python's poll returns it."""

    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = TOPIC, 0, offset
        self.timestamp, self.key = 1_000, f"k{offset}".encode()
        self.value = request_bytes(f"m{offset}", f"message number {offset}")


def connect(producer: SlowBroker, **settings: Any) -> tuple[Worker, Consumer]:
    """A worker on the default path (pipelined, depth 2), batches of two records."""
    options: dict[str, Any] = {"device": "cpu", "max_batch_size": 2} | settings
    worker = Worker(WorkerSettings(**options), make_engine())
    consumer = Consumer()
    worker.attach(consumer, producer)  # type: ignore[arg-type]
    return worker, consumer


def script(worker: Worker, consumer: Consumer, polls: list[Any]) -> list[Any]:
    """consumer.poll answers `polls` in turn (a callable is called first), then asks the
    worker to stop; returns what the consumer had committed at that moment."""
    at_stop: list[Any] = []

    def poll(timeout_ms: int, max_records: int) -> dict[Any, Any]:
        if polls:
            answer = polls.pop(0)
            if callable(answer):
                answer = answer()
            return {TP: answer} if answer else {}
        if not worker.stopping:
            at_stop.extend(consumer.commits)
            worker.request_stop()
        return {}

    consumer.poll = poll  # type: ignore[method-assign]
    return at_stop


def test_a_stop_answers_and_commits_the_batches_in_flight_before_exit() -> None:
    producer = SlowBroker()
    worker, consumer = connect(producer)
    at_stop = script(worker, consumer, [[Polled(0), Polled(1)], [Polled(2), Polled(3)]])
    assert worker.run() == 0
    assert at_stop == [], "both batches were still unacknowledged when the stop came"
    assert [v["id"] for v in producer.values()] == ["m0", "m1", "m2", "m3"]
    assert all(future.succeeded() for future in producer.futures)
    assert consumer.commits[-1] == {0: 4} and consumer.kinds[-1] == "sync"
    offsets = [c[0] for c in consumer.commits]
    assert offsets == sorted(offsets)
    assert sample(worker, "modstream_in_flight_messages") == 0
    assert sample(worker, "modstream_messages_total", outcome="ok") == 4
    assert producer.closed and consumer.closed


def test_batches_commit_in_order_and_only_once_every_earlier_output_is_acknowledged() -> None:
    producer = SlowBroker()
    worker, consumer = connect(producer)
    runner = worker.kafka.runner
    runner.start_pipeline(2)
    try:
        consumer.polls = [{TP: [Polled(0), Polled(1)]}, {TP: [Polled(2), Polled(3)]}]
        runner.handle(worker.kafka.source.poll(0, 2))
        runner.handle(worker.kafka.source.poll(0, 2))
        wait_for(lambda: len(producer.futures) == 4, 10, "both batches sent")
        producer.ack([2, 3])  # the later batch is acknowledged first
        runner.complete_acknowledged()
        assert consumer.commits == [], "committing batch 2 would pass batch 1's outputs"

        producer.ack([0, 1])

        def both_committed() -> bool:
            runner.complete_acknowledged()
            return len(consumer.commits) == 2

        wait_for(both_committed, 10, "both batches committed")
        assert consumer.commits == [{0: 2}, {0: 4}]
        assert consumer.kinds == ["async", "async"], "no round trip per batch"
        assert len(producer.sent) == 4, "nothing sent twice"
    finally:
        runner.close()


def test_a_full_window_waits_for_its_oldest_batch_before_taking_another() -> None:
    producer = SlowBroker()
    worker, consumer = connect(producer, pipeline_depth=1)
    runner = worker.kafka.runner
    runner.start_pipeline(1)
    try:
        consumer.polls = [{TP: [Polled(0), Polled(1)]}, {TP: [Polled(2), Polled(3)]}]
        runner.handle(worker.kafka.source.poll(0, 2))
        assert consumer.commits == []
        runner.handle(worker.kafka.source.poll(0, 2))  # completes batch 1 first
        assert consumer.commits == [{0: 2}]
        runner.drain()
        assert consumer.commits == [{0: 2}, {0: 4}, {0: 4}], "the last one made certain"
        assert consumer.kinds[-1] == "sync"
    finally:
        runner.close()


@pytest.mark.parametrize(
    ("stage", "event"), [("score", "scoring_failed"), ("prepare", "outputs_failed")]
)
def test_a_failing_pipeline_thread_stops_the_worker_with_exit_code_1(
    stage: str, event: str
) -> None:
    producer = SlowBroker()
    worker, consumer = connect(producer)

    def broken(*_: Any) -> Any:
        raise RuntimeError(f"{stage} broke")

    setattr(worker.processor, stage, broken)  # what the pipeline's threads run
    script(worker, consumer, [[Polled(0), Polled(1)]])
    with structlog.testing.capture_logs() as logs:
        assert worker.run() == 1
    (failure,) = [line for line in logs if line["event"] == event]
    assert f"{stage} broke" in failure["error"]
    assert logs[-1]["event"] == "worker_stopped" and logs[-1]["exit_code"] == 1
    assert producer.sent == [] and consumer.commits == [], "nothing answered, nothing committed"
    assert producer.closed and consumer.closed


@pytest.mark.parametrize("depth", [0, 2])
def test_a_stop_with_outputs_unacknowledged_exits_1_and_commits_nothing(depth: int) -> None:
    """The broker refuses every send; asked to stop, the worker tries once more and gives
    up, leaving the batch to the next owner (at-least-once)."""
    worker: Worker | None = None

    def stop_on_first_send() -> None:
        assert worker is not None
        worker.request_stop()

    producer = SlowBroker(fail_sends=True, on_send=stop_on_first_send)
    worker, consumer = connect(producer, pipeline_depth=depth)
    script(worker, consumer, [[Polled(0), Polled(1)]])
    with structlog.testing.capture_logs() as logs:
        assert worker.run() == 1
    events = [line["event"] for line in logs]
    assert "shutdown_with_unacknowledged_outputs" in events
    assert consumer.commits == []
    assert len(producer.sent) >= 4, "sent, then tried once more after the stop"
    assert producer.closed and consumer.closed
    assert not worker.health.readiness()[0]


def test_a_new_model_starts_at_a_batch_boundary_on_the_pipelined_path() -> None:
    producer = SlowBroker()
    worker, consumer = connect(producer)
    old = worker.engine
    new = make_engine(pooling="mean")
    new.version = "v-new"

    def offer_then_poll() -> list[Polled]:
        worker.engines.offer_engine(new)  # the reload thread, between two polls
        return [Polled(2), Polled(3)]

    script(worker, consumer, [[Polled(0), Polled(1)], offer_then_poll])
    assert worker.run() == 0
    versions = [(v["offset"], v["model_version"]) for v in producer.values()]
    assert versions == [(0, old.version), (1, old.version), (2, "v-new"), (3, "v-new")]
    expected = new.score(["message number 2"]).probabilities[0]
    scored = list(producer.values()[2]["category_scores"].values())
    assert scored == pytest.approx(expected, abs=1e-6), "scored by the model it names"
    assert worker.engine is new


def test_collections_while_running_are_counted_and_the_hook_goes_with_the_run() -> None:
    def collect_then_poll() -> list[Polled]:
        gc.collect(2)  # a full collection while the worker runs
        return [Polled(0), Polled(1)]

    producer = SlowBroker()
    worker, consumer = connect(producer)
    script(worker, consumer, [collect_then_poll])
    assert worker.run() == 0
    full = sample(worker, "modstream_gc_pause_seconds_count", process="worker", generation="2")
    assert full >= 1
    assert not any(getattr(c, "__self__", None) is worker.collections for c in gc.callbacks)
