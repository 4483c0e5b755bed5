"""worker/runner.py: the books of a delivered batch (latency, outcomes, the debug line), a
batch whose transaction was rewound, and when the scorer counts as idle."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
import structlog
from kafka.structs import TopicPartition

from tests.helpers import wait_for
from tests.unit.test_model_engine import make_engine
from tests.unit.test_worker_loop import Polled, SlowBroker, connect
from worker.decode import SourceRecord
from worker.engine_slot import EngineSlot
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.pipeline import Pipeline
from worker.processing import PreparedBatch
from worker.runner import BatchRunner
from worker.sink import OutputRecord, Shipment
from worker.summary import SummaryLog

ACKED_AT = 1_000.0  # epoch seconds the broker acknowledged the batch's outputs


class Delivery:
    """A delivery that acknowledges at ACKED_AT, or (`rewound`) hands the batch back."""

    def __init__(self, rewound: bool = False) -> None:
        self.rewound = rewound
        self.delivered: list[int] = []

    def deliver(self, batch: Sequence[SourceRecord], shipment: Shipment) -> float | None:
        self.delivered.append(len(shipment.outputs))
        return None if self.rewound else ACKED_AT

    def flush(self) -> None: ...

    def forget(self, partitions: Iterable[TopicPartition]) -> None: ...

    def close(self) -> None: ...


class Processor:
    """Prepares every batch as `prepared` says: one output per record."""

    def __init__(self, inference_s: float, started: float) -> None:
        self.inference_s, self.started = inference_s, started

    def process(
        self, batch: Sequence[SourceRecord], engine: Any, policy: Any = None
    ) -> PreparedBatch:
        outputs = [OutputRecord("out", None, b"{}", r.timestamp_ms) for r in batch]
        outcomes = {"ok": len(batch) - 1, "invalid": 1, "error": 0}
        return PreparedBatch(list(batch), outputs, outcomes, self.started, self.inference_s)


def runner(delivery: Delivery, processor: Processor) -> tuple[BatchRunner, WorkerMetrics]:
    metrics = WorkerMetrics()
    engines = EngineSlot(make_engine(), metrics, HealthState())
    summary = SummaryLog(metrics, "t", 30.0)
    made = BatchRunner(processor, engines, delivery, metrics, summary)  # type: ignore[arg-type]
    return made, metrics


def record(partition: int, offset: int, timestamp_ms: int | None) -> SourceRecord:
    return SourceRecord("t", partition, offset, timestamp_ms, None, b"{}")


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_delivered_batch_is_booked_latency_outcomes_and_one_debug_line() -> None:
    started = time.time() - 2.5
    made, metrics = runner(Delivery(), Processor(inference_s=0.0123456, started=started))
    batch = [
        record(0, 7, 1_000_000),  # produced at 1000 s: 0 s to its acknowledgement
        record(0, 3, 1),  # 1 ms after the epoch: counted, 999.999 s
        record(1, 2, 0),  # no real timestamp: not counted
        record(0, 5, None),  # none at all: not counted
        record(1, 4, 1_010_000),  # 10 s in the future (clock skew): counts as 0
    ]
    metrics.in_flight.inc(len(batch))
    with structlog.testing.capture_logs() as logs:
        made.process(batch)
    assert value(metrics, "modstream_end_to_end_latency_seconds_count") == 3
    latency = value(metrics, "modstream_end_to_end_latency_seconds_sum")
    assert latency == pytest.approx(999.999, abs=1e-9)
    assert value(metrics, "modstream_messages_total", outcome="ok") == 4
    assert value(metrics, "modstream_messages_total", outcome="invalid") == 1
    assert value(metrics, "modstream_in_flight_messages") == 0
    (debug,) = logs
    assert debug["event"] == "batch_processed" and debug["log_level"] == "debug"
    assert debug["batch_size"] == 5
    assert debug["outcomes"] == {"ok": 4, "invalid": 1, "error": 0}
    assert debug["partitions"] == {"t-0": [3, 7], "t-1": [2, 4]}
    assert debug["inference_ms"] == 12.346
    seconds = debug["seconds"]
    assert isinstance(seconds, float) and 2.5 <= seconds < 60 and seconds == round(seconds, 4)


def test_a_rewound_batch_leaves_the_books_and_is_no_longer_in_flight() -> None:
    delivery = Delivery(rewound=True)
    made, metrics = runner(delivery, Processor(inference_s=0.0, started=time.time()))
    batch = [record(0, n, 5) for n in range(3)]
    metrics.in_flight.inc(len(batch))
    made.process(batch)
    assert delivery.delivered == [3]
    assert value(metrics, "modstream_in_flight_messages") == 0
    assert value(metrics, "modstream_messages_total", outcome="ok") == 0
    assert value(metrics, "modstream_end_to_end_latency_seconds_count") == 0


def test_the_scorer_is_idle_only_on_the_pipelined_path_with_nothing_to_score() -> None:
    synchronous, _ = runner(Delivery(), Processor(inference_s=0.0, started=time.time()))
    assert synchronous.scorer_idle() is False, "one batch at a time: never close early"

    producer = SlowBroker()
    worker, consumer = connect(producer)
    release = threading.Event()
    score = worker.processor.score

    def held(staged: Any) -> Any:
        release.wait(10)
        return score(staged)

    worker.processor.score = held  # type: ignore[method-assign]
    pipelined = worker.kafka.runner
    pipelined.start_pipeline(2)
    try:
        assert pipelined.pipelined and pipelined.scorer_idle()
        consumer.polls = [{TopicPartition("moderation.requests", 0): [Polled(0)]}]
        pipelined.handle(worker.kafka.source.poll(0, 2))
        assert not pipelined.scorer_idle(), "the batch handed over waits for the scorer"
        release.set()
        wait_for(pipelined.scorer_idle, 10, "the scorer done")
    finally:
        release.set()
        pipelined.close()


def test_one_look_completes_every_batch_whose_outputs_are_all_acknowledged() -> None:
    producer = SlowBroker()
    worker, consumer = connect(producer, pipeline_depth=3)
    pipelined = worker.kafka.runner
    pipelined.start_pipeline(3)
    tp = TopicPartition("moderation.requests", 0)
    try:
        consumer.polls = [{tp: [Polled(2 * n), Polled(2 * n + 1)]} for n in range(3)]
        for _ in range(3):
            pipelined.handle(worker.kafka.source.poll(0, 2))
        wait_for(lambda: len(producer.futures) == 6, 10, "all three batches sent")
        producer.ack(range(6))
        wait_for(lambda: not pipelined.pipelined or _all_ready(pipelined), 10, "all ready")
        pipelined.complete_acknowledged()
        assert consumer.commits == [{0: 2}, {0: 4}, {0: 6}]
    finally:
        pipelined.close()


def _all_ready(made: BatchRunner) -> bool:
    pipeline = made._pipeline
    return pipeline is not None and all(item.ready.is_set() for item in pipeline._window)


def test_completing_without_blocking_never_waits_for_the_oldest_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop's look after each poll must not wait for the scorer; a full window and
    the drain must (the pipeline's `oldest(wait_s)`: 0 = look, None = wait)."""
    waits: list[float | None] = []
    oldest = Pipeline.oldest

    def spy(self: Pipeline, wait_s: float | None) -> Any:
        waits.append(wait_s)
        return oldest(self, wait_s)

    monkeypatch.setattr(Pipeline, "oldest", spy)
    producer = SlowBroker()
    worker, consumer = connect(producer, pipeline_depth=1)
    pipelined = worker.kafka.runner
    pipelined.start_pipeline(1)
    tp = TopicPartition("moderation.requests", 0)
    try:
        consumer.polls = [{tp: [Polled(0)]}, {tp: [Polled(1)]}]
        pipelined.handle(worker.kafka.source.poll(0, 2))
        pipelined.complete_acknowledged()
        assert waits and set(waits) == {0}
        waits.clear()
        pipelined.handle(worker.kafka.source.poll(0, 2))  # the window is full
        pipelined.drain()
        assert waits == [None, None]
        assert consumer.commits[-1] == {0: 2}
    finally:
        pipelined.close()


