"""worker/app.py: the Worker wired to stand-in Kafka clients: metrics per stage and
outcome, health, rebalances, and how `run` ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from kafka.errors import CommitFailedError, FencedInstanceIdError
from kafka.future import Future
from kafka.structs import TopicPartition

from tests.unit.test_delivery import CommittingConsumer, FakeProducer
from tests.unit.test_model_engine import make_engine
from tests.unit.test_source import Polled
from worker.app import Worker
from worker.decode import SourceRecord
from worker.settings import WorkerSettings

TOPIC = "moderation.requests"


class GroupConsumer(CommittingConsumer):
    """The consumer calls the worker makes besides poll/commit: subscribe, lag, close."""

    def __init__(self) -> None:
        super().__init__()
        self.assigned = {TopicPartition(TOPIC, 0)}
        self.in_listener = False
        self.highwaters: dict[TopicPartition, int] = {}
        self.closed = False

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.in_listener:  # what kafka-python 3 does on its I/O thread
            raise RuntimeError("Cannot block on net.run() from the IO thread itself.")
        super().commit(offsets)

    def call_listener(self, method: str, partitions: set[TopicPartition]) -> None:
        """Run a listener callback as kafka-python does: on the I/O thread (sync commits
        raise), awaited to the end (the fakes answer commits at once, so it never
        suspends)."""
        self.in_listener = True
        try:
            coroutine = getattr(self.listener, method)(partitions)
            with pytest.raises(StopIteration):
                coroutine.send(None)
        finally:
            self.in_listener = False

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)

    def end_offsets(self, tps: list[TopicPartition], timeout_ms: int) -> dict[Any, int]:
        return dict.fromkeys(tps, 0)

    def position(self, tp: TopicPartition, timeout_ms: int) -> int:
        return 0

    def close(self, autocommit: bool) -> None:
        self.closed = True


def make_worker(**settings: Any) -> tuple[Worker, FakeProducer, GroupConsumer]:
    """A connected worker; synchronous (pipeline depth 0) unless `settings` say otherwise."""
    options: dict[str, Any] = {"device": "cpu", "pipeline_depth": 0} | settings
    worker = Worker(WorkerSettings(**options), make_engine())
    producer, consumer = FakeProducer(), GroupConsumer()
    worker.attach(consumer, producer)  # type: ignore[arg-type]
    return worker, producer, consumer


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
    assert body["producer_ok"] is False
    assert worker.health.liveness()[1]["deadline_s"] == 7.0


def test_a_batch_records_every_stage_outcome_and_its_debug_line() -> None:
    worker, producer, consumer = make_worker()
    now = time.time()
    batch = [
        record(0, b'{"id": "a", "text": "you idiot"}', int((now - 2.0) * 1000), now - 0.5),
        record(1, b"{not json", int((now - 2.0) * 1000), now - 0.5),
        record(2, b'{"id": "c", "text": "see you"}', None, now - 1.0),
    ]
    worker.metrics.in_flight.inc(len(batch))
    with structlog.testing.capture_logs() as logs:
        worker.process_batch(batch)

    assert producer.calls == ["send"] * 3
    assert consumer.commits == [{0: 3}]
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
    assert (worker.summary.messages, worker.summary.batches) == (3, 1)

    (debug,) = [line for line in logs if line["event"] == "batch_processed"]
    assert debug["log_level"] == "debug"
    assert debug["batch_size"] == 3
    assert debug["outcomes"] == {"ok": 2, "invalid": 1, "error": 0}
    assert debug["partitions"] == {f"{TOPIC}-0": [0, 2]}
    (warning,) = [line for line in logs if line["event"] == "dead_lettered"]
    assert warning["log_level"] == "warning"
    assert (warning["topic"], warning["partition"], warning["offset"]) == (TOPIC, 0, 1)


def test_rebalances_update_assignment_health_and_lag_series() -> None:
    worker, _, consumer = make_worker()
    tp0, tp1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    consumer.assigned = {tp0, tp1}
    consumer.highwaters = {tp0: 3, tp1: 4}
    consumer.call_listener("on_partitions_assigned", {tp0, tp1})
    worker.kafka.lag.refresh()
    assert sample(worker, "modstream_assigned_partitions") == 2
    assert sample(worker, "modstream_rebalances_total") == 1
    assert worker.health.readiness()[1]["assigned_partitions"] == 2

    consumer.call_listener("on_partitions_revoked", {tp0, tp1})
    consumer.assigned = set()  # as the consumer reports after the revocation
    consumer.call_listener(
        "on_partitions_assigned", set()
    )  # idle member: more workers than partitions
    assert sample(worker, "modstream_assigned_partitions") == 0
    assert (
        worker.metrics.registry.get_sample_value(
            "modstream_consumer_lag_records", {"topic": TOPIC, "partition": "1"}
        )
        is None
    )
    assert worker.health.readiness()[0], "an idle-assigned member is ready"


IN0 = TopicPartition("in", 0)  # where `Polled` records come from


def run_scripted(
    worker: Worker, consumer: GroupConsumer, *answers: list[int] | Callable[[], None]
) -> list[dict[str, Any]]:
    """Run the worker while `consumer.poll` answers in turn: records of IN0 at these
    offsets, or a callable run inside that poll (a rebalance, as kafka-python runs its
    listener); after the last answer the worker is asked to stop. Returns the logs."""
    script = list(answers)

    def poll(timeout_ms: int, max_records: int) -> dict[Any, Any]:
        answer = script.pop(0) if script else None
        if not script:
            worker.request_stop()
        if isinstance(answer, list):
            return {IN0: [Polled(offset) for offset in answer]}
        if answer is not None:
            answer()
        return {}

    consumer.poll = poll  # type: ignore[method-assign]
    consumer.assigned = {IN0}
    with structlog.testing.capture_logs() as logs:
        assert worker.run() == 0
    return logs


def the_event(logs: list[dict[str, Any]], event: str) -> dict[str, Any]:
    (line,) = [line for line in logs if line["event"] == event]
    return line


def test_a_revocation_releases_the_open_batch_and_seeks_back_to_it() -> None:
    """Records polled but not yet handed over are released, not answered: under the
    eager protocol the partition may come straight back with its position kept, so the
    consumer is sought back to them; nothing is published or committed for them."""
    worker, producer, consumer = make_worker(max_batch_wait_ms=60_000)
    logs = run_scripted(
        worker,
        consumer,
        [4, 5],
        lambda: consumer.call_listener("on_partitions_revoked", {IN0}),
    )
    assert consumer.seeks == [(IN0, 4)]
    assert producer.calls == ["close"] and consumer.commits == []
    assert sample(worker, "modstream_in_flight_messages") == 0
    assert the_event(logs, "partitions_revoked")["released_records"] == 2
    assert "commit_failed" not in [line["event"] for line in logs]


def test_a_revocation_commits_the_acknowledged_pipelined_batches_without_blocking() -> None:
    """Pipelined: the batch in flight is completed inside the listener and its offsets
    committed with an awaited asynchronous commit, even though a synchronous commit
    raises there and the cooperative protocol already dropped the partition from the
    assignment."""
    worker, producer, consumer = make_worker(pipeline_depth=2, max_batch_wait_ms=60_000)

    def cooperative_revocation() -> None:
        consumer.assigned = set()  # cooperative: revoked partitions are gone already
        consumer.call_listener("on_partitions_revoked", {IN0})

    # The first batch closes at once (the scorer is idle) and is handed over.
    logs = run_scripted(worker, consumer, [0, 1, 2], cooperative_revocation)
    assert consumer.commits[-1] == {0: 3}  # one past the delivered batch, nothing more
    assert producer.calls.count("send") == 3
    events = [line["event"] for line in logs]
    assert "commit_failed" not in events and "revocation_failed" not in events
    revoked = the_event(logs, "partitions_revoked")
    assert revoked["committed"] == {"in-0": 3} and revoked["batches_left_in_flight"] == 0
    assert sample(worker, "modstream_in_flight_messages") == 0
    assert sample(worker, "modstream_commits_total", result="failed") == 0


def test_lost_partitions_release_their_records_and_commit_nothing_more() -> None:
    worker, producer, consumer = make_worker(max_batch_wait_ms=60_000)

    def eviction() -> None:
        consumer.assigned = set()  # evicted: kafka-python clears the assignment
        consumer.call_listener("on_partitions_lost", {IN0})

    logs = run_scripted(worker, consumer, [7], eviction)
    assert producer.calls == ["close"] and consumer.commits == [] and consumer.seeks == []
    assert the_event(logs, "partitions_lost")["dropped_records"] == 1
    assert sample(worker, "modstream_in_flight_messages") == 0


def test_a_batch_of_a_partition_that_moved_is_answered_but_not_committed() -> None:
    """The Committer only commits partitions the consumer owns: a late batch of a
    partition that went to another member would be refused (and logged as a failure)."""
    worker, producer, consumer = make_worker()
    consumer.assigned = {TopicPartition(TOPIC, 1)}
    now = time.time()
    worker.metrics.in_flight.inc(1)
    worker.process_batch([record(0, b'{"id": "a", "text": "hi"}', None, now)])
    assert producer.calls == ["send"] and consumer.commits == []
    assert sample(worker, "modstream_in_flight_messages") == 0


def test_a_fenced_worker_stops_with_exit_code_1_and_closes_its_clients() -> None:
    worker, _, consumer = make_worker(group_instance_id="w-1")
    consumer.polls = [FencedInstanceIdError()]
    with structlog.testing.capture_logs() as logs:
        assert worker.run() == 1
    events = [line["event"] for line in logs]
    assert "worker_fenced" in events and events[-1] == "worker_stopped"
    assert logs[-1]["exit_code"] == 1
    assert consumer.closed


def test_a_pipelined_worker_delivers_every_batch_in_order_and_commits_at_shutdown() -> None:
    worker, producer, consumer = make_worker(pipeline_depth=2, max_batch_size=2)
    tp = TopicPartition("in", 0)  # where `Polled` records come from
    consumer.assigned = {tp}
    records = [Polled(offset) for offset in range(7)]

    def poll(timeout_ms: int, max_records: int) -> dict[Any, Any]:
        if not records:
            worker.request_stop()
            return {}
        taken = [records.pop(0) for _ in range(min(max_records, len(records)))]
        return {tp: taken}

    consumer.poll = poll  # type: ignore[method-assign]
    assert worker.run() == 0
    assert producer.calls.count("send") == 7
    committed = [offsets[0] for offsets in consumer.commits]
    assert committed == sorted(committed) and committed[-1] == 7, "in order, up to the end"
    assert sample(worker, "modstream_messages_total", outcome="invalid") == 7  # "{}" values
    assert sample(worker, "modstream_in_flight_messages") == 0


def test_a_revocation_whose_commit_is_refused_counts_a_failed_commit_not_a_deferred_one() -> None:
    """The partitions leave with the listener: a commit refused there is never sent
    again, so it must not be counted or logged as deferred."""
    worker, _, consumer = make_worker(pipeline_depth=2, max_batch_wait_ms=60_000)
    refusal = CommitFailedError("the group moved on")

    def commit_async(offsets: dict[TopicPartition, Any], callback: Any = None) -> Future:
        consumer.commits.append({tp.partition: meta.offset for tp, meta in offsets.items()})
        if callback is not None:  # the batches' own commits: accepted
            callback(offsets, None)
            return Future().success(None)
        return Future().failure(refusal)  # the listener's awaited commit: refused

    consumer.commit_async = commit_async  # type: ignore[method-assign]

    def revocation() -> None:
        consumer.call_listener("on_partitions_revoked", {IN0})

    logs = run_scripted(worker, consumer, [0, 1, 2], revocation)
    failed = the_event(logs, "commit_failed")
    assert failed["offsets"] == {"in-0": 3}
    assert failed["error"].startswith("CommitFailedError: ")
    assert "commit_deferred" not in [line["event"] for line in logs]
    assert sample(worker, "modstream_commits_total", result="failed") == 1
    assert worker.metrics.registry.get_sample_value(
        "modstream_commits_total", {"result": "deferred"}
    ) in (None, 0.0)
