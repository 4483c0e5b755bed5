"""Reliability under faults on the real broker: kill -9, rebalances, a missing output topic.

Every test here checks the delivery guarantee by id: at-least-once loses nothing (and a
kill -9 repeats at most the batches in flight), exactly-once loses nothing and repeats
nothing as seen by a `read_committed` reader.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import (
    SteadyProducer,
    TopicReader,
    WorkerProcess,
    committed_offsets,
    end_offsets,
    ids_of,
    produce,
    request_bytes,
    wait_for,
    worker_env,
)
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration

TEXTS = [
    "you are a complete idiot",
    "Free entry! Text WIN to 87121 to claim your prize now",
    "see you at lunch tomorrow",
    "what a pathetic loser",
    "Thanks, that was really helpful.",
]


def messages(prefix: str, count: int) -> list[tuple[bytes, bytes]]:
    return [
        (f"k-{prefix}-{n}".encode(), request_bytes(f"{prefix}-{n}", f"{TEXTS[n % 5]} #{n}"))
        for n in range(count)
    ]


def start(
    bootstrap: str,
    topics: dict[str, str],
    checkpoint: Path,
    group: str,
    tmp_path: Path,
    ready_timeout_s: float = 90,
    **extra: str,
) -> WorkerProcess:
    log = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
    worker = WorkerProcess(worker_env(bootstrap, topics, checkpoint, group, **extra), log)
    worker.wait_ready(ready_timeout_s)
    return worker


def all_committed(bootstrap: str, group: str, topic: str) -> bool:
    return committed_offsets(bootstrap, group) == end_offsets(bootstrap, topic)


def duplicates(ids: list[str]) -> int:
    return sum(count - 1 for count in Counter(ids).values())


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_kill_9_three_times_loses_nothing(
    delivery: str,
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
    record_property: Callable[[str, Any], None],
) -> None:
    """kill -9 at three random moments mid-stream; every id comes out (once, in EOS)."""
    count, kills = 20_000, 3
    topics = make_topics(partitions=3)
    group = f"g-crash-{uuid.uuid4().hex[:8]}"
    expected = {f"c-{n}" for n in range(count)}
    produce(kafka_bootstrap, topics["input"], messages("c", count))
    isolation = "read_committed" if delivery == "exactly_once" else "read_uncommitted"
    options = {
        "delivery": delivery,
        # Static membership and a stable transactional id: the restarted process takes
        # over at once, and in EOS fences its predecessor and aborts its open transaction.
        "group_instance_id": "crash-worker",
        "transactional_id": f"{group}-crash-worker",
        "max_batch_size": "128",
    }
    rng = random.Random(8)
    reader = TopicReader(kafka_bootstrap, topics["output"], isolation)
    worker = start(kafka_bootstrap, topics, tiny_checkpoint, group, tmp_path, **options)
    try:
        for kill in range(kills):
            # A random point in the next quarter of the stream.
            target = int(count * (kill + rng.uniform(0.3, 0.9)) / 4)
            reader.read_until(min(target, count), timeout_s=180)
            worker.kill()
            assert worker.proc.returncode == -9
            worker = start(kafka_bootstrap, topics, tiny_checkpoint, group, tmp_path, **options)
        wait_for(
            lambda: all_committed(kafka_bootstrap, group, topics["input"]),
            240,
            "every input offset committed",
            step_s=0.5,
        )
    finally:
        code = worker.stop()
    assert code == 0, worker.logs()
    ids = ids_of(reader.read_to_end())
    reader.close()
    lost = expected - set(ids)
    dups = duplicates(ids)
    record_property("lost", len(lost))
    record_property("duplicates", dups)
    assert not lost, f"{len(lost)} ids lost, e.g. {sorted(lost)[:5]}"
    assert set(ids) == expected
    if delivery == "exactly_once":
        assert dups == 0, [i for i, c in Counter(ids).items() if c > 1][:10]
    else:
        # README: a kill -9 repeats at most the batches in flight: the pipeline's window
        # (answered, not yet committed) and up to two batches whose asynchronous commit
        # had not reached the coordinator yet. Without a commit per batch a restart
        # would repeat everything since the last one.
        batches_in_flight = WorkerSettings().pipeline_depth + 2
        bound = kills * batches_in_flight * int(options["max_batch_size"])
        assert dups <= bound, f"{dups} repeated outputs after {kills} kills (bound {bound})"


@pytest.mark.parametrize("assignment", ["range", "cooperative-sticky"])
def test_scaling_one_to_three_to_one_loses_nothing(
    assignment: str,
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
    record_property: Callable[[str, Any], None],
) -> None:
    topics = make_topics(partitions=6)
    group = f"g-scale-{uuid.uuid4().hex[:8]}"
    options = {"assignment_strategy": assignment, "max_batch_size": "64"}
    reader = TopicReader(kafka_bootstrap, topics["output"])
    with SteadyProducer(kafka_bootstrap, topics["input"], "s") as producer:
        first = start(kafka_bootstrap, topics, tiny_checkpoint, group, tmp_path, **options)
        extra: list[WorkerProcess] = []
        try:
            reader.read_until(300, timeout_s=120)
            extra = [
                WorkerProcess(
                    worker_env(kafka_bootstrap, topics, tiny_checkpoint, group, **options),
                    tmp_path / f"extra-{n}.log",
                )
                for n in range(2)
            ]
            for worker in extra:
                worker.wait_ready(120)
            # Three members, each doing real work on its share of the partitions.
            wait_for(
                lambda: all(
                    w.metric("modstream_messages_total", outcome="ok") > 0
                    and w.metric("modstream_assigned_partitions") == 2
                    for w in [first, *extra]
                ),
                120,
                "three workers sharing the partitions",
                step_s=0.5,
            )
            for worker in extra:
                assert worker.stop() == 0, worker.logs()
            wait_for(
                lambda: first.metric("modstream_assigned_partitions") == 6,
                120,
                "the first worker owning all partitions again",
                step_s=0.5,
            )
            done_before = first.metric("modstream_messages_total", outcome="ok")
            wait_for(
                lambda: first.metric("modstream_messages_total", outcome="ok") > done_before + 100,
                120,
                "processing going on after scaling down",
                step_s=0.5,
            )
            sent = producer.stop()
            wait_for(
                lambda: all_committed(kafka_bootstrap, group, topics["input"]),
                180,
                "every input offset committed",
                step_s=0.5,
            )
        finally:
            for worker in extra:
                worker.kill()
            code = first.stop()
    assert code == 0, first.logs()
    ids = ids_of(reader.read_to_end())
    reader.close()
    lost = sent - set(ids)
    dups = duplicates(ids)
    record_property("duplicates", dups)
    print(f"\n{assignment}: {len(sent)} inputs, 1 -> 3 -> 1 workers: lost {len(lost)}, dups {dups}")
    assert not lost, f"{len(lost)} ids lost, e.g. {sorted(lost)[:5]}"
    assert set(ids) == sent
    failures = [
        event
        for worker in [first, *extra]
        for name in ("commit_failed", "revocation_failed")
        for event in worker.events(name)
    ]
    assert not failures, failures  # every revocation committed what it had answered


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_missing_output_topic_blocks_commits_until_it_exists(
    delivery: str,
    kafka_bootstrap: str,
    kafka_local: ModuleType,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    topics = make_topics(partitions=2, roles=("input", "dead_letter"))
    topics["output"] = topics["input"].replace("-input", "-output")
    group = f"g-noout-{uuid.uuid4().hex[:8]}"
    sent = messages("o", 200)
    produce(kafka_bootstrap, topics["input"], sent)
    env = worker_env(
        kafka_bootstrap,
        topics,
        tiny_checkpoint,
        group,
        delivery=delivery,
        publish_timeout_s="1",
        transactional_id=f"{group}-w",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    failure_event = "transaction_aborted" if delivery == "exactly_once" else "publish_failed"
    try:
        wait_for(lambda: len(worker.events(failure_event)) >= 3, 90, "three failed tries")
        status, body = worker.get("/readyz")
        assert status == 503, body
        assert topics["output"] in body, body  # readiness says why
        failures = worker.events(failure_event)
        assert all(topics["output"] in f["error"] for f in failures[:3]), failures[0]
        assert "does the topic exist" in failures[0]["error"]
        waits = [f["retry_in_s"] for f in failures[:3]]
        assert waits == sorted(waits) and waits[-1] > waits[0], waits  # backing off
        assert committed_offsets(kafka_bootstrap, group) == {}, "committed without outputs"
        assert worker.proc.poll() is None

        kafka_local.create_topics(kafka_bootstrap, [topics["output"]], 2)
        try:
            reader = TopicReader(kafka_bootstrap, topics["output"], "read_committed")
            results = reader.read_until(len(sent), timeout_s=120)
            wait_for(
                lambda: all_committed(kafka_bootstrap, group, topics["input"]),
                60,
                "commits advancing after the topic appeared",
                step_s=0.5,
            )
            wait_for(lambda: worker.get("/readyz")[0] == 200, 60, "ready again", step_s=0.2)
            reader.close()
        finally:
            kafka_local.delete_topics(kafka_bootstrap, [topics["output"]])
    finally:
        code = worker.stop()
    assert code == 0, worker.logs()
    assert set(ids_of(results)) == {f"o-{n}" for n in range(len(sent))}