# -- the drain at a revocation (`complete_settled`, on kafka-python's I/O thread) -------

TP = TopicPartition("moderation.requests", 0)


class Pipelined:
    """A worker's runner on the pipelined path, three batches in flight at most, over a
    producer whose acknowledgements come when the test says (`SlowBroker`)."""

    def __init__(self, producer: SlowBroker, scoring: threading.Event | None = None) -> None:
        """`scoring`: when given, the model runs on a batch only once it is set."""
        self.producer = producer
        self.worker, self.consumer = connect(producer, pipeline_depth=3)
        if scoring is not None:
            score = self.worker.processor.score

            def held(staged: Any) -> Any:
                scoring.wait(10)
                return score(staged)

            self.worker.processor.score = held  # type: ignore[method-assign]
        self.runner = self.worker.kafka.runner
        self.runner.start_pipeline(3)

    def hand_over(self, *batches: list[int]) -> None:
        """Batches of these offsets polled and handed to the pipeline."""
        for offsets in batches:
            self.consumer.polls = [{TP: [Polled(offset) for offset in offsets]}]
            self.runner.handle(self.worker.kafka.source.poll(0, len(offsets)))

    def drain(self, drain_s: float) -> int | None:
        """`complete_settled(now + drain_s)` on another thread, as the rebalance
        listener runs it; what it returned. A drain that has not ended after 10 s fails
        the test."""
        answer: list[int | None] = []
        thread = threading.Thread(
            target=lambda: answer.append(self.runner.complete_settled(time.monotonic() + drain_s)),
            daemon=True,
        )
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), f"a drain of {drain_s}s still runs after 10 s"
        (left,) = answer
        return left

    def close(self) -> None:
        self.runner.close()


