"""What one worker reports about itself: metrics per stage and outcome, consumer lag,
health and log lines, driven through `Worker` with stand-in Kafka clients."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import structlog
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from tests.unit.test_model_engine import make_engine
from worker.app import Worker
from worker.decode import SourceRecord
from worker.settings import WorkerSettings
from worker.sink import Delivery, OutputRecord

TOPIC = "moderation.requests"


class FakeSink:
    def __init__(self) -> None:
        self.published: list[OutputRecord] = []

    def publish(self, outputs: Sequence[OutputRecord]) -> float:
        self.published.extend(outputs)
        return time.time()

    def complete(self, delivery: Delivery) -> float:
        return self.publish(delivery.outputs)


class FakeCommitter:
    def __init__(self) -> None:
        self.batches: list[list[SourceRecord]] = []

    def commit(self, records: Sequence[SourceRecord]) -> dict[TopicPartition, int]:
        self.batches.append(list(records))
        return {}


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


def make_worker(**settings: Any) -> tuple[Worker, FakeSink, FakeCommitter, FakeConsumer]:
    worker = Worker(WorkerSettings(device="cpu", **settings), make_engine())
    sink, committer, consumer = FakeSink(), FakeCommitter(), FakeConsumer()
    worker._sink = sink  # type: ignore[assignment]
    worker._committer = committer  # type: ignore[assignment]
    worker._consumer = consumer  # type: ignore[assignment]
    return worker, sink, committer, consumer


def sample(worker: Worker, name: str, **labels: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def record(offset: int, value: bytes, timestamp_ms: int | None, polled_at: float) -> SourceRecord:
    return SourceRecord(TOPIC, 0, offset, timestamp_ms, b"k", value, polled_at)


def test_series_dashboards_and_alerts_need_exist_from_the_start() -> None:
    worker, *_ = make_worker()
    for outcome in ("ok", "invalid", "error"):
        assert sample(worker, "modstream_messages_total", outcome=outcome) == 0
    for stage in ("queue", "decode", "tokenize", "inference", "publish", "commit"):
        assert sample(worker, "modstream_stage_latency_seconds_count", stage=stage) == 0
    for reason in ("invalid_json", "text_too_long", "inference_error"):
        assert sample(worker, "modstream_dead_letters_total", reason=reason) == 0
    for category in ("insult", "spam"):
        assert sample(worker, "modstream_flagged_total", category=category) == 0
        assert sample(worker, "modstream_category_score_count", category=category) == 0
    for result in ("ok", "failed"):
        assert sample(worker, "modstream_commits_total", result=result) == 0
        assert sample(worker, "modstream_model_reloads_total", result=result) == 0
    info = sample(
        worker,
        "modstream_model_info",
        version=worker.engine.version,
        labels="insult,spam",
        device="cpu",
    )
    assert info == 1


def test_not_ready_before_the_clients_connect() -> None:
    worker = Worker(WorkerSettings(device="cpu", liveness_deadline_s=7.0), make_engine())
    ok, body = worker.health.readiness()
    assert not ok
    assert body["model_version"] == worker.engine.version
    assert "producer not connected" in body["reasons"]
    assert worker.health.liveness()[1]["deadline_s"] == 7.0


def test_a_batch_records_every_stage_outcome_and_its_debug_line() -> None:
    worker, sink, committer, _ = make_worker()
    now = time.time()
    batch = [
        record(0, b'{"id": "a", "text": "you idiot"}', int((now - 2.0) * 1000), now - 0.5),
        record(1, b"{not json", int((now - 2.0) * 1000), now - 0.5),
        record(2, b'{"id": "c", "text": "see you"}', None, now - 1.0),
    ]
    worker.metrics.in_flight.inc(len(batch))
    with structlog.testing.capture_logs() as logs:
        worker.process_batch(batch)

    assert len(sink.published) == 3 and len(committer.batches) == 1
    assert sample(worker, "modstream_messages_total", outcome="ok") == 2
    assert sample(worker, "modstream_messages_total", outcome="invalid") == 1
    assert sample(worker, "modstream_dead_letters_total", reason="invalid_json") == 1
    # Queue wait per record: two waited ~2 s since their timestamp, one ~1 s since its poll.
    assert sample(worker, "modstream_stage_latency_seconds_count", stage="queue") == 3
    queued = sample(worker, "modstream_stage_latency_seconds_sum", stage="queue")
    assert 4.9 <= queued < 5.0 + 60
    for stage in ("decode", "tokenize", "inference", "publish", "commit"):
        assert sample(worker, "modstream_stage_latency_seconds_count", stage=stage) == 1
    # End to end only for records that carry a timestamp.
    assert sample(worker, "modstream_end_to_end_latency_seconds_count") == 2
    assert sample(worker, "modstream_end_to_end_latency_seconds_sum") >= 4.0
    assert sample(worker, "modstream_batch_size_sum") == 3
    assert sample(worker, "modstream_batch_tokens_count") == 1
    assert sample(worker, "modstream_padding_efficiency_ratio_count") == 1
    for category in ("insult", "spam"):
        assert sample(worker, "modstream_category_score_count", category=category) == 2
    assert sample(worker, "modstream_in_flight_messages") == 0
    assert sample(worker, "modstream_commits_total", result="ok") == 1

    (debug,) = [line for line in logs if line["event"] == "batch_processed"]
    assert debug["log_level"] == "debug"
    assert debug["batch_size"] == 3
    assert debug["outcomes"] == {"ok": 2, "invalid": 1, "error": 0}
    assert debug["partitions"] == {f"{TOPIC}-0": [0, 2]}
    (warning,) = [line for line in logs if line["event"] == "dead_lettered"]
    assert warning["log_level"] == "warning"
    assert (warning["topic"], warning["partition"], warning["offset"]) == (TOPIC, 0, 1)


def test_lag_is_end_offset_minus_position_per_assigned_partition() -> None:
    worker, _, _, consumer = make_worker()
    tp0, tp1, tp2 = (TopicPartition(TOPIC, p) for p in range(3))
    consumer.assigned = {tp0, tp1, tp2}
    consumer.highwaters = {tp0: 100, tp1: None, tp2: 10}  # tp1 not fetched yet
    consumer.ends = {tp1: 50}
    consumer.positions = {tp0: 60, tp1: 50, tp2: None}  # tp2 has no position yet

    lag = worker.refresh_lag()

    assert lag == {tp0: 40, tp1: 0}
    assert consumer.end_offsets_calls == [[tp1]], "only unfetched partitions cost a request"
    assert sample(worker, "modstream_consumer_lag_records", topic=TOPIC, partition="0") == 40
    assert sample(worker, "modstream_consumer_lag_records", topic=TOPIC, partition="1") == 0
    registry = worker.metrics.registry
    assert (
        registry.get_sample_value(
            "modstream_consumer_lag_records", {"topic": TOPIC, "partition": "2"}
        )
        is None
    )

    # Partitions that leave the assignment leave the metric too.
    consumer.assigned = {tp1}
    consumer.highwaters[tp1] = 70
    assert worker.refresh_lag() == {tp1: 20}
    assert (
        registry.get_sample_value(
            "modstream_consumer_lag_records", {"topic": TOPIC, "partition": "0"}
        )
        is None
    )


def test_lag_lookup_failure_is_counted_and_keeps_the_last_values() -> None:
    worker, _, _, consumer = make_worker()
    tp0, tp1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    consumer.assigned = {tp0}
    consumer.highwaters = {tp0: 5}
    consumer.positions = {tp0: 2}
    assert worker.refresh_lag() == {tp0: 3}

    consumer.assigned = {tp0, tp1}
    consumer.fail_with = KafkaTimeoutError("no answer")
    with structlog.testing.capture_logs() as logs:
        assert worker.refresh_lag() == {tp0: 3}
    assert sample(worker, "modstream_kafka_errors_total", kind="KafkaTimeoutError") == 1
    assert [line["event"] for line in logs] == ["lag_refresh_failed"]
    assert logs[0]["log_level"] == "warning"


def test_rebalances_update_assignment_health_and_lag_series() -> None:
    worker, _, _, consumer = make_worker()
    tp0, tp1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    consumer.assigned = {tp0, tp1}
    consumer.highwaters = {tp0: 3, tp1: 4}
    consumer.positions = {tp0: 0, tp1: 0}
    worker.on_assigned({tp0, tp1})
    worker.refresh_lag()
    assert sample(worker, "modstream_assigned_partitions") == 2
    assert sample(worker, "modstream_rebalances_total") == 1
    assert worker.health.readiness()[1]["assigned_partitions"] == 2

    worker.on_revoked({tp0, tp1})
    consumer.assigned = set()  # as the consumer reports after the revocation
    worker.on_assigned(set())  # idle member: more workers than partitions
    assert sample(worker, "modstream_assigned_partitions") == 0
    assert (
        worker.metrics.registry.get_sample_value(
            "modstream_consumer_lag_records", {"topic": TOPIC, "partition": "1"}
        )
        is None
    )
    worker.health.set(producer_ok=True, problem=None)
    assert worker.health.readiness()[0], "an idle-assigned member is ready"


def test_summary_line_reports_rates_outcomes_and_lag() -> None:
    worker, _, _, consumer = make_worker(log_summary_interval_s=0.001)
    tp0 = TopicPartition(TOPIC, 0)
    consumer.assigned = {tp0}
    consumer.highwaters = {tp0: 9}
    consumer.positions = {tp0: 2}
    worker.refresh_lag()
    now = time.time()
    worker.process_batch([record(0, b'{"id": "a", "text": "hi"}', int(now * 1000), now)])
    worker._last_summary = time.monotonic() - 2.0
    with structlog.testing.capture_logs() as logs:
        worker._maybe_log_summary()
    (summary,) = logs
    assert summary["event"] == "summary"
    assert summary["log_level"] == "info"
    assert summary["messages"] == 1
    assert summary["ok"] == 1 and summary["invalid"] == 0
    assert 0 < summary["messages_per_s"] <= 1
    assert summary["lag"] == 7
    assert summary["lag_by_partition"] == {f"{TOPIC}-0": 7}
    assert summary["topic"] == TOPIC
    json.dumps(summary)  # renderable as one JSON line


def test_lag_refresh_is_periodic() -> None:
    worker, _, _, consumer = make_worker(lag_interval_s=30.0)
    tp0 = TopicPartition(TOPIC, 0)
    consumer.assigned = {tp0}
    consumer.highwaters = {tp0: 5}
    consumer.positions = {tp0: 0}
    worker._maybe_refresh_lag()
    assert worker._lag == {tp0: 5}
    consumer.highwaters[tp0] = 9
    worker._maybe_refresh_lag()  # within the interval: not measured again
    assert worker._lag == {tp0: 5}
    worker._next_lag_refresh = time.monotonic() - 0.001
    worker._maybe_refresh_lag()
    assert worker._lag == {tp0: 9}
