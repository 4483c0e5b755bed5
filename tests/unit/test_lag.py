"""worker/lag.py: consumer lag per assigned partition, from a stand-in consumer."""

from __future__ import annotations

import structlog
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from worker.lag import LagMonitor
from worker.metrics import WorkerMetrics

TOPIC = "moderation.requests"


class FakeConsumer:
    """assignment/highwater/end_offsets/position like kafka-python's KafkaConsumer."""

    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()
        self.highwaters: dict[TopicPartition, int | None] = {}
        self.ends: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int | None] = {}
        self.end_offsets_calls: list[list[TopicPartition]] = []
        self.fail_with: Exception | None = None

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)

    def end_offsets(self, tps: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
        self.end_offsets_calls.append(sorted(tps))
        if self.fail_with is not None:
            raise self.fail_with
        return {tp: self.ends[tp] for tp in tps}

    def position(self, tp: TopicPartition, timeout_ms: int) -> int | None:
        return self.positions.get(tp)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def lag_series(metrics: WorkerMetrics, partition: int) -> float | None:
    return metrics.registry.get_sample_value(
        "modstream_consumer_lag_records", {"topic": TOPIC, "partition": str(partition)}
    )


def make_monitor(interval_s: float = 30.0) -> tuple[LagMonitor, FakeConsumer, WorkerMetrics, Clock]:
    consumer, metrics, clock = FakeConsumer(), WorkerMetrics(), Clock()
    monitor = LagMonitor(consumer, metrics, TOPIC, interval_s, clock=clock)  # type: ignore[arg-type]
    return monitor, consumer, metrics, clock


def test_lag_is_end_offset_minus_position_per_assigned_partition() -> None:
    monitor, consumer, metrics, _ = make_monitor()
    tp0, tp1, tp2 = (TopicPartition(TOPIC, p) for p in range(3))
    consumer.assigned = {tp0, tp1, tp2}
    consumer.highwaters = {tp0: 100, tp1: None, tp2: 10}  # tp1 not fetched yet
    consumer.ends = {tp1: 50}
    consumer.positions = {tp0: 60, tp1: 50, tp2: None}  # tp2 has no position yet

    assert monitor.refresh() == {tp0: 40, tp1: 0}
    assert consumer.end_offsets_calls == [[tp1]], "only unfetched partitions cost a request"
    assert lag_series(metrics, 0) == 40
    assert lag_series(metrics, 1) == 0
    assert lag_series(metrics, 2) is None

    # Partitions that leave the assignment leave the metric too.
    consumer.assigned = {tp1}
    consumer.highwaters[tp1] = 70
    assert monitor.refresh() == {tp1: 20}
    assert lag_series(metrics, 0) is None


def test_lag_lookup_failure_is_counted_and_keeps_the_last_values() -> None:
    monitor, consumer, metrics, _ = make_monitor()
    tp0, tp1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    consumer.assigned = {tp0}
    consumer.highwaters = {tp0: 5}
    consumer.positions = {tp0: 2}
    assert monitor.refresh() == {tp0: 3}

    consumer.assigned = {tp0, tp1}
    consumer.fail_with = KafkaTimeoutError("no answer")
    with structlog.testing.capture_logs() as logs:
        assert monitor.refresh() == {tp0: 3}
    errors = metrics.registry.get_sample_value(
        "modstream_kafka_errors_total", {"kind": "KafkaTimeoutError"}
    )
    assert errors == 1
    assert [line["event"] for line in logs] == ["lag_refresh_failed"]
    assert logs[0]["log_level"] == "warning"


def test_lag_refresh_is_periodic_and_sooner_after_a_new_assignment() -> None:
    monitor, consumer, _, clock = make_monitor(interval_s=30.0)
    tp0 = TopicPartition(TOPIC, 0)
    consumer.assigned = {tp0}
    consumer.highwaters = {tp0: 5}
    consumer.positions = {tp0: 0}
    monitor.maybe_refresh()
    assert monitor.lag == {tp0: 5}
    consumer.highwaters[tp0] = 9
    clock.now += 29.0
    monitor.maybe_refresh()  # within the interval: not measured again
    assert monitor.lag == {tp0: 5}
    clock.now += 1.0
    monitor.maybe_refresh()
    assert monitor.lag == {tp0: 9}
    consumer.highwaters[tp0] = 12
    monitor.refresh_soon()
    monitor.maybe_refresh()
    assert monitor.lag == {tp0: 12}


def test_forgotten_partitions_leave_the_metric() -> None:
    monitor, consumer, metrics, _ = make_monitor()
    tp0, tp1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    consumer.assigned = {tp0, tp1}
    consumer.highwaters = {tp0: 3, tp1: 4}
    consumer.positions = {tp0: 0, tp1: 0}
    monitor.refresh()
    monitor.keep_only({tp1})
    assert monitor.lag == {tp1: 4}
    assert lag_series(metrics, 0) is None
    monitor.forget({tp1})
    assert monitor.lag == {} and lag_series(metrics, 1) is None