def test_the_drain_completes_batches_acknowledged_while_it_waits() -> None:
    """The broker answers shortly after the revocation began: both batches are
    committed inside the listener, none is left in flight."""
    made = Pipelined(SlowBroker())
    try:
        made.hand_over([0, 1], [2, 3])
        wait_for(lambda: len(made.producer.futures) == 4, 10, "both batches sent")
        answer = threading.Timer(0.02, made.producer.ack, args=(range(4),))
        answer.start()
        assert made.drain(0.9) == 0
        answer.join()
        assert made.consumer.commits == [{0: 2}, {0: 4}]
        assert len(made.producer.sent) == 4, "nothing sent again"
    finally:
        made.close()


def test_the_drain_leaves_batches_unanswered_at_its_deadline_in_flight() -> None:
    """Waiting longer would hold kafka-python's I/O thread past the drain bound."""
    made = Pipelined(SlowBroker())
    try:
        made.hand_over([0, 1], [2, 3])
        wait_for(lambda: len(made.producer.futures) == 4, 10, "both batches sent")
        assert made.drain(0.05) == 2
        assert made.consumer.commits == []
        assert not any(future.is_done for future in made.producer.futures), "never flushed"
    finally:
        made.close()


class QuickBroker(SlowBroker):
    """Acknowledges every send at once."""

    def send(self, topic: str, value: bytes, key: bytes | None, headers: Any = None) -> Any:
        future = super().send(topic, value, key, headers)
        future.is_done = True
        return future


def test_the_drain_does_not_wait_past_its_deadline_for_a_batch_still_being_scored() -> None:
    release = threading.Event()
    made = Pipelined(QuickBroker(), scoring=release)
    try:
        made.hand_over([0, 1])
        # Scored (and acknowledged at once) well after the drain's deadline.
        scored_late = threading.Timer(0.5, release.set)
        scored_late.start()
        assert made.drain(0.05) == 1
        assert made.consumer.commits == [], "not completed inside the listener"
        scored_late.join()
    finally:
        release.set()
        made.close()


def test_the_drain_stops_at_a_batch_with_a_failed_send_and_never_sends_again() -> None:
    """Retrying with backoff is not for the I/O thread: the failed batch, and every
    batch after it, stay in flight for the processing thread to complete."""
    made = Pipelined(SlowBroker(fail_sends=True))
    try:
        made.hand_over([0, 1])
        wait_for(lambda: len(made.producer.futures) == 2, 10, "the first batch sent")
        made.producer.fail_sends = False
        made.hand_over([2, 3])
        wait_for(lambda: made.runner._pipeline is not None and _all_ready(made.runner), 10, "sent")
        assert made.drain(0.5) == 2
        assert made.consumer.commits == []
        assert len(made.producer.sent) == 2, "no send made again inside the listener"
    finally:
        made.close()


def test_a_synchronous_runner_has_nothing_in_flight_to_drain() -> None:
    made, _ = runner(Delivery(), Processor(inference_s=0.0, started=time.time()))
    assert made.complete_settled(time.monotonic() + 1.0) == 0


@pytest.mark.parametrize("depth", [0, 2], ids=["synchronous", "pipelined"])
def test_each_batch_is_flagged_with_the_thresholds_in_effect_not_the_checkpoints(
    depth: int,
) -> None:
    """An override (MODSTREAM_THRESHOLDS here; the store's policy file takes the same
    path) flags a batch on both paths: every score of the tiny model is over 1e-6, so
    every result is flagged insult and says which policy flagged it. Without the runner
    handing the thresholds in effect to the processor, the checkpoint's 0.5 would flag
    some and `policy_version` would read "checkpoint"."""
    producer = SlowBroker()
    worker, consumer = connect(producer, pipeline_depth=depth, thresholds="insult=0.000001")
    runner = worker.kafka.runner
    runner.start_pipeline(depth)
    consumer.polls = [{TP: [Polled(0), Polled(1)]}]
    runner.handle(worker.kafka.source.poll(0, 2))
    wait_for(lambda: len(producer.sent) == 2, 10, "both results sent")
    producer.flush()
    runner.close()
    results = [json.loads(value) for _, _, value in producer.sent]
    assert [r["categories"]["insult"] for r in results] == [True, True]
    assert all(r["policy_version"].startswith("env-") for r in results)
